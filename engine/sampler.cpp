// Sampling chain: penalties → top-k → top-p → min-p → temperature → draw. See sampler.h.
#include "engine/sampler.h"

#include <algorithm>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <cmath>
#include <numeric>
#include <string>

#include "engine/errors.h"

namespace hyco {

void validate_sampling(const SamplingParams& p, int32_t n_vocab) {
  auto bad = [](const std::string& field, const std::string& why) { return InvalidArgument(field + " " + why); };
  if (!std::isfinite(p.temperature) || p.temperature < 0 || p.temperature > 100)
    throw bad("temperature", "must be a number in [0, 100]");
  if (p.top_k < 0) throw bad("top_k", "must not be negative");
  if (!std::isfinite(p.top_p) || p.top_p <= 0 || p.top_p > 1) throw bad("top_p", "must be in (0, 1]");
  if (!std::isfinite(p.min_p) || p.min_p < 0 || p.min_p > 1) throw bad("min_p", "must be in [0, 1]");
  if (!std::isfinite(p.repeat_penalty) || p.repeat_penalty <= 0 || p.repeat_penalty > 100)
    throw bad("repeat_penalty", "must be in (0, 100]");
  if (!std::isfinite(p.presence_penalty) || std::fabs(p.presence_penalty) > 100)
    throw bad("presence_penalty", "must be in [-100, 100]");
  if (!std::isfinite(p.frequency_penalty) || std::fabs(p.frequency_penalty) > 100)
    throw bad("frequency_penalty", "must be in [-100, 100]");
  if (p.penalty_last_n < -1) throw bad("penalty_last_n", "must be -1 (all), 0 (off) or positive");
  if (p.n_probs < 0 || p.n_probs > std::min<int32_t>(n_vocab, 100)) throw bad("n_probs", "must be in [0, 100]");
}

Sampler::Sampler(const SamplingParams& p, int32_t n_vocab) : p_(p), n_vocab_(n_vocab), rng_(p.seed) {}

double Sampler::uniform() { return double(rng_() >> 11) * 0x1.0p-53; }

bool Sampler::changes_logits() const {
  const bool any = p_.repeat_penalty != 1.0f || p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f;
  return any && p_.penalty_last_n != 0;
}

namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// On AVX-512, two passes: the largest value (vmaxps(x, m) is `x > m ? x : m`, so NaNs are
// skipped), then the first place that holds it.
__attribute__((target("avx512f"))) float max_value_avx512(std::span<const float> v) {
  const size_t n = v.size(), whole = n / 16 * 16;
  __m512 lane = _mm512_set1_ps(-INFINITY);
  for (size_t j = 0; j < whole; j += 16) lane = _mm512_max_ps(_mm512_loadu_ps(v.data() + j), lane);
  alignas(64) float l[16];
  _mm512_store_ps(l, lane);
  float m = -INFINITY;
  for (size_t i = 0; i < 16; ++i) m = l[i] > m ? l[i] : m;
  for (size_t j = whole; j < n; ++j) m = v[j] > m ? v[j] : m;
  return m;
}
__attribute__((target("avx512f"))) int32_t first_index_of_avx512(std::span<const float> v, float m) {
  const size_t n = v.size(), whole = n / 16 * 16;
  const __m512 mv = _mm512_set1_ps(m);
  for (size_t j = 0; j < whole; j += 16) {
    const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_loadu_ps(v.data() + j), mv, _CMP_EQ_OQ);
    if (eq) return int32_t(j) + __builtin_ctz(unsigned(eq));
  }
  for (size_t j = whole; j < n; ++j)
    if (v[j] == m) return int32_t(j);
  return -1;
}
bool has_avx512() {
  static const bool has = [] {
    __builtin_cpu_init();  // may run before the constructor that would do it
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return has;
}
#endif

}  // namespace

int32_t Sampler::argmax(std::span<const float> v) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (has_avx512()) return first_index_of_avx512(v, max_value_avx512(v));
#endif
  return argmax_portable(v);
}

int32_t Sampler::argmax_portable(std::span<const float> v) {
  int32_t best = -1;  // -1: empty, or all NaN
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isnan(v[i]) && (best < 0 || v[i] > v[size_t(best)])) best = int32_t(i);
  return best;
}

namespace {

// Logits a broken checkpoint or an overflow can produce: NaN is "no token" (-inf), and +inf
// tokens share all the mass (logit 0, every other -inf). True when the row was changed.
bool tame_non_finite(std::span<float> logits) {
  bool changed = false, pos_inf = false;
  for (float& l : logits) {
    if (std::isnan(l)) {
      l = -INFINITY;
      changed = true;
    } else if (l == INFINITY) {
      pos_inf = true;
    }
  }
  if (pos_inf)
    for (float& l : logits) l = l == INFINITY ? 0.0f : -INFINITY;
  return changed || pos_inf;
}

// The row itself, or, when it holds NaN or +inf, a tamed copy in `storage`.
std::span<const float> tamed_view(std::span<const float> row, std::vector<float>& storage) {
  for (float l : row)
    if (std::isnan(l) || l == INFINITY) {
      storage.assign(row.begin(), row.end());
      tame_non_finite(storage);
      return storage;
    }
  return row;
}

}  // namespace

void Sampler::apply_penalties(std::span<float> logits, std::span<const int32_t> history) {
  if (!changes_logits() || history.empty()) return;
  size_t n = p_.penalty_last_n < 0 ? history.size() : std::min(history.size(), size_t(p_.penalty_last_n));
  auto window = history.subspan(history.size() - n);
  counts_.assign(size_t(n_vocab_), 0);
  for (int32_t t : window)
    if (t >= 0 && t < n_vocab_) ++counts_[size_t(t)];
  for (int32_t t : window) {
    if (t < 0 || t >= n_vocab_ || counts_[size_t(t)] == 0) continue;
    float& l = logits[size_t(t)];
    if (p_.repeat_penalty != 1.0f) l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
    l -= float(counts_[size_t(t)]) * p_.frequency_penalty + p_.presence_penalty;
    counts_[size_t(t)] = 0;  // each distinct token once
  }
}

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> history) {
  HYCO_ASSERT(int32_t(logits.size()) == n_vocab_);
  apply_penalties(logits, history);
  if (p_.temperature <= 0.0f) {
    const int32_t best = argmax(logits);
    return best < 0 ? 0 : best;
  }
  tame_non_finite(logits);
  const float maxl = *std::max_element(logits.begin(), logits.end());
  if (maxl == -INFINITY) return 0;  // every token masked: as greedy does
  // Candidates, most likely first. Stable tie order (lower id first) keeps runs reproducible.
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  idx_.resize(size_t(n_vocab_));
  std::iota(idx_.begin(), idx_.end(), 0);
  size_t n = idx_.size();
  double total = 0;  // mass top-p is relative to: all candidates left after top-k
  if (p_.top_k > 0 && size_t(p_.top_k) < n) {
    std::nth_element(idx_.begin(), idx_.begin() + p_.top_k - 1, idx_.end(), by_logit);
    n = size_t(p_.top_k);
  } else if (p_.top_p < 1.0f) {
    // Tokens below τ = (1 - top_p)/V · (sum of exps) hold less than 1 - top_p of the mass in
    // total, so the nucleus lies among those above τ: sort only them.
    for (float l : logits) total += std::exp(double(l - maxl));
    const double tau = std::log((1.0 - p_.top_p) / n_vocab_ * total);
    n = size_t(std::partition(idx_.begin(), idx_.end(), [&](int32_t i) { return double(logits[i] - maxl) >= tau; }) -
               idx_.begin());
  }
  std::sort(idx_.begin(), idx_.begin() + std::ptrdiff_t(n), by_logit);
  // Probabilities at temperature 1 for top-p and min-p (llama.cpp applies temperature last).
  probs_.resize(n);
  double z = 0;
  for (size_t i = 0; i < n; ++i) z += probs_[i] = float(std::exp(double(logits[idx_[i]] - maxl)));
  if (p_.top_p < 1.0f) {
    if (total == 0) total = z;
    double cum = 0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cum += probs_[i] / total;
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }
  if (p_.min_p > 0.0f) {
    size_t keep = 1;
    while (keep < n && probs_[keep] >= p_.min_p * probs_[0]) ++keep;
    n = keep;
  }
  z = 0;
  for (size_t i = 0; i < n; ++i) z += probs_[i] = float(std::exp(double(logits[idx_[i]] - maxl) / p_.temperature));
  double u = uniform() * z, cum = 0;
  for (size_t i = 0; i < n; ++i) {
    cum += probs_[i];
    if (u < cum) return idx_[i];
  }
  return idx_[n - 1];
}

float Sampler::logprob_of(std::span<const float> row, int32_t id) {
  std::vector<float> tamed;
  const std::span<const float> logits = tamed_view(row, tamed);
  const float maxl = *std::max_element(logits.begin(), logits.end());
  if (maxl == -INFINITY) return -INFINITY;  // every token masked
  double z = 0;
  for (float l : logits) z += std::exp(double(l - maxl));
  return float(double(logits[size_t(id)] - maxl) - std::log(z));
}

std::vector<TokenLogprob> Sampler::top_logprobs(std::span<const float> row, int32_t n) {
  std::vector<float> tamed;
  const std::span<const float> logits = tamed_view(row, tamed);
  const float maxl = *std::max_element(logits.begin(), logits.end());
  if (maxl == -INFINITY) return {};  // every token masked
  double z = 0;
  for (float l : logits) z += std::exp(double(l - maxl));
  const double lz = std::log(z);
  std::vector<int32_t> idx(logits.size());
  std::iota(idx.begin(), idx.end(), 0);
  n = std::min<int32_t>(n, int32_t(idx.size()));
  std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
  });
  std::vector<TokenLogprob> out;
  for (int32_t i = 0; i < n; ++i) out.push_back({idx[size_t(i)], float(double(logits[size_t(idx[size_t(i)])] - maxl) - lz)});
  return out;
}

}  // namespace hyco
