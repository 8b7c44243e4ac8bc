// The interface between the model forward and a compute device (kernels/cpu, kernels/cuda).
// A backend owns device memory and runs ops; it knows nothing of sequences, sampling or HTTP.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/ops.h"
#include "engine/tensor.h"

namespace hyco {

enum class WeightRole : uint8_t {
  Matrix,  // [out, in], used by matmul (and by embed when it is the token table)
  Vector,  // norms, biases: kept in f32
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;      // "cpu", "cuda"
  virtual std::string describe() const = 0;  // device, threads, instruction set

  // Which dtype matrices of `file_dtype` are stored in when the user did not choose.
  virtual DType default_matrix_dtype(DType file_dtype) const = 0;
  virtual bool supports_kv_dtype(DType t) const = 0;

  // ---- memory ----------------------------------------------------------------------------
  // Zero-initialised row-major tensor.
  virtual Tensor alloc(DType dtype, int64_t rows, int64_t cols) = 0;
  // Uploads a weight, converting to `dtype` and packing as the backend prefers for `role`.
  virtual Tensor upload_weight(const HostTensor& src, WeightRole role, DType dtype) = 0;
  // Copies a row-major tensor's bytes to the host / from the host (n_bytes()).
  virtual void download(const Tensor& src, void* dst) = 0;
  virtual void upload(Tensor& dst, const void* src) = 0;
  // Bytes of device memory allocated through this backend.
  virtual size_t bytes_allocated() const = 0;

  // ---- one step ----------------------------------------------------------------------------
  // Makes the step's metadata current for the ops that follow; arrays must stay valid until
  // the step's last op has run (sync()).
  virtual void begin_step(const StepMeta& meta) = 0;

  // out[i] = table[meta.tokens[i]], as f32.                                    out: [n, D]
  virtual void embed(const Tensor& table, Tensor& out) = 0;
  // out = x / rms(x) * w, row-wise.                                            x, out: [n, D]
  virtual void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;
  // out (+)= x · wᵀ (+ bias).  x: [n, K] f32, w: [N, K] matrix, bias: [1, N] or empty, out: [n, N]
  virtual void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out, bool accumulate) = 0;
  virtual void rope(const RopeParams& p) = 0;
  virtual void attention(const AttentionParams& p) = 0;
  virtual void store_kv(const StoreKvParams& p) = 0;
  // out = silu(gate) * up, where gate_up = [gate | up].     gate_up: [n, 2F], out: [n, F]
  virtual void swiglu(const Tensor& gate_up, Tensor& out) = 0;
  // out[i] = x[meta.out_rows[i]].                                               out: [n_out, D]
  virtual void gather_rows(const Tensor& x, Tensor& out) = 0;
  // Waits for every op issued so far.
  virtual void sync() = 0;
};

// The CPU backend (always built). n_threads <= 0: one per core. isa: "" picks the best kernels
// the machine supports ($HYCO_CPU_ISA overrides); "avx512", "avx2" or "base" forces a variant.
std::unique_ptr<Backend> make_cpu_backend(int n_threads = 0, const std::string& isa = "");
// The kernel variants this machine can run, best first.
std::vector<std::string> cpu_isa_variants();

}  // namespace hyco
