// CPU kernel entry points, compiled once per instruction-set variant (avx512, avx2, base) from
// cpu_kernels_impl.cpp and chosen at run time. Plain pointers and sizes only.
// NOTE: variant TUs must not instantiate std templates (their COMDAT copies would leak AVX-512
// code into the other variants), so everything here is C-like.
#pragma once

#include <cstdint>

#include <xmmintrin.h>

#include "engine/ops.h"

namespace hyco::cpu {

// Matmul weights are packed in panels of kPanel output columns:
//   f32:  panel p = [K][kPanel]                     element (n, k) at p*K*kPanel + k*kPanel + n%kPanel
//   bf16: panel p = [Kp/2][kPanel][2], Kp = K rounded up to even:
//                                                   element (n, k) at p*Kp*kPanel + (k/2)*2*kPanel + (n%kPanel)*2 + k%2
//   q8:   panel p = [Kq][kPanel][4] bytes, Kq = ceil(K/4): element (n, k) at p*Kq*kPanel*4 + (k/4)*4*kPanel
//         + (n%kPanel)*4 + k%4, holding q + 128 (an unsigned byte) for the column's 8-bit value q
//         (q8_row steps: q · scale ≈ w, scale = amax/127 per output column), then after all panels the
//         columns' scales as f32 [P*kPanel]. Four consecutive k of a column are one 32-bit lane, the
//         operand layout of AVX-512 VNNI's vpdpbusd.
// Padding rows/columns are zero (for q8: the byte 128, value 0).
constexpr int kPanel = 64;

// q8 matrices (layout above): the byte of element (n, k), counted from the first panel, and where
// the column scales start; Kq = ceil(K / 4), P = the number of panels.
static inline int64_t q8w_offset(int64_t n, int64_t k, int64_t Kq) {
  return (n / kPanel) * Kq * 4 * kPanel + (k / 4) * 4 * kPanel + (n % kPanel) * 4 + k % 4;
}
static inline int64_t q8w_scales_offset(int64_t P, int64_t Kq) { return P * Kq * 4 * kPanel; }
// Keys in the CPU cache (f32, bf16; Q8: k8_offset) are stored transposed by group of kKvGroup
// slots: element e (of kv_width) of slot s lives at (s / 64) * 64 * kv_width + e * 64 + s % 64,
// so a tile of 64 consecutive positions is a ready [kv_width][64] matrix for QKᵀ. Values: see v_offset. The
// scales of a Q8 cache (one per slot and kv head, for keys and for values) are transposed the same
// way (kv_width = n_kv_heads), so a tile's 64 scales of one head are contiguous.
static inline int64_t k_offset(int64_t slot, int64_t e, int64_t kv_width) {
  return (slot / kKvGroup) * kKvGroup * kv_width + e * kKvGroup + slot % kKvGroup;
}
// Values are grouped by KV head inside a group of slots: element e (head e / hd, dim e % hd) of
// slot s lives at (s / 64) * 64 * kv_width + (e / hd) * 64 * hd + (s % 64) * hd + e % hd, so a
// tile's values of one head are one contiguous [64][hd] block (a sequential stream for decode,
// which reads each tile once from memory).
static inline int64_t v_offset(int64_t slot, int64_t e, int64_t kv_width, int64_t hd) {
  return (slot / kKvGroup) * kKvGroup * kv_width + (e / hd) * kKvGroup * hd + (slot % kKvGroup) * hd + e % hd;
}
// A Q8 cache's keys are grouped by head like the values (below), and inside a head's [64][hd]
// block of a group the bytes of four consecutive dims of a slot are one 32-bit lane: dim d of
// column c at k8_index(c, d, hd) = (d / 4) * 256 + c * 4 + d % 4, so a 512-bit load at dims
// d..d+3 is those dims of 16 consecutive keys, the operand layout of vpdpbusd for scores (for hd
// not a multiple of 4: d * 64 + c, the f32 paths' [hd][64]). Each byte holds k + 128, the
// unsigned operand (as the q8 weights do).
static inline int64_t k8_index(int64_t c, int64_t d, int64_t hd) {
  return hd % 4 == 0 ? (d / 4) * 4 * kKvGroup + c * 4 + d % 4 : d * kKvGroup + c;
}
static inline int64_t k8_offset(int64_t slot, int64_t e, int64_t kv_width, int64_t hd) {
  return (slot / kKvGroup) * kKvGroup * kv_width + (e / hd) * kKvGroup * hd + k8_index(slot % kKvGroup, e % hd, hd);
}
// A Q8 cache's values are grouped the same way, but inside a head's [64][hd] block the bytes of
// four consecutive slots are interleaved: dim d of column c (slot % 64) at v8_index(c, d, hd) =
// (c / 4) * 4 * hd + d * 4 + c % 4, so one 32-bit lane holds four positions of one dim, the
// operand layout of vpdpbusd for weights × values (the values' 16 dims of a 512-bit load are in
// order). The attention kernel's 8-bit value tiles use the same layout.
static inline int64_t v8_index(int64_t c, int64_t d, int64_t hd) { return (c / 4) * 4 * hd + d * 4 + c % 4; }
static inline int64_t v8_offset(int64_t slot, int64_t e, int64_t kv_width, int64_t hd) {
  return (slot / kKvGroup) * kKvGroup * kv_width + (e / hd) * kKvGroup * hd + v8_index(slot % kKvGroup, e % hd, hd);
}

// 8-bit KV rows (DType::Q8): n values x become q = round(x · 127 / amax) (as floats) with the
// row's scale amax / 127, so q · scale ≈ x. All zero with scale 0 when amax is 0 or not finite.
// store_kv and the attention kernel (for the step's own keys) both round with these steps, so
// every path sees the values the cache holds. Returns the scale.
static inline float q8_row(const float* x, int n, float* q) {
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float a = x[i] < 0.0f ? -x[i] : x[i];
    amax = a > amax ? a : amax;
  }
  // (127 / amax must be finite too: a row of magnitudes below ~3.7e-37 is all zero.)
  const bool ok = amax > 0.0f && amax <= 3.4028234663852886e38f && 127.0f / amax <= 3.4028234663852886e38f;
  const float inv = ok ? 127.0f / amax : 0.0f;
  for (int i = 0; i < n; ++i) {
    // cvtss2si rounds to nearest even (one instruction everywhere, no libm call).
    const float y = x[i] * inv;
    int v = y == y ? _mm_cvtss_si32(_mm_set_ss(y)) : 0;
    v = v > 127 ? 127 : (v < -127 ? -127 : v);
    q[i] = float(v);
  }
  return ok ? amax / 127.0f : 0.0f;
}

constexpr int kMaxHeadDim = 512;  // model_config rejects larger heads
constexpr int kMaxRows = 32;  // attention: query rows (tokens × heads of one kv head) per task; ≥ n_heads/n_kv_heads
constexpr int kKeyTile = 64;  // attention: keys per tile
static_assert(kKeyTile == kKvGroup, "a key tile must be one group of cache slots");

struct GemmArgs {
  const float* x = nullptr;      // [M, K] f32, row stride ldx
  int64_t ldx = 0;
  const void* w = nullptr;  // packed panels
  int64_t M = 0, N = 0, K = 0, Kp = 0;
  // q8 weights: the activations quantised by quantize_rows (8-bit rows of 4*Kq bytes, each row's
  // scale and the sum of its 8-bit values), and the weights' column scales.
  const int8_t* xq = nullptr;
  const float* x_scale = nullptr;
  const int32_t* x_sum = nullptr;
  int64_t Kq = 0;
  const float* w_scale = nullptr;
  const float* bias = nullptr;  // [N] or null
  float* out = nullptr;         // [M, N], row stride ldo
  int64_t ldo = 0;
  bool accumulate = false;
};

// Floats of per-thread scratch the attention kernel needs for head_dim hd.
inline int64_t attention_scratch_floats(int hd) {
  const int64_t hdp = (hd + kPanel - 1) / kPanel * kPanel;  // value rows padded for the GEMM tiles
  return kMaxRows * (hd + hdp) + int64_t(hd) * kKeyTile + kKeyTile * hdp + 2 * kKeyTile + kMaxRows * kKeyTile +
         2 * kMaxRows + 2 * int64_t(hd) + 64;
}

// One attention task: query tokens [t0, t1) of span s (all heads of kv head g), against the keys
// with positions in [k0, k1) that the layer lets them see. With `partial` set, the task writes
// its unnormalised state — m[rows], l[rows], o[rows × hd] — there instead of the output, so a long
// key range can be split over threads and merged (split-KV decode).
// With `staged` set, the tiles from key position staged_jb0 on (those holding the step's own keys)
// are read from there, built once for all the tasks of the span by stage_tile.
struct AttnTask {
  int32_t s = 0, g = 0, t0 = 0, t1 = 0;
  int32_t k0 = 0, k1 = 0;
  float* partial = nullptr;
  const float* staged = nullptr;
  int32_t staged_jb0 = 0;
  // Keys of positions before this one are read from the cache, later ones (the step's) from
  // qkv; -1: the span's pos0. The backend stores a span's keys and values before its attention
  // where it can and sets pos0 + n_tokens, so the tiles holding them are read in place.
  int32_t cached_end = -1;
};
inline int64_t attention_partial_floats(int rows, int hd) { return int64_t(rows) * (2 + hd); }
// Floats of one staged tile: KT[hd][kKeyTile], V[kKeyTile][hdp], then the keys' and values'
// scales KS[kKeyTile], VS[kKeyTile] (Q8 cache only: KT holds the raw 8-bit keys as floats, and
// the start of V the 8-bit values as bytes, in v8_index's layout).
inline int64_t attention_tile_floats(int hd) {
  return int64_t(hd) * kKeyTile + int64_t(kKeyTile) * ((hd + kPanel - 1) / kPanel * kPanel) + 2 * kKeyTile;
}

struct CpuKernels {
  const char* name;
  // out[m0:m1, panels p0:p1] of x · wᵀ
  void (*gemm_f32)(const GemmArgs& a, int64_t p0, int64_t p1, int64_t m0, int64_t m1);
  void (*gemm_bf16)(const GemmArgs& a, int64_t p0, int64_t p1, int64_t m0, int64_t m1);
  // q8 weights: out = (Σ xq·q) · x_scale · w_scale, the sum exact in 32-bit integers, so every
  // variant gives the same sums (vpdpbusd where the CPU has AVX-512 VNNI).
  void (*gemm_q8)(const GemmArgs& a, int64_t p0, int64_t p1, int64_t m0, int64_t m1);
  // Rows [r0, r1) of x [.., K] (row stride ldx) to 8-bit with q8_row's steps: q[r] (4*Kq bytes,
  // zero past K), scale[r], sum[r] = Σ q[r].
  // Whether gemm_q8 and the 8-bit attention scores run on integer dot-product instructions
  // (vpdpbusd) here, rather than as plain loops slower than bf16.
  bool (*fast_q8)();
  void (*quantize_rows)(const float* x, int64_t ldx, int64_t K, int64_t Kq, int8_t* q, float* scale, int32_t* sum,
                        int64_t r0, int64_t r1);
  void (*attention_task)(const AttentionParams& p, const AttnTask& t, float* scratch);
  // The tile of keys [jb, jb + kKeyTile) of span s, kv head g, as attention_task would assemble
  // it, into dst (attention_tile_floats).
  void (*stage_tile)(const AttentionParams& p, int32_t s, int32_t g, int32_t jb, float* dst);
  void (*rms_norm)(const float* x, const float* w, float eps, int64_t D, float* out, int64_t r0, int64_t r1);
  // gate_up rows [gate(F) | up(F)] → out rows (F)
  void (*swiglu)(const float* gate_up, int64_t F, float* out, int64_t r0, int64_t r1);
  // rotate rows [r0, r1) of p.qkv with a table of cos/sin [n_tokens, head_dim/2] each
  void (*rope)(const RopeParams& p, const float* cos_t, const float* sin_t, int64_t r0, int64_t r1);
};

extern const CpuKernels kKernelsAvx512;
extern const CpuKernels kKernelsAvx2;
extern const CpuKernels kKernelsBase;

}  // namespace hyco::cpu
