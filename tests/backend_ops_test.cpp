// Every op case on every CPU kernel variant this machine runs, against the portable variant
// (plain C++ loops) by normalised MSE. The CUDA backend runs the same table (gpu_ops_test.cpp).
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

// An 8-bit cache rounds every key and value to 8 bits with a scale per row of head_dim: against the
// same cases with an f32 cache the outputs move by the rounding (|error| ≤ amax/254 per element,
// ~1e-5 in nmse after attention averages it), and every variant and thread count agrees.
TEST_CASE("attention over a Q8 cache: close to f32, the same on every variant and thread count", "[backend-ops]") {
  auto ref = make_cpu_backend(2, "base");
  auto one = make_cpu_backend(1);
  auto f32 = test::attention_cases(DType::F32);
  auto q8 = test::attention_cases(DType::Q8);
  REQUIRE(f32.size() == q8.size());
  for (size_t i = 0; i < q8.size(); ++i) {
    const auto& c = q8[i];
    std::vector<float> want = c.run(*ref);
    const double e = test::nmse(want, f32[i].run(*ref));
    INFO(c.name << ": nmse against the f32 cache " << e);
    CHECK(e <= 1e-4);
    CHECK(e > 0.0);  // the values were really rounded
    for (const auto& isa : cpu_isa_variants()) {
      INFO(isa);
      CHECK(test::nmse(c.run(*make_cpu_backend(2, isa)), want) <= 1e-9);
    }
    CHECK(test::nmse(c.run(*one), c.run(*make_cpu_backend(2))) == 0.0);
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
