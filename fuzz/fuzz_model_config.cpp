// Fuzz target: config.json parsing (parse_model_config) and the --attention override
// (parse_attention_override + apply_attention_override). Input: the config.json text,
// optionally followed by a NUL and an override spec such as "pattern=LLLG,window=64".
//
// Findings: any exception but ModelError from the config, InvalidArgument from the override
// spec and ModelError from applying it; a config that parses but breaks validate_model_config's
// invariants; crashes, leaks and UB (e.g. in n_params or kv_bytes on extreme shapes).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "engine/errors.h"
#include "engine/model_config.h"
#include "fuzz/fuzz_util.h"

using namespace hyco;

namespace {

// What the loader and /props compute from a valid config; must hold for any that parsed.
void use_config(const ModelConfig& c) {
  validate_model_config(c, "config.json");  // the parser promised these; must not throw
  FUZZ_CHECK(int(c.layer_kinds.size()) == c.n_layers);
  FUZZ_CHECK(c.n_layers_of(LayerKind::Global) + c.n_layers_of(LayerKind::Local) == c.n_layers);
  FUZZ_CHECK(c.n_layers_of(LayerKind::Local) == 0 || c.window > 0);
  FUZZ_CHECK(c.n_params() > 0);
  FUZZ_CHECK(c.kv_bytes(4096, DType::BF16, 16) >= 0);
  FUZZ_CHECK(c.pattern_string().size() >= c.layer_kinds.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_nul(std::string_view(reinterpret_cast<const char*>(data), size), 2);
  std::optional<AttentionOverride> override_spec;
  if (parts.size() > 1) {
    try {
      override_spec = parse_attention_override(parts[1]);
      FUZZ_CHECK(!override_spec->empty());
    } catch (const InvalidArgument&) {
    }
  }
  ModelConfig c;
  try {
    c = parse_model_config(parts[0], "config.json");
  } catch (const ModelError&) {
    return 0;
  }
  use_config(c);
  if (override_spec) {
    try {
      apply_attention_override(c, *override_spec);
    } catch (const ModelError&) {
      return 0;
    }
    use_config(c);
  }
  return 0;
}
