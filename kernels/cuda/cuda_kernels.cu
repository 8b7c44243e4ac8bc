// CUDA kernels of the hyco backend, checked op by op against the CPU backend
// (tests/gpu_test.cpp). Attention has three kernels:
//  * prefill (attention_prefill.cuh): tiles of 64 rows of a span with at least 16 new tokens,
//    on tensor cores (WMMA), for head_dim 64 or 128 and a bf16 cache;
//  * split-KV (attention_split.cuh): one row, one kv head and one slice of the keys the row sees
//    per block, with a combine kernel when a row's keys are split: decode rows, and every row
//    the prefill kernel does not take, for head_dim 64 or 128 and up to 8 query heads per kv head;
//  * the first, one-query-per-block kernel for every other shape (HYCO_CUDA_ATTENTION=naive
//    forces it everywhere).
// tests/cuda_emu_test.cpp runs the first two on an emulated GPU in CI.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>

#include "kernels/cuda/cuda_kernels.h"

namespace hyco::cuda {
namespace {

constexpr int kThreads = 256;

__device__ inline float load_elem(const void* base, DType dt, int64_t i) {
  switch (dt) {
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    case DType::F16: return __half2float(static_cast<const __half*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

__device__ inline float round_kv(float x, DType dt) {
  if (dt == DType::BF16) return __bfloat162float(__float2bfloat16(x));
  if (dt == DType::F16) return __half2float(__float2half(x));
  return x;
}

__global__ void embed_kernel(const void* table, DType dt, int64_t D, const int32_t* tokens, int n, float* out) {
  int64_t i = blockIdx.x;
  if (i >= n) return;
  const int64_t row = tokens[i];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) out[i * D + d] = load_elem(table, dt, row * D + d);
}

__device__ inline float block_sum(float v, float* smem) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float t = 0.0f;
  for (int w = 0; w < int(blockDim.x / 32); ++w) t += smem[w];
  return t;
}

__device__ inline float block_max(float v, float* smem) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  float t = -INFINITY;
  for (int w = 0; w < int(blockDim.x / 32); ++w) t = fmaxf(t, smem[w]);
  return t;
}

__global__ void rms_norm_kernel(const float* x, const float* w, float eps, int64_t D, float* out) {
  __shared__ float smem[32];
  const float* xr = x + int64_t(blockIdx.x) * D;
  float ss = 0.0f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ss += xr[d] * xr[d];
  ss = block_sum(ss, smem);
  const float inv = rsqrtf(ss / float(D) + eps);
  float* o = out + int64_t(blockIdx.x) * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) o[d] = xr[d] * inv * w[d];
}

__global__ void convert_kernel(const float* src, int64_t n, void* dst, DType dt) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (dt == DType::BF16) static_cast<__nv_bfloat16*>(dst)[i] = __float2bfloat16(src[i]);
    else static_cast<__half*>(dst)[i] = __float2half(src[i]);
  }
}

__global__ void add_bias_kernel(float* x, const float* bias, int64_t rows, int64_t cols) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * cols; i += int64_t(gridDim.x) * blockDim.x)
    x[i] += bias[i % cols];
}

__global__ void swiglu_kernel(const float* gu, int64_t rows, int64_t F, float* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * F; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / F, c = i % F;
    const float g = gu[r * 2 * F + c], u = gu[r * 2 * F + F + c];
    out[i] = g / (1.0f + expf(-g)) * u;
  }
}

__global__ void gather_kernel(const float* x, int64_t cols, const int32_t* rows, int n, float* out) {
  const int i = blockIdx.x;
  if (i >= n) return;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[int64_t(i) * cols + c] = x[int64_t(rows[i]) * cols + c];
}

__global__ void rope_kernel(RopeParams p, const int32_t* positions, int n_tokens) {
  const int half = p.head_dim / 2;
  const int64_t total = int64_t(n_tokens) * p.n_rot_heads * half;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int k = int(i % half);
    const int64_t th = i / half;
    const int h = int(th % p.n_rot_heads);
    const int64_t t = th / p.n_rot_heads;
    // The angle in double, as the CPU backend computes it.
    const double inv_freq = pow(p.theta, -2.0 * k / p.head_dim);
    const double a = double(positions[t]) / p.scale * inv_freq;
    const float c = float(cos(a)), s = float(sin(a));
    float* x = p.qkv + t * p.qkv_stride + int64_t(h) * p.head_dim;
    const float x1 = x[k], x2 = x[k + half];
    x[k] = x1 * c - x2 * s;
    x[k + half] = x2 * c + x1 * s;
  }
}

constexpr int kKeys = 128;       // keys per tile = threads per block
constexpr int kMaxHeadDim = 256;

// One block per (query row, head): online softmax over the key tiles the layer lets it see.
__global__ void attention_kernel(AttentionParams p, DeviceStep s) {
  __shared__ float q[kMaxHeadDim];
  __shared__ float prob[kKeys];
  __shared__ float red[32];
  const int row = blockIdx.x, h = blockIdx.y;
  const SeqSpan sp = s.spans[s.tok_span[row]];
  const int pos = s.positions[row];
  const int hd = p.head_dim, g = h / (p.n_heads / p.n_kv_heads);
  const int64_t kvw = int64_t(p.n_kv_heads) * hd;
  const bool local = p.layout.local;
  const int S = local ? p.layout.n_sinks : 0, W = p.layout.window;
  const int32_t* table = local ? nullptr : s.tables + int64_t(sp.table_row) * s.table_stride;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) q[d] = p.qkv[int64_t(row) * p.qkv_stride + int64_t(h) * hd + d] * p.scale;
  __syncthreads();
  float acc0 = 0.0f, acc1 = 0.0f;  // output dims threadIdx.x and threadIdx.x + kKeys
  float m = -INFINITY, l = 0.0f;

  auto key_src = [&](int j, int which, int d) -> float {
    if (j >= sp.pos0) {
      const float* r = p.qkv + int64_t(sp.tok_start + j - sp.pos0) * p.qkv_stride;
      return round_kv(r[int64_t(p.n_heads + which * p.n_kv_heads + g) * hd + d], p.kv_dtype);
    }
    const int64_t off = kv_slot(p.layout, sp, table, j) * kvw + int64_t(g) * hd + d;
    return load_elem(which ? p.v_cache : p.k_cache, p.kv_dtype, off);
  };

  auto run = [&](int j0, int j1) {
    for (int jb = j0; jb < j1; jb += kKeys) {
      const int j = jb + int(threadIdx.x);
      float sc = -INFINITY;
      if (j < j1) {
        float dot = 0.0f;
        for (int d = 0; d < hd; ++d) dot += q[d] * key_src(j, 0, d);
        sc = dot;
      }
      const float mx = block_max(sc, red);
      const float m_new = fmaxf(m, mx);
      const float e = sc == -INFINITY ? 0.0f : expf(sc - m_new);
      const float corr = m == -INFINITY ? 0.0f : expf(m - m_new);
      const float sum = block_sum(e, red);
      prob[threadIdx.x] = e;
      __syncthreads();
      l = l * corr + sum;
      acc0 *= corr;
      acc1 *= corr;
      const int n = min(kKeys, j1 - jb);
      for (int k = 0; k < n; ++k) {
        const float pk = prob[k];
        if (pk == 0.0f) continue;
        if (int(threadIdx.x) < hd) acc0 += pk * key_src(jb + k, 1, threadIdx.x);
        if (int(threadIdx.x) + kKeys < hd) acc1 += pk * key_src(jb + k, 1, threadIdx.x + kKeys);
      }
      m = m_new;
      __syncthreads();
    }
  };
  if (local) {
    if (S > 0) run(0, min(S, pos + 1));
    run(max(S, pos - W + 1), pos + 1);
  } else {
    run(0, pos + 1);
  }
  float* out = p.out + int64_t(row) * p.n_heads * hd + int64_t(h) * hd;
  if (int(threadIdx.x) < hd) out[threadIdx.x] = acc0 / l;
  if (int(threadIdx.x) + kKeys < hd) out[threadIdx.x + kKeys] = acc1 / l;
}

#include "kernels/cuda/attention_split.cuh"
#include "kernels/cuda/attention_prefill.cuh"

__global__ void store_kv_kernel(StoreKvParams p, DeviceStep s) {
  const int row = blockIdx.x;
  const SeqSpan sp = s.spans[s.tok_span[row]];
  const int pos = s.positions[row];
  const int end = sp.pos0 + sp.n_tokens;
  // A ring position that a later token of this step overwrites is not written (no write races).
  if (p.layout.local && pos >= p.layout.n_sinks && pos < end - p.layout.ring_len) return;
  const int32_t* table = p.layout.local ? nullptr : s.tables + int64_t(sp.table_row) * s.table_stride;
  const int64_t kvw = int64_t(p.n_kv_heads) * p.head_dim;
  const int64_t slot = kv_slot(p.layout, sp, table, pos);
  const float* k = p.qkv + int64_t(row) * p.qkv_stride + int64_t(p.n_heads) * p.head_dim;
  for (int64_t i = threadIdx.x; i < 2 * kvw; i += blockDim.x) {
    const float x = k[i];  // keys then values, contiguous in the row
    void* dst = i < kvw ? p.k_cache : p.v_cache;
    const int64_t o = slot * kvw + (i % kvw);
    if (p.kv_dtype == DType::BF16) static_cast<__nv_bfloat16*>(dst)[o] = __float2bfloat16(x);
    else if (p.kv_dtype == DType::F16) static_cast<__half*>(dst)[o] = __float2half(x);
    else static_cast<float*>(dst)[o] = x;
  }
}

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return int(b < 65535 ? b : 65535);
}

}  // namespace

void embed(const void* table, DType dt, int64_t D, const DeviceStep& s, float* out, cudaStream_t st) {
  if (s.n_tokens) embed_kernel<<<s.n_tokens, kThreads, 0, st>>>(table, dt, D, s.tokens, s.n_tokens, out);
}
void rms_norm(const float* x, const float* w, float eps, int64_t rows, int64_t D, float* out, cudaStream_t st) {
  if (rows) rms_norm_kernel<<<unsigned(rows), kThreads, 0, st>>>(x, w, eps, D, out);
}
void convert_f32(const float* src, int64_t n, void* dst, DType dt, cudaStream_t st) {
  if (n) convert_kernel<<<blocks_for(n), kThreads, 0, st>>>(src, n, dst, dt);
}
void add_bias(float* x, const float* bias, int64_t rows, int64_t cols, cudaStream_t st) {
  if (rows * cols > 0) add_bias_kernel<<<blocks_for(rows * cols), kThreads, 0, st>>>(x, bias, rows, cols);
}
void swiglu(const float* gu, int64_t rows, int64_t F, float* out, cudaStream_t st) {
  if (rows * F > 0) swiglu_kernel<<<blocks_for(rows * F), kThreads, 0, st>>>(gu, rows, F, out);
}
void gather_rows(const float* x, int64_t cols, const DeviceStep& s, float* out, cudaStream_t st) {
  if (s.n_out) gather_kernel<<<s.n_out, kThreads, 0, st>>>(x, cols, s.out_rows, s.n_out, out);
}
void rope(const RopeParams& p, const DeviceStep& s, cudaStream_t st) {
  const int64_t n = int64_t(s.n_tokens) * p.n_rot_heads * (p.head_dim / 2);
  if (n) rope_kernel<<<blocks_for(n), kThreads, 0, st>>>(p, s.positions, s.n_tokens);
}
void attention(const AttentionParams& p, const DeviceStep& s, cudaStream_t st) {
  if (!s.n_tokens) return;
  dim3 grid(unsigned(s.n_tokens), unsigned(p.n_heads));
  attention_kernel<<<grid, kKeys, 0, st>>>(p, s);
}

bool split_attention_fits(const AttentionParams& p) {
  return (p.head_dim == 64 || p.head_dim == 128) && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0 &&
         p.n_heads / p.n_kv_heads <= kMaxRep &&
         (p.kv_dtype == DType::F32 || p.kv_dtype == DType::BF16 || p.kv_dtype == DType::F16);
}

SplitPlan plan_split_attention(const AttentionParams& p, int n_tokens, int max_pos, int n_sms) {
  return split_plan_for(p, n_tokens, max_pos, n_sms);
}

void attention_split(const AttentionParams& p, const DeviceStep& s, const int32_t* rows, int n_rows,
                     const SplitPlan& plan, float* ws, cudaStream_t st) {
  if (!n_rows) return;
  dim3 grid(unsigned(n_rows), unsigned(p.n_kv_heads), unsigned(plan.n_splits));
  if (p.head_dim == 64)
    attention_split_kernel<64><<<grid, kWarps * 32, 0, st>>>(p, s, rows, plan.split_len, ws);
  else
    attention_split_kernel<128><<<grid, kWarps * 32, 0, st>>>(p, s, rows, plan.split_len, ws);
  if (plan.n_splits > 1)
    attention_combine_kernel<<<dim3(unsigned(n_rows), unsigned(p.n_heads)), unsigned(p.head_dim), 0, st>>>(
        ws, rows, plan.n_splits, p.n_heads, p.head_dim, p.out);
}

bool prefill_attention_fits(const AttentionParams& p) {
  return (p.head_dim == 64 || p.head_dim == 128) && p.kv_dtype == DType::BF16 && p.n_kv_heads > 0 &&
         p.n_heads % p.n_kv_heads == 0;
}

void attention_prefill(const AttentionParams& p, const DeviceStep& s, cudaStream_t st) {
  if (!s.n_prefill_tiles) return;
  dim3 grid(unsigned(s.n_prefill_tiles), unsigned(p.n_heads));
  // More shared memory than the default 48 KB: allowed once per instantiation.
  static const bool attr64 = cudaFuncSetAttribute(attention_prefill_kernel<64>,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                  prefill_smem_bytes(64)) == cudaSuccess;
  static const bool attr128 = cudaFuncSetAttribute(attention_prefill_kernel<128>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   prefill_smem_bytes(128)) == cudaSuccess;
  (void)attr64, (void)attr128;  // a failure shows as a launch error at the next sync
  if (p.head_dim == 64)
    attention_prefill_kernel<64><<<grid, 128, prefill_smem_bytes(64), st>>>(p, s);
  else
    attention_prefill_kernel<128><<<grid, 128, prefill_smem_bytes(128), st>>>(p, s);
}
void store_kv(const StoreKvParams& p, const DeviceStep& s, cudaStream_t st) {
  if (s.n_tokens) store_kv_kernel<<<s.n_tokens, kThreads, 0, st>>>(p, s);
}

}  // namespace hyco::cuda
