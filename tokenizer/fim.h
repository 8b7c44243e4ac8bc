// FIM (fill-in-the-middle) prompt templates: which special tokens a model's vocabulary has, in
// which order they go, and the token layout of FIM and plain prompts. Special tokens are always
// inserted by id, never by tokenizing their text. Owns no model or sampling logic.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace hyco {

enum class FimFamily { Hyco, CodeLlama, StarCoder, Qwen, None };

const char* fim_family_name(FimFamily family);  // "hyco", "codellama", "starcoder", "qwen", "none"

struct FimTemplate {
  FimFamily family = FimFamily::None;
  int32_t prefix_id = -1;
  int32_t suffix_id = -1;
  int32_t middle_id = -1;
  std::optional<int32_t> pad_id;
  std::optional<int32_t> eot_id;        // ends the middle (Hyco: EOS </s>)
  std::optional<int32_t> file_sep_id;   // multi-file context (StarCoder2, Qwen2.5-Coder)
  std::optional<int32_t> repo_name_id;
  bool add_bos = false;
  // Suffix-prefix-middle order (`<suf> suffix <pre> prefix <mid>`), Hyco's own; the others are
  // prefix-suffix-middle.
  bool suffix_first = false;

  bool supported() const { return family != FimFamily::None; }
};

// Another file given as context (llama.cpp's `input_extra`).
struct ExtraChunk {
  std::string filename;
  std::string text;
};

// Picks the template from the vocabulary, trying Hyco, Qwen, StarCoder, CodeLlama in that order;
// family None (and no ids) when none has all of its prefix/suffix/middle pieces.
FimTemplate detect_fim(const Tokenizer& tok);

// Token ids of a FIM prompt; generation continues with the middle. Layouts (E(x) = encode(x)):
//   Hyco:      [BOS] E(name\ntext\n)... <fim-suffix> E(suffix) <fim-prefix> E(prefix) <fim-middle>
//   CodeLlama: BOS ▁<PRE> E(" " + extras + prefix) ▁<SUF> E(suffix) ▁<MID>
//              (the prefix carries the leading space sentencepiece's dummy prefix gives it in
//              Meta's reference; the suffix does not; an empty prefix encodes to nothing)
//   Qwen:      [<|repo_name|> E(repo\n) (<|file_sep|> E(name\ntext\n))... <|file_sep|> E(file\n)]
//              <|fim_prefix|> E(prefix) <|fim_suffix|> E(suffix) <|fim_middle|>
//   StarCoder: [<repo_name> E(repo) (<file_sep> E(name\ntext))... <file_sep> E(file\n)]
//              <fim_prefix> E(prefix) <fim_suffix> E(suffix) <fim_middle>
// The bracketed multi-file head appears only when `extra` is non-empty; `filename` names the
// file being completed ("file" when empty) and `repo_name` the project ("project" when empty).
// A special id that user text would produce (possible only when the vocabulary has it as a
// user-defined piece) is replaced by the byte pieces of its text, so text cannot inject markers.
// Throws TokenizerError when the template is None.
std::vector<int32_t> build_fim_prompt(const Tokenizer& tok, const FimTemplate& tmpl,
                                      std::string_view prefix, std::string_view suffix,
                                      std::span<const ExtraChunk> extra = {},
                                      std::string_view filename = {},
                                      std::string_view repo_name = {});

// Ids that end a FIM completion: EOT/EOS, the template's pad and file/repo separators and its
// own FIM markers (a model that emits another marker has left the middle).
std::vector<int32_t> stop_ids(const FimTemplate& tmpl, const Tokenizer& tok);

// Ids a completion never generates: BOS (unless it is also the EOS), and in a left-to-right
// completion the template's FIM markers, which only a FIM prompt gives meaning (a model trained
// on FIM examples may well rank <fim-suffix> first after plain code; in a FIM completion they end
// it instead, see stop_ids).
// Ids in `allowed` (the request's own stop ids) are never banned.
std::vector<int32_t> banned_ids(const FimTemplate& tmpl, const Tokenizer& tok, bool fim_prompt,
                                std::span<const int32_t> allowed = {});

// Left-to-right prompt: [BOS] E(prompt). For models trained with sentencepiece's dummy prefix
// (model_adds_dummy_prefix()) a non-empty prompt gets its leading space back, as in training.
std::vector<int32_t> build_plain_prompt(const Tokenizer& tok, std::string_view prompt,
                                        bool add_bos);

}  // namespace hyco
