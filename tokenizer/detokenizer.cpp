// IncrementalDetokenizer: token bytes in, whole UTF-8 characters out (see detokenizer.h).
// Repair rules live in utf8.cpp so that this and Tokenizer::decode cannot disagree.
#include "tokenizer/detokenizer.h"

#include "tokenizer/utf8.h"

namespace hyco {

std::string IncrementalDetokenizer::push(int32_t id) {
  held_ += tok_->token_bytes(id);
  std::string out;
  const size_t n_used = utf8::append_repaired(held_, /*final=*/false, out);
  held_.erase(0, n_used);
  n_bytes_emitted_ += out.size();
  return out;
}

std::string IncrementalDetokenizer::flush() {
  std::string out;
  utf8::append_repaired(held_, /*final=*/true, out);
  held_.clear();
  n_bytes_emitted_ += out.size();
  return out;
}

}  // namespace hyco
