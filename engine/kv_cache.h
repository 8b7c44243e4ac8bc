// KV cache bookkeeping and storage (DESIGN.md "KV cache"): per sequence a ring of S + W + R slots
// for local layers and a block table into a shared pool for global layers. Owns the per-layer
// K/V tensors (allocated through the Backend); never computes attention itself.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "engine/backend.h"
#include "engine/model_config.h"

namespace hyco {

struct KvCacheConfig {
  DType dtype = DType::F32;
  int n_seqs = 8;             // sequences that may hold KV at once (running + kept for reuse)
  int n_ctx = 4096;           // longest sequence, in positions
  int rollback = 256;         // R: tokens a sequence can be rolled back by (prefix reuse)
  int block_size = 64;        // positions per global block
  int64_t memory_bytes = 0;   // budget for K/V of all layers; 0 = the default below
  // Default budget: n_seqs_full sequences at the full context, the other sequences (kept for
  // reuse) at most 4096 positions each in global layers. 0 = every sequence at full context.
  int n_seqs_full = 0;
};

using SeqId = int32_t;

class KvCache {
 public:
  // Throws ResourceExhausted when the budget cannot hold even one ring / one full sequence.
  KvCache(const ModelConfig& model, Backend& backend, const KvCacheConfig& cfg);

  // A new, empty sequence; nullopt when all n_seqs are in use.
  std::optional<SeqId> create();
  void release(SeqId s);
  // Makes room for positions [0, n) in the global pool; false when the pool is out of blocks
  // (the sequence is unchanged then).
  bool reserve(SeqId s, int32_t n);
  // The positions [0, length) hold valid K/V.
  int32_t length(SeqId s) const { return seqs_[s].length; }
  void set_length(SeqId s, int32_t n);
  // The shortest length `s` can be truncated to with every key the window needs still in its
  // ring: 0 for models without local layers or before the ring wrapped.
  int32_t min_length(SeqId s) const;
  // Rolls back to n tokens (min_length(s) <= n <= length(s)); frees global blocks past n.
  void truncate(SeqId s, int32_t n);

  bool is_live(SeqId s) const { return s >= 0 && s < int32_t(seqs_.size()) && seqs_[s].live; }
  int32_t n_ctx() const { return cfg_.n_ctx; }
  int32_t n_free_seqs() const { return int32_t(free_seqs_.size()); }
  int64_t n_free_blocks() const { return int64_t(free_blocks_.size()); }
  int64_t n_total_blocks() const { return n_blocks_; }
  // Global blocks a sequence of n positions needs.
  int64_t blocks_for(int32_t n) const;
  // Global blocks `s` holds.
  int64_t n_blocks(SeqId s) const { return int64_t(seqs_[s].blocks.size()); }
  // Blocks `s` still lacks to hold n positions (it may hold more already).
  int64_t blocks_missing(SeqId s, int32_t n) const;
  // Bytes of K/V storage held (all layers, rings and pool).
  int64_t bytes_total() const { return bytes_total_; }
  int64_t bytes_used() const;

  const KvCacheConfig& config() const { return cfg_; }
  const KvLayout& layout(LayerKind k) const { return k == LayerKind::Local ? local_ : global_; }
  Tensor& k(int layer) { return k_[layer]; }
  Tensor& v(int layer) { return v_[layer]; }
  // Q8 cache: the per-(slot, kv head) scales of k(layer) / v(layer); null for other dtypes.
  float* k_scale(int layer) { return ks_.empty() ? nullptr : static_cast<float*>(ks_[layer].data); }
  float* v_scale(int layer) { return vs_.empty() ? nullptr : static_cast<float*>(vs_[layer].data); }
  int32_t ring_of(SeqId s) const { return seqs_[s].ring; }
  // Writes the first `stride` block ids of `s` into row (zero-padded).
  void fill_table(SeqId s, int32_t* row, int32_t stride) const;
  int32_t max_table_len() const;

 private:
  struct Seq {
    bool live = false;
    int32_t length = 0;
    int32_t hi = 0;  // 1 + highest position ever written to the ring (survives truncation)
    int32_t ring = -1;
    std::vector<int32_t> blocks;
  };

  ModelConfig model_;
  KvCacheConfig cfg_;
  KvLayout local_, global_;
  bool has_local_ = false, has_global_ = false;
  int64_t n_blocks_ = 0;
  int64_t bytes_total_ = 0;
  std::vector<Seq> seqs_;
  std::vector<SeqId> free_seqs_;
  std::vector<int32_t> free_blocks_;
  std::vector<Tensor> k_, v_;
  std::vector<Tensor> ks_, vs_;  // Q8 scales, [rows, n_kv_heads] f32
};

}  // namespace hyco
