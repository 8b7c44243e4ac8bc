// FIM templates: detection from vocabulary pieces and the token layout of each family
// (see fim.h for the layouts and the references they follow).
// Must not tokenize special-token text: markers go in by id only.
#include "tokenizer/fim.h"

#include <algorithm>

namespace hyco {
namespace {

constexpr std::string_view kDefaultFilename = "file";
constexpr std::string_view kDefaultRepoName = "project";

// Appends text and special ids to a prompt. Text ids that equal one of the template's special
// ids (possible only when the marker is a user-defined or normal piece, which sentencepiece
// matches inside text; never for control pieces) are replaced by the byte pieces of their text.
class PromptBuilder {
 public:
  PromptBuilder(const Tokenizer& tok, std::vector<int32_t> specials)
      : tok_(tok), specials_(std::move(specials)) {}

  void special(int32_t id) { ids_.push_back(id); }

  void text(std::string_view s) {
    for (const int32_t id : tok_.encode(s)) {
      const bool is_marker = std::find(specials_.begin(), specials_.end(), id) != specials_.end();
      if (!is_marker || tok_.is_control(id) || !tok_.has_byte_fallback()) {
        ids_.push_back(id);  // NOTE: without byte fallback a marker in text cannot be escaped
        continue;
      }
      for (const char c : tok_.token_bytes(id)) ids_.push_back(tok_.byte_id(static_cast<uint8_t>(c)));
    }
  }

  std::vector<int32_t> take() { return std::move(ids_); }

 private:
  const Tokenizer& tok_;
  std::vector<int32_t> specials_;
  std::vector<int32_t> ids_;
};

std::optional<int32_t> eos_of(const Tokenizer& tok) {
  return tok.eos_id() >= 0 ? std::optional<int32_t>(tok.eos_id()) : std::nullopt;
}

// Fills the template when the vocabulary has all three FIM markers.
bool match(const Tokenizer& tok, FimFamily family, std::string_view pre, std::string_view suf,
           std::string_view mid, FimTemplate& out) {
  const auto p = tok.find_piece(pre), s = tok.find_piece(suf), m = tok.find_piece(mid);
  if (!p || !s || !m) return false;
  out.family = family;
  out.prefix_id = *p;
  out.suffix_id = *s;
  out.middle_id = *m;
  return true;
}

std::vector<int32_t> special_ids(const FimTemplate& t, const Tokenizer& tok) {
  std::vector<int32_t> ids = {t.prefix_id, t.suffix_id, t.middle_id, tok.bos_id(), tok.eos_id()};
  for (const auto& o : {t.pad_id, t.eot_id, t.file_sep_id, t.repo_name_id}) {
    if (o) ids.push_back(*o);
  }
  std::erase_if(ids, [](int32_t id) { return id < 0; });
  return ids;
}

void append_multi_file_head(PromptBuilder& b, const FimTemplate& t,
                            std::span<const ExtraChunk> extra, std::string_view filename,
                            std::string_view repo_name) {
  // Qwen2.5-Coder puts a newline after the repo name and after each file; StarCoder2 does not.
  const bool qwen = t.family == FimFamily::Qwen;
  const std::string_view nl = qwen ? "\n" : "";
  if (t.repo_name_id) {
    b.special(*t.repo_name_id);
    b.text(std::string(repo_name.empty() ? kDefaultRepoName : repo_name) + std::string(nl));
  }
  for (const ExtraChunk& c : extra) {
    if (t.file_sep_id) {
      b.special(*t.file_sep_id);
      b.text(c.filename + "\n" + c.text + std::string(nl));
    } else {
      b.text(c.filename + "\n" + c.text + "\n");
    }
  }
  if (t.file_sep_id) {
    b.special(*t.file_sep_id);
    b.text(std::string(filename.empty() ? kDefaultFilename : filename) + "\n");
  }
}

// NOTE: built with append rather than " " + s, which trips GCC 12's false -Wrestrict warning.
std::string with_leading_space(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 1);
  out += ' ';
  out += s;
  return out;
}

void require_id(const Tokenizer& tok, int32_t id) {
  (void)tok.token_bytes(id);  // throws TokenizerError when out of range
}

}  // namespace

const char* fim_family_name(FimFamily family) {
  switch (family) {
    case FimFamily::Hyco: return "hyco";
    case FimFamily::CodeLlama: return "codellama";
    case FimFamily::StarCoder: return "starcoder";
    case FimFamily::Qwen: return "qwen";
    case FimFamily::None: return "none";
  }
  return "none";
}

FimTemplate detect_fim(const Tokenizer& tok) {
  FimTemplate t;
  if (match(tok, FimFamily::Hyco, "<fim-prefix>", "<fim-suffix>", "<fim-middle>", t)) {
    t.pad_id = tok.find_piece("<fim-pad>");
    t.eot_id = eos_of(tok);
    t.add_bos = tok.bos_id() >= 0;
    t.suffix_first = true;
  } else if (match(tok, FimFamily::Qwen, "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
                   t)) {
    t.pad_id = tok.find_piece("<|fim_pad|>");
    t.eot_id = tok.find_piece("<|endoftext|>");
    if (!t.eot_id) t.eot_id = eos_of(tok);
    t.file_sep_id = tok.find_piece("<|file_sep|>");
    t.repo_name_id = tok.find_piece("<|repo_name|>");
  } else if (match(tok, FimFamily::StarCoder, "<fim_prefix>", "<fim_suffix>", "<fim_middle>",
                   t)) {
    t.pad_id = tok.find_piece("<fim_pad>");
    t.eot_id = tok.find_piece("<|endoftext|>");
    if (!t.eot_id) t.eot_id = eos_of(tok);
    t.file_sep_id = tok.find_piece("<file_sep>");
    t.repo_name_id = tok.find_piece("<repo_name>");
  } else if (match(tok, FimFamily::CodeLlama, "\xE2\x96\x81<PRE>", "\xE2\x96\x81<SUF>",
                   "\xE2\x96\x81<MID>", t)) {
    t.eot_id = tok.find_piece("\xE2\x96\x81<EOT>");
    if (!t.eot_id) t.eot_id = eos_of(tok);
    t.add_bos = tok.bos_id() >= 0;
  }
  return t;
}

std::vector<int32_t> build_fim_prompt(const Tokenizer& tok, const FimTemplate& tmpl,
                                      std::string_view prefix, std::string_view suffix,
                                      std::span<const ExtraChunk> extra,
                                      std::string_view filename, std::string_view repo_name) {
  if (!tmpl.supported()) {
    throw TokenizerError("this model's vocabulary has no FIM tokens; use a plain prompt");
  }
  for (const int32_t id : special_ids(tmpl, tok)) require_id(tok, id);

  PromptBuilder b(tok, special_ids(tmpl, tok));
  if (tmpl.add_bos && tok.bos_id() >= 0) b.special(tok.bos_id());

  std::string prefix_text(prefix);
  switch (tmpl.family) {
    case FimFamily::Hyco:
      // Before the suffix, so consecutive prompts of one editing session share them.
      for (const ExtraChunk& c : extra) b.text(c.filename + "\n" + c.text + "\n");
      break;
    case FimFamily::CodeLlama: {
      std::string head;
      for (const ExtraChunk& c : extra) head += c.filename + "\n" + c.text + "\n";
      prefix_text = head + prefix_text;
      // Meta's infilling_prompt_tokens encodes the prefix with sentencepiece's dummy space and
      // the suffix without (encode_infilling); an empty prefix encodes to nothing.
      if (!prefix_text.empty()) prefix_text = with_leading_space(prefix_text);
      break;
    }
    case FimFamily::Qwen:
    case FimFamily::StarCoder:
      if (!extra.empty()) append_multi_file_head(b, tmpl, extra, filename, repo_name);
      break;
    case FimFamily::None: break;
  }

  if (tmpl.suffix_first) {
    b.special(tmpl.suffix_id);
    b.text(suffix);
    b.special(tmpl.prefix_id);
    b.text(prefix_text);
  } else {
    b.special(tmpl.prefix_id);
    b.text(prefix_text);
    b.special(tmpl.suffix_id);
    b.text(suffix);
  }
  b.special(tmpl.middle_id);
  return b.take();
}

std::vector<int32_t> stop_ids(const FimTemplate& tmpl, const Tokenizer& tok) {
  std::vector<int32_t> ids;
  for (const auto& o : {tmpl.eot_id, tmpl.pad_id, tmpl.file_sep_id, tmpl.repo_name_id}) {
    if (o) ids.push_back(*o);
  }
  ids.push_back(tok.eos_id());
  if (tmpl.supported()) {
    ids.insert(ids.end(), {tmpl.prefix_id, tmpl.suffix_id, tmpl.middle_id});
  }
  std::erase_if(ids, [&](int32_t id) { return id < 0 || id >= tok.n_vocab(); });
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

std::vector<int32_t> banned_ids(const FimTemplate& tmpl, const Tokenizer& tok, bool fim_prompt,
                                std::span<const int32_t> allowed) {
  // NOTE: built with push_back; insert of an initializer list trips GCC 12's false -Warray-bounds.
  std::vector<int32_t> ids;
  ids.reserve(4);
  if (tok.bos_id() >= 0 && tok.bos_id() != tok.eos_id()) ids.push_back(tok.bos_id());
  if (tmpl.supported() && !fim_prompt)
    for (const int32_t id : {tmpl.prefix_id, tmpl.suffix_id, tmpl.middle_id}) ids.push_back(id);
  std::erase_if(ids, [&](int32_t id) {
    return id < 0 || id >= tok.n_vocab() || id == tok.eos_id() || std::find(allowed.begin(), allowed.end(), id) != allowed.end();
  });
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

std::vector<int32_t> build_plain_prompt(const Tokenizer& tok, std::string_view prompt,
                                        bool add_bos) {
  std::vector<int32_t> ids;
  if (add_bos && tok.bos_id() >= 0) ids.push_back(tok.bos_id());
  std::vector<int32_t> text;
  if (tok.model_adds_dummy_prefix() && !prompt.empty()) {
    text = tok.encode(with_leading_space(prompt));
  } else {
    text = tok.encode(prompt);
  }
  ids.insert(ids.end(), text.begin(), text.end());
  return ids;
}

}  // namespace hyco
