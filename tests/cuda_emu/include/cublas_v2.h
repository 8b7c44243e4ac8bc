// Emulated GPU (see cuda_runtime.h): cublasGemmEx, computed on the CPU in f32 in k order, with
// cuBLAS's column-major conventions, so that the backend's transposes and leading dimensions are
// checked as cuBLAS would read them.
#pragma once
#include <cstdint>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
struct cublasContext {};
using cublasHandle_t = cublasContext*;

inline cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }

namespace emu {
inline float blas_elem(const void* p, cudaDataType_t t, int64_t i) {
  switch (t) {
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
}  // namespace emu

// C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C, all column-major; C is f32.
inline cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const void* alpha, const void* A, cudaDataType_t at, int lda, const void* B,
                                   cudaDataType_t bt, int ldb, const void* beta, void* C, cudaDataType_t ct, int ldc,
                                   cublasComputeType_t, cublasGemmAlgo_t) {
  if (ct != CUDA_R_32F || lda < (ta == CUBLAS_OP_N ? m : k) || ldb < (tb == CUBLAS_OP_N ? k : n) || ldc < m)
    return CUBLAS_STATUS_INVALID_VALUE;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  float* c = static_cast<float*>(C);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      float acc = 0.0f;
      for (int l = 0; l < k; ++l) {
        const float a = emu::blas_elem(A, at, ta == CUBLAS_OP_N ? int64_t(l) * lda + i : int64_t(i) * lda + l);
        const float b = emu::blas_elem(B, bt, tb == CUBLAS_OP_N ? int64_t(j) * ldb + l : int64_t(l) * ldb + j);
        acc += a * b;
      }
      float& out = c[int64_t(j) * ldc + i];
      out = al * acc + (be == 0.0f ? 0.0f : be * out);
    }
  return CUBLAS_STATUS_SUCCESS;
}
