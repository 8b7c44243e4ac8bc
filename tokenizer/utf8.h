// UTF-8 validation and repair shared by Tokenizer::decode and IncrementalDetokenizer.
// Owns the one definition of "invalid bytes become U+FFFD" (one per maximal invalid subpart,
// Unicode's recommended practice), so batch and incremental decoding always agree.
// Must not know about tokens or sentencepiece.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace hyco::utf8 {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

enum class ScanKind {
  Complete,   // a well-formed sequence of n_bytes
  Truncated,  // the n_bytes left are a valid start of a sequence that the input cuts off
  Invalid,    // the first n_bytes (>= 1) are a maximal subpart of an ill-formed sequence
};

struct Scan {
  ScanKind kind;
  size_t n_bytes;
};

// Classifies the sequence at the start of `s` (s must be non-empty).
Scan scan(std::string_view s);

bool is_valid(std::string_view s);

// Appends `in` to `out` with each maximal invalid subpart replaced by U+FFFD. When `final` is
// false, a truncated sequence at the end is left unconsumed. Returns the number of bytes of `in`
// consumed (== in.size() when final).
// NOTE: deciding each byte only once it is determined makes repair of a stream in pieces give
// the same result as repair of the whole stream.
size_t append_repaired(std::string_view in, bool final, std::string& out);

std::string repaired(std::string_view in);

}  // namespace hyco::utf8
