// Fuzz target: the tokenizer on arbitrary bytes, with every vocabulary of fuzz_util.h: encode →
// decode round trip, token_bytes/piece for ids read from the input, FIM and plain prompts from
// fuzzed prefix/suffix/extra files. (The ModelProto reader has its own target, fuzz_spm_proto.)
// Input: any bytes. FIM fields are the NUL-separated parts: prefix, suffix, filename, repo name,
// then (filename, text) pairs of extra files.
//
// Invariants: ids in range and the same as a fresh encoding (encode() reuses recent ones); decode
// is valid UTF-8 and, with byte fallback, equals the input with invalid UTF-8 repaired;
// out-of-range ids throw TokenizerError and nothing else does; every FIM marker appears exactly
// as often as the template inserts it (text cannot inject markers).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "tokenizer/fim.h"
#include "tokenizer/utf8.h"

using namespace hyco;

namespace {

void check_ids(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < tok.n_vocab());
}

void check_round_trip(const Tokenizer& tok, std::string_view s) {
  const std::vector<int32_t> ids = tok.encode(s);
  check_ids(tok, ids);
  // encode() may reuse an earlier input's ids (inputs in a run share starts): never different.
  FUZZ_CHECK(ids == tok.encode_uncached(s));
  const std::string back = tok.decode(ids);
  FUZZ_CHECK(utf8::is_valid(back));
  if (tok.has_byte_fallback()) FUZZ_CHECK(back == utf8::repaired(s));

  const std::vector<int32_t> plain = build_plain_prompt(tok, s, true);
  check_ids(tok, plain);
  if (tok.has_byte_fallback()) {
    const bool bos = tok.bos_id() >= 0;
    FUZZ_CHECK(!bos || (!plain.empty() && plain[0] == tok.bos_id()));
    const std::string lead = tok.model_adds_dummy_prefix() && !s.empty() ? " " : "";
    FUZZ_CHECK(tok.decode(plain) == utf8::repaired(lead + std::string(s)));
  }
}

// Ids read from the input, in and out of range.
void check_ids_from_bytes(const Tokenizer& tok, std::string_view s) {
  for (size_t i = 0; i + 4 <= s.size() && i < 64; i += 4) {
    int32_t id;
    std::memcpy(&id, s.data() + i, 4);
    for (int32_t x : {id, int32_t(uint32_t(id) % uint32_t(tok.n_vocab()))}) {
      const bool ok = x >= 0 && x < tok.n_vocab();
      try {
        const std::string& b = tok.token_bytes(x);
        (void)tok.piece(x);
        FUZZ_CHECK(!(tok.is_control(x) && !b.empty()));
        FUZZ_CHECK(!tok.is_byte(x) || b.size() == 1);
        FUZZ_CHECK(ok);
      } catch (const TokenizerError&) {
        FUZZ_CHECK(!ok);
      }
    }
  }
}

void check_fim(const Tokenizer& tok, std::string_view s) {
  const FimTemplate t = detect_fim(tok);
  if (!t.supported()) return;
  const auto parts = fuzz::split_nul(s, 12);
  auto part = [&](size_t i) { return i < parts.size() ? parts[i] : std::string_view(); };
  std::vector<ExtraChunk> extra;
  for (size_t i = 4; i < parts.size(); i += 2) extra.push_back({std::string(part(i)), std::string(part(i + 1))});

  const std::vector<int32_t> ids = build_fim_prompt(tok, t, part(0), part(1), extra, part(2), part(3));
  check_ids(tok, ids);
  auto count = [&](std::optional<int32_t> id) {
    return id && *id >= 0 ? std::count(ids.begin(), ids.end(), *id) : 0;
  };
  FUZZ_CHECK(!ids.empty() && ids.back() == t.middle_id);
  FUZZ_CHECK(count(t.prefix_id) == 1 && count(t.suffix_id) == 1 && count(t.middle_id) == 1);
  const bool multi_file = !extra.empty() && (t.family == FimFamily::Qwen || t.family == FimFamily::StarCoder);
  if (t.file_sep_id) FUZZ_CHECK(count(t.file_sep_id) == (multi_file ? ptrdiff_t(extra.size() + 1) : 0));
  if (t.repo_name_id) FUZZ_CHECK(count(t.repo_name_id) == (multi_file ? 1 : 0));
  if (t.pad_id) FUZZ_CHECK(count(t.pad_id) == 0);
  if (tok.eos_id() >= 0) FUZZ_CHECK(count(tok.eos_id()) == 0);
  if (tok.bos_id() >= 0) FUZZ_CHECK(count(tok.bos_id()) == (t.add_bos ? 1 : 0));

  const std::vector<int32_t> stops = stop_ids(t, tok);
  check_ids(tok, stops);
  FUZZ_CHECK(std::is_sorted(stops.begin(), stops.end()));
  FUZZ_CHECK(std::adjacent_find(stops.begin(), stops.end()) == stops.end());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::load_tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view s(reinterpret_cast<const char*>(data), size);
  for (size_t i = 0; i < fuzz::kNumTokenizers; ++i) {
    const Tokenizer& tok = fuzz::tokenizer_at(i);
    check_round_trip(tok, s);
    check_ids_from_bytes(tok, s);
    check_fim(tok, s);
  }
  return 0;
}
