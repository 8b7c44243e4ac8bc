// Building a Model: from an HF-layout directory (every tensor checked for presence, shape and
// dtype; unexpected tensors rejected) or with random weights of a given shape for benchmarks.
// Fuses q/k/v and gate/up into one matrix each, so a layer is four matmuls.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <thread>

#include "engine/errors.h"
#include "engine/model.h"
#include "engine/safetensors.h"

namespace hyco {

// A host-side tensor source: either a checked file tensor or generated values.
class ModelLoader {
 public:
  ModelLoader(Model& m, const LoadOptions& opts) : m_(m), opts_(opts) {}

  void from_store(const TensorStore& store, const std::string& dir) {
    const ModelConfig& c = m_.cfg_;
    Model::check_tensors(c, store, dir);
    // Every tensor asked for below was checked above (presence, shape, dtype).
    auto get = [&](const std::string& name) -> const TensorInfo& { return *store.find(name); };
    total_bytes_ = int64_t(store.total_bytes());
    total_tensors_ = int(store.tensors().size());
    start_ = std::chrono::steady_clock::now();

    const TensorInfo& emb = get("model.embed_tokens.weight");
    m_.matrix_dtype_ = opts_.matrix_dtype.value_or(m_.backend_.default_matrix_dtype(emb.dtype));
    m_.embed_ = matrix({&emb});
    if (c.tie_embeddings) {
      m_.lm_head_ = m_.embed_;
    } else {
      m_.lm_head_ = matrix({&get("lm_head.weight")});
    }
    m_.final_norm_ = vector({&get("model.norm.weight")});
    m_.layers_.resize(size_t(c.n_layers));
    for (int l = 0; l < c.n_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      Model::Layer& L = m_.layers_[size_t(l)];
      L.attn_norm = vector({&get(p + "input_layernorm.weight")});
      L.wqkv = matrix({&get(p + "self_attn.q_proj.weight"), &get(p + "self_attn.k_proj.weight"),
                       &get(p + "self_attn.v_proj.weight")});
      if (c.qkv_bias)
        L.bqkv = vector({&get(p + "self_attn.q_proj.bias"), &get(p + "self_attn.k_proj.bias"),
                         &get(p + "self_attn.v_proj.bias")});
      L.wo = matrix({&get(p + "self_attn.o_proj.weight")});
      if (c.o_bias) L.bo = vector({&get(p + "self_attn.o_proj.bias")});
      L.mlp_norm = vector({&get(p + "post_attention_layernorm.weight")});
      L.w_gate_up = matrix({&get(p + "mlp.gate_proj.weight"), &get(p + "mlp.up_proj.weight")});
      L.w_down = matrix({&get(p + "mlp.down_proj.weight")});
    }
  }

  void random(uint64_t seed) {
    const ModelConfig& c = m_.cfg_;
    m_.matrix_dtype_ = opts_.matrix_dtype.value_or(m_.backend_.default_matrix_dtype(DType::BF16));
    std::mt19937_64 rng(seed);
    auto mat = [&](int64_t rows, int64_t cols) {
      // Not zeroed first: the filling threads touch its pages first, in parallel.
      const size_t n = size_t(rows * cols);
      auto v = std::make_unique_for_overwrite<uint16_t[]>(n);
      fill_random(v.get(), n, rng(), 1.0f / std::sqrt(float(cols)));
      HostTensor h{v.get(), DType::BF16, rows, cols};
      Tensor t = m_.backend_.upload_weight(h, WeightRole::Matrix, m_.matrix_dtype_);
      m_.weight_bytes_ += int64_t(t.n_bytes());
      return t;
    };
    auto ones = [&](int64_t n) {
      std::vector<float> v(size_t(n), 1.0f);
      HostTensor h{v.data(), DType::F32, 1, n};
      return m_.backend_.upload_weight(h, WeightRole::Vector, DType::F32);
    };
    const int64_t D = c.d_model, F = c.d_ff, V = c.n_vocab;
    m_.embed_ = mat(V, D);
    m_.lm_head_ = c.tie_embeddings ? m_.embed_ : mat(V, D);
    m_.final_norm_ = ones(D);
    m_.layers_.resize(size_t(c.n_layers));
    for (auto& L : m_.layers_) {
      L.attn_norm = ones(D);
      L.wqkv = mat(c.qkv_width(), D);
      if (c.qkv_bias) L.bqkv = ones(c.qkv_width());
      L.wo = mat(D, c.q_width());
      if (c.o_bias) L.bo = ones(D);
      L.mlp_norm = ones(D);
      L.w_gate_up = mat(2 * F, D);
      L.w_down = mat(D, F);
    }
  }

 private:
  // Uniform with the given standard deviation, as bf16 (fast; benchmarks only). Blocks of 1M
  // values, each from its own stream, are filled by all hardware threads: a 7B shape took 44 s on
  // one thread, which a GPU check pays once per benchmark. The values depend on the seed alone,
  // not on the number of threads.
  static void fill_random(uint16_t* v, size_t n, uint64_t seed, float stddev) {
    constexpr size_t kBlock = size_t(1) << 20;
    const size_t n_blocks = (n + kBlock - 1) / kBlock;
    const float scale = stddev * std::sqrt(3.0f) / float(1u << 23);
    auto fill_block = [&](size_t b) {
      uint64_t s = (seed + 0x9E3779B97F4A7C15ull * b) | 1;
      const size_t end = std::min(n, (b + 1) * kBlock);
      for (size_t i = b * kBlock; i < end; ++i) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v[i] = f32_to_bf16(float(int32_t(uint32_t(s >> 40)) - (1 << 23)) * scale);
      }
    };
    const size_t n_threads = std::min<size_t>(n_blocks, std::max(1u, std::thread::hardware_concurrency()));
    if (n_threads <= 1) {
      for (size_t b = 0; b < n_blocks; ++b) fill_block(b);
      return;
    }
    std::atomic<size_t> next{0};
    std::vector<std::thread> pool;
    for (size_t t = 0; t < n_threads; ++t)
      pool.emplace_back([&] {
        for (size_t b; (b = next.fetch_add(1)) < n_blocks;) fill_block(b);
      });
    for (auto& th : pool) th.join();
  }

  // Concatenates the parts' rows in one host buffer when there is more than one.
  HostTensor concat(const std::vector<const TensorInfo*>& parts, std::vector<uint8_t>& buf) {
    int64_t cols = parts[0]->shape.size() == 2 ? parts[0]->shape[1] : parts[0]->shape[0];
    int64_t rows = 0;
    bool same = true;
    for (auto* p : parts) {
      rows += p->shape.size() == 2 ? p->shape[0] : 1;
      same = same && p->dtype == parts[0]->dtype;
    }
    if (parts[0]->shape.size() == 1) {  // vectors: concatenate along their only axis
      cols = 0;
      for (auto* p : parts) cols += p->shape[0];
      rows = 1;
    }
    if (parts.size() == 1) return HostTensor{parts[0]->data, parts[0]->dtype, rows, cols};
    DType dt = same ? parts[0]->dtype : DType::F32;
    buf.resize(size_t(rows * cols) * dtype_size(dt));
    uint8_t* dst = buf.data();
    for (auto* p : parts) {
      if (same) {
        std::memcpy(dst, p->data, p->n_bytes);
        dst += p->n_bytes;
      } else {
        for (int64_t i = 0; i < p->n_elements(); ++i) {  // unaligned-safe element reads
          float f;
          uint16_t h;
          if (p->dtype == DType::F32) {
            std::memcpy(&f, p->data + i * 4, 4);
          } else {
            std::memcpy(&h, p->data + i * 2, 2);
            f = p->dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
          }
          std::memcpy(dst + i * 4, &f, 4);
        }
        dst += p->n_elements() * 4;
      }
    }
    return HostTensor{buf.data(), dt, rows, cols};
  }

  Tensor matrix(const std::vector<const TensorInfo*>& parts) { return upload(parts, WeightRole::Matrix); }
  Tensor vector(const std::vector<const TensorInfo*>& parts) { return upload(parts, WeightRole::Vector); }

  Tensor upload(const std::vector<const TensorInfo*>& parts, WeightRole role) {
    std::vector<uint8_t> buf;
    HostTensor h = concat(parts, buf);
    Tensor t = m_.backend_.upload_weight(h, role, role == WeightRole::Matrix ? m_.matrix_dtype_ : DType::F32);
    m_.weight_bytes_ += int64_t(t.n_bytes());
    for (auto* p : parts) {
      done_bytes_ += int64_t(p->n_bytes);
      ++done_tensors_;
    }
    if (opts_.progress) {
      LoadProgress lp;
      lp.bytes_done = done_bytes_;
      lp.bytes_total = total_bytes_;
      lp.tensors_done = done_tensors_;
      lp.tensors_total = total_tensors_;
      lp.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      opts_.progress(lp);
    }
    return t;
  }

  Model& m_;
  const LoadOptions& opts_;
  int64_t total_bytes_ = 0, done_bytes_ = 0;
  int total_tensors_ = 0, done_tensors_ = 0;
  std::chrono::steady_clock::time_point start_;
};

void Model::check_tensors(const ModelConfig& c, const TensorStore& store, const std::string& dir) {
  std::set<std::string> used;
  auto want = [&](const std::string& name, std::vector<int64_t> shape) {
    const TensorInfo* t = store.find(name);
    if (!t) throw ModelError(dir + " (" + store.describe() + "): missing tensor '" + name + "'");
    if (t->shape != shape) {
      TensorInfo w;
      w.shape = shape;
      throw ModelError(t->file + ": tensor '" + name + "' has shape " + t->shape_string() + ", expected " + w.shape_string());
    }
    if (t->dtype == DType::I32) throw ModelError(t->file + ": tensor '" + name + "' has integer dtype I32");
    used.insert(name);
  };
  const int64_t D = c.d_model, F = c.d_ff, V = c.n_vocab, QW = c.q_width(), KW = c.kv_width();
  want("model.embed_tokens.weight", {V, D});
  if (!c.tie_embeddings)
    want("lm_head.weight", {V, D});
  else if (store.find("lm_head.weight"))
    used.insert("lm_head.weight");  // some exports keep the tied copy
  want("model.norm.weight", {D});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    want(p + "input_layernorm.weight", {D});
    want(p + "self_attn.q_proj.weight", {QW, D});
    want(p + "self_attn.k_proj.weight", {KW, D});
    want(p + "self_attn.v_proj.weight", {KW, D});
    if (c.qkv_bias) {
      want(p + "self_attn.q_proj.bias", {QW});
      want(p + "self_attn.k_proj.bias", {KW});
      want(p + "self_attn.v_proj.bias", {KW});
    }
    want(p + "self_attn.o_proj.weight", {D, QW});
    if (c.o_bias) want(p + "self_attn.o_proj.bias", {D});
    want(p + "post_attention_layernorm.weight", {D});
    want(p + "mlp.gate_proj.weight", {F, D});
    want(p + "mlp.up_proj.weight", {F, D});
    want(p + "mlp.down_proj.weight", {D, F});
  }
  for (const auto& [name, t] : store.tensors()) {
    if (used.count(name)) continue;
    if (name.ends_with(".rotary_emb.inv_freq")) continue;
    throw ModelError(t.file + ": unexpected tensor '" + name + "' (not part of a " + c.architecture + " with " +
                     std::to_string(c.n_layers) + " layers" + (c.qkv_bias ? "" : " without q/k/v bias") + ")");
  }
}

std::unique_ptr<Model> Model::load(const std::string& dir, Backend& backend, const LoadOptions& opts) {
  ModelConfig cfg = load_model_config(dir);
  if (opts.attention) apply_attention_override(cfg, *opts.attention);
  TensorStore store = TensorStore::open_dir(dir);
  std::unique_ptr<Model> m(new Model(cfg, backend));
  ModelLoader(*m, opts).from_store(store, dir);
  return m;
}

std::unique_ptr<Model> Model::random(const ModelConfig& cfg, Backend& backend, uint64_t seed,
                                     std::optional<DType> matrix_dtype) {
  validate_model_config(cfg, "random model");
  std::unique_ptr<Model> m(new Model(cfg, backend));
  LoadOptions opts;
  opts.matrix_dtype = matrix_dtype;
  ModelLoader(*m, opts).random(seed);
  return m;
}

}  // namespace hyco
