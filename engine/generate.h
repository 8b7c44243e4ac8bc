// Single-sequence generation: chunked prefill, then sample-and-decode until a stop. For the CLI,
// tests and benchmarks; the server's scheduler batches many sequences instead.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace hyco {

struct GenerateOptions {
  SamplingParams sampling;
  int32_t max_tokens = 64;
  std::vector<int32_t> stop_ids;  // end the generation (not included in the output)
  std::vector<int32_t> banned_ids;  // never generated (BOS, FIM markers)
  int32_t chunk = 512;            // prefill tokens per forward
  int32_t n_tokens = 0;           // ids from here on are never sampled (a vocabulary padded past
                                  // the tokenizer's, as Qwen2.5's); 0: the model's vocabulary
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated, without the stop token
  std::string finish;           // "stop" (a stop id), "length" (max_tokens or context), "callback"
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

// Feeds the part of `prompt` that `seq` does not hold yet (its first kv.length(seq) tokens must
// already be the prompt's), then generates. on_token returns false to stop early.
GenerateResult generate(Model& model, KvCache& kv, SeqId seq, std::span<const int32_t> prompt,
                        const GenerateOptions& opts, const std::function<bool(int32_t)>& on_token = {});

}  // namespace hyco
