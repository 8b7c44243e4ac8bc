// The step's metadata as the CUDA kernels see it; plain C++, so that tests/cuda_emu_test.cpp can
// use it without the CUDA headers.
#pragma once

#include <cstdint>

#include "engine/ops.h"

namespace hyco::cuda {

constexpr int kPrefillRows = 64;     // query rows per block of the prefill attention kernel
constexpr int kPrefillMinRows = 16;  // spans with fewer new tokens go to the split kernel

// Per-step metadata in device memory (begin_step copies StepMeta's arrays here).
struct DeviceStep {
  const int32_t* tokens = nullptr;     // [n_tokens]
  const int32_t* positions = nullptr;  // [n_tokens]
  const int32_t* tok_span = nullptr;   // [n_tokens] span index of each row
  const SeqSpan* spans = nullptr;      // [n_spans]
  const int32_t* tables = nullptr;     // [n_spans, table_stride]
  const int32_t* out_rows = nullptr;   // [n_out]
  int32_t n_tokens = 0, n_spans = 0, table_stride = 0, n_out = 0;
  // Attention work lists: tiles of up to kPrefillRows rows of spans with at least
  // kPrefillMinRows new tokens, as (span, first row) pairs, for the prefill kernel; the rows of
  // the other spans for the split kernel.
  const int32_t* prefill_tiles = nullptr;  // [n_prefill_tiles, 2]
  const int32_t* split_rows = nullptr;     // [n_split_rows]
  int32_t n_prefill_tiles = 0, n_split_rows = 0;
};

// How the split-KV attention kernel divides each row's keys (see attention_split.cuh).
struct SplitPlan {
  int n_splits = 1, split_len = 0;
};

}  // namespace hyco::cuda
