// Helpers shared by the engine tests: tiny model configs, comparisons, a safetensors writer
// for building (broken) model files. No engine logic is re-implemented here.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "engine/model_config.h"

namespace hyco::test {

inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    float d = std::fabs(a[i] - b[i]);
    if (!(d <= m)) m = d;  // NaN propagates as a failure
  }
  return m;
}

inline float max_abs(const std::vector<float>& a) {
  float m = 0;
  for (float v : a) m = std::max(m, std::fabs(v));
  return m;
}

// A small Llama-style config with the given attention pattern ("LLLG", ...).
inline ModelConfig tiny_config(const std::string& pattern, int window = 8, int sinks = 0, int n_heads = 4,
                               int n_kv_heads = 2, int head_dim = 16, int d_model = 64) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.family = "llama";
  c.n_vocab = 200;
  c.d_model = d_model;
  c.d_ff = 96;
  c.n_layers = int(pattern.size());
  c.n_heads = n_heads;
  c.n_kv_heads = n_kv_heads;
  c.head_dim = head_dim;
  c.rms_eps = 1e-5f;
  c.rope_theta = 10000;
  c.n_ctx_train = 4096;
  c.tie_embeddings = true;
  c.window = window;
  c.n_sinks = sinks;
  for (char ch : pattern) c.layer_kinds.push_back(ch == 'L' ? LayerKind::Local : LayerKind::Global);
  if (c.n_layers_of(LayerKind::Local) == 0) c.window = 0, c.n_sinks = 0;
  return c;
}

inline std::vector<int32_t> random_tokens(size_t n, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = int32_t(rng() % uint32_t(vocab));
  return t;
}

inline std::filesystem::path temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("hyco-test-" + std::to_string(::getpid()) + "-" + name);
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

// Writes a safetensors file from named f32 tensors; `header_patch` may rewrite the header JSON
// before it is written (to make it lie).
struct StTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
  std::string dtype = "F32";  // written as F32 bytes regardless; only the header says otherwise
};

inline void write_safetensors(const std::filesystem::path& path, const std::map<std::string, StTensor>& tensors,
                              const std::function<void(nlohmann::json&)>& header_patch = {},
                              size_t truncate_bytes = 0) {
  nlohmann::json h = nlohmann::json::object();
  size_t off = 0;
  std::string data;
  for (const auto& [name, t] : tensors) {
    size_t n = t.data.size() * 4;
    h[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + n}}};
    data.append(reinterpret_cast<const char*>(t.data.data()), n);
    off += n;
  }
  if (header_patch) header_patch(h);
  std::string hs = h.dump();
  while (hs.size() % 8) hs += ' ';
  uint64_t len = hs.size();
  std::string out(reinterpret_cast<const char*>(&len), 8);
  out += hs;
  out += data;
  if (truncate_bytes) out.resize(out.size() - std::min(truncate_bytes, out.size()));
  std::ofstream(path, std::ios::binary).write(out.data(), std::streamsize(out.size()));
}

}  // namespace hyco::test
