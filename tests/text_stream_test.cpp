// Text deltas of a generation: stop strings split across tokens are never sent partially,
// UTF-8 characters are never split, n_indent cuts as llama.cpp defines it. Uses a tiny trained
// sentencepiece model and feeds text one character (or byte) per token.
#include "engine/text_stream.h"
#include "tests/catch.hpp"
#include "tests/tokenizer_models.h"

using namespace hyco;

namespace {

// One token per character, so every stop string is split across tokens.
std::vector<int32_t> per_char(const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < text.size();) {
    size_t n = 1;
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0xF0) n = 4;
    else if (c >= 0xE0) n = 3;
    else if (c >= 0xC0) n = 2;
    for (int32_t id : tok.encode(text.substr(i, n))) ids.push_back(id);
    i += n;
  }
  return ids;
}

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

struct Run {
  std::vector<std::string> deltas;
  std::string all;
  bool stopped = false;
  std::string word;
};

Run run(const std::string& text, std::vector<std::string> stops, int n_indent = 0) {
  const Tokenizer& tok = test::tokenizer("hyco");
  TextStream ts(&tok, std::move(stops), n_indent);
  Run r;
  for (int32_t id : per_char(tok, text)) {
    auto s = ts.push(id);
    r.deltas.push_back(s.text);
    r.all += s.text;
    if (s.stop) {
      r.stopped = true;
      r.word = s.stop_word;
      return r;
    }
  }
  std::string rest = ts.finish();
  r.deltas.push_back(rest);
  r.all += rest;
  return r;
}

}  // namespace

TEST_CASE("a stop string split across tokens ends the text before it and is never sent", "[text]") {
  Run r = run("let x = 1;\n\nfn main() {}", {"\n\n", "fn"});
  CHECK(r.stopped);
  CHECK(r.word == "\n\n");
  CHECK(r.all == "let x = 1;");
  for (const auto& d : r.deltas) CHECK(d.find('\n') == std::string::npos);
}

TEST_CASE("a started stop string that does not complete is sent once it cannot", "[text]") {
  Run r = run("a <en d> b", {"<end>"});
  CHECK_FALSE(r.stopped);
  CHECK(r.all == "a <en d> b");
  // "<en" was held back until the space showed it is not "<end>".
  CHECK(r.deltas[2].empty());
  // A stop-string prefix at the very end is real text.
  Run tail = run("x <en", {"<end>"});
  CHECK(tail.all == "x <en");
  CHECK(tail.deltas.back() == "<en");
}

TEST_CASE("the earliest of several stop strings wins, found inside longer text", "[text]") {
  Run r = run("abc STOP def END", {"END", "STOP"});
  CHECK(r.word == "STOP");
  CHECK(r.all == "abc ");
}

TEST_CASE("deltas never split a UTF-8 character, also next to stop strings", "[text]") {
  const std::string crab = test::kEmoji;  // only expressible as 4 byte tokens in the tiny vocab
  Run r = run("é" + crab + "ü" + crab + "x", {crab + "x"});
  CHECK(r.stopped);
  CHECK(r.all == "é" + crab + "ü");
  for (const auto& d : r.deltas) CHECK(valid_utf8(d));
}

TEST_CASE("n_indent ends the output at a later line indented less, as llama.cpp does", "[text]") {
  // The first line (the rest of the cursor's line) is never judged.
  Run r = run("x) {\n        body();\n    }\n", {}, 8);
  CHECK(r.stopped);
  CHECK(r.all == "x) {\n        body();\n");
  // Blank lines do not count; a dedented line after them does.
  Run b = run("a\n\n  b", {}, 4);
  CHECK(b.all == "a\n\n");
  // Lines indented enough pass.
  Run ok = run("a\n    b\n    c", {}, 4);
  CHECK_FALSE(ok.stopped);
  CHECK(ok.all == "a\n    b\n    c");
  // The blanks opening a line are held until its first character decides.
  for (const auto& d : b.deltas) CHECK(d.find(' ') == std::string::npos);
}
