// Engine options shared by every subcommand (model, device, threads, attention override, KV
// cache): the typed struct, its CLI flags with HYCO_* env vars, and validation into engine types.
// The only place that reads environment variables.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "engine/dtype.h"
#include "engine/kv_cache.h"
#include "engine/model.h"

namespace hyco {

struct EngineOptions {
  std::string model;            // model directory; empty = the shipped default model
  std::string device = "auto";  // auto | cpu | cuda
  int threads = 0;              // CPU threads; 0 = one per core
  std::string attention;        // --attention override spec; empty = the model's pattern
  std::string weights = "auto"; // matrix dtype on the device: auto | f32 | bf16 | f16 | q8
  std::string kv_dtype = "auto";  // auto | f32 | bf16 | f16 | q8
  int ctx = 0;                  // max positions per sequence; 0 = the model's, capped at 32768
  int kv_rollback = 256;        // R of the local rings
  int kv_block = 64;            // positions per global block
  double kv_memory_mib = 0;     // KV budget; 0 = enough for every sequence at full context
};

// A number in [lo, hi] that is finite: CLI::Range alone lets NaN through (every comparison
// with it is false), and "--timeout nan" cancelled every completion at once.
CLI::Validator finite_range(double lo, double hi);
// The same with lo excluded: (lo, hi].
CLI::Validator finite_range_open_low(double lo, double hi);
// A string that is not empty.
extern const CLI::Validator kNotEmpty;

// Registers the flags on `app` (env vars HYCO_MODEL, HYCO_DEVICE, HYCO_THREADS, ...).
void add_engine_options(CLI::App& app, EngineOptions& o);

// The default model directory (used when --model / HYCO_MODEL is empty): hyco-rust under the
// source tree's models/ (HYCO_SOURCE_MODELS_DIR, fixed at build time) when it has a config.json,
// else the one under the install prefix's share/hyco/models (HYCO_INSTALL_MODELS_DIR) when it has
// one, else the source-tree path. Reads no environment variable.
std::string default_model_dir();

// Throws InvalidArgument with the flag name when a value is invalid.
LoadOptions to_load_options(const EngineOptions& o);
std::optional<DType> parse_dtype_option(const std::string& v, const char* flag, bool allow_q8 = false);
KvCacheConfig to_kv_config(const EngineOptions& o, const ModelConfig& m, DType default_kv, int n_seqs);

}  // namespace hyco
