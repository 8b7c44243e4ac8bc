// Engine option flags and their translation to engine structs. See engine_options.h.
#include "config/engine_options.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "engine/errors.h"

#ifndef HYCO_SOURCE_MODELS_DIR
#define HYCO_SOURCE_MODELS_DIR ""
#endif
#ifndef HYCO_INSTALL_MODELS_DIR
#define HYCO_INSTALL_MODELS_DIR "/usr/local/share/hyco/models"
#endif

namespace hyco {

namespace {
CLI::Validator number_in(double lo, double hi, bool open_low) {
  std::ostringstream desc;
  desc << "FLOAT in " << (open_low ? "(" : "[") << lo << ", " << hi << "]";
  return CLI::Validator(
      [lo, hi, open_low, d = desc.str()](std::string& s) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(s, v) || !std::isfinite(v) || v > hi || (open_low ? v <= lo : v < lo))
          return "Value " + s + " is not a " + d;
        return {};
      },
      desc.str());
}
}  // namespace

CLI::Validator finite_range(double lo, double hi) { return number_in(lo, hi, false); }
CLI::Validator finite_range_open_low(double lo, double hi) { return number_in(lo, hi, true); }
const CLI::Validator kNotEmpty(
    [](std::string& s) -> std::string { return s.empty() ? std::string("must not be empty") : std::string(); }, "TEXT");

void add_engine_options(CLI::App& app, EngineOptions& o) {
  app.add_option("-m,--model", o.model, "Model directory (HF layout); default: the shipped model")
      ->envname("HYCO_MODEL");
  app.add_option("--device", o.device, "Compute device: auto, cpu or cuda")
      ->envname("HYCO_DEVICE")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("-t,--threads", o.threads, "CPU threads (0: one per core)")
      ->envname("HYCO_THREADS")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--attention", o.attention,
                 "Override the attention pattern, e.g. 'pattern=LLLG,window=4096,sinks=4', 'global', 'local,window=512'")
      ->envname("HYCO_ATTENTION");
  app.add_option("--weights", o.weights, "Matrix dtype on the device: auto, f32, bf16, f16, q8 (CPU: 8-bit weights and activations)")
      ->envname("HYCO_WEIGHTS")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "f16", "q8"}))
      ->capture_default_str();
  app.add_option("--kv-dtype", o.kv_dtype,
                 "KV cache dtype: auto, f32, bf16, f16, q8 (8-bit with a scale per head and position; CPU only)")
      ->envname("HYCO_KV_DTYPE")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "f16", "q8"}))
      ->capture_default_str();
  app.add_option("-c,--ctx", o.ctx, "Max tokens per sequence (0: the model's, at most 32768)")
      ->envname("HYCO_CTX")
      ->check(CLI::Range(0, 1 << 24))
      ->capture_default_str();
  app.add_option("--kv-rollback", o.kv_rollback, "Tokens a cached sequence can be rolled back by (local-layer ring reserve R)")
      ->envname("HYCO_KV_ROLLBACK")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--kv-block", o.kv_block, "Positions per KV block of global layers")
      ->envname("HYCO_KV_BLOCK")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  app.add_option("--kv-memory", o.kv_memory_mib, "KV cache budget in MiB (0: running sequences at full context, cached ones up to 4096 tokens)")
      ->envname("HYCO_KV_MEMORY")
      ->check(finite_range(0.0, 1e9))
      ->capture_default_str();
}

std::string default_model_dir() {
  namespace fs = std::filesystem;
  const char* name = "hyco-rust";
  for (std::string base : {std::string(HYCO_SOURCE_MODELS_DIR), std::string(HYCO_INSTALL_MODELS_DIR)}) {
    if (base.empty()) continue;
    fs::path p = fs::path(base) / name;
    if (fs::exists(p / "config.json")) return p.string();
  }
  return (fs::path(HYCO_SOURCE_MODELS_DIR) / name).string();
}

std::optional<DType> parse_dtype_option(const std::string& v, const char* flag, bool allow_q8) {
  if (v == "auto") return std::nullopt;
  if (v == "f32") return DType::F32;
  if (v == "bf16") return DType::BF16;
  if (v == "f16") return DType::F16;
  if (v == "q8" && allow_q8) return DType::Q8;
  throw InvalidArgument(std::string(flag) + " '" + v + "' is not one of auto, f32, bf16, f16" + (allow_q8 ? ", q8" : ""));
}

LoadOptions to_load_options(const EngineOptions& o) {
  LoadOptions lo;
  if (!o.attention.empty()) lo.attention = parse_attention_override(o.attention);
  lo.matrix_dtype = parse_dtype_option(o.weights, "--weights", true);
  return lo;
}

KvCacheConfig to_kv_config(const EngineOptions& o, const ModelConfig& m, DType default_kv, int n_seqs) {
  KvCacheConfig k;
  k.dtype = parse_dtype_option(o.kv_dtype, "--kv-dtype", true).value_or(default_kv);
  k.n_seqs = n_seqs;
  k.n_ctx = o.ctx > 0 ? o.ctx : (m.n_ctx_train > 0 ? std::min(m.n_ctx_train, 32768) : 4096);
  k.rollback = o.kv_rollback;
  k.block_size = o.kv_block;
  k.memory_bytes = int64_t(o.kv_memory_mib * 1024.0 * 1024.0);
  return k;
}

}  // namespace hyco
