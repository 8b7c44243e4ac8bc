// KV cache bookkeeping: ring ids, global block allocation, truncation limits. See kv_cache.h.
#include "engine/kv_cache.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "engine/errors.h"

namespace hyco {

namespace {
std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MiB", double(bytes) / 1048576.0);
  return buf;
}
}  // namespace

KvCache::KvCache(const ModelConfig& model, Backend& backend, const KvCacheConfig& cfg) : model_(model), cfg_(cfg) {
  if (!backend.supports_kv_dtype(cfg.dtype))
    throw InvalidArgument("the " + backend.name() + " backend cannot hold the KV cache in " +
                          std::string(dtype_name(cfg.dtype)) +
                          (cfg.dtype == DType::Q8 ? " (q8 is CPU-only: use --device cpu, or --kv-dtype bf16)"
                                                  : " (choose another --kv-dtype)"));
  if (cfg.n_seqs < 1) throw InvalidArgument("KV cache needs at least one sequence");
  if (cfg.n_ctx < 1) throw InvalidArgument("KV cache context must be positive");
  if (cfg.rollback < 0) throw InvalidArgument("KV rollback reserve must not be negative");
  if (cfg.block_size < 1) throw InvalidArgument("KV block size must be positive");
  const bool q8 = cfg.dtype == DType::Q8;
  const int64_t row_bytes = model.kv_position_bytes(cfg.dtype);
  const int n_local = model.n_layers_of(LayerKind::Local), n_global = model.n_layers_of(LayerKind::Global);
  has_local_ = n_local > 0;
  has_global_ = n_global > 0;

  auto round_up = [](int64_t n) { return (n + kKvGroup - 1) / kKvGroup * kKvGroup; };
  local_.local = true;
  local_.window = model.window;
  local_.n_sinks = model.n_sinks;
  local_.sink_slots = int32_t(round_up(model.n_sinks));
  // A ring never needs more slots than the context itself; whole groups of slots.
  local_.ring_len = int32_t(round_up(std::min<int64_t>(int64_t(model.window) + cfg.rollback, cfg.n_ctx)));
  global_.block_size = cfg.block_size;

  const int64_t ring_slots = int64_t(local_.sink_slots) + local_.ring_len;
  const int64_t ring_bytes = has_local_ ? ring_slots * row_bytes * n_local : 0;
  const int64_t block_bytes = int64_t(cfg.block_size) * row_bytes * n_global;
  int64_t budget = cfg.memory_bytes;
  if (budget <= 0) {
    const int n_full = cfg.n_seqs_full > 0 ? std::min(cfg.n_seqs_full, cfg.n_seqs) : cfg.n_seqs;
    const int64_t full_blocks = blocks_for(cfg.n_ctx), other_blocks = blocks_for(std::min(cfg.n_ctx, 4096));
    budget = cfg.n_seqs * ring_bytes +
             (has_global_ ? (n_full * full_blocks + (cfg.n_seqs - n_full) * other_blocks) * block_bytes : 0);
  }
  if (has_global_) {
    int64_t left = budget - cfg.n_seqs * ring_bytes;
    n_blocks_ = left > 0 ? left / block_bytes : 0;
    if (n_blocks_ > INT32_MAX)  // block ids are 32-bit (the kernels' block tables)
      throw ResourceExhausted("KV memory of " + mib(budget) + " makes " + std::to_string(n_blocks_) +
                              " blocks, more than the 2^31 - 1 a block table can name: lower --kv-memory or raise --kv-block");
    if (n_blocks_ < blocks_for(std::min(cfg.n_ctx, 1)))
      throw ResourceExhausted("KV memory of " + mib(budget) + " leaves no room for global-layer blocks (" +
                              std::to_string(cfg.n_seqs) + " sequences' rings take " + mib(cfg.n_seqs * ring_bytes) +
                              "; raise --kv-memory or lower --parallel / --cache-seqs)");
  } else if (cfg.n_seqs * ring_bytes > budget) {
    throw ResourceExhausted("KV memory of " + mib(budget) + " cannot hold " + std::to_string(cfg.n_seqs) +
                            " rings of " + mib(ring_bytes) + " (raise --kv-memory or lower --parallel / --cache-seqs)");
  }

  const int64_t local_rows = has_local_ ? cfg.n_seqs * ring_slots : 0;
  const int64_t global_rows = round_up(n_blocks_ * cfg.block_size);
  k_.resize(model.n_layers);
  v_.resize(model.n_layers);
  for (int l = 0; l < model.n_layers; ++l) {
    int64_t rows = model.layer_kinds[l] == LayerKind::Local ? local_rows : global_rows;
    k_[l] = backend.alloc(cfg.dtype, rows, model.kv_width());
    v_[l] = backend.alloc(cfg.dtype, rows, model.kv_width());
    bytes_total_ += int64_t(k_[l].n_bytes() + v_[l].n_bytes());
    if (q8) {
      ks_.push_back(backend.alloc(DType::F32, rows, model.n_kv_heads));
      vs_.push_back(backend.alloc(DType::F32, rows, model.n_kv_heads));
      bytes_total_ += int64_t(ks_.back().n_bytes() + vs_.back().n_bytes());
    }
  }
  seqs_.resize(cfg.n_seqs);
  for (SeqId s = cfg.n_seqs - 1; s >= 0; --s) free_seqs_.push_back(s);
  for (int64_t b = n_blocks_ - 1; b >= 0; --b) free_blocks_.push_back(int32_t(b));
}

int64_t KvCache::blocks_for(int32_t n) const {
  if (!has_global_) return 0;
  return (int64_t(n) + cfg_.block_size - 1) / cfg_.block_size;
}

int64_t KvCache::blocks_missing(SeqId s, int32_t n) const {
  HYCO_ASSERT(is_live(s));
  return std::max<int64_t>(0, blocks_for(n) - int64_t(seqs_[s].blocks.size()));
}

int64_t KvCache::bytes_used() const {
  if (bytes_total_ == 0) return 0;
  int64_t live = 0, blocks = 0;
  for (const Seq& s : seqs_)
    if (s.live) {
      ++live;
      blocks += int64_t(s.blocks.size());
    }
  const int64_t row_bytes = model_.kv_position_bytes(cfg_.dtype);
  const int64_t ring_bytes = has_local_ ? (int64_t(local_.sink_slots) + local_.ring_len) * row_bytes *
                                              model_.n_layers_of(LayerKind::Local)
                                        : 0;
  return live * ring_bytes + blocks * cfg_.block_size * row_bytes * model_.n_layers_of(LayerKind::Global);
}

std::optional<SeqId> KvCache::create() {
  if (free_seqs_.empty()) return std::nullopt;
  SeqId s = free_seqs_.back();
  free_seqs_.pop_back();
  Seq& q = seqs_[s];
  q = Seq{};
  q.live = true;
  q.ring = has_local_ ? s : -1;
  return s;
}

void KvCache::release(SeqId s) {
  HYCO_ASSERT(is_live(s));
  Seq& q = seqs_[s];
  for (int32_t b : q.blocks) free_blocks_.push_back(b);
  q = Seq{};
  free_seqs_.push_back(s);
}

bool KvCache::reserve(SeqId s, int32_t n) {
  HYCO_ASSERT(is_live(s));
  if (n > cfg_.n_ctx) return false;
  Seq& q = seqs_[s];
  int64_t need = blocks_for(n) - int64_t(q.blocks.size());
  if (need <= 0) return true;
  if (need > int64_t(free_blocks_.size())) return false;
  for (int64_t i = 0; i < need; ++i) {
    q.blocks.push_back(free_blocks_.back());
    free_blocks_.pop_back();
  }
  return true;
}

void KvCache::set_length(SeqId s, int32_t n) {
  HYCO_ASSERT(is_live(s));
  Seq& q = seqs_[s];
  HYCO_ASSERT(n >= 0 && n <= cfg_.n_ctx && blocks_for(n) <= int64_t(q.blocks.size()));
  q.length = n;
  q.hi = std::max(q.hi, n);
}

int32_t KvCache::min_length(SeqId s) const {
  HYCO_ASSERT(is_live(s));
  const Seq& q = seqs_[s];
  if (!has_local_) return 0;
  // The ring holds positions [lo, hi) past the sinks; a query at position n needs (n - W, n).
  const int32_t lo = std::max<int32_t>(local_.n_sinks, q.hi - local_.ring_len);
  if (lo <= local_.n_sinks) return 0;
  return std::min(q.length, lo + local_.window - 1);
}

void KvCache::truncate(SeqId s, int32_t n) {
  HYCO_ASSERT(is_live(s));
  Seq& q = seqs_[s];
  HYCO_ASSERT(n >= min_length(s) && n <= q.length);
  q.length = n;
  int64_t keep = blocks_for(n);
  while (int64_t(q.blocks.size()) > keep) {
    free_blocks_.push_back(q.blocks.back());
    q.blocks.pop_back();
  }
}

int32_t KvCache::max_table_len() const { return int32_t(blocks_for(cfg_.n_ctx)); }

void KvCache::fill_table(SeqId s, int32_t* row, int32_t stride) const {
  // A sequence may hold blocks reserved beyond what the step reaches; the table needs only the
  // first `stride` (the caller sizes it for the positions the step touches).
  const Seq& q = seqs_[s];
  const size_t n = std::min(q.blocks.size(), size_t(stride));
  std::copy(q.blocks.begin(), q.blocks.begin() + std::ptrdiff_t(n), row);
  std::fill(row + n, row + stride, 0);
}

}  // namespace hyco
