// Plain parameter structs of the backend ops: pointers, strides and sizes only, so that kernels
// (CPU and CUDA) include this file and nothing else of the engine.
#pragma once

#include <cstdint>

#include "engine/dtype.h"

#if defined(__CUDACC__)
#define HYCO_HD __host__ __device__
#else
#define HYCO_HD
#endif

namespace hyco {

// The tokens of one sequence inside a step (a prefill chunk or a decode token).
struct SeqSpan {
  int32_t tok_start = 0;   // first row of this span in the batch
  int32_t n_tokens = 0;
  int32_t pos0 = 0;        // absolute position of the first token
  int32_t ring = -1;       // local-layer ring of this sequence (-1: model has no local layer)
  int32_t table_row = -1;  // row of StepMeta::global_tables (-1: model has no global layer)
};

// Everything about a step that is the same for every layer.
struct StepMeta {
  const int32_t* tokens = nullptr;     // [n_tokens]
  const int32_t* positions = nullptr;  // [n_tokens] absolute positions
  int32_t n_tokens = 0;
  const SeqSpan* spans = nullptr;  // [n_spans], rows in order
  int32_t n_spans = 0;
  const int32_t* global_tables = nullptr;  // [n_spans, table_stride] block ids of global layers
  int32_t table_stride = 0;
  const int32_t* out_rows = nullptr;  // [n_out] rows whose logits are wanted
  int32_t n_out = 0;
};

// Slots come in groups of kKvGroup: ring and block boundaries fall on group boundaries, so a
// backend may store a group's keys transposed ([kv_width][kKvGroup], the CPU backend does) and
// read a tile of consecutive positions without gathering.
constexpr int32_t kKvGroup = 64;

// How one kind of layer lays out its cached K/V: rows of `kv_width` elements (the element order
// inside a group of rows is the backend's).
// Local: sequence ring r owns slots [r*(sink_slots+ring_len), (r+1)*(sink_slots+ring_len));
// position p lives at slot p when p < n_sinks, else sink_slots + p % ring_len (DESIGN.md: a ring
// of W+R after the S sinks; sink_slots is S rounded up to a group, ring_len W+R rounded up).
// Global: position p lives at slot table[p / block_size] * block_size + p % block_size.
struct KvLayout {
  bool local = false;
  int32_t window = 0;      // W (local only)
  int32_t n_sinks = 0;     // S (local only)
  int32_t sink_slots = 0;  // slots before the ring: S rounded up to kKvGroup (local only)
  int32_t ring_len = 0;    // W + R rounded up to kKvGroup (local only)
  int32_t block_size = 0;  // positions per block (global only)
};

HYCO_HD static inline int64_t kv_slot(const KvLayout& l, const SeqSpan& s, const int32_t* table, int32_t pos) {
  if (l.local) {
    int64_t r = pos < l.n_sinks ? pos : l.sink_slots + pos % l.ring_len;
    return int64_t(s.ring) * (l.sink_slots + l.ring_len) + r;
  }
  return int64_t(table[pos / l.block_size]) * l.block_size + pos % l.block_size;
}

// Causal attention of one layer over a ragged batch. Keys of positions before a span's pos0 come
// from the cache; keys of the step itself come from `qkv` (so a chunk may be longer than a ring).
// NOTE: store_kv writes the step's keys afterwards; a backend may store some earlier (the CPU one
// stores every span whose slots hold nothing the span still reads, before its attention), as long
// as what attention computes is unchanged.
struct AttentionParams {
  const float* qkv = nullptr;  // [n_tokens, qkv_stride]: n_heads q, n_kv_heads k, n_kv_heads v (RoPE'd)
  int64_t qkv_stride = 0;
  float* out = nullptr;        // [n_tokens, n_heads*head_dim]
  const void* k_cache = nullptr;  // [n_slots, n_kv_heads*head_dim] of kv_dtype
  const void* v_cache = nullptr;
  DType kv_dtype = DType::F32;
  // Q8 cache: the scale of each (slot, kv head) row, [n_slots, n_kv_heads] with the backend's
  // element order inside a group of rows (as for keys); null for other dtypes.
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;
  int32_t n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 1.f;
  KvLayout layout;
  StepMeta meta;
};

// Writes the step's keys and values (from qkv) into the cache slots of their positions.
struct StoreKvParams {
  const float* qkv = nullptr;
  int64_t qkv_stride = 0;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  DType kv_dtype = DType::F32;
  float* k_scale = nullptr;  // Q8 only, as in AttentionParams
  float* v_scale = nullptr;
  int32_t n_heads = 0, n_kv_heads = 0, head_dim = 0;
  KvLayout layout;
  StepMeta meta;
};

// Rotary embedding (HF "rotate_half": pairs (i, i + head_dim/2)) of the first n_rot_heads heads of
// each row of qkv (the q heads then the k heads), at the step's positions.
struct RopeParams {
  float* qkv = nullptr;
  int64_t qkv_stride = 0;
  int32_t n_rot_heads = 0;
  int32_t head_dim = 0;
  double theta = 10000.0;
  double scale = 1.0;  // positions are divided by this (linear scaling)
  StepMeta meta;
};

}  // namespace hyco
