// `hyco info`: a model's shape, parameter count, attention pattern and KV bytes per token.
#include <cstdio>
#include <filesystem>
#include <string>

#include "cli/commands.h"
#include "engine/errors.h"
#include "engine/model_config.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "tokenizer/fim.h"
#include "tokenizer/tokenizer.h"

namespace hyco {

namespace {
std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.2f %s" : "%.0f %s", b, units[u]);
  return buf;
}
}  // namespace

int run_info(const InfoArgs& a) {
  std::string dir = a.preset.empty() ? (a.engine.model.empty() ? default_model_dir() : a.engine.model) : "";
  ModelConfig c = a.preset.empty() ? load_model_config(dir) : load_model_config(preset_path(a.preset));
  if (!a.engine.attention.empty()) apply_attention_override(c, parse_attention_override(a.engine.attention));
  std::printf("model         %s\n", a.preset.empty() ? dir.c_str() : ("preset " + a.preset).c_str());
  std::printf("architecture  %s (%s)\n", c.architecture.c_str(), c.family.c_str());
  std::printf("parameters    %.2f M\n", double(c.n_params()) / 1e6);
  std::printf("vocab         %d\n", c.n_vocab);
  std::printf("hidden        %d, %d layers, SwiGLU %d\n", c.d_model, c.n_layers, c.d_ff);
  std::printf("attention     %d heads x %d (width %d), %d kv heads (width %d)%s%s\n", c.n_heads, c.head_dim,
              c.q_width(), c.n_kv_heads, c.kv_width(), c.qkv_bias ? ", qkv bias" : "", c.o_bias ? ", o bias" : "");
  std::printf("pattern       %s  (%d local, %d global)\n", c.pattern_string().c_str(), c.n_layers_of(LayerKind::Local),
              c.n_layers_of(LayerKind::Global));
  if (c.n_layers_of(LayerKind::Local)) std::printf("window        %d, %d attention sinks\n", c.window, c.n_sinks);
  std::printf("rope          theta %g, scale %g; rms eps %g; tied embeddings %s\n", c.rope_theta, c.rope_scale,
              double(c.rms_eps), c.tie_embeddings ? "yes" : "no");
  if (c.n_ctx_train) std::printf("context       %d (max_position_embeddings)\n", c.n_ctx_train);
  // auto: bf16 (f32 only for f32 matrices on the CPU, which needs the backend to tell).
  const DType kv = parse_dtype_option(a.engine.kv_dtype, "--kv-dtype", true).value_or(DType::BF16);
  const char* kv_name = dtype_name(kv).data();
  std::printf("KV per token  %s at %s in global layers; local layers hold at most %d positions\n",
              human_bytes(double(c.kv_position_bytes(kv) * c.n_layers_of(LayerKind::Global))).c_str(), kv_name,
              c.window + c.n_sinks + a.engine.kv_rollback);
  std::printf("KV per sequence (%s, rollback reserve %d):\n", kv_name, a.engine.kv_rollback);
  for (int64_t n : {1024, 4096, 8192, 16384, 32768, 131072}) {
    int64_t b = c.kv_bytes(n, kv, a.engine.kv_rollback);
    std::printf("  %7lld tokens  %12s  (%s/token)\n", (long long)n, human_bytes(double(b)).c_str(),
                human_bytes(double(b) / double(n)).c_str());
  }
  if (a.preset.empty()) {
    // What `serve` and `complete` would refuse, refused here too: tensors that do not match the
    // config, a tokenizer that does not load or does not fit the vocabulary.
    TensorStore s = TensorStore::open_dir(dir);
    Model::check_tensors(c, s, dir);
    std::printf("weights       %s in %zu tensors (%s), shapes match config.json\n",
                human_bytes(double(s.total_bytes())).c_str(), s.tensors().size(), s.describe().c_str());
    const std::string tok_path = (std::filesystem::path(dir) / "tokenizer.model").string();
    auto tok = Tokenizer::load(tok_path);
    if (tok->n_vocab() > c.n_vocab)
      throw ModelError(dir + ": tokenizer has " + std::to_string(tok->n_vocab()) + " pieces but the model " +
                       std::to_string(c.n_vocab));
    const FimTemplate fim = detect_fim(*tok);
    std::printf("tokenizer     %d pieces, FIM %s\n", tok->n_vocab(), fim_family_name(fim.family));
  }
  return 0;
}

}  // namespace hyco
