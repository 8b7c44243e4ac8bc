// UTF-8 validation and repair (Unicode 15, table 3-7 "well-formed UTF-8 byte sequences").
// Owns only byte classification; see utf8.h for the repair rule.
#include "tokenizer/utf8.h"

#include <cstdint>

namespace hyco::utf8 {

Scan scan(std::string_view s) {
  const auto b0 = static_cast<uint8_t>(s[0]);
  if (b0 < 0x80) return {ScanKind::Complete, 1};
  size_t n = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 == 0xE0) {
    n = 3, lo = 0xA0;
  } else if (b0 >= 0xE1 && b0 <= 0xEC) {
    n = 3;
  } else if (b0 == 0xED) {
    n = 3, hi = 0x9F;  // excludes surrogates
  } else if (b0 >= 0xEE && b0 <= 0xEF) {
    n = 3;
  } else if (b0 == 0xF0) {
    n = 4, lo = 0x90;
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    n = 4;
  } else if (b0 == 0xF4) {
    n = 4, hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return {ScanKind::Invalid, 1};  // continuation byte, C0/C1 (overlong) or F5..FF
  }
  for (size_t k = 1; k < n; ++k) {
    if (k >= s.size()) return {ScanKind::Truncated, k};
    const auto b = static_cast<uint8_t>(s[k]);
    const uint8_t min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xBF;
    if (b < min || b > max) return {ScanKind::Invalid, k};
  }
  return {ScanKind::Complete, n};
}

bool is_valid(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const Scan sc = scan(s.substr(i));
    if (sc.kind != ScanKind::Complete) return false;
    i += sc.n_bytes;
  }
  return true;
}

size_t append_repaired(std::string_view in, bool final, std::string& out) {
  size_t i = 0;
  while (i < in.size()) {
    const Scan sc = scan(in.substr(i));
    if (sc.kind == ScanKind::Complete) {
      out.append(in.substr(i, sc.n_bytes));
    } else if (sc.kind == ScanKind::Truncated && !final) {
      return i;
    } else {
      out.append(kReplacementChar);  // invalid, or truncated at the very end of the stream
    }
    i += sc.n_bytes;
  }
  return i;
}

std::string repaired(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  append_repaired(in, true, out);
  return out;
}

}  // namespace hyco::utf8
