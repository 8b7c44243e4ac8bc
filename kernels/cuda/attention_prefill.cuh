// The tensor-core prefill attention kernel (WMMA, bf16 in, f32 accumulate) for a bf16 KV cache
// and head_dim 64 or 128. A block takes 64 consecutive query rows of one span and one query
// head; each of its 4 warps owns 16 rows. Key tiles of 64 are staged in shared memory (cached
// keys as stored, the step's own rounded to bf16 as store_kv will store them); only the tiles
// the rows' causal, window and sink masks reach are visited, so a local layer costs O(n·W).
//
// Precision: keys and values are exactly bf16 already. Queries and softmax weights are f32;
// each is split into a bf16 high part and a bf16 remainder, and both products are accumulated,
// so scores and outputs keep about 16 bits more than a single bf16 rounding would: results
// stay within f32-order differences of the split kernel and the CPU backend.
//
// Included by cuda_kernels.cu after attention_split.cuh; in CI, tests/cuda_emu runs it on an
// emulated GPU (WMMA, shared memory and warps included).
#pragma once

#if defined(__CUDACC__)
#define HYCO_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

constexpr int kPrefillKeys = 64;  // keys per tile (kPrefillRows: device_step.h)

// Shared memory of the kernel for head_dim hd, in bytes.
inline constexpr int prefill_smem_bytes(int hd) {
  return 2 * kPrefillKeys * hd * 2         // K and V tiles (bf16); first Q's two parts
         + kPrefillRows * kPrefillKeys * 4  // scores (f32)
         + 2 * kPrefillRows * kPrefillKeys * 2  // weights, high and low parts (bf16)
         + kPrefillRows * hd * 4            // output accumulator (f32)
         + 2 * kPrefillRows * 4;            // running max and sum per row
}

__device__ inline __nv_bfloat16 to_bf16(float x) { return __float2bfloat16(x); }
__device__ inline float from_bf16(__nv_bfloat16 x) { return __bfloat162float(x); }

// Block (tile, query head h): tile = (span, first row t0) from s.prefill_tiles.
template <int HD>
__global__ void __launch_bounds__(128) attention_prefill_kernel(AttentionParams p, DeviceStep s) {
  using namespace nvcuda;
  constexpr int BM = kPrefillRows, BN = kPrefillKeys;
  static_assert(BM == BN, "Q is staged in the key and value tiles");
  HYCO_DYNAMIC_SMEM(smem);
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem);  // [BN][HD] (first: Q's high part)
  __nv_bfloat16* Vs = Ks + BN * HD;                              // [BN][HD] (first: Q's low part)
  float* Ss = reinterpret_cast<float*>(Vs + BN * HD);            // [BM][BN]
  __nv_bfloat16* Ph = reinterpret_cast<__nv_bfloat16*>(Ss + BM * BN);  // [BM][BN]
  __nv_bfloat16* Pl = Ph + BM * BN;                                    // [BM][BN]
  float* Os = reinterpret_cast<float*>(Pl + BM * BN);                  // [BM][HD]
  float* Ms = Os + BM * HD;                                            // [BM]
  float* Ls = Ms + BM;                                                 // [BM]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int h = blockIdx.y, g = h / (p.n_heads / p.n_kv_heads);
  const SeqSpan sp = s.spans[s.prefill_tiles[2 * blockIdx.x]];
  const int t0 = s.prefill_tiles[2 * blockIdx.x + 1];
  const int n_rows = min(BM, sp.n_tokens - t0);
  const int64_t kvw = int64_t(p.n_kv_heads) * HD;
  const int32_t* table = p.layout.local ? nullptr : s.tables + int64_t(sp.table_row) * s.table_stride;
  const bool local = p.layout.local;
  const int S = local ? p.layout.n_sinks : 0, W = p.layout.window;
  const int i_first = sp.pos0 + t0, i_last = i_first + n_rows - 1;

  for (int idx = tid; idx < BM * HD; idx += blockDim.x) {
    const int r = idx / HD, d = idx % HD;
    const float x =
        r < n_rows ? p.qkv[int64_t(sp.tok_start + t0 + r) * p.qkv_stride + int64_t(h) * HD + d] * p.scale : 0.0f;
    const __nv_bfloat16 hi = to_bf16(x);
    Ks[idx] = hi;
    Vs[idx] = to_bf16(x - from_bf16(hi));
    Os[idx] = 0.0f;
  }
  for (int r = tid; r < BM; r += blockDim.x) {
    Ms[r] = -INFINITY;
    Ls[r] = 0.0f;
  }
  __syncthreads();
  // The warp's 16 query rows stay in registers, as WMMA fragments, for every key tile.
  const int r0 = warp * 16;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> qh[HD / 16], ql[HD / 16];
  for (int k = 0; k < HD / 16; ++k) {
    wmma::load_matrix_sync(qh[k], Ks + r0 * HD + k * 16, HD);
    wmma::load_matrix_sync(ql[k], Vs + r0 * HD + k * 16, HD);
  }
  __syncthreads();  // before the first key tile overwrites them

  auto key_tile = [&](int jb) {
    // Stage keys and values [jb, jb + BN); positions past the rows' last are zero.
    for (int idx = tid; idx < BN * HD; idx += blockDim.x) {
      const int kk = idx / HD, d = idx % HD, j = jb + kk;
      float kx = 0.0f, vx = 0.0f;
      if (j <= i_last) {
        if (j >= sp.pos0) {
          const float* q = p.qkv + int64_t(sp.tok_start + j - sp.pos0) * p.qkv_stride;
          kx = q[int64_t(p.n_heads + g) * HD + d];
          vx = q[int64_t(p.n_heads + p.n_kv_heads + g) * HD + d];
        } else {
          const int64_t o = kv_slot(p.layout, sp, table, j) * kvw + int64_t(g) * HD + d;
          kx = from_bf16(static_cast<const __nv_bfloat16*>(p.k_cache)[o]);
          vx = from_bf16(static_cast<const __nv_bfloat16*>(p.v_cache)[o]);
        }
      }
      Ks[idx] = to_bf16(kx);
      Vs[idx] = to_bf16(vx);
    }
    __syncthreads();

    // Scores of the warp's 16 rows: (Q high + Q low) · Kᵀ.
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> sacc[BN / 16];
    for (int n = 0; n < BN / 16; ++n) wmma::fill_fragment(sacc[n], 0.0f);
    for (int k = 0; k < HD / 16; ++k)
      for (int n = 0; n < BN / 16; ++n) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
        wmma::load_matrix_sync(b, Ks + n * 16 * HD + k * 16, HD);
        wmma::mma_sync(sacc[n], qh[k], b, sacc[n]);
        wmma::mma_sync(sacc[n], ql[k], b, sacc[n]);
      }
    for (int n = 0; n < BN / 16; ++n)
      wmma::store_matrix_sync(Ss + r0 * BN + n * 16, sacc[n], BN, wmma::mem_row_major);
    __syncwarp();

    // Online softmax: lanes 2r' and 2r'+1 take row r0 + r', 32 keys each.
    const int r = r0 + lane / 2, half = lane % 2, i = i_first + r;
    const bool row_ok = r < n_rows;
    float* srow = Ss + r * BN + half * 32;
    float mx = -INFINITY;
    for (int c = 0; c < 32; ++c) {
      const int j = jb + half * 32 + c;
      const bool seen = row_ok && j <= i && (!local || j < S || j > i - W);
      if (!seen) srow[c] = -INFINITY;
      mx = fmaxf(mx, srow[c]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, 1));
    const float m_old = Ms[r];
    const float m_new = fmaxf(m_old, mx);
    const float corr = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
    float sum = 0.0f;
    for (int c = 0; c < 32; ++c) {
      const float w = srow[c] == -INFINITY ? 0.0f : expf(srow[c] - m_new);
      const __nv_bfloat16 hi = to_bf16(w);
      Ph[r * BN + half * 32 + c] = hi;
      Pl[r * BN + half * 32 + c] = to_bf16(w - from_bf16(hi));
      sum += w;
    }
    sum += __shfl_xor_sync(kFull, sum, 1);
    for (int d = half * (HD / 2); d < (half + 1) * (HD / 2); ++d) Os[r * HD + d] *= corr;
    __syncwarp();  // both lanes of a row have read its max before one writes it
    if (half == 0) {
      Ms[r] = m_new;
      Ls[r] = Ls[r] * corr + sum;
    }
    __syncwarp();

    // Output of the warp's rows += (Ph + Pl) · V.
    for (int dn = 0; dn < HD / 16; ++dn) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, Os + r0 * HD + dn * 16, HD, wmma::mem_row_major);
      for (int k = 0; k < BN / 16; ++k) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> ah, al;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
        wmma::load_matrix_sync(ah, Ph + r0 * BN + k * 16, BN);
        wmma::load_matrix_sync(al, Pl + r0 * BN + k * 16, BN);
        wmma::load_matrix_sync(b, Vs + k * 16 * HD + dn * 16, HD);
        wmma::mma_sync(acc, ah, b, acc);
        wmma::mma_sync(acc, al, b, acc);
      }
      wmma::store_matrix_sync(Os + r0 * HD + dn * 16, acc, HD, wmma::mem_row_major);
    }
    __syncthreads();  // every warp is done with this tile's keys and values
  };

  // The tiles the rows can see: those of the sinks, then from the first row's window on.
  const int sink_end = min(S, i_last + 1);
  for (int jb = 0; jb < sink_end; jb += BN) key_tile(jb);
  const int from = local ? max(i_first - W + 1, 0) : 0;
  for (int jb = max(from / BN * BN, (sink_end + BN - 1) / BN * BN); jb <= i_last; jb += BN) key_tile(jb);

  for (int idx = tid; idx < BM * HD; idx += blockDim.x) {
    const int r = idx / HD, d = idx % HD;
    if (r < n_rows) p.out[int64_t(sp.tok_start + t0 + r) * p.n_heads * HD + int64_t(h) * HD + d] = Os[idx] / Ls[r];
  }
}
