// The text side of one generation: token ids → UTF-8 deltas, with stop strings (never emitted
// partially) and llama.cpp's n_indent rule applied. Knows nothing of HTTP or batching.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace hyco {

class TextStream {
 public:
  // tok may be null (token-only generation: no text, no stop strings, no n_indent).
  TextStream(const Tokenizer* tok, std::vector<std::string> stop_strings, int32_t n_indent);

  struct Step {
    std::string text;               // may be emitted now
    bool stop = false;              // a stop condition on the text was met: generation ends
    std::string stop_word;          // the stop string found (empty for n_indent)
  };
  // Adds one generated token.
  Step push(int32_t token);
  // End of generation: the text still held back (an unfinished stop-string prefix is real text).
  std::string finish();

  bool has_newline() const { return has_newline_; }
  const std::string& text() const { return text_; }  // everything emitted so far

 private:
  Step emit_safe();

  std::optional<IncrementalDetokenizer> detok_;
  std::vector<std::string> stops_;
  int32_t n_indent_;
  std::string pending_;   // decoded, not yet emitted
  std::string text_;      // emitted
  bool has_newline_ = false;
  bool stopped_ = false;
};

}  // namespace hyco
