// The CUDA backend's entry points. Uses only the CUDA runtime API, so a binary built with CUDA
// starts on a machine without a driver and falls back to the CPU.
#pragma once

#include <memory>
#include <string>

#include "engine/backend.h"

namespace hyco {

// True when a CUDA device can be used; otherwise *why says what is missing.
bool cuda_available(std::string* why);
// Throws InvalidArgument when no device is usable.
std::unique_ptr<Backend> make_cuda_backend(int device = 0);

}  // namespace hyco
