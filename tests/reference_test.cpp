// The engine against scripts/reference.py (an independent PyTorch implementation written from
// DESIGN.md): logits at every position within a tolerance derived from the dtype, and identical
// greedy continuations, for every tiny configuration of the suite. Tolerance (FlashAttention-3
// rule): 2 × the error of a naive implementation in the model's precision, plus a noise floor.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "engine/generate.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "tests/catch.hpp"
#include "tests/reference_suite.h"
#include "tests/test_util.h"

using namespace hyco;
namespace fs = std::filesystem;

using namespace hyco::test;

TEST_CASE("engine logits and greedy tokens match the PyTorch reference for every suite model", "[reference]") {
  REQUIRE(fs::exists(kSuite / "suite.json"));
  auto suite = read_json(kSuite / "suite.json");
  REQUIRE(suite.size() >= 10);
  for (const std::string& isa : cpu_isa_variants())
  for (const auto& entry : suite) {
    const std::string name = entry["name"];
    SECTION(name + " (" + isa + " kernels)") {
      auto backend = make_cpu_backend(2, isa);
      Expected ex = read_expected(kSuite / entry["expected"].get<std::string>());
      // The checkpoint's own precision (the CPU default for 16-bit files is 8-bit matrices where
      // the CPU has VNNI, which the naive-error tolerance does not cover).
      LoadOptions lo;
      lo.matrix_dtype = entry["dtype"] == "bf16" ? DType::BF16 : DType::F32;
      auto model = Model::load((kSuite / entry["model_dir"].get<std::string>()).string(), *backend, lo);
      const float naive_err = test::max_abs_diff(ex.naive, ex.logits);
      const float floor = 1e-6f * test::max_abs(ex.logits);
      const float tol = 2 * naive_err + floor;
      INFO(name << ": naive error " << naive_err << ", tolerance " << tol << ", matrices "
                << dtype_name(model->matrix_dtype()));
      REQUIRE(model->config().n_vocab == ex.n_vocab);

      auto whole = engine_logits(*model, *backend, ex.tokens, 1 << 20, DType::F32);
      float err = test::max_abs_diff(whole, ex.logits);
      INFO("engine error, one prefill: " << err);
      CHECK(err <= tol);
      auto chunked = engine_logits(*model, *backend, ex.tokens, 7, DType::F32);
      float err_chunked = test::max_abs_diff(chunked, ex.logits);
      INFO("engine error, chunks of 7: " << err_chunked);
      CHECK(err_chunked <= tol);

      auto greedy = engine_greedy(*model, *backend, ex.tokens, int(ex.greedy.size()));
      CHECK(greedy == ex.greedy);
    }
  }
}

TEST_CASE("an --attention override computes what the reference computes for that pattern", "[reference]") {
  // The weights of the all-global suite model, run as local,global with window 8 and 2 sinks: the
  // reference computes the same weights with that pattern written into config.json.
  const fs::path src = kSuite / "global";
  REQUIRE(fs::exists(src / "config.json"));
  const fs::path dir = test::temp_dir("override");
  auto cfg = read_json(src / "config.json");
  cfg["layer_types"] = {"sliding_attention", "full_attention"};
  cfg["sliding_window"] = 8;
  cfg["attention_sinks"] = 2;
  std::ofstream(dir / "config.json") << cfg.dump(2);
  fs::create_symlink(fs::absolute(src / "model.safetensors"), dir / "model.safetensors");
  Expected base = read_expected(src / "expected.safetensors");
  std::string toks;
  for (size_t i = 0; i < base.tokens.size(); ++i) toks += (i ? "," : "") + std::to_string(base.tokens[i]);
  std::string cmd = std::string(HYCO_PYTHON) + " " + HYCO_SOURCE_DIR + "/scripts/reference.py logits --model " +
                    dir.string() + " --tokens " + toks + " --greedy 0 --out " + (dir / "expected.safetensors").string() +
                    " > /dev/null";
  REQUIRE(std::system(cmd.c_str()) == 0);
  TensorStore s = TensorStore::open_file((dir / "expected.safetensors").string());
  auto want = read_vec<float>(s, "logits");
  auto naive = read_vec<float>(s, "logits_naive");

  auto backend = make_cpu_backend(2);
  LoadOptions lo;
  lo.attention = parse_attention_override("pattern=LG,window=8,sinks=2");
  auto model = Model::load(src.string(), *backend, lo);
  CHECK(model->config().pattern_string() == "LG");
  auto got = engine_logits(*model, *backend, base.tokens, 16, DType::F32);
  float tol = 2 * test::max_abs_diff(naive, want) + 1e-6f * test::max_abs(want);
  CHECK(test::max_abs_diff(got, want) <= tol);
  // And it really differs from the unmodified model's logits (the override took effect).
  CHECK(test::max_abs_diff(got, base.logits) > 100 * tol);
  fs::remove_all(dir);
}
