// Emulated GPU (see cuda_runtime.h): bfloat16.
#pragma once
#include <cstdint>

#include "engine/dtype.h"

struct __nv_bfloat16 {
  uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16(float x) { return {hyco::f32_to_bf16(x)}; }
inline float __bfloat162float(__nv_bfloat16 x) { return hyco::bf16_to_f32(x.bits); }
