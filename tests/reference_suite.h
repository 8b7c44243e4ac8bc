// Reading the reference suite (scripts/reference.py suite) and running its prompts through the
// engine on any backend: shared by the CPU reference tests and the GPU tests.
#pragma once

#include <cstdlib>
#include <cstring>
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

namespace hyco::test {

namespace fs = std::filesystem;

// HYCO_REFERENCE_DIR overrides where the suite is read from: a test binary built on one machine
// and run on another (scripts/gpu_check.sh --prebuilt) finds it there.
inline const fs::path kSuite = [] {
  const char* dir = std::getenv("HYCO_REFERENCE_DIR");
  return dir && *dir ? fs::path(dir) : fs::path(HYCO_BINARY_DIR) / "reference";
}();

struct Expected {
  std::vector<int32_t> tokens, greedy;
  std::vector<float> logits, naive;
  int64_t n_vocab = 0;
};

template <class T>
inline std::vector<T> read_vec(const TensorStore& s, const std::string& name) {
  const TensorInfo* t = s.find(name);
  REQUIRE(t);
  std::vector<T> v(size_t(t->n_elements()));
  std::memcpy(v.data(), t->data, t->n_bytes);
  return v;
}

inline Expected read_expected(const fs::path& file) {
  TensorStore s = TensorStore::open_file(file.string());
  Expected e;
  e.tokens = read_vec<int32_t>(s, "tokens");
  e.greedy = read_vec<int32_t>(s, "greedy");
  e.logits = read_vec<float>(s, "logits");
  e.naive = read_vec<float>(s, "logits_naive");
  e.n_vocab = s.find("logits")->shape[1];
  return e;
}

inline nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

// Logits of every prompt position through the engine, fed in chunks of `chunk`.
inline std::vector<float> engine_logits(Model& m, Backend& be, const std::vector<int32_t>& toks, int chunk, DType kv_dtype) {
  KvCacheConfig kc;
  kc.n_seqs = 1;
  kc.n_ctx = int(toks.size()) + 64;
  kc.dtype = kv_dtype;
  kc.rollback = 4;
  kc.block_size = 16;
  KvCache kv(m.config(), be, kc);
  SeqId s = *kv.create();
  std::vector<float> all, logits;
  Batch b;
  for (size_t i = 0; i < toks.size(); i += size_t(chunk)) {
    size_t n = std::min(toks.size() - i, size_t(chunk));
    b.clear();
    b.add(s, std::span<const int32_t>(toks.data() + i, n), true, true);
    m.forward(b, kv, logits);
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

inline std::vector<int32_t> engine_greedy(Model& m, Backend& be, const std::vector<int32_t>& toks, int n) {
  KvCacheConfig kc;
  kc.n_seqs = 1;
  kc.n_ctx = int(toks.size()) + n + 1;
  kc.rollback = 4;
  kc.block_size = 16;
  KvCache kv(m.config(), be, kc);
  GenerateOptions go;
  go.max_tokens = n;
  go.chunk = 37;
  return generate(m, kv, *kv.create(), toks, go).tokens;
}

}  // namespace hyco::test
