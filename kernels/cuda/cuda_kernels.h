// CUDA kernel launchers: plain pointers, sizes and the op parameter structs of engine/ops.h,
// nothing else of the engine. All launches are asynchronous on the given stream.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "engine/ops.h"

namespace hyco::cuda {

// Per-step metadata in device memory (begin_step copies StepMeta's arrays here).
struct DeviceStep {
  const int32_t* tokens = nullptr;     // [n_tokens]
  const int32_t* positions = nullptr;  // [n_tokens]
  const int32_t* tok_span = nullptr;   // [n_tokens] span index of each row
  const SeqSpan* spans = nullptr;      // [n_spans]
  const int32_t* tables = nullptr;     // [n_spans, table_stride]
  const int32_t* out_rows = nullptr;   // [n_out]
  int32_t n_tokens = 0, n_spans = 0, table_stride = 0, n_out = 0;
};

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
void attention(const AttentionParams& p, const DeviceStep& s, cudaStream_t st);
void store_kv(const StoreKvParams& p, const DeviceStep& s, cudaStream_t st);

}  // namespace hyco::cuda
