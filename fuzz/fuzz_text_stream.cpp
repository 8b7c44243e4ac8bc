// Fuzz target: the streaming text path, token ids → IncrementalDetokenizer → TextStream (stop
// strings, n_indent) → one SSE or NDJSON line per delta, with fuzzed ids, stops and n_indent.
// Input (FuzzedDataProvider): tokenizer, n_indent, up to 4 stop strings, a mode, then the
// generation: raw token ids (mode 0), the tokens of a text (1) or one byte piece per byte (2).
//
// Invariants: every delta is valid UTF-8 and serialises with a strict json dump; the deltas add
// up to what the stream says it emitted; the detokenizer's deltas add up to Tokenizer::decode;
// the output is a prefix of the decoded text; no stop string and no line dedented below
// n_indent appears in it; what it leaves out starts with a stop string or a dedented line.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/text_stream.h"
#include "fuzz/fuzz_util.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/utf8.h"

using namespace hyco;

namespace {

// What HttpServer::write_event sends for a delta (the server's dump replaces invalid UTF-8;
// this one throws, so a broken character is a finding).
void write_delta(const std::string& delta) {
  const std::string line = nlohmann::json{{"content", delta}, {"stop", false}}.dump();
  FUZZ_CHECK(line.find('\n') == std::string::npos);
  const std::string sse = "data: " + line + "\n\n", ndjson = line + "\n";
  FUZZ_CHECK(sse.size() == ndjson.size() + 7);
}

std::vector<int32_t> generation(FuzzedDataProvider& in, const Tokenizer& tok) {
  std::vector<int32_t> ids;
  switch (in.ConsumeIntegralInRange<int>(0, 2)) {
    case 0:
      while (in.remaining_bytes() > 0 && ids.size() < 512) ids.push_back(in.ConsumeIntegralInRange<int32_t>(0, tok.n_vocab() - 1));
      break;
    case 1: ids = tok.encode(in.ConsumeRemainingBytesAsString()); break;
    default:
      for (char c : in.ConsumeRemainingBytesAsString()) {
        const int32_t id = tok.byte_id(uint8_t(c));
        if (id >= 0) ids.push_back(id);
      }
      break;
  }
  return ids;
}

// The detokenizer alone: deltas are whole characters and add up to decode().
void check_detokenizer(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  IncrementalDetokenizer detok(tok);
  std::string all;
  for (int32_t id : ids) {
    const std::string d = detok.push(id);
    FUZZ_CHECK(utf8::is_valid(d));
    FUZZ_CHECK(detok.n_bytes_held() <= 3);
    all += d;
  }
  const std::string rest = detok.flush();
  FUZZ_CHECK(utf8::is_valid(rest));
  all += rest;
  FUZZ_CHECK(all == tok.decode(ids));
  FUZZ_CHECK(detok.n_bytes_emitted() == all.size());
}

// Lines after a newline whose first non-blank character is indented less than n_indent.
bool has_dedented_line(const std::string& s, int32_t n_indent) {
  for (size_t nl = s.find('\n'); nl != std::string::npos; nl = s.find('\n', nl + 1)) {
    size_t j = nl + 1;
    while (j < s.size() && (s[j] == ' ' || s[j] == '\t')) ++j;
    if (j < s.size() && s[j] != '\n' && int64_t(j - nl - 1) < n_indent) return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::load_tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const Tokenizer& tok = fuzz::tokenizer_at(in.ConsumeIntegral<uint8_t>());
  const int32_t n_indent = in.ConsumeBool() ? in.ConsumeIntegralInRange<int32_t>(0, 8) : 0;
  std::vector<std::string> stops(in.ConsumeIntegralInRange<size_t>(0, 4));
  // Stop strings arrive in JSON, so they are valid UTF-8 (json::parse rejects anything else).
  for (auto& s : stops) s = utf8::repaired(in.ConsumeRandomLengthString(12));
  const std::vector<int32_t> ids = generation(in, tok);

  check_detokenizer(tok, ids);

  TextStream ts(&tok, stops, n_indent);
  std::string out;
  TextStream::Step last;
  size_t n_pushed = 0;
  for (int32_t id : ids) {
    ++n_pushed;
    last = ts.push(id);
    FUZZ_CHECK(utf8::is_valid(last.text));
    write_delta(last.text);
    out += last.text;
    if (last.stop) break;
  }
  if (!last.stop) {
    const std::string rest = ts.finish();
    FUZZ_CHECK(utf8::is_valid(rest));
    write_delta(rest);
    out += rest;
  }
  FUZZ_CHECK(out == ts.text());
  FUZZ_CHECK(ts.has_newline() == (out.find('\n') != std::string::npos));

  const std::string full = tok.decode(std::vector<int32_t>(ids.begin(), ids.begin() + n_pushed));
  FUZZ_CHECK(full.compare(0, out.size(), out) == 0);  // a prefix of what the tokens say
  for (const auto& w : stops)
    if (!w.empty()) FUZZ_CHECK(out.find(w) == std::string::npos);
  if (n_indent > 0) FUZZ_CHECK(!has_dedented_line(out, n_indent));
  if (last.stop && !last.stop_word.empty())
    FUZZ_CHECK(std::find(stops.begin(), stops.end(), last.stop_word) != stops.end());
  // Text left out (a stop in push, or one the flushed end completes in finish) is explained by
  // a stop string that follows, or by a dedented line after the newline the output ends with.
  if (out != full) {
    bool explained = false;
    for (const auto& w : stops) explained |= !w.empty() && full.compare(out.size(), w.size(), w) == 0;
    explained |= n_indent > 0 && !out.empty() && out.back() == '\n' &&
                 has_dedented_line(full.substr(out.size() - 1), n_indent);
    FUZZ_CHECK(explained);
  }
  if (last.stop && !last.stop_word.empty())
    FUZZ_CHECK(full.compare(out.size(), last.stop_word.size(), last.stop_word) == 0);

  // Nothing more comes out once the stream stopped.
  if (last.stop && !ids.empty()) FUZZ_CHECK(ts.push(ids.back()).text.empty() && ts.finish().empty());
  return 0;
}
