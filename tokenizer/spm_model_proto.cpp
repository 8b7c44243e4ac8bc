// Protobuf wire-format walk over sentencepiece's ModelProto (field numbers from
// sentencepiece_model.proto: ModelProto.trainer_spec = 2, normalizer_spec = 3;
// TrainerSpec.model_type = 3; NormalizerSpec.precompiled_charsmap = 2, add_dummy_prefix = 3,
// remove_extra_whitespaces = 4). Validates framing only; semantics are left to sentencepiece.
#include "tokenizer/spm_model_proto.h"

#include <cstdint>
#include <vector>

namespace hyco {
namespace {

constexpr uint32_t kModelTrainerSpec = 2;
constexpr uint32_t kModelNormalizerSpec = 3;
constexpr uint32_t kTrainerModelType = 3;
constexpr uint32_t kNormPrecompiledCharsmap = 2;
constexpr uint32_t kNormAddDummyPrefix = 3;
constexpr uint32_t kNormRemoveExtraWhitespaces = 4;

struct Field {
  uint32_t number;
  uint32_t wire_type;
  uint64_t varint;          // value for wire type 0
  std::string_view bytes;   // payload for wire type 2
  std::string_view raw;     // the whole field: tag and value
};

uint64_t read_varint(std::string_view s, size_t& pos) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos >= s.size()) throw SpmModelProtoError("truncated varint");
    const auto b = static_cast<uint8_t>(s[pos++]);
    v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return v;
  }
  throw SpmModelProtoError("varint longer than 10 bytes");
}

std::vector<Field> parse_fields(std::string_view s) {
  std::vector<Field> fields;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    const uint64_t tag = read_varint(s, pos);
    Field f{static_cast<uint32_t>(tag >> 3), static_cast<uint32_t>(tag & 7), 0, {}, {}};
    if (f.number == 0 || (tag >> 3) > 0x1FFFFFFF) throw SpmModelProtoError("bad field number");
    size_t n_fixed = 0;
    switch (f.wire_type) {
      case 0: f.varint = read_varint(s, pos); break;
      case 1: n_fixed = 8; break;
      case 5: n_fixed = 4; break;
      case 2: {
        const uint64_t len = read_varint(s, pos);
        if (len > s.size() - pos) throw SpmModelProtoError("length past end of data");
        f.bytes = s.substr(pos, len);
        pos += len;
        break;
      }
      default: throw SpmModelProtoError("unsupported wire type " + std::to_string(f.wire_type));
    }
    if (n_fixed > s.size() - pos) throw SpmModelProtoError("truncated fixed-width field");
    pos += n_fixed;
    f.raw = s.substr(start, pos - start);
    fields.push_back(f);
  }
  return fields;
}

void append_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// NOTE: protobuf merges repeated occurrences of an embedded message field, which is the same as
// parsing their payloads concatenated; scalars take the last occurrence.
std::string merged_message(const std::vector<Field>& model_fields, uint32_t number, const char* name) {
  std::string spec;
  for (const Field& f : model_fields) {
    if (f.number == number) {
      if (f.wire_type != 2) throw SpmModelProtoError(std::string(name) + " is not a message");
      spec.append(f.bytes);
    }
  }
  return spec;
}

std::string merged_normalizer_spec(const std::vector<Field>& model_fields) {
  return merged_message(model_fields, kModelNormalizerSpec, "normalizer_spec");
}

}  // namespace

bool is_bpe_model(std::string_view serialized) {
  const std::string spec = merged_message(parse_fields(serialized), kModelTrainerSpec, "trainer_spec");
  uint64_t type = 1;  // UNIGRAM, the protobuf default
  for (const Field& f : parse_fields(spec))
    if (f.number == kTrainerModelType && f.wire_type == 0) type = f.varint;
  return type == 2;  // BPE
}

SpmNormalizerFlags read_normalizer_flags(std::string_view serialized) {
  const std::vector<Field> fields = parse_fields(serialized);
  const std::string spec = merged_normalizer_spec(fields);
  SpmNormalizerFlags flags;
  for (const Field& f : parse_fields(spec)) {
    if (f.number == kNormPrecompiledCharsmap && f.wire_type == 2) flags.has_charsmap = !f.bytes.empty();
    if (f.wire_type != 0) continue;
    if (f.number == kNormAddDummyPrefix) flags.add_dummy_prefix = f.varint != 0;
    if (f.number == kNormRemoveExtraWhitespaces) flags.remove_extra_whitespaces = f.varint != 0;
  }
  return flags;
}

std::string without_dummy_prefix(std::string_view serialized) {
  const std::vector<Field> fields = parse_fields(serialized);
  const std::string spec = merged_normalizer_spec(fields);
  std::string new_spec;
  for (const Field& f : parse_fields(spec)) {
    if (f.number != kNormAddDummyPrefix) new_spec.append(f.raw);
  }
  append_varint(new_spec, (kNormAddDummyPrefix << 3) | 0);
  append_varint(new_spec, 0);

  std::string out;
  out.reserve(serialized.size() + 8);
  for (const Field& f : fields) {
    if (f.number != kModelNormalizerSpec) out.append(f.raw);
  }
  append_varint(out, (kModelNormalizerSpec << 3) | 2);
  append_varint(out, new_spec.size());
  out.append(new_spec);
  return out;
}

}  // namespace hyco
