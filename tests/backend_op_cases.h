// One table of backend op cases (llama.cpp's test-backend-ops idea): each case runs an op on
// deterministic random inputs through the Backend interface and returns its outputs, so any
// backend can be compared with the reference CPU backend by normalised mean squared error.
// Adding an op adds one case.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace hyco::test {

struct OpCase {
  std::string name;
  double max_nmse;  // derived from the dtype the op rounds to (see backend_op_cases.cpp)
  std::function<std::vector<float>(Backend&)> run;
};

std::vector<OpCase> backend_op_cases();
// The attention cases with their cache in `kv_dtype` (Q8 is CPU-only, so backend_op_cases, which
// every backend runs, leaves it out).
std::vector<OpCase> attention_cases(DType kv_dtype);
// More attention shapes for the CPU's 8-bit paths: 3 and 5 query heads per KV head (every row
// count of the integer score kernel), head_dim 80/96/112 and one not divisible by 4 (the f32
// fallback of the integer scores).
std::vector<OpCase> attention_cases_extra(DType kv_dtype);
// Three of attention_cases (the 2nd, 6th and 7th) over a cache that starts as all-ones bytes
// (NaN) instead of zeros.
std::vector<OpCase> attention_cases_stale(DType kv_dtype);

// Matmul and embed with 8-bit weights (CPU only): the same shapes as backend_op_cases' f32 and
// bf16 ones, plus a 16-row decode batch.
std::vector<OpCase> q8_weight_cases();

// Σ(a-b)² / Σb²; infinity when sizes differ or a value is not finite.
double nmse(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace hyco::test
