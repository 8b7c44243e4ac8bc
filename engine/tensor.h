// A typed 2-D view of memory that a backend owns. Activations are row-major [rows, cols];
// matmul weights may be in a backend-private packed layout.
#pragma once

#include <cstdint>
#include <memory>

#include "engine/dtype.h"

namespace hyco {

enum class Layout : uint8_t { RowMajor, Packed };

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  Layout layout = Layout::RowMajor;
  std::shared_ptr<void> owner;  // keeps the allocation alive; views share it

  bool empty() const { return data == nullptr; }
  int64_t n_elements() const { return rows * cols; }
  size_t n_bytes() const { return size_t(n_elements()) * dtype_size(dtype); }
  // The first n rows (row-major tensors only).
  Tensor first_rows(int64_t n) const {
    Tensor t = *this;
    t.rows = n;
    return t;
  }
};

// Host memory handed to a backend for upload.
struct HostTensor {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
};

}  // namespace hyco
