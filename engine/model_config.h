// The shape of a decoder model (from a Hugging Face config.json) and its attention pattern.
// Owns parsing and validation of config.json and of the `--attention` override; no weights here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/dtype.h"

namespace hyco {

enum class LayerKind : uint8_t { Global, Local };

struct ModelConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  std::string family;        // "llama", "mistral", "qwen2"
  int n_vocab = 0;
  int d_model = 0;     // hidden_size
  int d_ff = 0;        // intermediate_size (SwiGLU)
  int n_layers = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads (GQA)
  int head_dim = 0;
  float rms_eps = 1e-6f;
  double rope_theta = 10000.0;
  double rope_scale = 1.0;  // linear position scaling (rope_scaling.type == "linear")
  int n_ctx_train = 0;      // max_position_embeddings
  bool tie_embeddings = false;
  bool qkv_bias = false;  // q/k/v projections have a bias (Qwen2; Llama attention_bias)
  bool o_bias = false;    // o_proj has a bias (Llama attention_bias)
  int window = 0;         // W of local layers; 0 when the model has none
  int n_sinks = 0;        // S: attention-sink tokens of local layers (key "attention_sinks")
  std::vector<LayerKind> layer_kinds;
  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;
  DType dtype = DType::F32;  // torch_dtype, informational

  int q_width() const { return n_heads * head_dim; }
  int kv_width() const { return n_kv_heads * head_dim; }
  int qkv_width() const { return q_width() + 2 * kv_width(); }
  int n_layers_of(LayerKind k) const;
  // Parameters, counting a tied embedding once.
  int64_t n_params() const;
  // Bytes of K and V of one position in one layer in a cache of `dtype` (a Q8 cache adds one f32
  // scale per kv head to each).
  int64_t kv_position_bytes(DType dtype) const;
  // Bytes of K and V cached per sequence at context length n_ctx: global layers hold n_ctx
  // positions, local layers min(n_ctx, S + W + reserve).
  int64_t kv_bytes(int64_t n_ctx, DType dtype, int reserve = 0) const;
  // "LLLG LLLG" — one letter per layer, grouped by four.
  std::string pattern_string() const;
};

// Parses config.json text. `source` names the file in error messages. Throws ModelError.
ModelConfig parse_model_config(std::string_view json_text, const std::string& source);
// Reads and parses `<dir>/config.json` (or a file path). Throws ModelError.
ModelConfig load_model_config(const std::string& path);
// Re-checks every invariant the engine relies on. Throws ModelError naming `source`.
void validate_model_config(const ModelConfig& c, const std::string& source);

// Runtime override of the attention pattern, e.g. "pattern=LLLG,window=4096,sinks=4",
// "global", "local,window=512". Fields left out keep the model's value.
struct AttentionOverride {
  std::vector<LayerKind> pattern;  // repeated over the layers; empty = keep
  std::optional<int> window;
  std::optional<int> sinks;
  bool empty() const { return pattern.empty() && !window && !sinks; }
};
// Throws InvalidArgument with a message that names `flag` and says which part is wrong.
AttentionOverride parse_attention_override(std::string_view spec, std::string_view flag = "--attention");
// Applies it; throws ModelError when the result is invalid (e.g. local layers without a window).
void apply_attention_override(ModelConfig& c, const AttentionOverride& o);

}  // namespace hyco
