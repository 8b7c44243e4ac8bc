// Emulated GPU (see cuda_runtime.h): WMMA. A fragment holds its whole 16x16 tile in every lane;
// each WMMA call is a warp-wide synchronisation point, and lane 0 computes each product for its
// warp (lane 0 runs first in every round), the other lanes copy it.
#pragma once
#include <cstring>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_runtime.h"

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  float v[16][16];
};
template <class Use, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, L>& f, const __nv_bfloat16* p, unsigned ldm) {
  for (unsigned r = 0; r < 16; ++r)
    for (unsigned c = 0; c < 16; ++c)
      f.v[r][c] = __bfloat162float(std::is_same_v<L, row_major> ? p[r * ldm + c] : p[c * ldm + r]);
  emu::yield();
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t l) {
  for (unsigned r = 0; r < 16; ++r)
    for (unsigned c = 0; c < 16; ++c) f.v[r][c] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  emu::yield();
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  for (unsigned r = 0; r < 16; ++r)
    for (unsigned c = 0; c < 16; ++c) (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.v[r][c];
  emu::yield();
}
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float x) {
  for (auto& row : f.v)
    for (float& e : row) e = x;
}
template <class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  float(&out)[16][16] = emu::mma_buf[int(threadIdx.x) / 32];
  if (threadIdx.x % 32 == 0)
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 16; ++n) {
        float acc = c.v[r][n];
        for (int k = 0; k < 16; ++k) acc += a.v[r][k] * b.v[k][n];
        out[r][n] = acc;
      }
  std::memcpy(d.v, out, sizeof out);
  emu::yield();
}
}  // namespace nvcuda::wmma
