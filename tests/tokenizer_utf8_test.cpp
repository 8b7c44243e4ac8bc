// Unit tests of UTF-8 repair (tokenizer/utf8.h) against the examples of the Unicode standard
// (chapter 3, "U+FFFD substitution of maximal subparts").
#include "tests/catch.hpp"
#include "tokenizer/utf8.h"

#include <string>

using namespace hyco;

namespace {
const std::string kFffd = "\xEF\xBF\xBD";
}

TEST_CASE("each maximal invalid subpart becomes one U+FFFD, as in Unicode table 3-8") {
  // 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64 -> a FFFD FFFD FFFD b FFFD c FFFD FFFD d
  const std::string in = "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64";
  CHECK(utf8::repaired(in) == "a" + kFffd + kFffd + kFffd + "b" + kFffd + "c" + kFffd + kFffd + "d");
}

TEST_CASE("surrogates, overlongs and code points above U+10FFFF are invalid byte by byte") {
  CHECK(utf8::repaired("\xED\xA0\x80") == kFffd + kFffd + kFffd);  // U+D800
  CHECK(utf8::repaired("\xC0\xAF") == kFffd + kFffd);              // overlong '/'
  CHECK(utf8::repaired("\xE0\x80\xAF") == kFffd + kFffd + kFffd);  // overlong '/'
  CHECK(utf8::repaired("\xF4\x90\x80\x80") == kFffd + kFffd + kFffd + kFffd);  // U+110000
  CHECK(utf8::repaired("\xF5") == kFffd);
  CHECK_FALSE(utf8::is_valid("\xED\xA0\x80"));
}

TEST_CASE("well-formed text of every sequence length passes unchanged") {
  const std::string s = "a\xC2\xA9\xE2\x96\x81\xED\x9F\xBF\xEF\xBF\xBF\xF0\x9F\xA6\x80\xF4\x8F\xBF\xBF";
  CHECK(utf8::is_valid(s));
  CHECK(utf8::repaired(s) == s);
  CHECK(utf8::is_valid(std::string("\0", 1)));
}

TEST_CASE("a truncated sequence is held back unless the stream is final") {
  std::string out;
  const std::string in = "ab\xF0\x9F\xA6";
  CHECK(utf8::append_repaired(in, false, out) == 2);
  CHECK(out == "ab");
  out.clear();
  CHECK(utf8::append_repaired(in, true, out) == in.size());
  CHECK(out == "ab" + kFffd);
  // A truncated sequence followed by a byte that cannot continue it is decided at once.
  out.clear();
  CHECK(utf8::append_repaired("\xF0\x9F" "a", false, out) == 3);
  CHECK(out == kFffd + "a");
}
