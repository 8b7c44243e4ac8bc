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
