// The split-KV attention kernel and its combine kernel (see cuda_kernels.cu, which includes this
// inside namespace hyco::cuda::{anonymous}, after round_kv and with <algorithm>, engine/ops.h and
// kernels/cuda/device_step.h in scope). In CI, tests/cuda_emu compiles it with the rest of the
// backend for an emulated GPU.
#pragma once

#if defined(__CUDACC__)
#define HYCO_UNROLL _Pragma("unroll")
#define HYCO_UNROLL_4 _Pragma("unroll 4")
#else
#define HYCO_UNROLL
#define HYCO_UNROLL_4
#endif

constexpr int kWarps = 4;   // warps per block of the split kernel
constexpr int kMaxRep = 8;  // query heads per kv head it takes
constexpr unsigned kFull = 0xffffffffu;

__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// The keys a query row at `pos` sees, as one list: the sinks [0, n_sink), then the window
// [win_lo, pos]; list index v is position v below n_sink, else win_lo + (v - n_sink).
struct RowKeys {
  int n_sink, win_lo, n;
};
__device__ inline RowKeys row_keys(const KvLayout& l, int pos) {
  RowKeys r{0, 0, pos + 1};
  if (l.local) {
    r.n_sink = min(l.n_sinks, pos + 1);
    r.win_lo = max(l.n_sinks, pos - l.window + 1);
    r.n = r.n_sink + max(0, pos + 1 - r.win_lo);
  }
  return r;
}

// N consecutive cache elements from element i (a multiple of N; N = 2, 4 or 8) as f32, in as
// few loads as their width allows.
template <int N>
__device__ inline void load_cache(const void* base, DType dt, int64_t i, float* x) {
  static_assert(N == 2 || N == 4 || N == 8, "2, 4 or 8 elements");
  if (dt == DType::F32) {
    const float* f = static_cast<const float*>(base) + i;
    if constexpr (N == 2) {
      const float2 v = *reinterpret_cast<const float2*>(f);
      x[0] = v.x, x[1] = v.y;
    } else {
      for (int k = 0; k < N / 4; ++k) {
        const float4 v = reinterpret_cast<const float4*>(f)[k];
        x[4 * k] = v.x, x[4 * k + 1] = v.y, x[4 * k + 2] = v.z, x[4 * k + 3] = v.w;
      }
    }
    return;
  }
  // Two 16-bit values per 32-bit word: the lower one first.
  uint32_t w[N / 2];
  const uint16_t* h = static_cast<const uint16_t*>(base) + i;
  if constexpr (N == 2) {
    w[0] = *reinterpret_cast<const uint32_t*>(h);
  } else if constexpr (N == 4) {
    const uint2 v = *reinterpret_cast<const uint2*>(h);
    w[0] = v.x, w[1] = v.y;
  } else {
    const uint4 v = *reinterpret_cast<const uint4*>(h);
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  }
  for (int k = 0; k < N / 2; ++k) {
    if (dt == DType::BF16) {
      x[2 * k] = __uint_as_float(w[k] << 16);
      x[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    } else {
      x[2 * k] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[k] & 0xffffu)));
      x[2 * k + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[k] >> 16)));
    }
  }
}

// N values of a key or value of the step itself (f32 in qkv), rounded as the cache will hold them.
template <int N>
__device__ inline void load_own(const float* src, DType dt, float* x) {
  for (int k = 0; k < N; ++k) x[k] = round_kv(src[k], dt);
}

// Block (row, kv head g, split z): the online softmax of the row's n_rep query heads of kv head g
// over the keys [z * split_len, (z + 1) * split_len) of its list (RowKeys). Each warp takes tiles
// of 32 keys in turn, one key per lane for the scores and HD / 32 output dims per lane for the
// values; the warps' states are merged at the end. With one split the block writes the
// normalised output, else (max, sum, unnormalised output) to ws for attention_combine_kernel.
template <int HD>
__global__ void __launch_bounds__(kWarps * 32)
    attention_split_kernel(AttentionParams p, DeviceStep s, const int32_t* rows, int split_len, float* ws) {
  constexpr int DL = HD / 32;  // output dims per lane
  constexpr int KC = 8;        // key dims per load
  __shared__ float qs[kMaxRep][HD];
  __shared__ float wm[kWarps][kMaxRep], wl[kWarps][kMaxRep];
  __shared__ float wo[kWarps][kMaxRep][HD];
  __shared__ float tp[kWarps][kMaxRep][32];  // a tile's weights, per warp
  __shared__ int64_t tv[kWarps][32];         // where its values are
  __shared__ int tm[kWarps][32];             // and whether they are the step's own
  const int row = rows ? rows[blockIdx.x] : int(blockIdx.x), g = blockIdx.y, z = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n_rep = p.n_heads / p.n_kv_heads;
  const SeqSpan sp = s.spans[s.tok_span[row]];
  const int pos = s.positions[row];
  const int64_t kvw = int64_t(p.n_kv_heads) * HD;
  const int32_t* table = p.layout.local ? nullptr : s.tables + int64_t(sp.table_row) * s.table_stride;
  const RowKeys rk = row_keys(p.layout, pos);
  const int v0 = z * split_len, v1 = min(rk.n, v0 + split_len);

  for (int i = threadIdx.x; i < n_rep * HD; i += blockDim.x)
    qs[i / HD][i % HD] = p.qkv[int64_t(row) * p.qkv_stride + int64_t(g * n_rep) * HD + i] * p.scale;
  __syncthreads();

  float m[kMaxRep], l[kMaxRep], o[kMaxRep][DL];
HYCO_UNROLL
  for (int r = 0; r < kMaxRep; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
    for (int i = 0; i < DL; ++i) o[r][i] = 0.0f;
  }
  for (int t0 = v0 + warp * 32; t0 < v1; t0 += kWarps * 32) {
    // This lane's key: its position, and where its key and value are (cache or qkv).
    const int v = t0 + lane;
    const bool valid = v < v1;
    const int j = v < rk.n_sink ? v : rk.win_lo + (v - rk.n_sink);
    const int mine = valid && j >= sp.pos0;  // a key of this step
    int64_t koff = 0, voff = 0;
    if (mine) {
      const int64_t q = int64_t(sp.tok_start + j - sp.pos0) * p.qkv_stride;
      koff = q + int64_t(p.n_heads + g) * HD;
      voff = q + int64_t(p.n_heads + p.n_kv_heads + g) * HD;
    } else if (valid) {
      koff = voff = kv_slot(p.layout, sp, table, j) * kvw + int64_t(g) * HD;
    }
    float sc[kMaxRep];
HYCO_UNROLL
    for (int r = 0; r < kMaxRep; ++r) sc[r] = 0.0f;
    if (valid) {
HYCO_UNROLL
      for (int c = 0; c < HD; c += KC) {
        float k[KC];
        if (mine) load_own<KC>(p.qkv + koff + c, p.kv_dtype, k);
        else load_cache<KC>(p.k_cache, p.kv_dtype, koff + c, k);
HYCO_UNROLL
        for (int r = 0; r < kMaxRep; ++r)
          if (r < n_rep)
HYCO_UNROLL
            for (int i = 0; i < KC; ++i) sc[r] = fmaf(qs[r][c + i], k[i], sc[r]);
      }
    }
    // Online softmax of the tile, head by head (lane 0's key is always valid); the weights go to
    // shared memory for the values' pass.
HYCO_UNROLL
    for (int r = 0; r < kMaxRep; ++r) {
      if (r >= n_rep) break;
      const float x = valid ? sc[r] : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(x));
      const float pr = valid ? expf(x - m_new) : 0.0f;
      const float corr = m[r] == -INFINITY ? 0.0f : expf(m[r] - m_new);
      l[r] = l[r] * corr + warp_sum(pr);
HYCO_UNROLL
      for (int i = 0; i < DL; ++i) o[r][i] *= corr;
      m[r] = m_new;
      tp[warp][r][lane] = pr;
    }
    tv[warp][lane] = voff;
    tm[warp][lane] = mine;
    __syncwarp();
    const int n_valid = min(32, v1 - t0);
    // Unrolled so that several keys' value loads are in flight at once.
HYCO_UNROLL_4
    for (int k = 0; k < n_valid; ++k) {
      const int64_t vo = tv[warp][k];
      float vv[DL];
      if (tm[warp][k]) load_own<DL>(p.qkv + vo + lane * DL, p.kv_dtype, vv);
      else load_cache<DL>(p.v_cache, p.kv_dtype, vo + lane * DL, vv);
HYCO_UNROLL
      for (int r = 0; r < kMaxRep; ++r) {
        if (r >= n_rep) break;
        const float pk = tp[warp][r][k];
HYCO_UNROLL
        for (int i = 0; i < DL; ++i) o[r][i] = fmaf(pk, vv[i], o[r][i]);
      }
    }
    __syncwarp();  // the tile's staging is read before the next tile writes it
  }

  // Merge the warps (a warp without tiles has max -inf and adds nothing).
HYCO_UNROLL
  for (int r = 0; r < kMaxRep; ++r) {
    if (r >= n_rep) break;
    if (lane == 0) {
      wm[warp][r] = m[r];
      wl[warp][r] = l[r];
    }
    for (int i = 0; i < DL; ++i) wo[warp][r][lane * DL + i] = o[r][i];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < n_rep * HD; i += blockDim.x) {
    const int r = i / HD, d = i % HD;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, wm[w][r]);
    float L = 0.0f, O = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (wm[w][r] != -INFINITY) {
        const float e = expf(wm[w][r] - M);
        L += wl[w][r] * e;
        O += wo[w][r][d] * e;
      }
    const int h = g * n_rep + r;
    if (gridDim.z == 1) {
      p.out[int64_t(row) * p.n_heads * HD + int64_t(h) * HD + d] = O / L;
    } else {
      float* part = ws + ((int64_t(blockIdx.x) * p.n_heads + h) * gridDim.z + z) * (HD + 2);
      if (d == 0) {
        part[0] = M;
        part[1] = L;
      }
      part[2 + d] = O;
    }
  }
}

// Block (row, head), one thread per dim: the splits' (max, sum, output) merged and normalised.
// Block x is the x of the split kernel's blocks; `rows` (or x itself) the row it stands for.
__global__ void attention_combine_kernel(const float* ws, const int32_t* rows, int n_splits, int n_heads, int hd,
                                         float* out) {
  const int row = rows ? rows[blockIdx.x] : int(blockIdx.x), h = blockIdx.y, d = threadIdx.x;
  const float* part = ws + (int64_t(blockIdx.x) * n_heads + h) * n_splits * (hd + 2);
  float M = -INFINITY;
  for (int z = 0; z < n_splits; ++z) M = fmaxf(M, part[z * (hd + 2)]);
  float L = 0.0f, O = 0.0f;
  for (int z = 0; z < n_splits; ++z) {
    const float mz = part[z * (hd + 2)];
    if (mz == -INFINITY) continue;
    const float e = expf(mz - M);
    L += part[z * (hd + 2) + 1] * e;
    O += part[z * (hd + 2) + 2 + d] * e;
  }
  out[(int64_t(row) * n_heads + h) * hd + d] = O / L;
}

// How the split kernel divides each row's keys: blocks (row, kv head, split) enough for four per
// SM (what its registers allow at ~110 per thread), each split at least kMinSplit keys and a
// whole number of 32-key tiles, at most kMaxSplits splits.
inline SplitPlan split_plan_for(const AttentionParams& p, int n_tokens, int max_pos, int n_sms) {
  const auto cdiv = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  const KvLayout& l = p.layout;
  const int64_t n_keys = l.local ? std::min<int64_t>(l.n_sinks, max_pos + 1) + std::min<int64_t>(l.window, max_pos + 1)
                                 : int64_t(max_pos) + 1;
  const int64_t blocks = std::max<int64_t>(1, int64_t(n_tokens) * p.n_kv_heads);
  constexpr int64_t kMinSplit = 64, kMaxSplits = 64;
  const int64_t want = std::clamp<int64_t>(cdiv(4 * int64_t(n_sms), blocks), 1,
                                           std::clamp<int64_t>(cdiv(n_keys, kMinSplit), 1, kMaxSplits));
  SplitPlan plan;
  plan.split_len = int(cdiv(cdiv(n_keys, want), 32) * 32);
  plan.n_splits = int(cdiv(n_keys, plan.split_len));
  return plan;
}
