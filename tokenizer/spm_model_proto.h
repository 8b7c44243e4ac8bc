// Minimal reader/rewriter of a serialized sentencepiece ModelProto (protobuf wire format), for
// the two things the public sentencepiece API does not expose: whether the model adds a dummy
// prefix space, and a copy of the model with that switched off. Debian ships no
// sentencepiece_model.pb.h, so this parses the wire format itself; it must not interpret pieces.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace hyco {

struct SpmModelProtoError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct SpmNormalizerFlags {
  bool add_dummy_prefix = true;          // NormalizerSpec field 3, protobuf default true
  bool remove_extra_whitespaces = true;  // NormalizerSpec field 4, protobuf default true
  bool has_charsmap = false;             // NormalizerSpec field 2 non-empty: a mapping (NFKC...)
};

// Throws SpmModelProtoError when `serialized` is not well-formed protobuf.
SpmNormalizerFlags read_normalizer_flags(std::string_view serialized);

// Whether trainer_spec.model_type is BPE (unigram is the default). Throws like the above.
bool is_bpe_model(std::string_view serialized);

// The same model with normalizer_spec.add_dummy_prefix = false; every other byte keeps its meaning.
std::string without_dummy_prefix(std::string_view serialized);

}  // namespace hyco
