// Every op case on every CPU kernel variant this machine runs, against the portable variant
// (plain C++ loops) by normalised MSE. The CUDA backend runs the same table (gpu_ops_test.cpp).
#include <algorithm>
#include <cmath>
#include <random>

#include "tests/backend_op_cases.h"
#include "tests/catch.hpp"

using namespace hyco;

TEST_CASE("every CPU kernel variant computes every op like the portable one", "[backend-ops]") {
  auto ref = make_cpu_backend(2, "base");
  auto variants = cpu_isa_variants();
  for (const auto& c : test::backend_op_cases()) {
    std::vector<float> want = c.run(*ref);
    for (const auto& isa : variants) {
      if (isa == "base") continue;
      auto b = make_cpu_backend(2, isa);
      double e = test::nmse(c.run(*b), want);
      INFO(c.name << " on " << isa << ": nmse " << e << " (max " << c.max_nmse << ")");
      CHECK(e <= c.max_nmse);
    }
  }
}

// An 8-bit cache rounds every key and value to 8 bits with a scale per row of head_dim, and the
// queries the same way: against the same cases with an f32 cache the outputs move by the rounding
// (|error| ≤ amax/254 per element; 1e-5 to 1.1e-4 in nmse after attention, more for wider heads
// whose scores sum more rounded products), and every variant and thread count agrees.
TEST_CASE("attention over a Q8 cache: close to f32, the same on every variant and thread count", "[backend-ops]") {
  auto ref = make_cpu_backend(2, "base");
  auto one = make_cpu_backend(1);
  auto f32 = test::attention_cases(DType::F32);
  auto q8 = test::attention_cases(DType::Q8);
  for (auto& c : test::attention_cases_extra(DType::F32)) f32.push_back(std::move(c));
  for (auto& c : test::attention_cases_extra(DType::Q8)) q8.push_back(std::move(c));
  REQUIRE(f32.size() == q8.size());
  for (size_t i = 0; i < q8.size(); ++i) {
    const auto& c = q8[i];
    std::vector<float> want = c.run(*ref);
    const double e = test::nmse(want, f32[i].run(*ref));
    INFO(c.name << ": nmse against the f32 cache " << e);
    CHECK(e <= 3e-4);
    CHECK(e > 0.0);  // the values were really rounded
    for (const auto& isa : cpu_isa_variants()) {
      INFO(isa);
      CHECK(test::nmse(c.run(*make_cpu_backend(2, isa)), want) <= 1e-9);
    }
    CHECK(test::nmse(c.run(*one), c.run(*make_cpu_backend(2))) == 0.0);
  }
}

TEST_CASE("cache slots holding NaN from before never reach the output", "[backend-ops]") {
  // Tiles read in place hold other positions' slots in the columns a row does not see (weight
  // 0); 0 · NaN must not happen. The same cases over a zeroed cache give the same outputs.
  auto b = make_cpu_backend(2);
  for (DType kv : {DType::F32, DType::BF16, DType::Q8}) {
    auto clean = test::attention_cases(kv);
    auto stale = test::attention_cases_stale(kv);
    const size_t pick[3] = {1, 5, 6};
    for (size_t i = 0; i < stale.size(); ++i) {
      INFO(stale[i].name);
      CHECK(test::nmse(stale[i].run(*b), clean[pick[i]].run(*b)) == 0.0);
    }
  }
}

TEST_CASE("op results do not depend on the number of threads", "[backend-ops]") {
  auto one = make_cpu_backend(1);
  auto two = make_cpu_backend(2);
  auto three = make_cpu_backend(3);
  for (const auto& c : test::backend_op_cases()) {
    std::vector<float> want = c.run(*one);
    INFO(c.name);
    CHECK(test::nmse(c.run(*two), want) == 0.0);
    CHECK(test::nmse(c.run(*three), want) == 0.0);
  }
}

namespace {

// The 8-bit form of a row as the design states it, computed here in double: scale = amax / 127,
// q = round-half-even(x / scale) clamped to ±127 (a zero row: scale 0, q 0).
struct Q8Row {
  std::vector<int> q;
  double scale = 0;
};
Q8Row q8_reference(const float* x, int n) {
  Q8Row r;
  r.q.assign(size_t(n), 0);
  float amax = 0;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  if (amax == 0) return r;
  const float inv = 127.0f / amax;  // the same float steps as the kernels: x · (127 / amax), rounded once
  for (int i = 0; i < n; ++i) r.q[size_t(i)] = std::clamp(int(std::nearbyint(x[i] * inv)), -127, 127);
  r.scale = double(amax / 127.0f);
  return r;
}

std::vector<float> gaussian(size_t n, uint32_t seed, float sd) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace

// 8-bit weights (`--weights q8`): weights rounded per output column at load, activations per row
// at each matmul, products summed exactly. Checked against that definition computed here in
// 64-bit integers and doubles, against the unrounded f32 product (the error 8-bit rounding
// gives, no more), and across variants and thread counts.
TEST_CASE("matmul with 8-bit weights: the exact products of the 8-bit values", "[backend-ops]") {
  struct Shape {
    int M, N, K;
  };
  for (Shape s : {Shape{1, 64, 512}, Shape{16, 200, 130}, Shape{7, 65, 3}, Shape{33, 96, 1536}}) {
    INFO("M" << s.M << " N" << s.N << " K" << s.K);
    auto x = gaussian(size_t(s.M) * s.K, 11, 1.0f), w = gaussian(size_t(s.N) * s.K, 12, 0.05f);
    x[0] = 9.0f;  // an outlier: that row's step is coarser
    std::vector<double> want(size_t(s.M) * s.N);
    std::vector<Q8Row> wq;
    for (int n = 0; n < s.N; ++n) wq.push_back(q8_reference(w.data() + size_t(n) * s.K, s.K));
    for (int m = 0; m < s.M; ++m) {
      const Q8Row xq = q8_reference(x.data() + size_t(m) * s.K, s.K);
      for (int n = 0; n < s.N; ++n) {
        int64_t dot = 0;
        for (int k = 0; k < s.K; ++k) dot += int64_t(xq.q[size_t(k)]) * wq[size_t(n)].q[size_t(k)];
        want[size_t(m) * s.N + n] = double(dot) * xq.scale * wq[size_t(n)].scale;
      }
    }
    std::vector<float> want_f(want.begin(), want.end());
    auto run = [&](Backend& b, DType dt) {
      Tensor X = b.alloc(DType::F32, s.M, s.K), O = b.alloc(DType::F32, s.M, s.N);
      b.upload(X, x.data());
      Tensor W = b.upload_weight(HostTensor{w.data(), DType::F32, s.N, s.K}, WeightRole::Matrix, dt);
      b.matmul(X, W, Tensor{}, O, false);
      std::vector<float> out(size_t(s.M) * s.N);
      b.download(O, out.data());
      return out;
    };
    for (const auto& isa : cpu_isa_variants())
      for (int threads : {1, 2, 3}) {
        INFO(isa << ", " << threads << " threads");
        CHECK(test::nmse(run(*make_cpu_backend(threads, isa), DType::Q8), want_f) <= 1e-12);
      }
    auto b = make_cpu_backend(2);
    const double e = test::nmse(run(*b, DType::Q8), run(*b, DType::F32));
    INFO("against f32: nmse " << e);
    CHECK(e > 0.0);
    CHECK(e <= 1e-3);  // two 8-bit roundings of Gaussian rows: ~2 · (4σ/127)²/12 / σ² ≈ 2e-4
  }
}

TEST_CASE("8-bit weights: every variant and thread count gives the portable one's bits", "[backend-ops]") {
  auto ref = make_cpu_backend(2, "base");
  auto one = make_cpu_backend(1);
  for (const auto& c : test::q8_weight_cases()) {
    std::vector<float> want = c.run(*ref);
    for (const auto& isa : cpu_isa_variants()) {
      INFO(c.name << " on " << isa);
      CHECK(test::nmse(c.run(*make_cpu_backend(2, isa)), want) == 0.0);  // integer sums, one fused scaling
    }
    INFO(c.name);
    const std::vector<float> alone = c.run(*one);
    CHECK(test::nmse(c.run(*make_cpu_backend(2)), alone) == 0.0);
    CHECK(test::nmse(c.run(*make_cpu_backend(3)), alone) == 0.0);
  }
}

TEST_CASE("embed from an 8-bit token table: each row's 8-bit values times its scale", "[backend-ops]") {
  const int V = 130, D = 70;
  auto table = gaussian(size_t(V) * D, 13, 0.5f);
  std::vector<int32_t> tokens = {0, 129, 64, 63, 65, 7};
  std::vector<int32_t> positions(tokens.size(), 0);
  StepMeta meta;
  meta.tokens = tokens.data();
  meta.positions = positions.data();
  meta.n_tokens = int32_t(tokens.size());
  for (const auto& isa : cpu_isa_variants()) {
    auto b = make_cpu_backend(2, isa);
    Tensor T = b->upload_weight(HostTensor{table.data(), DType::F32, V, D}, WeightRole::Matrix, DType::Q8);
    b->begin_step(meta);
    Tensor O = b->alloc(DType::F32, meta.n_tokens, D);
    b->embed(T, O);
    std::vector<float> got(size_t(meta.n_tokens) * D);
    b->download(O, got.data());
    for (size_t i = 0; i < tokens.size(); ++i) {
      const Q8Row r = q8_reference(table.data() + size_t(tokens[i]) * D, D);
      for (int k = 0; k < D; ++k) {
        INFO(isa << " token " << tokens[i] << " element " << k);
        CHECK(double(got[i * D + size_t(k)]) == Approx(r.q[size_t(k)] * r.scale).epsilon(1e-6).margin(1e-9));
      }
    }
  }
}
