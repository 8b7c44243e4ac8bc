// Shared fixture of the tokenizer tests: tiny sentencepiece models trained once per process
// (C++ trainer, the flags of ENVIRONMENT.md) from embedded Rust source, one per FIM family.
// Owns no assertions; the tests live in tokenizer_test.cpp and tokenizer_fim_test.cpp.
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <set>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace hyco::test {

// Models: "hyco", "plain" (no FIM pieces), "nobytes" (no byte fallback), "qwen", "starcoder"
// (markers as user-defined pieces), "codellama" (dummy prefix on), "hyco+qwen" (both sets),
// "unigram" (that algorithm), "nfkc" (an NFKC normaliser).
const std::filesystem::path& models_dir();
const std::string& model_path(const std::string& name);
const Tokenizer& tokenizer(const std::string& name);

std::vector<int32_t> concat(std::initializer_list<std::vector<int32_t>> parts);
// A serialized sentencepiece model with the NORMAL pieces named marked UNUSED.
std::string mark_pieces_unused(const std::string& proto, const std::set<std::string>& names);
// token_bytes() of each id, concatenated without UTF-8 repair.
std::string raw_bytes(const Tokenizer& tok, const std::vector<int32_t>& ids);

inline const std::string kEmoji = "\xF0\x9F\xA6\x80";  // U+1F980 crab, not in the training text
inline const std::string kMarker = "\xE2\x96\x81";     // U+2581, sentencepiece's space symbol
inline const std::string kFffd = "\xEF\xBF\xBD";

}  // namespace hyco::test
