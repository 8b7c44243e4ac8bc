// CUDA kernel launchers: plain pointers, sizes and the op parameter structs of engine/ops.h,
// nothing else of the engine. All launches are asynchronous on the given stream.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "engine/ops.h"
#include "kernels/cuda/device_step.h"

namespace hyco::cuda {

// out[i, :] = table[tokens[i], :] as f32; table of dtype dt (f32, f16, bf16), row-major [V, D].
void embed(const void* table, DType dt, int64_t D, const DeviceStep& s, float* out, cudaStream_t st);
void rms_norm(const float* x, const float* w, float eps, int64_t rows, int64_t D, float* out, cudaStream_t st);
// dst[i] = src[i] rounded to dt (f16 or bf16).
void convert_f32(const float* src, int64_t n, void* dst, DType dt, cudaStream_t st);
// x[r, :] += bias for every row.
void add_bias(float* x, const float* bias, int64_t rows, int64_t cols, cudaStream_t st);
void swiglu(const float* gate_up, int64_t rows, int64_t F, float* out, cudaStream_t st);
void gather_rows(const float* x, int64_t cols, const DeviceStep& s, float* out, cudaStream_t st);
void rope(const RopeParams& p, const DeviceStep& s, cudaStream_t st);
// The first attention kernel: one block per (query row, head); any head_dim up to 256.
void attention(const AttentionParams& p, const DeviceStep& s, cudaStream_t st);

// The split-KV attention kernel: whether it takes these shapes (head_dim 64 or 128, at most 8
// query heads per kv head, an f32/bf16/f16 cache), and how it splits each row's keys so that a
// step of few rows still fills the GPU: blocks (row, kv head, split), ws holding
// n_tokens * n_heads * n_splits * (head_dim + 2) floats when n_splits > 1.
bool split_attention_fits(const AttentionParams& p);
SplitPlan plan_split_attention(const AttentionParams& p, int n_tokens, int max_pos, int n_sms);
// Rows `rows[0..n_rows)` (all n_rows rows of the step when null) through the split kernel.
void attention_split(const AttentionParams& p, const DeviceStep& s, const int32_t* rows, int n_rows,
                     const SplitPlan& plan, float* ws, cudaStream_t st);

// The tensor-core prefill kernel (attention_prefill.cuh): whether it takes these shapes (head_dim
// 64 or 128, a bf16 cache), and the launch over the step's prefill tiles (s.prefill_tiles; the
// other rows are s.split_rows, for attention_split).
bool prefill_attention_fits(const AttentionParams& p);
void attention_prefill(const AttentionParams& p, const DeviceStep& s, cudaStream_t st);
void store_kv(const StoreKvParams& p, const DeviceStep& s, cudaStream_t st);

}  // namespace hyco::cuda
