// Token sampling: penalties, top-k, top-p, min-p, temperature (llama.cpp's default order), seeded
// and deterministic; log-probabilities of the model's distribution. Host-side, per sequence.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace hyco {

struct SamplingParams {
  float temperature = 0.0f;       // <= 0: greedy
  int32_t top_k = 0;              // 0: off
  float top_p = 1.0f;             // 1: off
  float min_p = 0.0f;             // 0: off
  float repeat_penalty = 1.0f;    // 1: off; positive logits divided, negative multiplied
  float presence_penalty = 0.0f;  // subtracted once from tokens seen in the window
  float frequency_penalty = 0.0f; // subtracted per occurrence in the window
  int32_t penalty_last_n = 64;    // tokens of history the penalties look at (prompt included)
  uint64_t seed = 0;
  int32_t n_probs = 0;            // top log-probabilities to report per token
};

// Throws InvalidArgument naming the field that is out of range.
void validate_sampling(const SamplingParams& p, int32_t n_vocab);

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;
};

class Sampler {
 public:
  Sampler(const SamplingParams& p, int32_t n_vocab);

  // Draws the next token from `logits` (modified: penalties applied). `history`: the tokens so far.
  int32_t sample(std::span<float> logits, std::span<const int32_t> history);
  const SamplingParams& params() const { return p_; }
  // Whether sample() changes the logits it is given (penalties are on).
  bool changes_logits() const;

  // Index of the largest value, the first on ties; NaNs are never picked (-1 when all are NaN).
  static int32_t argmax(std::span<const float> v);
  static int32_t argmax_portable(std::span<const float> v);  // the path without AVX-512 (tests)

  // log-softmax of `logits`: the chosen token's value, and the n largest (id ascending on ties).
  static float logprob_of(std::span<const float> logits, int32_t id);
  static std::vector<TokenLogprob> top_logprobs(std::span<const float> logits, int32_t n);

 private:
  void apply_penalties(std::span<float> logits, std::span<const int32_t> history);
  double uniform();

  SamplingParams p_;
  int32_t n_vocab_;
  std::mt19937_64 rng_;
  std::vector<int32_t> idx_;
  std::vector<float> probs_;
  std::vector<int32_t> counts_;
};

}  // namespace hyco
