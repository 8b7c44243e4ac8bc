// Statistical tests of the sampler (engine/sampler.h): the distribution it draws from, after
// penalties, top-k, top-p, min-p and temperature, against distributions this file computes itself
// from the logits in double precision. Fixed seeds keep every run identical.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/errors.h"
#include "engine/sampler.h"
#include "tests/catch.hpp"

using namespace hyco;

namespace {

// Softmax of logits / temperature over the ids in `keep` (all ids when empty); 0 elsewhere.
std::vector<double> softmax(const std::vector<float>& logits, double temperature = 1.0,
                            const std::vector<int32_t>& keep = {}) {
  std::vector<int32_t> ids = keep;
  if (ids.empty()) {
    ids.resize(logits.size());
    std::iota(ids.begin(), ids.end(), 0);
  }
  double m = -INFINITY;
  for (int32_t i : ids) m = std::max(m, double(logits[size_t(i)]));
  std::vector<double> p(logits.size(), 0.0);
  double z = 0;
  for (int32_t i : ids) z += p[size_t(i)] = std::exp((double(logits[size_t(i)]) - m) / temperature);
  for (double& x : p) x /= z;
  return p;
}

// Ids sorted by probability, most likely first, lower id first on ties.
std::vector<int32_t> sorted_ids(const std::vector<float>& logits) {
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
  return ids;
}

// Logits whose softmax is exactly (up to float rounding) the given probabilities.
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(float(std::log(p)));
  return l;
}

std::vector<int64_t> draw_counts(const SamplingParams& p, const std::vector<float>& logits, int n_draws,
                                 const std::vector<int32_t>& history = {}) {
  Sampler s(p, int32_t(logits.size()));
  std::vector<int64_t> counts(logits.size(), 0);
  std::vector<float> work;
  int64_t n_outside = 0;
  for (int i = 0; i < n_draws; ++i) {
    work = logits;  // sample() applies the penalties in place
    int32_t t = s.sample(work, history);
    if (t >= 0 && t < int32_t(logits.size())) ++counts[size_t(t)];
    else ++n_outside;
  }
  REQUIRE(n_outside == 0);
  return counts;
}

// The counts of n draws match `want`: tokens of probability 0 are never drawn, every other count
// is within 5 standard errors of n·p (binomial), plus one for the discreteness of small counts.
// A correct sampler fails one token with probability ~6e-7; the seeds are fixed anyway.
void check_distribution(const std::vector<int64_t>& counts, const std::vector<double>& want, int n) {
  REQUIRE(counts.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("token " << i << ": drawn " << counts[i] << " times of " << n << ", expected p = " << want[i]);
    if (want[i] == 0) {
      CHECK(counts[i] == 0);
    } else {
      double mean = n * want[i], sd = std::sqrt(n * want[i] * (1 - want[i]));
      CHECK(std::fabs(double(counts[i]) - mean) <= 5 * sd + 1);
    }
  }
}

SamplingParams at(float temperature, uint64_t seed = 1) {
  SamplingParams p;
  p.temperature = temperature;
  p.seed = seed;
  return p;
}

const std::vector<float> kLogits = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 0.0f, 2.0f, -3.0f};
constexpr int kDraws = 20000;

}  // namespace

TEST_CASE("at temperature 1 without truncation draws follow the softmax of the logits", "[sampler]") {
  auto counts = draw_counts(at(1.0f, 11), kLogits, kDraws);
  check_distribution(counts, softmax(kLogits), kDraws);
}

TEST_CASE("temperature 0.5 sharpens the distribution to softmax(logits / 0.5)", "[sampler]") {
  auto counts = draw_counts(at(0.5f, 12), kLogits, kDraws);
  auto want = softmax(kLogits, 0.5);
  check_distribution(counts, want, kDraws);
  // The most likely token (id 4) gains mass relative to temperature 1, the least likely loses it.
  auto t1 = softmax(kLogits);
  CHECK(want[4] > t1[4] + 0.1);
  CHECK(double(counts[4]) / kDraws > t1[4] + 0.1);
  CHECK(counts[7] < int64_t(t1[7] * kDraws) / 2);
}

TEST_CASE("top_k = 3 draws only the three most likely tokens, renormalised", "[sampler]") {
  // Top three: id 4 (3.0), ids 1 and 6 (2.0).
  SECTION("temperature 1") {
    SamplingParams p = at(1.0f, 13);
    p.top_k = 3;
    auto counts = draw_counts(p, kLogits, kDraws);
    check_distribution(counts, softmax(kLogits, 1.0, {4, 1, 6}), kDraws);
  }
  SECTION("temperature 0.7 applies to the three survivors") {
    SamplingParams p = at(0.7f, 14);
    p.top_k = 3;
    auto counts = draw_counts(p, kLogits, kDraws);
    check_distribution(counts, softmax(kLogits, 0.7, {4, 1, 6}), kDraws);
  }
  SECTION("a tie at the cut keeps the lower id") {
    // ids 2 and 3 tie for third place; 2 is kept, 3 never drawn.
    std::vector<float> l = {0.0f, 2.0f, 1.0f, 1.0f, 3.0f};
    SamplingParams p = at(1.0f, 15);
    p.top_k = 3;
    auto counts = draw_counts(p, l, 5000);
    check_distribution(counts, softmax(l, 1.0, {4, 1, 2}), 5000);
  }
  SECTION("top_k larger than the vocabulary keeps everything") {
    SamplingParams p = at(1.0f, 16);
    p.top_k = 100;
    auto counts = draw_counts(p, kLogits, kDraws);
    check_distribution(counts, softmax(kLogits), kDraws);
  }
}

TEST_CASE("top_p keeps the smallest prefix of the sorted distribution with mass >= top_p", "[sampler]") {
  // Probabilities 0.5, 0.25, 0.1, 0.08, 0.04, 0.02, 0.01 placed at shuffled ids; cumulative
  // 0.5, 0.75, 0.85, 0.93, ... so top_p = 0.8 keeps exactly three tokens, 0.74 two, 0.76 three.
  const std::vector<double> probs = {0.04, 0.25, 0.01, 0.5, 0.08, 0.1, 0.02};
  const std::vector<float> l = logits_of(probs);
  const std::vector<int32_t> top2 = {3, 1}, top3 = {3, 1, 5};
  struct Case {
    float top_p, temperature;
    std::vector<int32_t> keep;
  };
  for (const Case& c : {Case{0.8f, 1.0f, top3}, Case{0.74f, 1.0f, top2}, Case{0.76f, 1.0f, top3},
                        // The nucleus is chosen at temperature 1 (llama.cpp order), then temperature
                        // 2 flattens the three survivors. Had temperature come first, the nucleus of
                        // the flatter distribution would hold four tokens.
                        Case{0.8f, 2.0f, top3}}) {
    SECTION("top_p " + std::to_string(c.top_p) + ", temperature " + std::to_string(c.temperature)) {
      SamplingParams p = at(c.temperature, 17);
      p.top_p = c.top_p;
      auto counts = draw_counts(p, l, kDraws);
      check_distribution(counts, softmax(l, c.temperature, c.keep), kDraws);
    }
  }
  SECTION("after top_k, top_p is relative to the mass of the top_k survivors") {
    // top_k = 4 keeps 0.5, 0.25, 0.1, 0.08 (sum 0.93); renormalised cumulative 0.538, 0.806, ...
    // so top_p = 0.8 keeps two tokens (of the full distribution it would keep three).
    SamplingParams p = at(1.0f, 18);
    p.top_k = 4;
    p.top_p = 0.8f;
    auto counts = draw_counts(p, l, kDraws);
    check_distribution(counts, softmax(l, 1.0, top2), kDraws);
  }
}

TEST_CASE("min_p keeps the tokens with p >= min_p * p_max", "[sampler]") {
  // p_max = 0.4, min_p = 0.2: the bar is 0.08, so 0.4, 0.25, 0.12, 0.09 stay and 0.07 goes.
  const std::vector<double> probs = {0.07, 0.12, 0.4, 0.03, 0.09, 0.25, 0.04};
  const std::vector<float> l = logits_of(probs);
  SamplingParams p = at(1.0f, 19);
  p.min_p = 0.2f;
  auto counts = draw_counts(p, l, kDraws);
  check_distribution(counts, softmax(l, 1.0, {2, 5, 1, 4}), kDraws);
}

TEST_CASE("greedy sampling returns the argmax and the lowest id on a tie", "[sampler]") {
  SamplingParams p = at(0.0f, 20);
  Sampler s(p, 6);
  std::vector<float> a = {-2.0f, -1.0f, -0.5f, -3.0f, -0.5f, -4.0f};
  CHECK(s.sample(a, {}) == 2);
  std::vector<float> b = {1.0f, 5.0f, 3.0f, 5.0f, 5.0f, 0.0f};
  CHECK(s.sample(b, {}) == 1);
  // The seed does not matter.
  for (uint64_t seed : {0u, 1u, 99u}) {
    Sampler g(at(0.0f, seed), 6);
    std::vector<float> c = {0.1f, 0.2f, 0.3f, 0.25f, 0.0f, 0.3f};
    CHECK(g.sample(c, {}) == 2);
  }
}

TEST_CASE("a seed fixes the sequence of draws and different seeds give different ones", "[sampler]") {
  auto run = [](uint64_t seed) {
    SamplingParams p = at(1.0f, seed);
    p.top_k = 6;
    p.top_p = 0.95f;
    Sampler s(p, int32_t(kLogits.size()));
    std::vector<int32_t> out;
    for (int i = 0; i < 300; ++i) {
      auto l = kLogits;
      out.push_back(s.sample(l, {}));
    }
    return out;
  };
  CHECK(run(42) == run(42));
  CHECK(run(0) == run(0));
  CHECK(run(42) != run(43));
  CHECK(run(0) != run(1));
}

TEST_CASE("penalties change the logits as sampler.h states, over the last penalty_last_n tokens", "[sampler]") {
  // Repeat penalty: a positive logit is divided by it, a negative one multiplied; then
  // frequency_penalty × (occurrences in the window) + presence_penalty is subtracted, once per
  // distinct token in the window.
  const std::vector<float> l = {1.5f, 0.8f, 2.0f, -0.7f, 0.3f, -1.2f};
  const std::vector<int32_t> history = {0, 0, 0, 5, 2, 3, 2, 2, 3};
  const float rp = 1.3f, presence = 0.4f, frequency = 0.25f;
  auto penalised = [&](int32_t last_n) {
    size_t n = last_n < 0 ? history.size() : std::min(history.size(), size_t(last_n));
    std::vector<int> count(l.size(), 0);
    for (size_t i = history.size() - n; i < history.size(); ++i) ++count[size_t(history[i])];
    std::vector<float> want = l;
    for (size_t t = 0; t < l.size(); ++t) {
      if (!count[t]) continue;
      float x = l[t] > 0 ? l[t] / rp : l[t] * rp;
      want[t] = x - (float(count[t]) * frequency + presence);
    }
    return want;
  };
  for (int32_t last_n : {4, 6, -1, 64, 0}) {
    SECTION("penalty_last_n " + std::to_string(last_n)) {
      SamplingParams p = at(1.0f, 21);
      p.repeat_penalty = rp;
      p.presence_penalty = presence;
      p.frequency_penalty = frequency;
      p.penalty_last_n = last_n;
      std::vector<float> want = last_n == 0 ? l : penalised(last_n);
      if (last_n == 4) {
        // The last four are {3, 2, 2, 3}: ids 2 and 3 penalised, 0 and 5 untouched.
        CHECK(want[0] == l[0]);
        CHECK(want[5] == l[5]);
        CHECK(want[2] != l[2]);
      }
      // The logits handed to sample() come back penalised.
      Sampler s(p, int32_t(l.size()));
      std::vector<float> work = l;
      s.sample(work, history);
      for (size_t i = 0; i < l.size(); ++i) {
        INFO("token " << i);
        CHECK(std::fabs(work[i] - want[i]) <= 1e-6f);
      }
      // And the draws follow the penalised softmax.
      auto counts = draw_counts(p, l, kDraws, history);
      check_distribution(counts, softmax(want), kDraws);
    }
  }
  SECTION("greedy sampling sees the penalised logits") {
    SamplingParams p = at(0.0f);
    p.presence_penalty = 0.5f;
    Sampler s(p, 3);
    std::vector<float> a = {5.0f, 4.9f, 0.0f};
    CHECK(s.sample(a, std::vector<int32_t>{0}) == 1);
  }
}

TEST_CASE("argmax finds the first largest value like a plain scan", "[sampler]") {
  // Plain scan: the first index of the largest non-NaN value.
  auto scan = [](const std::vector<float>& v) {
    int32_t r = -1;
    for (size_t i = 0; i < v.size(); ++i)
      if (!std::isnan(v[i]) && (r < 0 || v[i] > v[size_t(r)])) r = int32_t(i);
    return r;
  };
  std::mt19937 rng(7);
  for (size_t n : {1u, 2u, 15u, 16u, 17u, 31u, 33u, 100u, 16384u, 32003u}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<float> v(n);
      // Few distinct values, so ties across lanes and blocks are common.
      std::uniform_int_distribution<int> level(0, trial % 2 ? 3 : 1000);
      for (float& x : v) x = float(level(rng));
      if (trial % 5 == 1) v[rng() % n] = NAN;
      if (trial % 5 == 2) v[0] = -INFINITY;
      INFO("n " << n << " trial " << trial);
      CHECK(Sampler::argmax(v) == scan(v));
      CHECK(Sampler::argmax_portable(v) == scan(v));
    }
  }
  for (auto f : {&Sampler::argmax, &Sampler::argmax_portable}) {
    CHECK(f(std::vector<float>(40, -INFINITY)) == 0);
    CHECK(f(std::vector<float>(40, NAN)) == -1);
    CHECK(f(std::vector<float>{}) == -1);
    CHECK(f(std::vector<float>{-0.0f, 0.0f, -1.0f}) == 0);
  }
}

TEST_CASE("invalid sampling parameters are rejected naming the field", "[sampler]") {
  const int32_t V = 32000;
  CHECK_NOTHROW(validate_sampling(SamplingParams{}, V));
  const float nan = std::nanf(""), inf = INFINITY;
  struct Case {
    const char* field;
    std::function<void(SamplingParams&)> set;
  };
  const std::vector<Case> cases = {
      {"temperature", [&](SamplingParams& p) { p.temperature = nan; }},
      {"temperature", [](SamplingParams& p) { p.temperature = -0.5f; }},
      {"temperature", [&](SamplingParams& p) { p.temperature = inf; }},
      {"top_k", [](SamplingParams& p) { p.top_k = -1; }},
      {"top_p", [&](SamplingParams& p) { p.top_p = nan; }},
      {"top_p", [](SamplingParams& p) { p.top_p = 0.0f; }},
      {"top_p", [](SamplingParams& p) { p.top_p = 1.5f; }},
      {"top_p", [](SamplingParams& p) { p.top_p = -0.1f; }},
      {"min_p", [&](SamplingParams& p) { p.min_p = nan; }},
      {"min_p", [](SamplingParams& p) { p.min_p = -0.1f; }},
      {"min_p", [](SamplingParams& p) { p.min_p = 1.5f; }},
      {"repeat_penalty", [&](SamplingParams& p) { p.repeat_penalty = nan; }},
      {"repeat_penalty", [](SamplingParams& p) { p.repeat_penalty = 0.0f; }},
      {"repeat_penalty", [](SamplingParams& p) { p.repeat_penalty = -1.0f; }},
      {"presence_penalty", [&](SamplingParams& p) { p.presence_penalty = nan; }},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = 1000.0f; }},
      {"frequency_penalty", [&](SamplingParams& p) { p.frequency_penalty = -inf; }},
      {"frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = -1000.0f; }},
      {"penalty_last_n", [](SamplingParams& p) { p.penalty_last_n = -2; }},
      {"n_probs", [](SamplingParams& p) { p.n_probs = -1; }},
      {"n_probs", [](SamplingParams& p) { p.n_probs = 101; }},
  };
  for (const Case& c : cases) {
    SamplingParams p;
    c.set(p);
    INFO("field " << c.field);
    try {
      validate_sampling(p, V);
      FAIL("accepted an invalid " << c.field);
    } catch (const InvalidArgument& e) {
      INFO("message: " << e.what());
      CHECK(std::string(e.what()).find(c.field) != std::string::npos);
    }
  }
  // n_probs may not exceed a small vocabulary either.
  SamplingParams p;
  p.n_probs = 11;
  CHECK_THROWS_AS(validate_sampling(p, 10), InvalidArgument);
  p.n_probs = 10;
  CHECK_NOTHROW(validate_sampling(p, 10));
}

TEST_CASE("log-probabilities equal a log-softmax in double, top ones ordered with lower ids first on ties",
          "[sampler]") {
  // Large offsets test the stability of the log-sum-exp.
  for (float offset : {0.0f, 1000.0f, -1000.0f}) {
    SECTION("offset " + std::to_string(offset)) {
      std::vector<float> l = {1.0f, 3.0f, 3.0f, 0.0f, 3.0f, 2.0f, -5.0f, 2.5f};
      for (float& x : l) x += offset;
      double m = -INFINITY, z = 0;
      for (float x : l) m = std::max(m, double(x));
      for (float x : l) z += std::exp(double(x) - m);
      auto logp = [&](int32_t i) { return double(l[size_t(i)]) - m - std::log(z); };
      for (int32_t i = 0; i < int32_t(l.size()); ++i) CHECK(std::fabs(Sampler::logprob_of(l, i) - logp(i)) <= 1e-5);

      auto top = Sampler::top_logprobs(l, 5);
      const std::vector<int32_t> want_ids = {1, 2, 4, 7, 5};
      REQUIRE(top.size() == want_ids.size());
      for (size_t k = 0; k < top.size(); ++k) {
        INFO("rank " << k);
        CHECK(top[k].id == want_ids[k]);
        CHECK(std::fabs(top[k].logprob - logp(want_ids[k])) <= 1e-5);
        if (k) CHECK(top[k].logprob <= top[k - 1].logprob);
      }
      CHECK(Sampler::top_logprobs(l, 100).size() == l.size());
      CHECK(Sampler::top_logprobs(l, 0).empty());
    }
  }
}

TEST_CASE("top_p on a 32000-token vocabulary draws from the brute-force nucleus", "[sampler]") {
  // Each draw costs a pass over the vocabulary, so few draws: tokens of the nucleus expected at
  // least 20 times are checked one by one (and must be drawn), the rest of the nucleus as one
  // pooled bin, and every token outside the nucleus must never be drawn.
  const int32_t V = 32000;
  const float top_p = 0.95f;
  std::mt19937 rng(5);
  std::normal_distribution<float> noise(0.0f, 0.5f);
  std::vector<int32_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<float> l(static_cast<size_t>(V));
  int n = 0;
  SECTION("a sharp head: the nucleus is the first five of 20 likely tokens") {
    // Logits 14, 13.3, 12.6, ... at random ids over 31980 tokens near 0: the head holds ~98% of
    // the mass. The sampler sorts only the tokens that can be in the nucleus; here that is a few.
    for (float& x : l) x = noise(rng);
    for (int k = 0; k < 20; ++k) l[size_t(ids[size_t(k)])] = 14.0f - 0.7f * float(k) + 0.1f * noise(rng);
    n = 800;
  }
  SECTION("a long tail: the nucleus holds over a thousand tokens of p ~ 1e-4") {
    // Five tokens hold ~0.8 of the mass, 2000 tokens ~0.2 together, the rest almost nothing: the
    // nucleus ends deep inside the 2000, where each token is far below 1% of the mass.
    for (float& x : l) x = -20.0f + noise(rng);
    for (int k = 0; k < 5; ++k) l[size_t(ids[size_t(k)])] = 8.0f - 0.3f * float(k);
    for (int k = 5; k < 2005; ++k) l[size_t(ids[size_t(k)])] = 0.2f * noise(rng);
    n = 600;
  }

  // Brute force: full sort, cumulative mass in double, smallest prefix reaching top_p.
  auto p = softmax(l);
  auto order = sorted_ids(l);
  std::vector<int32_t> nucleus;
  double cum = 0;
  for (int32_t id : order) {
    nucleus.push_back(id);
    double before = cum;
    cum += p[size_t(id)];
    if (cum >= top_p) {
      // The cut is clear of top_p by far more than float rounding of the sums, so it cannot move.
      REQUIRE(before < top_p - 1e-6);
      REQUIRE(cum > top_p + 1e-6);
      break;
    }
  }
  auto want = softmax(l, 1.0, nucleus);

  SamplingParams sp = at(1.0f, 22);
  sp.top_p = top_p;
  auto counts = draw_counts(sp, l, n);
  // Bins: each nucleus token expected >= 20 times alone, the other nucleus tokens pooled.
  std::vector<int64_t> bin_counts;
  std::vector<double> bin_want;
  int64_t pooled_count = 0;
  double pooled_want = 0;
  for (int32_t id : nucleus) {
    if (want[size_t(id)] * n >= 20) {
      bin_counts.push_back(counts[size_t(id)]);
      bin_want.push_back(want[size_t(id)]);
      INFO("nucleus token " << id << " p = " << want[size_t(id)]);
      CHECK(counts[size_t(id)] > 0);
    } else {
      pooled_count += counts[size_t(id)];
      pooled_want += want[size_t(id)];
    }
  }
  bin_counts.push_back(pooled_count);
  bin_want.push_back(pooled_want);
  INFO("nucleus of " << nucleus.size() << " tokens, " << bin_counts.size() - 1 << " checked alone");
  check_distribution(bin_counts, bin_want, n);
  int64_t outside = n;
  for (int32_t id : nucleus) outside -= counts[size_t(id)];
  CHECK(outside == 0);
}

TEST_CASE("NaN and +inf logits neither crash the sampler nor get drawn", "[sampler]") {
  // A broken checkpoint or an overflow can put them in a row. NaN counts as no token; +inf
  // tokens share all the mass. Every truncation mode, including the top-p path (top_k 0) that
  // once read before the candidates when the row's sum was NaN.
  const float nan = std::nanf(""), inf = INFINITY;
  std::vector<SamplingParams> modes;
  for (float top_p : {1.0f, 0.95f, 0.5f})
    for (float min_p : {0.0f, 0.05f})
      for (int top_k : {0, 3}) {
        SamplingParams p = at(1.0f, 7);
        p.top_p = top_p, p.min_p = min_p, p.top_k = top_k;
        modes.push_back(p);
      }
  for (const SamplingParams& p : modes) {
    CAPTURE(p.top_p, p.min_p, p.top_k);
    Sampler s(p, 8);
    for (int draw = 0; draw < 200; ++draw) {
      std::vector<float> with_nan = {1.0f, nan, 0.5f, 2.0f, nan, -1.0f, 0.0f, 1.5f};
      const int32_t a = s.sample(with_nan, {});
      REQUIRE((a >= 0 && a < 8 && a != 1 && a != 4));
      std::vector<float> with_inf = {1.0f, inf, 0.5f, nan, inf, -1.0f, 0.0f, 1.5f};
      const int32_t b = s.sample(with_inf, {});
      REQUIRE((b == 1 || b == 4));
      std::vector<float> all_masked(8, -INFINITY);
      REQUIRE(s.sample(all_masked, {}) == 0);
    }
  }
  const std::vector<float> row = {1.0f, inf, 0.5f, nan, inf, -1.0f, 0.0f, 1.5f};
  CHECK(Sampler::logprob_of(row, 1) == Approx(std::log(0.5)));
  CHECK(Sampler::logprob_of(row, 3) == -INFINITY);
  const auto top = Sampler::top_logprobs(row, 3);
  REQUIRE(top.size() == 3);
  CHECK(top[0].id == 1);
  CHECK(top[1].id == 4);
  CHECK(top[0].logprob == Approx(std::log(0.5)));
  CHECK(top[2].logprob == -INFINITY);
  const std::vector<float> nan_row = {nan, 0.0f, 0.0f};
  CHECK(Sampler::logprob_of(nan_row, 1) == Approx(std::log(0.5)));
}
