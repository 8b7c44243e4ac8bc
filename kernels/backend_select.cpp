// Backend selection. The CUDA backend is linked only when HYCO_HAVE_CUDA; the CPU build never
// needs a GPU or a driver.
#include "kernels/backend_select.h"

#include "engine/errors.h"

#if HYCO_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"  // plain C++: no CUDA headers
#endif

namespace hyco {

std::unique_ptr<Backend> make_backend(const std::string& device, int threads) {
#if HYCO_HAVE_CUDA
  if (device == "cuda" || device == "auto") {
    std::string why;
    if (cuda_available(&why)) return make_cuda_backend();
    if (device == "cuda") throw InvalidArgument("--device cuda: " + why);
  }
#else
  if (device == "cuda") throw InvalidArgument("--device cuda: this binary was built without CUDA (HYCO_CUDA=OFF)");
#endif
  return make_cpu_backend(threads);
}

DType default_kv_dtype(const Backend& b, DType matrix_dtype) {
  if (b.name() == "cpu" && matrix_dtype == DType::F32) return DType::F32;
  if (b.name() == "cpu" && matrix_dtype == DType::Q8) return DType::Q8;  // 8-bit matrices: 8-bit keys and values too
  return DType::BF16;
}

}  // namespace hyco
