// Helpers shared by the libFuzzer targets in fuzz/: the tokenizers they run (the tiny models of
// tests/tokenizer_models.cpp, trained once per process), splitting an input at NUL bytes, and
// FUZZ_CHECK for invariants. A failed check aborts, so libFuzzer keeps the input as a crash.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <string_view>
#include <vector>

#include "tests/tokenizer_models.h"
#include "tokenizer/tokenizer.h"

#define FUZZ_CHECK(cond)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

namespace hyco::fuzz {

// One vocabulary per FIM family, plus one without FIM pieces and one without byte fallback.
inline constexpr const char* kTokenizerNames[] = {"hyco",  "qwen",    "starcoder", "codellama",
                                                  "plain", "nobytes", "hyco+qwen"};
inline constexpr size_t kNumTokenizers = std::size(kTokenizerNames);

inline const Tokenizer& tokenizer_at(size_t i) { return test::tokenizer(kTokenizerNames[i % kNumTokenizers]); }

// Trains and loads every tokenizer; call from LLVMFuzzerInitialize so no run pays for it.
inline void load_tokenizers() {
  for (size_t i = 0; i < kNumTokenizers; ++i) (void)tokenizer_at(i);
}

// Splits `s` at NUL bytes into at most `max_parts` parts; the last part keeps any further NULs.
inline std::vector<std::string_view> split_nul(std::string_view s, size_t max_parts) {
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const size_t nul = s.find('\0');
    if (nul == std::string_view::npos) break;
    parts.push_back(s.substr(0, nul));
    s.remove_prefix(nul + 1);
  }
  parts.push_back(s);
  return parts;
}

}  // namespace hyco::fuzz
