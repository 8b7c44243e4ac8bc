// CPU kernels: packed GEMM (f32 and bf16 weights), flash-style attention over rings and paged
// blocks (f32 or bf16 cache), RMSNorm, SwiGLU, RoPE. Compiled once per ISA variant
// (HYCO_CPU_VARIANT); plain C++ that the compiler vectorises, plus AVX-512 micro-kernels. bf16 is
// widened to f32 exactly and all arithmetic is f32.
// NOTE: no std templates here (see cpu_kernels.h); every row's arithmetic is independent of the
// other rows in the batch, so a token gives bit-identical results alone or in a batch.
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernels/cpu/cpu_kernels.h"

#ifndef HYCO_CPU_VARIANT
#error "HYCO_CPU_VARIANT must name the variant (avx512, avx2, base)"
#endif

namespace hyco::cpu {
namespace HYCO_CPU_VARIANT {
namespace {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

inline float bf16f(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// exp(x) to ~2 ulp, vectorisable: 2^n · p(r) with Cody–Waite reduction and a degree-7 Taylor
// polynomial (|r| ≤ ln2/2 gives a truncation error below 5e-9 relative).
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float n = __builtin_nearbyintf(x * 1.44269504088896341f);
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t e = int32_t(n) + 127;
  uint32_t bits = uint32_t(e) << 23;
  float s;
  std::memcpy(&s, &bits, 4);
  return p * s;
}

#if defined(__AVX512F__)
// fast_exp on 16 lanes: the same steps, each rounded the same way (fused where the scalar form
// is contracted to an FMA).
inline __m512 fast_exp(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}
#endif

// ---- GEMM micro-kernels ------------------------------------------------------------------------
// c[MR rows, kPanel cols] (+)= a[MR, K] · panel; nvalid ≤ kPanel columns are stored.

inline void store_tile(const float* acc, int mr, float* c, int64_t ldc, int nvalid, const float* bias, bool accumulate) {
  for (int r = 0; r < mr; ++r) {
    float* cr = c + r * ldc;
    const float* ar = acc + r * kPanel;
    for (int j = 0; j < nvalid; ++j) {
      float v = ar[j] + (bias ? bias[j] : 0.0f);
      cr[j] = accumulate ? cr[j] + v : v;
    }
  }
}

inline float widen(float x) { return x; }
inline float widen(uint16_t h) { return bf16f(h); }

// b: K rows of kPanel values (f32, or bf16 as in a bf16 cache), ldb apart.
template <int MR, class BT>
void mk_rows_portable(const float* a, int64_t lda, const BT* b, int64_t ldb, int64_t K, float* c, int64_t ldc,
                      int nvalid, const float* bias, bool accumulate) {
  float acc[MR * kPanel];
  for (int i = 0; i < MR * kPanel; ++i) acc[i] = 0.0f;
  float bf[kPanel];
  for (int64_t k = 0; k < K; ++k) {
    const BT* bk = b + k * ldb;
    for (int j = 0; j < kPanel; ++j) bf[j] = widen(bk[j]);
    for (int r = 0; r < MR; ++r) {
      float av = a[r * lda + k];
      float* ar = acc + r * kPanel;
      for (int j = 0; j < kPanel; ++j) ar[j] += av * bf[j];
    }
  }
  store_tile(acc, MR, c, ldc, nvalid, bias, accumulate);
}

// bf16 weights (interleaved pairs of k, see cpu_kernels.h) with f32 activations: the weights
// are widened exactly and accumulated one k at a time in ascending order, like the f32 kernel.
template <int MR>
void mk_w16_portable(const float* a, int64_t lda, const uint16_t* b, int64_t Kp, int64_t K, float* c, int64_t ldc,
                     int nvalid, const float* bias, bool accumulate) {
  float acc[MR * kPanel];
  for (int i = 0; i < MR * kPanel; ++i) acc[i] = 0.0f;
  float b0[kPanel], b1[kPanel];
  for (int64_t kk = 0; kk < Kp / 2; ++kk) {
    const uint16_t* bk = b + kk * 2 * kPanel;
    for (int j = 0; j < kPanel; ++j) {
      b0[j] = bf16f(bk[2 * j]);
      b1[j] = bf16f(bk[2 * j + 1]);
    }
    const bool odd = 2 * kk + 1 < K;
    for (int r = 0; r < MR; ++r) {
      float* ar = acc + r * kPanel;
      const float a0 = a[r * lda + 2 * kk];
      for (int j = 0; j < kPanel; ++j) ar[j] += a0 * b0[j];
      if (odd) {
        const float a1 = a[r * lda + 2 * kk + 1];
        for (int j = 0; j < kPanel; ++j) ar[j] += a1 * b1[j];
      }
    }
  }
  store_tile(acc, MR, c, ldc, nvalid, bias, accumulate);
}

#if defined(__AVX512F__)
inline void store_zmm_tile(__m512 (*acc)[4], int mr, float* c, int64_t ldc, int nvalid, const float* bias,
                           bool accumulate) {
  for (int r = 0; r < mr; ++r) {
    for (int v = 0; v < 4; ++v) {
      int n = nvalid - v * 16;
      if (n <= 0) break;
      __mmask16 m = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
      __m512 x = acc[r][v];
      if (bias) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, bias + v * 16));
      float* dst = c + r * ldc + v * 16;
      if (accumulate) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, dst));
      _mm512_mask_storeu_ps(dst, m, x);
    }
  }
}

template <int MR>
void mk_f32_avx512(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t K, float* c, int64_t ldc,
                   int nvalid, const float* bias, bool accumulate) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* bk = b + k * ldb;
    __m512 b0 = _mm512_loadu_ps(bk), b1 = _mm512_loadu_ps(bk + 16), b2 = _mm512_loadu_ps(bk + 32),
           b3 = _mm512_loadu_ps(bk + 48);
    for (int r = 0; r < MR; ++r) {
      __m512 av = _mm512_set1_ps(a[r * lda + k]);
      acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(av, b2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(av, b3, acc[r][3]);
    }
  }
  store_zmm_tile(acc, MR, c, ldc, nvalid, bias, accumulate);
}
#endif

#if defined(__AVX512F__)
// bf16 weights widened in registers: the low half of each 32-bit pair (k even) shifted up, the
// high half (k odd) masked; then f32 FMAs in k order. On the CPUs we measured, two f32 FMA ports
// outrun vdpbf16ps twice over, and the activations stay exact f32. (maskz_ forms of the
// intrinsics: GCC 12 warns about the undefined source of the unmasked ones.)
template <int MR>
void mk_w16_avx512(const float* a, int64_t lda, const uint16_t* b, int64_t Kp, int64_t K, float* c, int64_t ldc,
                   int nvalid, const float* bias, bool accumulate) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
  const __m512i hi_mask = _mm512_set1_epi32(int(0xffff0000u));
  const int64_t full = K / 2;  // pairs with both k present
  // Even k, then odd k, of a pair: 24 accumulators + 4 widened weights + 1 broadcast fit the 32
  // registers (interleaving both halves spills the accumulators).
  for (int64_t kk = 0; kk < full; ++kk) {
    const uint16_t* bk = b + kk * 2 * kPanel;
    const float* ak = a + 2 * kk;
    // The weights stream from memory once per step; fetch 8 pairs ahead (across page ends,
    // where the hardware prefetcher stops).
    for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(bk + 16 * kPanel + l * 32), _MM_HINT_T0);
    __m512 bv[4];
    for (int v = 0; v < 4; ++v)
      bv[v] = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(__mmask16(0xffff), _mm512_loadu_si512(bk + v * 32), 16));
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(ak[r * lda]);
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
    for (int v = 0; v < 4; ++v) bv[v] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_loadu_si512(bk + v * 32), hi_mask));
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(ak[r * lda + 1]);
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  if (full * 2 < K) {  // odd K: the last k alone
    const uint16_t* bk = b + full * 2 * kPanel;
    for (int v = 0; v < 4; ++v) {
      const __m512 b0 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(__mmask16(0xffff), _mm512_loadu_si512(bk + v * 32), 16));
      for (int r = 0; r < MR; ++r) acc[r][v] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * lda + 2 * full]), b0, acc[r][v]);
    }
  }
  (void)Kp;
  store_zmm_tile(acc, MR, c, ldc, nvalid, bias, accumulate);
}

// b: K rows of kPanel bf16 values, ldb apart, widened in registers. A row is two 512-bit loads
// of 32 values; a shift gives the even columns as f32 and a mask the odd ones (two operations
// per 32 values), so the accumulators hold even and odd columns apart until the store puts them
// back in order. Each output is the same sum in the same order as a plain widening would give.
template <int MR>
void mk_h_avx512(const float* a, int64_t lda, const uint16_t* b, int64_t ldb, int64_t K, float* c, int64_t ldc,
                 int nvalid, const float* bias, bool accumulate) {
  static_assert(kPanel == 64, "two 32-column halves per row");
  __m512 ev[MR][2], od[MR][2];
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h) ev[r][h] = od[r][h] = _mm512_setzero_ps();
  const __m512i hi_mask = _mm512_set1_epi32(int32_t(0xFFFF0000u));
  for (int64_t k = 0; k < K; ++k) {
    const uint16_t* bk = b + k * ldb;
    // The cache streams from memory: fetch 8 rows ahead.
    _mm_prefetch(reinterpret_cast<const char*>(bk + 8 * ldb), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(bk + 8 * ldb + 32), _MM_HINT_T0);
    __m512 be[2], bo[2];
    for (int h = 0; h < 2; ++h) {
      const __m512i x = _mm512_loadu_si512(bk + h * 32);
      be[h] = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(__mmask16(0xffff), x, 16));
      bo[h] = _mm512_castsi512_ps(_mm512_and_si512(x, hi_mask));
    }
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
      for (int h = 0; h < 2; ++h) {
        ev[r][h] = _mm512_fmadd_ps(av, be[h], ev[r][h]);
        od[r][h] = _mm512_fmadd_ps(av, bo[h], od[r][h]);
      }
    }
  }
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i up_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h) {
      acc[r][2 * h] = _mm512_permutex2var_ps(ev[r][h], lo_idx, od[r][h]);
      acc[r][2 * h + 1] = _mm512_permutex2var_ps(ev[r][h], up_idx, od[r][h]);
    }
  store_zmm_tile(acc, MR, c, ldc, nvalid, bias, accumulate);
}

#endif

// c[MR rows, kPanel cols] (+)= a[MR, K] · b[K, kPanel], b rows ldb apart: f32, or bf16 widened.
template <int MR, class BT>
inline void mk_rows(const float* a, int64_t lda, const BT* b, int64_t ldb, int64_t K, float* c, int64_t ldc,
                    int nvalid, const float* bias, bool accumulate) {
#if defined(__AVX512F__)
  if constexpr (sizeof(BT) == 4)
    mk_f32_avx512<MR>(a, lda, b, ldb, K, c, ldc, nvalid, bias, accumulate);
  else
    mk_h_avx512<MR>(a, lda, b, ldb, K, c, ldc, nvalid, bias, accumulate);
#else
  mk_rows_portable<MR>(a, lda, b, ldb, K, c, ldc, nvalid, bias, accumulate);
#endif
}

constexpr int kMR = 6;

// Runs f.template operator()<MR>(r) over the row blocks [r, r + MR) of `rows` rows: kMR rows at a
// time, then the rest as one block (a kernel's register tile is sized by MR at compile time).
template <class F>
inline void for_row_blocks(int rows, F&& f) {
  static_assert(kMR == 6, "the tail below covers 1 to kMR - 1 rows");
  int r = 0;
  for (; r + kMR <= rows; r += kMR) f.template operator()<kMR>(r);
  switch (rows - r) {
    case 5: f.template operator()<5>(r); break;
    case 4: f.template operator()<4>(r); break;
    case 3: f.template operator()<3>(r); break;
    case 2: f.template operator()<2>(r); break;
    case 1: f.template operator()<1>(r); break;
    default: break;
  }
}

// c[rows, n] (+)= a[rows, K] · b[K, n] for a small tile: b rows (f32, or bf16 widened on the fly)
// are ldb apart and readable up to a multiple of kPanel columns; only n columns are stored.
template <class BT>
void tile_gemm(int rows, const float* a, int64_t lda, const BT* b, int64_t ldb, int64_t K, int n, float* c,
               int64_t ldc, bool accumulate) {
  for (int p = 0; p * kPanel < n; ++p) {
    const int nvalid = n - p * kPanel < kPanel ? n - p * kPanel : kPanel;
    const BT* bp = b + p * kPanel;
    float* cp = c + p * kPanel;
    for_row_blocks(rows, [&]<int MR>(int r) {
      mk_rows<MR>(a + r * lda, lda, bp, ldb, K, cp + r * ldc, ldc, nvalid, nullptr, accumulate);
    });
  }
}

template <int MR>
void gemm_f32_rows(const GemmArgs& g, int64_t m, int64_t p0, int64_t p1) {
  const float* w = static_cast<const float*>(g.w);
  for (int64_t p = p0; p < p1; ++p) {
    int nvalid = int(imin(kPanel, g.N - p * kPanel));
    const float* panel = w + p * g.K * kPanel;
    const float* bias = g.bias ? g.bias + p * kPanel : nullptr;
    float* c = g.out + m * g.ldo + p * kPanel;
    mk_rows<MR>(g.x + m * g.ldx, g.ldx, panel, kPanel, g.K, c, g.ldo, nvalid, bias, g.accumulate);
  }
}

template <int MR>
void gemm_bf16_rows(const GemmArgs& g, int64_t m, int64_t p0, int64_t p1) {
  const uint16_t* w = static_cast<const uint16_t*>(g.w);
  for (int64_t p = p0; p < p1; ++p) {
    int nvalid = int(imin(kPanel, g.N - p * kPanel));
    const uint16_t* panel = w + p * g.Kp * kPanel;
    const float* bias = g.bias ? g.bias + p * kPanel : nullptr;
    float* c = g.out + m * g.ldo + p * kPanel;
#if defined(__AVX512F__)
    mk_w16_avx512<MR>(g.x + m * g.ldx, g.ldx, panel, g.Kp, g.K, c, g.ldo, nvalid, bias, g.accumulate);
#else
    mk_w16_portable<MR>(g.x + m * g.ldx, g.ldx, panel, g.Kp, g.K, c, g.ldo, nvalid, bias, g.accumulate);
#endif
  }
}

// ---- 8-bit weights ------------------------------------------------------------------------------
// Activations are rounded to 8 bits per row (q8_row's steps), weights per output column at load;
// the products are summed exactly in 32-bit integers and scaled once at the end. The weight bytes
// hold q + 128, so Σ (q_w + 128)·q_x = Σ q_w·q_x + 128·Σ q_x: the row sums of the activations
// (kept by quantize_rows) take the offset back out.

void quantize_rows(const float* x, int64_t ldx, int64_t K, int64_t Kq, int8_t* q, float* scale, int32_t* sum,
                   int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * ldx;
    int8_t* qr = q + r * 4 * Kq;
    float amax = 0.0f;
    int64_t k = 0;
#if defined(__AVX512F__)
    __m512 vmax = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16)  // max_ps returns its second operand when the first is NaN: NaN is skipped
      vmax = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xr + k)), vmax);
    amax = _mm512_reduce_max_ps(vmax);
#endif
    for (; k < K; ++k) {
      const float a = xr[k] < 0.0f ? -xr[k] : xr[k];
      amax = a > amax ? a : amax;
    }
    const bool ok = amax > 0.0f && amax <= 3.4028234663852886e38f && 127.0f / amax <= 3.4028234663852886e38f;
    const float inv = ok ? 127.0f / amax : 0.0f;
    int32_t total = 0;
    k = 0;
#if defined(__AVX512F__)
    __m512i vsum = _mm512_setzero_si512();
    const __m512 vinv = _mm512_set1_ps(inv);
    for (; k + 16 <= K; k += 16) {
      const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(xr + k), vinv);
      __m512i v = _mm512_maskz_cvtps_epi32(_mm512_cmp_ps_mask(y, y, _CMP_ORD_Q), y);  // nearest even; NaN → 0
      v = _mm512_min_epi32(_mm512_max_epi32(v, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
      vsum = _mm512_add_epi32(vsum, v);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + k), _mm512_cvtepi32_epi8(v));
    }
    total = _mm512_reduce_add_epi32(vsum);
#endif
    for (; k < K; ++k) {
      const float y = xr[k] * inv;
      int v = y == y ? _mm_cvtss_si32(_mm_set_ss(y)) : 0;
      v = v > 127 ? 127 : (v < -127 ? -127 : v);
      qr[k] = int8_t(v);
      total += v;
    }
    for (; k < 4 * Kq; ++k) qr[k] = 0;
    scale[r] = ok ? amax / 127.0f : 0.0f;
    sum[r] = total;
  }
}

// out = fma(acc − 128·x_sum, x_scale · w_scale, bias or 0) (+ out), for a tile of integer sums.
// One fused step, written as such in every kernel, so that no variant's compiler contracts a
// product and a sum differently (the results are the same bits on every variant).
inline void store_q8_tile(const int32_t* acc, int mr, const float* xs, const int32_t* xsum, const float* ws, float* c,
                          int64_t ldc, int nvalid, const float* bias, bool accumulate) {
  for (int r = 0; r < mr; ++r) {
    float* cr = c + r * ldc;
    for (int j = 0; j < nvalid; ++j) {
      const float s = xs[r] * ws[j];
      const float v = __builtin_fmaf(float(acc[r * kPanel + j] - 128 * xsum[r]), s, bias ? bias[j] : 0.0f);
      cr[j] = accumulate ? cr[j] + v : v;
    }
  }
}

template <int MR>
void mk_q8w_portable(const int8_t* xq, int64_t ldq, const float* xs, const int32_t* xsum, const uint8_t* b,
                     int64_t Kq, const float* ws, float* c, int64_t ldc, int nvalid, const float* bias,
                     bool accumulate) {
  int32_t acc[MR * kPanel];
  for (int i = 0; i < MR * kPanel; ++i) acc[i] = 0;
  for (int64_t kq = 0; kq < Kq; ++kq) {
    const uint8_t* bk = b + kq * 4 * kPanel;
    for (int r = 0; r < MR; ++r) {
      const int8_t* a = xq + r * ldq + 4 * kq;
      const int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
      int32_t* ar = acc + r * kPanel;
      for (int j = 0; j < kPanel; ++j)
        ar[j] += int32_t(bk[4 * j]) * a0 + int32_t(bk[4 * j + 1]) * a1 + int32_t(bk[4 * j + 2]) * a2 +
                 int32_t(bk[4 * j + 3]) * a3;
    }
  }
  store_q8_tile(acc, MR, xs, xsum, ws, c, ldc, nvalid, bias, accumulate);
}

#if defined(__AVX512F__)
// vpdpbusd: per 32-bit lane (one column), four unsigned weight bytes times four signed
// activation bytes, summed into the lane. Written as inline assembly: GCC 12 copies the
// accumulator of the intrinsic's tied operand through the stack (three moves per product).
inline __m512i dpbusd(__m512i acc, __m512i w_u8, __m512i x_s8) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w_u8), "v"(x_s8));
  return acc;
}

// 24 accumulators, 4 weight registers and a broadcast. Runs only where has_vnni().
template <int MR>
void mk_q8w_vnni(const int8_t* xq, int64_t ldq, const float* xs, const int32_t* xsum, const uint8_t* b, int64_t Kq,
                 const float* ws, float* c, int64_t ldc, int nvalid, const float* bias, bool accumulate,
                 const uint8_t* next = nullptr, int next_lines = 0) {
  __m512i acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_si512();
  for (int64_t kq = 0; kq < Kq; ++kq) {
    const uint8_t* bk = b + kq * 4 * kPanel;
    // The weights stream from memory once per step: fetch 4 quads of k ahead; or, on a pass over
    // a panel already in cache, lines of the next one (`next`, next_lines per quad; see
    // gemm_q8_decode).
    if (next)
      for (int l = 0; l < next_lines; ++l)
        _mm_prefetch(reinterpret_cast<const char*>(next + (kq * next_lines + l) * 64), _MM_HINT_T1);
    else
      for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(bk + 16 * kPanel + l * 64), _MM_HINT_T0);
    __m512i bv[4];
    for (int v = 0; v < 4; ++v) bv[v] = _mm512_loadu_si512(bk + v * 64);
    for (int r = 0; r < MR; ++r) {
      int32_t a4;
      std::memcpy(&a4, xq + r * ldq + 4 * kq, 4);
      const __m512i av = _mm512_set1_epi32(a4);
      for (int v = 0; v < 4; ++v) acc[r][v] = dpbusd(acc[r][v], bv[v], av);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m512i off = _mm512_set1_epi32(128 * xsum[r]);
    const __m512 sx = _mm512_set1_ps(xs[r]);
    for (int v = 0; v < 4; ++v) {
      const int n = nvalid - v * 16;
      if (n <= 0) break;
      const __mmask16 m = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
      const __m512 s = _mm512_mul_ps(sx, _mm512_loadu_ps(ws + v * 16));
      const __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + v * 16) : _mm512_setzero_ps();
      __m512 x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][v], off)), s, b);
      float* dst = c + r * ldc + v * 16;
      if (accumulate) x = _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), x);
      _mm512_mask_storeu_ps(dst, m, x);
    }
  }
}

// Whether this CPU runs vpdpbusd (asked once; __builtin_cpu_init first, as this may run before
// libgcc's own initialiser).
bool has_vnni() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return bool(__builtin_cpu_supports("avx512vnni"));
  }();
  return yes;
}
#endif

bool fast_q8() {
#if defined(__AVX512F__)
  return has_vnni();
#else
  return false;
#endif
}

// `next` / next_lines: the VNNI kernel's fetch of the next panel (gemm_q8_decode); none by default.
template <int MR>
void gemm_q8_rows(const GemmArgs& g, int64_t m, int64_t p0, int64_t p1, const uint8_t* next = nullptr,
                  int next_lines = 0) {
  const uint8_t* w = static_cast<const uint8_t*>(g.w);
  const int64_t ldq = 4 * g.Kq;
#if defined(__AVX512F__)
  const bool vnni = has_vnni();
#endif
  for (int64_t p = p0; p < p1; ++p) {
    const int nvalid = int(imin(kPanel, g.N - p * kPanel));
    const uint8_t* panel = w + p * g.Kq * 4 * kPanel;
    const float* bias = g.bias ? g.bias + p * kPanel : nullptr;
    const float* ws = g.w_scale + p * kPanel;
    float* c = g.out + m * g.ldo + p * kPanel;
#if defined(__AVX512F__)
    if (vnni) {
      mk_q8w_vnni<MR>(g.xq + m * ldq, ldq, g.x_scale + m, g.x_sum + m, panel, g.Kq, ws, c, g.ldo, nvalid, bias,
                      g.accumulate, next, next_lines);
      continue;
    }
#endif
    mk_q8w_portable<MR>(g.xq + m * ldq, ldq, g.x_scale + m, g.x_sum + m, panel, g.Kq, ws, c, g.ldo, nvalid, bias,
                        g.accumulate);
  }
}

// Rows in blocks of kMR; within a block, all panels of the range (the panels of one block of
// rows stay in L2 while the rows stream).
// rows.template operator()<MR>(m, pa, pb): rows [m, m + MR) over panels [pa, pb).
template <class Rows>
void gemm_blocks(const GemmArgs& g, int64_t p0, int64_t p1, int64_t m0, int64_t m1, Rows&& rows) {
  // Panels in groups so that a group's weights (≤ ~1 MB) stay in L2 across all row blocks. A
  // few rows (decode) go over one panel at a time: it stays in L1/L2 for every row block and the
  // weights stream from memory once.
  int64_t panel_bytes = (g.Kq ? g.Kq * 4 : g.Kp ? g.Kp * 2 : g.K * 4) * kPanel;
  int64_t group = m1 - m0 <= 4 * kMR ? 1 : imax(1, (1 << 20) / imax(1, panel_bytes));
  for (int64_t pg = p0; pg < p1; pg += group) {
    const int64_t pe = imin(p1, pg + group);
    for_row_blocks(int(m1 - m0), [&]<int MR>(int r) { rows.template operator()<MR>(m0 + r, pg, pe); });
  }
}

void gemm_f32(const GemmArgs& g, int64_t p0, int64_t p1, int64_t m0, int64_t m1) {
  gemm_blocks(g, p0, p1, m0, m1, [&]<int MR>(int64_t m, int64_t a, int64_t b) { gemm_f32_rows<MR>(g, m, a, b); });
}
void gemm_bf16(const GemmArgs& g, int64_t p0, int64_t p1, int64_t m0, int64_t m1) {
  gemm_blocks(g, p0, p1, m0, m1, [&]<int MR>(int64_t m, int64_t a, int64_t b) { gemm_bf16_rows<MR>(g, m, a, b); });
}
#if defined(__AVX512F__)
// Decode rows (2 to 4 blocks of kMR rows, one panel at a time as gemm_blocks would): the first
// block's pass over a panel waits on memory, the others compute from L1/L2 and leave the load
// ports and fill buffers mostly idle. Those later passes ask for the next panel into L2, a few
// lines per quad of k (spread, not in a burst that would fill the line buffers), so the next
// panel's first pass finds it there. 12, 16 and 24 rows over the default model's matrices on one
// core, old and new kernels alternated: mean 2.4-2.5 → 1.8-2.1, 2.3-3.5 → 2.2-2.3 and
// 3.3-3.5 → 2.7-3.3 ms. A 16-sequence decode step at 2.4K context: 3-6% faster (hyco bench, both
// ways alternated at random in one process, 80 repeats, three runs).
void gemm_q8_decode(const GemmArgs& g, int64_t p0, int64_t p1, int64_t m0, int64_t m1) {
  const int64_t n_blocks = (m1 - m0 + kMR - 1) / kMR;
  const int64_t panel_bytes = g.Kq * 4 * kPanel;  // 4 lines per quad of k
  // Passes 1 .. n_blocks-1 share the next panel's lines: each fetches its part, next_lines per quad.
  const int next_lines = int((4 + n_blocks - 2) / (n_blocks - 1));
  for (int64_t p = p0; p < p1; ++p) {
    const uint8_t* next = p + 1 < p1 ? static_cast<const uint8_t*>(g.w) + (p + 1) * panel_bytes : nullptr;
    for_row_blocks(int(m1 - m0), [&]<int MR>(int r) {
      const int64_t b = r / kMR;  // the block's index
      const uint8_t* part = b > 0 && next ? next + (b - 1) * g.Kq * next_lines * 64 : nullptr;
      gemm_q8_rows<MR>(g, m0 + r, p, p + 1, part, next_lines);
    });
  }
}
#endif

void gemm_q8(const GemmArgs& g, int64_t p0, int64_t p1, int64_t m0, int64_t m1) {
#if defined(__AVX512F__)
  // gemm_blocks' one-panel-at-a-time case, with at least one full block of rows after the first
  // (7 to 11 rows: no clear change by the same measure, so they keep the plain path).
  if (has_vnni() && m1 - m0 >= 2 * kMR && m1 - m0 <= 4 * kMR) {
    gemm_q8_decode(g, p0, p1, m0, m1);
    return;
  }
#endif
  gemm_blocks(g, p0, p1, m0, m1, [&]<int MR>(int64_t m, int64_t a, int64_t b) { gemm_q8_rows<MR>(g, m, a, b); });
}

// ---- attention -----------------------------------------------------------------------------------

// The sum of 16 lanes as a fixed tree: lanes i and i + 8, then i + 4, i + 2, i + 1 (the order
// _mm512_reduce_add_ps uses), so every variant reduces a row the same way.
inline float tree_sum16(const float* lane) {
  float s8[8], s4[4];
  for (int i = 0; i < 8; ++i) s8[i] = lane[i] + lane[i + 8];
  for (int i = 0; i < 4; ++i) s4[i] = s8[i] + s8[i + 4];
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// Online softmax over one tile of kKeyTile scores for `rows` rows (row r at sc + r * kKeyTile,
// keys jb + jj): scores of keys outside [klo[r], khi[r]) are masked; the rest become weights
// exp(score - m) with m the row's running max (updated), and their sum is added to the running
// sum l after rescaling it. corr[r] gets the factor the row's accumulated output must be rescaled
// by (exactly 1 when the max did not change). A row is reduced the same way alone or in a batch:
// the max in any order (it is exact), the sum in 16 lanes (lane i takes keys i, i + 16, ...) and
// then tree_sum16. The phases run over all rows, so the rescale factors take one vector exp per
// 16 rows.
inline void softmax_tile(float* sc, int rows, int32_t jb, const int32_t* klo, const int32_t* khi, float* m, float* l,
                         float* corr) {
  static_assert(kKeyTile % 16 == 0, "tiles are whole 16-lane groups");
  float m_new[kMaxRows];
  // Phase 1: mask and row max.
  for (int r = 0; r < rows; ++r) {
    float* sr = sc + r * kKeyTile;
    float mx = -INFINITY;
#if defined(__AVX512F__)
    const __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 mv = ninf;
    for (int j16 = 0; j16 < kKeyTile; j16 += 16) {
      const __m512i j = _mm512_add_epi32(_mm512_set1_epi32(jb + j16), idx);
      const __mmask16 ok =
          _mm512_cmpge_epi32_mask(j, _mm512_set1_epi32(klo[r])) & _mm512_cmplt_epi32_mask(j, _mm512_set1_epi32(khi[r]));
      const __m512 v = _mm512_mask_loadu_ps(ninf, ok, sr + j16);
      _mm512_storeu_ps(sr + j16, v);
      mv = _mm512_max_ps(v, mv);
    }
    mx = _mm512_reduce_max_ps(mv);
#else
    for (int jj = 0; jj < kKeyTile; ++jj) {
      const int32_t j = jb + jj;
      const float v = j >= klo[r] && j < khi[r] ? sr[jj] : -INFINITY;
      sr[jj] = v;
      mx = v > mx ? v : mx;
    }
#endif
    m_new[r] = m[r] > mx ? m[r] : mx;
  }
  // Rescale factors exp(m - m_new); 0 for a row that had no visible key before this tile (it
  // has nothing accumulated).
  for (int r0 = 0; r0 < rows; r0 += 16) {
    const int n = rows - r0 < 16 ? rows - r0 : 16;
#if defined(__AVX512F__)
    const __mmask16 live = __mmask16((1u << n) - 1);
    const __m512 f = _mm512_maskz_loadu_ps(live, m + r0), t = _mm512_maskz_loadu_ps(live, m_new + r0);
    const __mmask16 fin = _mm512_cmp_ps_mask(f, _mm512_set1_ps(-INFINITY), _CMP_NEQ_UQ) & live;
    const __m512 e = _mm512_maskz_mov_ps(fin, fast_exp(_mm512_maskz_sub_ps(fin, f, t)));
    _mm512_mask_storeu_ps(corr + r0, live, e);
#else
    for (int i = 0; i < n; ++i) corr[r0 + i] = m[r0 + i] == -INFINITY ? 0.0f : fast_exp(m[r0 + i] - m_new[r0 + i]);
#endif
  }
  // Phase 2: weights and their sum.
  for (int r = 0; r < rows; ++r) {
    float* sr = sc + r * kKeyTile;
    if (m_new[r] == -INFINITY) {  // no visible key in this tile, nor before it
      for (int jj = 0; jj < kKeyTile; ++jj) sr[jj] = 0.0f;
      corr[r] = 1.0f;
      continue;
    }
    float lane[16];
#if defined(__AVX512F__)
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 sv = _mm512_setzero_ps();
    const __m512 mn = _mm512_set1_ps(m_new[r]);
    for (int j16 = 0; j16 < kKeyTile; j16 += 16) {
      const __m512 v = _mm512_loadu_ps(sr + j16);
      const __mmask16 vis = _mm512_cmp_ps_mask(v, ninf, _CMP_NEQ_UQ);
      const __m512 e = _mm512_maskz_mov_ps(vis, fast_exp(_mm512_sub_ps(v, mn)));
      _mm512_storeu_ps(sr + j16, e);
      sv = _mm512_add_ps(sv, e);
    }
    _mm512_storeu_ps(lane, sv);
#else
    for (int i = 0; i < 16; ++i) lane[i] = 0.0f;
    for (int j16 = 0; j16 < kKeyTile; j16 += 16)
      for (int i = 0; i < 16; ++i) {
        const float v = sr[j16 + i];
        const float e = v == -INFINITY ? 0.0f : fast_exp(v - m_new[r]);
        sr[j16 + i] = e;
        lane[i] += e;
      }
#endif
    l[r] = l[r] * corr[r] + tree_sum16(lane);
    m[r] = m_new[r];
  }
}

struct AttnCtx {
  const AttentionParams* p;
  const SeqSpan* sp;
  const int32_t* table;
  int32_t g;
  int hd;
};

// Head g of key (which = 0) or value (which = 1) at position j, as f32 in dst[d * stride]. Rows
// of the step come from qkv; earlier ones from the cache. Keys of the step are rounded to what
// the cache will hold (bf16, or 8 bits), so decode and prefill see the same values. Returns the
// row's scale: with a Q8 cache dst gets the raw 8-bit values and their product with the scale is
// the key; 1 otherwise.
inline float load_kv(const AttnCtx& c, int32_t j, int which, float* dst, int64_t stride) {
  const AttentionParams& p = *c.p;
  const int hd = c.hd;
  const bool bf16 = p.kv_dtype == DType::BF16;
  const bool q8 = p.kv_dtype == DType::Q8;
  if (j >= c.sp->pos0) {
    const float* row = p.qkv + int64_t(c.sp->tok_start + j - c.sp->pos0) * p.qkv_stride;
    const float* x = row + int64_t(p.n_heads + which * p.n_kv_heads + c.g) * hd;
    if (q8) {
      float q[kMaxHeadDim];
      const float s = q8_row(x, hd, q);
      for (int d = 0; d < hd; ++d) dst[d * stride] = q[d];
      return s;
    }
    for (int d = 0; d < hd; ++d) dst[d * stride] = bf16 ? bf16f(to_bf16(x[d])) : x[d];
    return 1.0f;
  }
  const int64_t kvw = int64_t(p.n_kv_heads) * hd;
  const int64_t slot = kv_slot(p.layout, *c.sp, c.table, j);
  const int64_t e0 = int64_t(c.g) * hd;
  const void* cache = which == 0 ? p.k_cache : p.v_cache;
  for (int d = 0; d < hd; ++d) {
    if (q8) {  // keys stored as k + 128
      dst[d * stride] = which == 0 ? float(int(static_cast<const uint8_t*>(cache)[k8_offset(slot, e0 + d, kvw, hd)]) - 128)
                                   : float(static_cast<const int8_t*>(cache)[v8_offset(slot, e0 + d, kvw, hd)]);
      continue;
    }
    const int64_t o = which == 0 ? k_offset(slot, e0 + d, kvw) : v_offset(slot, e0 + d, kvw, hd);
    dst[d * stride] = bf16 ? bf16f(static_cast<const uint16_t*>(cache)[o]) : static_cast<const float*>(cache)[o];
  }
  return q8 ? (which == 0 ? p.k_scale : p.v_scale)[k_offset(slot, c.g, p.n_kv_heads)] : 1.0f;
}

// Tile scratch for keys [a, b) of a group (columns a..b-1): KT[hd][kKeyTile] and V[kKeyTile][hdp]
// get the cached keys and values of kv head g widened to f32, every other column zero; with a Q8
// cache KT the raw 8-bit keys as floats, V the 8-bit values as bytes (v8_index's layout), and
// KS/VS[kKeyTile] their scales (0 in the other columns). `base` is the group's first slot (unused
// when a == b). With `keys` false KT is left alone; with V null only KT is written.
inline void copy_kv_run(const AttentionParams& p, int64_t base, int g, int a, int b, float* KT, float* V, int64_t hdp,
                        float* KS, float* VS, bool keys = true) {
  const int hd = p.head_dim;
  const int64_t kvw = int64_t(p.n_kv_heads) * hd;
  const bool bf16 = p.kv_dtype == DType::BF16;
  const bool q8 = p.kv_dtype == DType::Q8;
  if (q8 && keys) {
    // 8-bit keys (k8_index's layout, k + 128) widened to [hd][kKeyTile].
    const uint8_t* kb = static_cast<const uint8_t*>(p.k_cache) + (a < b ? k8_offset(base, int64_t(g) * hd, kvw, hd) : 0);
    int d = 0;
#if defined(__AVX512F__)
    for (; d + 4 <= hd && hd % 4 == 0; d += 4)
      for (int c = 0; c < kKeyTile; c += 16) {
        const int n0 = a > c ? a - c : 0, n1 = b - c < 16 ? (b - c > 0 ? b - c : 0) : 16;
        const __mmask16 m = n1 > n0 ? __mmask16(((1u << n1) - 1) & ~((1u << n0) - 1)) : __mmask16(0);
        // Lane i: dims d..d+3 of key c + i; back to signed, then each dim sign-extended from its byte.
        const __m512i x = _mm512_maskz_xor_epi32(m, _mm512_maskz_loadu_epi32(m, kb + k8_index(c, d, hd)), _mm512_set1_epi8(int8_t(0x80)));
        _mm512_storeu_ps(KT + int64_t(d) * kKeyTile + c, _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(x, 24), 24)));
        _mm512_storeu_ps(KT + int64_t(d + 1) * kKeyTile + c, _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(x, 16), 24)));
        _mm512_storeu_ps(KT + int64_t(d + 2) * kKeyTile + c, _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(x, 8), 24)));
        _mm512_storeu_ps(KT + int64_t(d + 3) * kKeyTile + c, _mm512_cvtepi32_ps(_mm512_srai_epi32(x, 24)));
      }
#endif
    for (; d < hd; ++d)
      for (int c = 0; c < kKeyTile; ++c)
        KT[int64_t(d) * kKeyTile + c] = c < a || c >= b ? 0.0f : float(int(kb[k8_index(c, d, hd)]) - 128);
  }
  for (int d = 0; d < (keys && !q8 ? hd : 0); ++d) {
    float* dst = KT + int64_t(d) * kKeyTile;
    const int64_t o = a < b ? k_offset(base, int64_t(g) * hd + d, kvw) : 0;
#if defined(__AVX512F__)
    for (int c = 0; c < kKeyTile; c += 16) {
      const int n0 = a > c ? a - c : 0, n1 = b - c < 16 ? (b - c > 0 ? b - c : 0) : 16;
      const __mmask16 m = n1 > n0 ? __mmask16(((1u << n1) - 1) & ~((1u << n0) - 1)) : __mmask16(0);
      __m512 x;
      if (bf16) {
        const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p.k_cache) + o + c);
        x = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(m, _mm512_maskz_cvtepu16_epi32(m, h), 16));
      } else {
        x = _mm512_maskz_loadu_ps(m, static_cast<const float*>(p.k_cache) + o + c);
      }
      _mm512_storeu_ps(dst + c, x);
    }
#else
    for (int c = 0; c < kKeyTile; ++c)
      dst[c] = c < a || c >= b ? 0.0f
               : bf16         ? bf16f(static_cast<const uint16_t*>(p.k_cache)[o + c])
                              : static_cast<const float*>(p.k_cache)[o + c];
#endif
  }
  if (!V) return;
  if (q8) {
    // The group's block of this head as it is (its layout is the tile's), then the columns
    // outside [a, b) zeroed.
    int8_t* V8 = reinterpret_cast<int8_t*>(V);
    if (a < b)
      std::memcpy(V8, static_cast<const int8_t*>(p.v_cache) + v8_offset(base, int64_t(g) * hd, kvw, hd),
                  size_t(kKeyTile) * size_t(hd));
    else
      std::memset(V8, 0, size_t(kKeyTile) * size_t(hd));
    for (int c = 0; c < kKeyTile; ++c) {
      const bool in = c >= a && c < b;
      KS[c] = in ? p.k_scale[k_offset(base + c, g, p.n_kv_heads)] : 0.0f;
      VS[c] = in ? p.v_scale[k_offset(base + c, g, p.n_kv_heads)] : 0.0f;
      if (!in && a < b)
        for (int d = 0; d < hd; ++d) V8[v8_index(c, d, hd)] = 0;
    }
    return;
  }
  for (int c = 0; c < kKeyTile; ++c) {
    float* dst = V + c * hdp;
    if (c < a || c >= b) {
      for (int d = 0; d < hd; ++d) dst[d] = 0.0f;
      continue;
    }
    const int64_t o = v_offset(base + c, int64_t(g) * hd, kvw, hd);
    if (bf16) {
      const uint16_t* src = static_cast<const uint16_t*>(p.v_cache) + o;
      for (int d = 0; d < hd; ++d) dst[d] = bf16f(src[d]);
    } else {
      const float* src = static_cast<const float*>(p.v_cache) + o;
      for (int d = 0; d < hd; ++d) dst[d] = src[d];
    }
  }
}

// Cached keys [lo, c_hi) of the tile at jb on consecutive slots of one aligned group: that
// group's first slot, else -1 (also when the range is empty). A local layer's ring maps a tile
// linearly or, across the sinks' edge, visibly not (its ends tell); a global layer's blocks
// smaller than a tile are each checked, since blocks in the middle may lie elsewhere.
inline int64_t cached_run_base(const AttentionParams& p, const SeqSpan& sp, const int32_t* table, int32_t jb, int32_t lo,
                               int32_t c_hi) {
  if (lo >= c_hi) return -1;
  const int64_t s_lo = kv_slot(p.layout, sp, table, lo);
  const int64_t b0 = s_lo - (lo - jb);
  if (b0 % kKeyTile != 0) return -1;
  if (!p.layout.local) {
    const int32_t bs = p.layout.block_size;
    for (int32_t q = (lo / bs + 1) * bs; q < c_hi; q += bs)
      if (kv_slot(p.layout, sp, table, q) != s_lo + (q - lo)) return -1;
  }
  return kv_slot(p.layout, sp, table, c_hi - 1) == s_lo + (c_hi - 1 - lo) ? b0 : -1;
}

// Keys and values of positions [a, b), one by one, into the columns of the tile at jb.
inline void gather_kv(const AttnCtx& ctx, int32_t jb, int32_t a, int32_t b, float* KT, float* V, int64_t hdp, float* KS,
                      float* VS) {
  const bool q8 = ctx.p->kv_dtype == DType::Q8;
  for (int32_t j = a; j < b; ++j) {
    KS[j - jb] = load_kv(ctx, j, 0, KT + (j - jb), kKeyTile);
    if (q8) {  // 8-bit values as bytes, v8_index's layout
      float v[kMaxHeadDim];
      VS[j - jb] = load_kv(ctx, j, 1, v, 1);
      int8_t* V8 = reinterpret_cast<int8_t*>(V);
      for (int d = 0; d < ctx.hd; ++d) V8[v8_index(j - jb, d, ctx.hd)] = int8_t(v[d]);
    } else {
      VS[j - jb] = load_kv(ctx, j, 1, V + int64_t(j - jb) * hdp, 1);
    }
  }
}

// The tile at jb assembled in KT/V (scales in KS/VS): the cached keys [c_lo, c_hi) as one run
// when `base` (cached_run_base) found one, else one by one; then the step's own keys [o_lo, hi);
// every other column zero.
inline void assemble_tile(const AttnCtx& ctx, int64_t base, int32_t jb, int32_t c_lo, int32_t c_hi, int32_t o_lo,
                          int32_t hi, float* KT, float* V, int64_t hdp, float* KS, float* VS) {
  copy_kv_run(*ctx.p, base, ctx.g, base >= 0 ? c_lo - jb : 0, base >= 0 ? c_hi - jb : 0, KT, V, hdp, KS, VS);
  if (base < 0) gather_kv(ctx, jb, c_lo, c_hi, KT, V, hdp, KS, VS);
  gather_kv(ctx, jb, o_lo, hi, KT, V, hdp, KS, VS);
}

// A tile of a prefill span, built once for all its tasks: every column a query of the span may
// see holds its key and value as the tasks would gather them (cached ones widened, the step's own
// rounded to what the cache will hold); the other columns are zero. For a local layer those are
// the sinks and the window of the span's first token (older ring slots may hold other positions).
void stage_tile(const AttentionParams& p, int32_t s, int32_t g, int32_t jb, float* dst) {
  const SeqSpan& sp = p.meta.spans[s];
  const int hd = p.head_dim;
  const int hdp = (hd + kPanel - 1) / kPanel * kPanel;
  const bool local = p.layout.local;
  const int32_t* table = local ? nullptr : p.meta.global_tables + int64_t(sp.table_row) * p.meta.table_stride;
  const AttnCtx ctx{&p, &sp, table, g, hd};
  float* KT = dst;
  float* V = dst + int64_t(hd) * kKeyTile;
  float* KS = V + int64_t(kKeyTile) * hdp;
  float* VS = KS + kKeyTile;
  for (int64_t i = 0; i < int64_t(kKeyTile) * (hdp + 2); ++i) V[i] = 0.0f;  // value padding, scales
  const int32_t hi = int32_t(imin(jb + kKeyTile, int64_t(sp.pos0) + sp.n_tokens));
  const int32_t S = local ? p.layout.n_sinks : 0;
  const int32_t c_lo = local ? int32_t(imax(jb, imax(S, int64_t(sp.pos0) - p.layout.window + 1))) : jb;
  const int32_t c_hi = int32_t(imin(hi, sp.pos0));
  assemble_tile(ctx, cached_run_base(p, sp, table, jb, c_lo, c_hi), jb, c_lo, c_hi, int32_t(imax(jb, sp.pos0)), hi, KT,
                V, hdp, KS, VS);
  gather_kv(ctx, jb, jb, int32_t(imin(imin(S, sp.pos0), hi)), KT, V, hdp, KS, VS);  // sinks
}

#if defined(__AVX512F__)
// Scores of `rows` 8-bit query rows (q: rows of hd signed bytes, ldq apart) against a tile of 8-bit keys of a Q8
// cache read in place (kt: the head's block, k8_index's layout: a 512-bit load is four dims of 16
// keys, each byte k + 128), as the exact integer sums Σ q·k (128·Σq taken back out) into
// sc [rows][kKeyTile] as floats. Runs only where has_vnni(), for hd a multiple of 4.
template <int MR>
void qk_q8_vnni(const int8_t* q, int64_t ldq, int hd, const int32_t* qsum, const uint8_t* kt, float* sc) {
  __m512i acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_si512();
  for (int d = 0; d < hd; d += 4) {
    const uint8_t* k = kt + k8_index(0, d, hd);
    __m512i kv[4];
    for (int j = 0; j < 4; ++j) kv[j] = _mm512_loadu_si512(k + 64 * j);  // keys 16j..16j+15
    for (int r = 0; r < MR; ++r) {
      int32_t q4;
      std::memcpy(&q4, q + r * ldq + d, 4);
      const __m512i qv = _mm512_set1_epi32(q4);
      for (int j = 0; j < 4; ++j) acc[r][j] = dpbusd(acc[r][j], kv[j], qv);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m512i off = _mm512_set1_epi32(128 * qsum[r]);
    for (int j = 0; j < 4; ++j)
      _mm512_storeu_ps(sc + r * kKeyTile + 16 * j, _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][j], off)));
  }
}

void qk_q8_tile(int rows, const int8_t* q, int64_t ldq, int hd, const int32_t* qsum, const uint8_t* kt, float* sc) {
  for_row_blocks(rows, [&]<int MR>(int r) { qk_q8_vnni<MR>(q + r * ldq, ldq, hd, qsum + r, kt, sc + r * kKeyTile); });
}
#endif

#if defined(__AVX512F__)
// o[MR rows][16·NB dims from d0] += ps[r] · Σ_c pq[r][c]·v[c][d] over the 64 columns of a tile of
// 8-bit values v (v8_index's layout: a 512-bit load at dim d is dims d..d+15 × four columns),
// the sums exact in 32-bit integers. Runs only where has_vnni().
template <int MR, int NB>
void pv_q8_vnni(const uint8_t* pq, const float* ps, const int8_t* v, int hd, int d0, float* o, int64_t ldo) {
  __m512i acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_si512();
  for (int c4 = 0; c4 < kKeyTile / 4; ++c4) {
    const int8_t* vc = v + int64_t(c4) * 4 * hd + int64_t(d0) * 4;
    __m512i vv[NB];
    for (int j = 0; j < NB; ++j) vv[j] = _mm512_loadu_si512(vc + 64 * j);
    for (int r = 0; r < MR; ++r) {
      int32_t p4;
      std::memcpy(&p4, pq + r * kKeyTile + 4 * c4, 4);
      const __m512i pv = _mm512_set1_epi32(p4);
      for (int j = 0; j < NB; ++j) acc[r][j] = dpbusd(acc[r][j], pv, vv[j]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m512 s = _mm512_set1_ps(ps[r]);
    for (int j = 0; j < NB; ++j) {
      float* dst = o + r * ldo + d0 + 16 * j;
      _mm512_storeu_ps(dst, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][j]), s, _mm512_loadu_ps(dst)));
    }
  }
}

template <int MR>
void pv_q8_rows(const uint8_t* pq, const float* ps, const int8_t* v, int hd, float* o, int64_t ldo) {
  int d0 = 0;
  for (; d0 + 64 <= hd; d0 += 64) pv_q8_vnni<MR, 4>(pq, ps, v, hd, d0, o, ldo);
  switch ((hd - d0) / 16) {
    case 3: pv_q8_vnni<MR, 3>(pq, ps, v, hd, d0, o, ldo); break;
    case 2: pv_q8_vnni<MR, 2>(pq, ps, v, hd, d0, o, ldo); break;
    case 1: pv_q8_vnni<MR, 1>(pq, ps, v, hd, d0, o, ldo); break;
    default: break;
  }
}
#endif

// The weights of a tile for the 8-bit values, as bytes: row r's w[c] = sc[r][c] · vs[c] (the
// softmax weight times the value's scale) becomes pq[r][c] = round(w[c] / ps[r]) with
// ps[r] = max w / 255 (nearest even, like q8_row; a row without weight gets 0 and 0).
inline void quantize_weights(const float* sc, int rows, const float* vs, uint8_t* pq, float* ps) {
  for (int r = 0; r < rows; ++r) {
    const float* sr = sc + r * kKeyTile;
    uint8_t* qr = pq + r * kKeyTile;
#if defined(__AVX512F__)
    __m512 w[kKeyTile / 16];
    __m512 mx = _mm512_setzero_ps();
    for (int i = 0; i < kKeyTile / 16; ++i) {
      w[i] = _mm512_mul_ps(_mm512_loadu_ps(sr + 16 * i), _mm512_loadu_ps(vs + 16 * i));
      mx = _mm512_max_ps(w[i], mx);
    }
    const float wmax = _mm512_reduce_max_ps(mx);
#else
    float w[kKeyTile];
    float wmax = 0.0f;
    for (int c = 0; c < kKeyTile; ++c) {
      w[c] = sr[c] * vs[c];
      wmax = w[c] > wmax ? w[c] : wmax;
    }
#endif
    const bool ok = wmax > 0.0f && 255.0f / wmax <= 3.4028234663852886e38f;
    const float inv = ok ? 255.0f / wmax : 0.0f;
    ps[r] = ok ? wmax / 255.0f : 0.0f;
#if defined(__AVX512F__)
    for (int i = 0; i < kKeyTile / 16; ++i) {
      __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(w[i], _mm512_set1_ps(inv)));
      q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_setzero_si512()), _mm512_set1_epi32(255));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + 16 * i), _mm512_cvtepi32_epi8(q));
    }
#else
    for (int c = 0; c < kKeyTile; ++c) {
      int q = _mm_cvtss_si32(_mm_set_ss(w[c] * inv));
      q = q < 0 ? 0 : (q > 255 ? 255 : q);
      qr[c] = uint8_t(q);
    }
#endif
  }
}

// o[rows][hd] += ps[r] · Σ_c pq[r][c]·v[c][d] for a tile of 8-bit values (v8_index's layout); the
// sums are exact integers and each output one fused multiply-add, so every variant agrees.
void pv_q8_tile(int rows, const uint8_t* pq, const float* ps, const int8_t* v, int hd, float* o, int64_t ldo) {
#if defined(__AVX512F__)
  if (has_vnni() && hd % 16 == 0) {
    for_row_blocks(rows, [&]<int MR>(int r) { pv_q8_rows<MR>(pq + r * kKeyTile, ps + r, v, hd, o + r * ldo, ldo); });
    return;
  }
#endif
  int32_t acc[kMaxHeadDim];
  for (int r = 0; r < rows; ++r) {
    const uint8_t* qr = pq + r * kKeyTile;
    for (int d = 0; d < hd; ++d) acc[d] = 0;
    for (int c4 = 0; c4 < kKeyTile / 4; ++c4) {
      const int8_t* vc = v + int64_t(c4) * 4 * hd;
      const int32_t p0 = qr[4 * c4], p1 = qr[4 * c4 + 1], p2 = qr[4 * c4 + 2], p3 = qr[4 * c4 + 3];
      for (int d = 0; d < hd; ++d)
        acc[d] += p0 * vc[4 * d] + p1 * vc[4 * d + 1] + p2 * vc[4 * d + 2] + p3 * vc[4 * d + 3];
    }
    float* orow = o + r * ldo;
    for (int d = 0; d < hd; ++d) orow[d] = std::fma(float(acc[d]), ps[r], orow[d]);
  }
}

void attention_task(const AttentionParams& p, const AttnTask& task, float* scratch) {
  const SeqSpan& sp = p.meta.spans[task.s];
  const int hd = p.head_dim;
  const int n_rep = p.n_heads / p.n_kv_heads;
  const int rows = (task.t1 - task.t0) * n_rep;
  const bool local = p.layout.local;
  const bool bf16 = p.kv_dtype == DType::BF16;
  const bool q8 = p.kv_dtype == DType::Q8;
  const int64_t kvw = int64_t(p.n_kv_heads) * hd;
  const int32_t W = p.layout.window, S = local ? p.layout.n_sinks : 0;
  const int32_t* table = local ? nullptr : p.meta.global_tables + int64_t(sp.table_row) * p.meta.table_stride;
  const AttnCtx ctx{&p, &sp, table, task.g, hd};

  const int hdp = (hd + kPanel - 1) / kPanel * kPanel;
  float* Q = scratch;                      // [rows, hd], pre-scaled
  float* O = Q + kMaxRows * hd;            // [rows, hdp] unnormalised output
  float* KT = O + kMaxRows * hdp;          // [hd, kKeyTile] keys of a tile, transposed
  float* V = KT + int64_t(hd) * kKeyTile;  // [kKeyTile, hdp] values of a tile (padding stays 0)
  float* KS = V + int64_t(kKeyTile) * hdp; // [kKeyTile] Q8: scales of the tile's keys
  float* VS = KS + kKeyTile;               // [kKeyTile] Q8: scales of its values
  float* Sc = VS + kKeyTile;               // [rows, kKeyTile] scores, then weights
  float* Mx = Sc + kMaxRows * kKeyTile;
  float* Ls = Mx + kMaxRows;
  int32_t rpos[kMaxRows];

  for (int t = task.t0; t < task.t1; ++t)
    for (int h = 0; h < n_rep; ++h) {
      int r = (t - task.t0) * n_rep + h;
      const float* q = p.qkv + int64_t(sp.tok_start + t) * p.qkv_stride + int64_t(task.g * n_rep + h) * hd;
      for (int d = 0; d < hd; ++d) Q[r * hd + d] = q[d] * p.scale;
      for (int d = 0; d < hdp; ++d) O[r * hdp + d] = 0.0f;
      rpos[r] = sp.pos0 + t;
      Mx[r] = -INFINITY;
      Ls[r] = 0.0f;
    }
  // Every tile built in V writes columns [0, hd) of all its rows (copy_kv_run, gather_kv): only
  // the padding up to hdp, which the GEMM tiles read, is zeroed here. (The whole 16 KB scratch
  // was cleared per task before: ~1% of a 16-sequence decode step in memset; without it the step
  // was 1-2% faster in three random in-process A/B runs, within their spread.)
  if (!q8)
    for (int c = 0; c < kKeyTile; ++c)
      for (int64_t d = hd; d < hdp; ++d) V[c * hdp + d] = 0.0f;
  const int32_t pa = sp.pos0 + task.t0, pb = sp.pos0 + task.t1 - 1;
  const int32_t cached_end = task.cached_end >= 0 ? task.cached_end : sp.pos0;
  // With a Q8 cache the (pre-scaled) queries are rounded to 8 bits too (q8_row): a score is the
  // exact integer Σ q·k times the query's and the key's scales. Q then holds the 8-bit values as
  // floats, whose products with 8-bit keys sum exactly in f32 (|Σ| ≤ 127² · 512 < 2²⁴), so the
  // f32 tiles and the integer kernel give the same sums.
#if defined(__AVX512F__)
  const bool q8_int_keys = q8 && has_vnni() && hd % 4 == 0;  // qk_q8_tile reads 8-bit keys in place
#else
  const bool q8_int_keys = false;
#endif
  float qs[kMaxRows];
  int32_t qsum[kMaxRows];
  const int64_t ldq8 = (hd + 3) / 4 * 4;  // 8-bit query rows as quantize_rows writes them
  int8_t q8v[kMaxRows * kMaxHeadDim];
  uint8_t pq[kMaxRows * kKeyTile];  // a tile's weights as bytes (pv_q8_tile)
  float ps[kMaxRows];
  if (q8) {
    quantize_rows(Q, hd, hd, ldq8 / 4, q8v, qs, qsum, 0, rows);
    for (int r = 0; r < rows; ++r)
      for (int d = 0; d < hd; ++d) Q[r * hd + d] = float(q8v[r * ldq8 + d]);
  }

  // Keys [j0, j1) in tiles aligned to absolute multiples of kKeyTile, so that a query sees the
  // same tiles whether it is decoded alone, inside a prefill chunk, or split over threads.
  auto run_range = [&](int32_t j0, int32_t j1, bool sinks) {
    j0 = int32_t(imax(j0, task.k0));
    j1 = int32_t(imin(j1, task.k1));
    if (j0 >= j1) return;
    for (int32_t jb = j0 - j0 % kKeyTile; jb < j1; jb += kKeyTile) {
      const int32_t lo = jb > j0 ? jb : j0, hi = jb + kKeyTile < j1 ? jb + kKeyTile : j1;
      // A tile of cached keys on one aligned group of slots is read in place (f32, or bf16 / 8
      // bits widened in the micro-kernel); otherwise it is assembled in KT/V. With a Q8 cache the
      // scores are the 8-bit keys' dot products times the keys' scales, and the values' scales
      // go into the weights.
      const float* kt = KT;
      const float* vt = V;
      const float* ksc = KS;
      const float* vsc = VS;
      const uint16_t* kt16 = nullptr;  // bf16 cache read in place
      const uint16_t* vt16 = nullptr;
      const uint8_t* kt8 = nullptr;    // Q8 cache read in place
      const int8_t* vt8 = nullptr;
      int64_t ldk = kKeyTile, ldv = hdp;
      // Cached keys of the tile (before cached_end) on consecutive slots of one aligned group: their
      // group's first slot, else -1.
      const int32_t c_hi = int32_t(imin(hi, cached_end));
      const int64_t base = cached_run_base(p, sp, table, jb, lo, c_hi);
      const bool direct = base >= 0 && c_hi == hi;
      if (direct) {
        const int64_t kg = k_offset(base, int64_t(task.g) * hd, kvw);  // the tile's first key, this head
        const int64_t vg = v_offset(base, int64_t(task.g) * hd, kvw, hd);
        ldv = hd;
        if (q8) {
          // Values and scales in place; keys too where the integer kernel reads them, else widened.
          vt8 = static_cast<const int8_t*>(p.v_cache) + v8_offset(base, int64_t(task.g) * hd, kvw, hd);
          ksc = p.k_scale + k_offset(base, task.g, p.n_kv_heads);
          vsc = p.v_scale + k_offset(base, task.g, p.n_kv_heads);
          if (q8_int_keys)
            kt8 = static_cast<const uint8_t*>(p.k_cache) + k8_offset(base, int64_t(task.g) * hd, kvw, hd);
          else
            copy_kv_run(p, base, task.g, 0, kKeyTile, KT, nullptr, hdp, nullptr, nullptr);
        } else if (!bf16) {
          kt = static_cast<const float*>(p.k_cache) + kg;
          vt = static_cast<const float*>(p.v_cache) + vg;
        } else {
          kt16 = static_cast<const uint16_t*>(p.k_cache) + kg;
          vt16 = static_cast<const uint16_t*>(p.v_cache) + vg;
        }
      } else if (task.staged && jb >= task.staged_jb0) {
        kt = task.staged + int64_t((jb - task.staged_jb0) / kKeyTile) * attention_tile_floats(hd);
        vt = kt + int64_t(hd) * kKeyTile;
        ksc = vt + int64_t(kKeyTile) * hdp;
        vsc = ksc + kKeyTile;
        if (q8) vt8 = reinterpret_cast<const int8_t*>(vt);
      } else {
        // A tile holding keys of the step that are not in the cache yet (a short span on a
        // local layer whose ring could not take them before its attention), or cached keys of
        // odd layouts (sinks beside ring slots, blocks smaller than a tile): its cached run is
        // widened at once (all columns zero without one); the step's own keys, and cached keys
        // off the run, are gathered one by one.
        assemble_tile(ctx, base, jb, lo, c_hi, int32_t(imax(lo, c_hi)), hi, KT, V, hdp, KS, VS);
        if (q8) vt8 = reinterpret_cast<const int8_t*>(V);
      }
      if (kt16) {
        tile_gemm(rows, Q, hd, kt16, ldk, hd, kKeyTile, Sc, kKeyTile, false);
      } else if (kt8) {  // only where q8_int_keys
#if defined(__AVX512F__)
        qk_q8_tile(rows, q8v, ldq8, hd, qsum, kt8, Sc);
#endif
      } else {
        tile_gemm(rows, Q, hd, kt, ldk, hd, kKeyTile, Sc, kKeyTile, false);
      }
      if (q8)
        for (int r = 0; r < rows; ++r)
          for (int c = 0; c < kKeyTile; ++c) Sc[r * kKeyTile + c] = Sc[r * kKeyTile + c] * qs[r] * ksc[c];
      // Online softmax: mask, turn scores into weights, rescale what was accumulated.
      int32_t klo[kMaxRows], khi[kMaxRows];
      float corr[kMaxRows];
      for (int r = 0; r < rows; ++r) {
        const int32_t pr = rpos[r];
        // Keys [klo, khi) of this tile are visible to the row: in range, causal, in the window.
        klo[r] = (sinks || !local) ? lo : int32_t(imax(lo, int64_t(pr) - W + 1));
        khi[r] = int32_t(imin(hi, int64_t(pr) + 1));
      }
      softmax_tile(Sc, rows, jb, klo, khi, Mx, Ls, corr);
      for (int r = 0; r < rows; ++r)
        if (corr[r] != 1.0f) {
          float* orow = O + r * hdp;
          for (int d = 0; d < hd; ++d) orow[d] *= corr[r];
        }
      if (q8) {
        // Weights × the values' scales to 8 bits per row, times the 8-bit values in integers.
        quantize_weights(Sc, rows, vsc, pq, ps);
        pv_q8_tile(rows, pq, ps, vt8, hd, O, hdp);
      } else {
        // Only the tile's columns [lo, hi): the others carry weight 0, but a tile read in place
        // may hold another position's value there (a stale slot), and 0 · inf would be NaN. (The
        // sums are unchanged: adding 0 · v changes none.)
        const int c0 = int(lo - jb), nc = int(hi - lo);
        if (vt16)
          tile_gemm(rows, Sc + c0, kKeyTile, vt16 + int64_t(c0) * ldv, ldv, nc, hd, O, hdp, true);
        else
          tile_gemm(rows, Sc + c0, kKeyTile, vt + int64_t(c0) * ldv, ldv, nc, hd, O, hdp, true);
      }
    }
  };

  if (local) {
    if (S > 0) run_range(0, int32_t(imin(S, pb + 1)), true);
    run_range(int32_t(imax(S, pa - W + 1)), pb + 1, false);
  } else {
    run_range(0, pb + 1, false);
  }

  if (task.partial) {
    float* m = task.partial;
    float* l = m + rows;
    float* o = l + rows;
    for (int r = 0; r < rows; ++r) {
      m[r] = Mx[r];
      l[r] = Ls[r];
      for (int d = 0; d < hd; ++d) o[r * hd + d] = O[r * hdp + d];
    }
    return;
  }
  for (int t = task.t0; t < task.t1; ++t)
    for (int h = 0; h < n_rep; ++h) {
      const int r = (t - task.t0) * n_rep + h;
      const float inv = 1.0f / Ls[r];
      float* out = p.out + int64_t(sp.tok_start + t) * p.n_heads * hd + int64_t(task.g * n_rep + h) * hd;
      for (int d = 0; d < hd; ++d) out[d] = O[r * hdp + d] * inv;
    }
}

// ---- elementwise ---------------------------------------------------------------------------------

void rms_norm(const float* x, const float* w, float eps, int64_t D, float* out, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * D;
    float acc[16] = {};
    int64_t d = 0;
    for (; d + 16 <= D; d += 16)
      for (int i = 0; i < 16; ++i) acc[i] += xr[d + i] * xr[d + i];
    float ss = 0.0f;
    for (int i = 0; i < 16; ++i) ss += acc[i];
    for (; d < D; ++d) ss += xr[d] * xr[d];
    float inv = 1.0f / __builtin_sqrtf(ss / float(D) + eps);
    float* o = out + r * D;
    for (int64_t i = 0; i < D; ++i) o[i] = xr[i] * inv * w[i];
  }
}

void swiglu(const float* gu, int64_t F, float* out, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* g = gu + r * 2 * F;
    const float* u = g + F;
    float* o = out + r * F;
    for (int64_t i = 0; i < F; ++i) o[i] = g[i] / (1.0f + fast_exp(-g[i])) * u[i];
  }
}

void rope(const RopeParams& p, const float* cos_t, const float* sin_t, int64_t r0, int64_t r1) {
  const int half = p.head_dim / 2;
  for (int64_t r = r0; r < r1; ++r) {
    const float* c = cos_t + r * half;
    const float* s = sin_t + r * half;
    float* row = p.qkv + r * p.qkv_stride;
    for (int h = 0; h < p.n_rot_heads; ++h) {
      float* x = row + int64_t(h) * p.head_dim;
      for (int i = 0; i < half; ++i) {
        float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * c[i] - x2 * s[i];
        x[i + half] = x2 * c[i] + x1 * s[i];
      }
    }
  }
}

}  // namespace
}  // namespace HYCO_CPU_VARIANT

#define HYCO_STR2(x) #x
#define HYCO_STR(x) HYCO_STR2(x)
#define HYCO_CAT2(a, b) a##b
#define HYCO_CAT(a, b) HYCO_CAT2(a, b)

extern const CpuKernels HYCO_CAT(kKernels, HYCO_CPU_TABLE);
const CpuKernels HYCO_CAT(kKernels, HYCO_CPU_TABLE) = {
    HYCO_STR(HYCO_CPU_VARIANT),
    HYCO_CPU_VARIANT::gemm_f32,
    HYCO_CPU_VARIANT::gemm_bf16,
    HYCO_CPU_VARIANT::gemm_q8,
    HYCO_CPU_VARIANT::fast_q8,
    HYCO_CPU_VARIANT::quantize_rows,
    HYCO_CPU_VARIANT::attention_task,
    HYCO_CPU_VARIANT::stage_tile,
    HYCO_CPU_VARIANT::rms_norm,
    HYCO_CPU_VARIANT::swiglu,
    HYCO_CPU_VARIANT::rope,
};

}  // namespace hyco::cpu
