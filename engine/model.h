// The decoder: weights on a backend and the forward pass over a ragged batch of sequences
// (prefill chunks and decode tokens together). Loads HF-layout model directories.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "engine/model_config.h"

namespace hyco {

struct LoadProgress {
  int64_t bytes_done = 0, bytes_total = 0;
  int tensors_done = 0, tensors_total = 0;
  double seconds = 0;
};

struct LoadOptions {
  std::optional<AttentionOverride> attention;
  std::optional<DType> matrix_dtype;  // default: the backend's choice for the file's dtype
  std::function<void(const LoadProgress&)> progress;
};

// One sequence's tokens in a batch; they are appended to its KV at positions length(seq)...
struct BatchSpan {
  SeqId seq = -1;
  int32_t n_tokens = 0;
  bool logits_all = false;   // logits for every token of the span
  bool logits_last = true;   // logits for its last token
};

struct Batch {
  std::vector<int32_t> tokens;  // spans' tokens, back to back
  std::vector<BatchSpan> spans;

  void add(SeqId seq, std::span<const int32_t> toks, bool logits_last = true, bool logits_all = false);
  void clear() {
    tokens.clear();
    spans.clear();
  }
  // Rows of logits forward() returns, span by span.
  int32_t n_out() const;
};

// What the scheduler drives: one forward step over a ragged batch. Model implements it; tests use
// fakes.
class StepExecutor {
 public:
  virtual ~StepExecutor() = default;
  virtual const ModelConfig& config() const = 0;
  // Appends the batch's tokens to their sequences' KV and returns logits [n_out, n_vocab].
  virtual void forward(const Batch& batch, KvCache& kv, std::vector<float>& logits) = 0;
};

class TensorStore;

class Model final : public StepExecutor {
 public:
  // Throws ModelError (bad files) naming the file and tensor.
  static std::unique_ptr<Model> load(const std::string& dir, Backend& backend, const LoadOptions& opts = {});
  // The checks load() makes of a directory's tensors against its config (every tensor present
  // with its shape and a float dtype, nothing unexpected), without reading their data; throws
  // ModelError naming the file and the tensor.
  static void check_tensors(const ModelConfig& cfg, const TensorStore& store, const std::string& dir);
  // Random weights of the given shape (benchmarks: speed does not depend on the values).
  static std::unique_ptr<Model> random(const ModelConfig& cfg, Backend& backend, uint64_t seed,
                                       std::optional<DType> matrix_dtype = std::nullopt);
  ~Model() override;

  const ModelConfig& config() const override { return cfg_; }
  Backend& backend() { return backend_; }
  int64_t weight_bytes() const { return weight_bytes_; }
  DType matrix_dtype() const { return matrix_dtype_; }
  // Changes the attention pattern (weights do not depend on it). Caches built for the old
  // pattern must not be used afterwards. Throws ModelError when the result is invalid.
  void set_attention(const AttentionOverride& o) { apply_attention_override(cfg_, o); }

  // Runs the batch and appends its tokens to each sequence's cache. logits ← [n_out, n_vocab].
  // Throws InvalidArgument for a token outside the vocabulary or a sequence past the KV context,
  // ResourceExhausted when the KV pool lacks blocks; the cache is unchanged in both cases.
  void forward(const Batch& batch, KvCache& kv, std::vector<float>& logits) override;

 private:
  struct Layer {
    Tensor attn_norm, wqkv, bqkv, wo, bo, mlp_norm, w_gate_up, w_down;
  };
  Model(const ModelConfig& cfg, Backend& backend) : cfg_(cfg), backend_(backend) {}
  void ensure_buffers(int32_t n_tokens, int32_t n_out);

  ModelConfig cfg_;
  Backend& backend_;
  Tensor embed_, lm_head_, final_norm_;
  std::vector<Layer> layers_;
  int64_t weight_bytes_ = 0;
  DType matrix_dtype_ = DType::F32;

  // Activations, sized for the largest batch seen: [capacity, width].
  int32_t cap_tokens_ = 0, cap_out_ = 0;
  Tensor x_, xn_, qkv_, attn_, gate_up_, act_, rows_, rows_n_, logits_;
  // Step metadata (host).
  std::vector<int32_t> positions_, out_rows_, tables_;
  std::vector<SeqSpan> spans_;

  friend class ModelLoader;
};

}  // namespace hyco
