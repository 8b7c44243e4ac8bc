// The CUDA backend: device memory, weight upload (bf16/f16/f32 row-major), per-step metadata
// upload, cuBLAS for the projections, our kernels for the rest (cuda_kernels.cu).
#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "engine/errors.h"
#include "kernels/cuda/cuda_kernels.h"

namespace hyco {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw ResourceExhausted(std::string("CUDA ") + what + ": " + cudaGetErrorString(e));
}
void check(cublasStatus_t e, const char* what) {
  if (e != CUBLAS_STATUS_SUCCESS) throw ResourceExhausted(std::string("cuBLAS ") + what + ": status " + std::to_string(int(e)));
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default: return CUDA_R_32F;
  }
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    check(cudaSetDevice(device), "set device");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
    check(cublasCreate(&blas_), "create");
    check(cublasSetStream(blas_, stream_), "set stream");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, device), "properties");
    name_ = prop.name;
    total_mem_ = prop.totalGlobalMem;
    n_sms_ = prop.multiProcessorCount;
    const char* a = std::getenv("HYCO_CUDA_ATTENTION");
    naive_attention_ = a && std::string(a) == "naive";
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    cublasDestroy(blas_);
    cudaStreamDestroy(stream_);
    if (host_meta_) cudaFreeHost(host_meta_);
  }

  std::string name() const override { return "cuda"; }
  std::string describe() const override {
    return "cuda (" + name_ + ", " + std::to_string(total_mem_ >> 30) + " GiB)";
  }
  DType default_matrix_dtype(DType file_dtype) const override {
    return file_dtype == DType::F16 ? DType::F16 : DType::BF16;
  }
  bool supports_kv_dtype(DType t) const override { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

  Tensor alloc(DType dtype, int64_t rows, int64_t cols) override {
    Tensor t;
    t.dtype = dtype;
    t.rows = rows;
    t.cols = cols;
    t.owner = device_alloc(t.n_bytes());
    t.data = t.owner.get();
    check(cudaMemsetAsync(t.data, 0, t.n_bytes(), stream_), "memset");
    return t;
  }

  Tensor upload_weight(const HostTensor& src, WeightRole role, DType dtype) override {
    if (role == WeightRole::Matrix && dtype == DType::Q8)
      throw InvalidArgument("--weights q8 is for the CPU backend; the CUDA backend keeps matrices in bf16, f16 or f32");
    const DType dt = role == WeightRole::Vector ? DType::F32 : dtype;
    const int64_t n = src.rows * src.cols;
    std::vector<uint8_t> host(size_t(n) * dtype_size(dt));
    for (int64_t i = 0; i < n; ++i) {
      float f;
      uint16_t h;
      switch (src.dtype) {
        case DType::F32: std::memcpy(&f, static_cast<const char*>(src.data) + i * 4, 4); break;
        case DType::BF16: std::memcpy(&h, static_cast<const char*>(src.data) + i * 2, 2); f = bf16_to_f32(h); break;
        case DType::F16: std::memcpy(&h, static_cast<const char*>(src.data) + i * 2, 2); f = f16_to_f32(h); break;
        default: f = 0; break;
      }
      if (dt == DType::F32) std::memcpy(host.data() + i * 4, &f, 4);
      else if (dt == DType::BF16 && src.dtype == DType::BF16) std::memcpy(host.data() + i * 2, static_cast<const char*>(src.data) + i * 2, 2);
      else if (dt == DType::F16 && src.dtype == DType::F16) std::memcpy(host.data() + i * 2, static_cast<const char*>(src.data) + i * 2, 2);
      else {
        h = dt == DType::BF16 ? f32_to_bf16(f) : f32_to_f16(f);
        std::memcpy(host.data() + i * 2, &h, 2);
      }
    }
    Tensor t = alloc(dt, src.rows, src.cols);
    check(cudaMemcpyAsync(t.data, host.data(), host.size(), cudaMemcpyHostToDevice, stream_), "upload weight");
    check(cudaStreamSynchronize(stream_), "sync");
    return t;
  }

  void download(const Tensor& src, void* dst) override {
    check(cudaMemcpyAsync(dst, src.data, src.n_bytes(), cudaMemcpyDeviceToHost, stream_), "download");
    check(cudaStreamSynchronize(stream_), "sync");
  }
  void upload(Tensor& dst, const void* src) override {
    check(cudaMemcpyAsync(dst.data, src, dst.n_bytes(), cudaMemcpyHostToDevice, stream_), "upload");
    check(cudaStreamSynchronize(stream_), "sync");
  }
  size_t bytes_allocated() const override { return *allocated_; }

  void begin_step(const StepMeta& m) override {
    // The span of each row, and the attention work lists (see DeviceStep).
    std::vector<int32_t> tok_span(size_t(m.n_tokens)), tiles, split_rows;
    max_pos_ = 0;
    for (int32_t s = 0; s < m.n_spans; ++s) {
      const SeqSpan& sp = m.spans[s];
      for (int32_t t = 0; t < sp.n_tokens; ++t) tok_span[size_t(sp.tok_start + t)] = s;
      if (sp.n_tokens >= cuda::kPrefillMinRows) {
        for (int32_t t = 0; t < sp.n_tokens; t += cuda::kPrefillRows) tiles.insert(tiles.end(), {s, t});
      } else {
        for (int32_t t = 0; t < sp.n_tokens; ++t) split_rows.push_back(sp.tok_start + t);
      }
      max_pos_ = std::max(max_pos_, sp.pos0 + std::max(sp.n_tokens, int32_t(1)) - 1);
    }
    // One staging copy of every array, each at a 16-byte boundary.
    const size_t n_tok = size_t(m.n_tokens), n_tab = size_t(m.n_spans) * size_t(m.table_stride);
    const std::pair<const void*, size_t> arrays[] = {
        {m.spans, sizeof(SeqSpan) * size_t(m.n_spans)}, {m.tokens, 4 * n_tok},
        {m.positions, 4 * n_tok},                        {tok_span.data(), 4 * n_tok},
        {m.global_tables, 4 * n_tab},                    {m.out_rows, 4 * size_t(m.n_out)},
        {tiles.data(), 4 * tiles.size()},                {split_rows.data(), 4 * split_rows.size()}};
    const auto pad = [](size_t n) { return (n + 15) & ~size_t(15); };
    size_t bytes = 0;
    for (const auto& a : arrays) bytes += pad(a.second);
    check(cudaStreamSynchronize(stream_), "sync");  // the previous step's copy is done
    if (bytes > meta_cap_) {
      if (host_meta_) cudaFreeHost(host_meta_);
      host_meta_ = nullptr;
      meta_cap_ = 0;  // until both buffers exist
      const size_t cap = std::max<size_t>(bytes * 2, 4096);
      check(cudaMallocHost(&host_meta_, cap), "pinned meta");
      dev_meta_ = device_alloc(cap);
      meta_cap_ = cap;
    }
    char* h = static_cast<char*>(host_meta_);
    char* d = static_cast<char*>(dev_meta_.get());
    const void* dev[8];
    size_t off = 0;
    for (size_t i = 0; i < 8; ++i) {
      if (arrays[i].second) std::memcpy(h + off, arrays[i].first, arrays[i].second);
      dev[i] = d + off;
      off += pad(arrays[i].second);
    }
    step_.spans = static_cast<const SeqSpan*>(dev[0]);
    step_.tokens = static_cast<const int32_t*>(dev[1]);
    step_.positions = static_cast<const int32_t*>(dev[2]);
    step_.tok_span = static_cast<const int32_t*>(dev[3]);
    step_.tables = static_cast<const int32_t*>(dev[4]);
    step_.out_rows = static_cast<const int32_t*>(dev[5]);
    step_.prefill_tiles = static_cast<const int32_t*>(dev[6]);
    step_.split_rows = static_cast<const int32_t*>(dev[7]);
    step_.n_tokens = m.n_tokens;
    step_.n_spans = m.n_spans;
    step_.table_stride = m.table_stride;
    step_.n_out = m.n_out;
    step_.n_prefill_tiles = int32_t(tiles.size() / 2);
    step_.n_split_rows = int32_t(split_rows.size());
    check(cudaMemcpyAsync(d, h, off, cudaMemcpyHostToDevice, stream_), "step upload");
  }

  void embed(const Tensor& table, Tensor& out) override {
    cuda::embed(table.data, table.dtype, table.cols, step_, static_cast<float*>(out.data), stream_);
  }
  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    cuda::rms_norm(static_cast<const float*>(x.data), static_cast<const float*>(w.data), eps, x.rows, x.cols,
                   static_cast<float*>(out.data), stream_);
  }
  void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out, bool accumulate) override {
    HYCO_ASSERT(x.cols == w.cols && out.rows == x.rows && out.cols == w.rows);
    const int64_t M = x.rows, N = w.rows, K = w.cols;
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const void* b = x.data;
    if (w.dtype != DType::F32) {  // tensor cores take 16-bit inputs: round the activations
      const size_t need = size_t(M * K) * 2;
      if (need > xcast_cap_) {
        xcast_ = device_alloc(need);
        xcast_cap_ = need;
      }
      cuda::convert_f32(static_cast<const float*>(x.data), M * K, xcast_.get(), w.dtype, stream_);
      b = xcast_.get();
    }
    // Row-major out[M,N] = x[M,K] · w[N,K]ᵀ is column-major outᵀ[N,M] = wᵀᵀ · xᵀ.
    check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &alpha, w.data, cuda_type(w.dtype),
                       int(K), b, cuda_type(w.dtype == DType::F32 ? DType::F32 : w.dtype), int(K), &beta, out.data,
                       CUDA_R_32F, int(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "gemm");
    if (!bias.empty()) cuda::add_bias(static_cast<float*>(out.data), static_cast<const float*>(bias.data), M, N, stream_);
  }
  void rope(const RopeParams& p) override { cuda::rope(p, step_, stream_); }
  void attention(const AttentionParams& p) override {
    if (!naive_attention_ && cuda::split_attention_fits(p)) {
      // Prefill tiles on tensor cores where that kernel fits; every other row split-KV.
      const bool tiles = step_.n_prefill_tiles > 0 && cuda::prefill_attention_fits(p);
      const int32_t* rows = tiles ? step_.split_rows : nullptr;
      const int n_rows = tiles ? step_.n_split_rows : step_.n_tokens;
      const cuda::SplitPlan plan = cuda::plan_split_attention(p, n_rows, max_pos_, n_sms_);
      float* ws = nullptr;
      if (plan.n_splits > 1) {
        const size_t need = size_t(n_rows) * size_t(p.n_heads) * size_t(plan.n_splits) *
                            size_t(p.head_dim + 2) * sizeof(float);
        if (need > split_ws_cap_) {
          check(cudaStreamSynchronize(stream_), "sync");  // the old workspace may be in use
          split_ws_ = device_alloc(need);
          split_ws_cap_ = need;
        }
        ws = static_cast<float*>(split_ws_.get());
      }
      cuda::attention_split(p, step_, rows, n_rows, plan, ws, stream_);
      if (tiles) cuda::attention_prefill(p, step_, stream_);
      return;
    }
    if (p.head_dim > 256) throw InvalidArgument("the CUDA attention kernel supports head_dim up to 256");
    cuda::attention(p, step_, stream_);
  }
  void store_kv(const StoreKvParams& p) override { cuda::store_kv(p, step_, stream_); }
  void swiglu(const Tensor& gate_up, Tensor& out) override {
    cuda::swiglu(static_cast<const float*>(gate_up.data), out.rows, out.cols, static_cast<float*>(out.data), stream_);
  }
  void gather_rows(const Tensor& x, Tensor& out) override {
    cuda::gather_rows(static_cast<const float*>(x.data), x.cols, step_, static_cast<float*>(out.data), stream_);
  }
  void sync() override { check(cudaStreamSynchronize(stream_), "sync"); }

 private:
  std::shared_ptr<void> device_alloc(size_t bytes) {
    void* p = nullptr;
    const size_t sz = bytes ? bytes : 16;
    cudaError_t e = cudaMalloc(&p, sz);
    if (e != cudaSuccess) {
      const auto mib = [](size_t b) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.1f MiB", double(b) / (1 << 20));
        return std::string(buf);
      };
      throw ResourceExhausted("CUDA: cannot allocate " + mib(bytes) + " more on " + name_ + " (" + mib(*allocated_) +
                              " in use of " + mib(total_mem_) + ", " + cudaGetErrorString(e) +
                              "): the model or the KV pool (--kv-memory) does not fit");
    }
    *allocated_ += sz;
    auto counter = allocated_;
    return std::shared_ptr<void>(p, [counter, sz](void* q) {
      *counter -= sz;
      cudaFree(q);
    });
  }

  int device_;
  std::string name_;
  size_t total_mem_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cuda::DeviceStep step_;
  void* host_meta_ = nullptr;
  std::shared_ptr<void> dev_meta_;
  size_t meta_cap_ = 0;
  std::shared_ptr<void> xcast_;
  size_t xcast_cap_ = 0;
  int n_sms_ = 1;
  int32_t max_pos_ = 0;            // the step's last position (begin_step)
  bool naive_attention_ = false;   // HYCO_CUDA_ATTENTION=naive
  std::shared_ptr<void> split_ws_;  // partial results of split attention
  size_t split_ws_cap_ = 0;
  std::shared_ptr<size_t> allocated_ = std::make_shared<size_t>(0);
};

}  // namespace

bool cuda_available(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string("no usable CUDA driver/device (") + cudaGetErrorString(e) + ")";
    return false;
  }
  if (n == 0) {
    if (why) *why = "no CUDA device";
    return false;
  }
  return true;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  std::string why;
  if (!cuda_available(&why)) throw InvalidArgument("CUDA backend: " + why);
  return std::make_unique<CudaBackend>(device);
}

}  // namespace hyco
