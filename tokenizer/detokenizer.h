// IncrementalDetokenizer: turns a stream of token ids into text deltas for streaming responses.
// Owns holding back the bytes of a UTF-8 character split across tokens; never returns a broken
// character. Does not know about stop strings or HTTP (the scheduler and server do).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace hyco {

class IncrementalDetokenizer {
 public:
  // `tok` must outlive this object.
  explicit IncrementalDetokenizer(const Tokenizer& tok) : tok_(&tok) {}

  // Text completed by this token (possibly empty): whole UTF-8 characters only. Bytes that can
  // only become U+FFFD are emitted as U+FFFD at once; a valid but incomplete trailing sequence
  // is held back. Throws TokenizerError on an out-of-range id (state unchanged).
  // NOTE: concatenating all deltas and flush() equals tok.decode(all ids), always.
  std::string push(int32_t id);

  // Whatever is held back, as U+FFFD (it can only be an incomplete sequence); resets the hold.
  std::string flush();

  size_t n_bytes_emitted() const { return n_bytes_emitted_; }
  size_t n_bytes_held() const { return held_.size(); }

 private:
  const Tokenizer* tok_;
  std::string held_;  // at most 3 bytes: the start of a sequence not yet complete
  size_t n_bytes_emitted_ = 0;
};

}  // namespace hyco
