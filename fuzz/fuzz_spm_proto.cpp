// Fuzz target: the sentencepiece ModelProto reader/rewriter of tokenizer/spm_model_proto.h on
// arbitrary bytes (tokenizer.model files come from the model directory a user points at).
// Framing errors must throw SpmModelProtoError; a model that reads can be rewritten without the
// dummy prefix, and the rewrite reads back with add_dummy_prefix off and the other flag kept.
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz/fuzz_util.h"
#include "tokenizer/spm_model_proto.h"

using namespace hyco;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view s(reinterpret_cast<const char*>(data), size);
  SpmNormalizerFlags flags;
  try {
    flags = read_normalizer_flags(s);
  } catch (const SpmModelProtoError&) {
    return 0;
  }
  const std::string patched = without_dummy_prefix(s);
  const SpmNormalizerFlags after = read_normalizer_flags(patched);
  FUZZ_CHECK(!after.add_dummy_prefix);
  FUZZ_CHECK(after.remove_extra_whitespaces == flags.remove_extra_whitespaces);
  // Idempotent: rewriting the rewrite changes nothing.
  FUZZ_CHECK(without_dummy_prefix(patched) == patched);
  return 0;
}
