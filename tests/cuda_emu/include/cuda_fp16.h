// Emulated GPU (see cuda_runtime.h): half precision.
#pragma once
#include <cstdint>

#include "engine/dtype.h"

struct __half {
  uint16_t bits;
};
inline __half __float2half(float x) { return {hyco::f32_to_f16(x)}; }
inline float __half2float(__half h) { return hyco::f16_to_f32(h.bits); }
inline __half __ushort_as_half(unsigned short u) { return {u}; }
