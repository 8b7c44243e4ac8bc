// Picks the compute backend for --device: CUDA when built with it and a GPU is present, else CPU.
#pragma once

#include <memory>
#include <string>

#include "engine/backend.h"

namespace hyco {

// device: "auto", "cpu" or "cuda". Throws InvalidArgument when "cuda" is asked for and unavailable.
std::unique_ptr<Backend> make_backend(const std::string& device, int threads);
// The KV dtype used unless told otherwise: bf16, except on the CPU for a model whose matrices are
// kept in f32 (an f32 model stays f32 end to end) or in 8 bits (8-bit keys and values too).
DType default_kv_dtype(const Backend& b, DType matrix_dtype);

}  // namespace hyco
