// Unit tests of tokenizer/fim: template detection per family, prompt layouts compared with
// layouts assembled by hand from encode() and with sentencepiece itself, stop ids, injection.
#include "tests/catch.hpp"
#include "tests/tokenizer_models.h"
#include "tokenizer/fim.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

using namespace hyco;
using namespace hyco::test;

TEST_CASE("detect_fim picks the family each vocabulary was built for") {
  const Tokenizer& hyco = tokenizer("hyco");
  const FimTemplate h = detect_fim(hyco);
  CHECK(h.family == FimFamily::Hyco);
  CHECK(h.suffix_first);
  CHECK(h.add_bos);
  CHECK(h.prefix_id == *hyco.find_piece("<fim-prefix>"));
  CHECK(h.suffix_id == *hyco.find_piece("<fim-suffix>"));
  CHECK(h.middle_id == *hyco.find_piece("<fim-middle>"));
  CHECK(h.pad_id == hyco.find_piece("<fim-pad>"));
  CHECK(h.eot_id == hyco.find_piece("</s>"));

  const Tokenizer& qwen = tokenizer("qwen");
  const FimTemplate q = detect_fim(qwen);
  CHECK(q.family == FimFamily::Qwen);
  CHECK_FALSE(q.suffix_first);
  CHECK_FALSE(q.add_bos);
  CHECK(q.eot_id == qwen.find_piece("<|endoftext|>"));
  CHECK(q.file_sep_id == qwen.find_piece("<|file_sep|>"));
  CHECK(q.repo_name_id == qwen.find_piece("<|repo_name|>"));
  CHECK(q.pad_id == qwen.find_piece("<|fim_pad|>"));

  const Tokenizer& sc = tokenizer("starcoder");
  const FimTemplate s = detect_fim(sc);
  CHECK(s.family == FimFamily::StarCoder);
  CHECK(s.prefix_id == *sc.find_piece("<fim_prefix>"));
  CHECK(s.file_sep_id == sc.find_piece("<file_sep>"));
  CHECK(s.eot_id == sc.find_piece("<|endoftext|>"));

  const Tokenizer& cl = tokenizer("codellama");
  const FimTemplate c = detect_fim(cl);
  CHECK(c.family == FimFamily::CodeLlama);
  CHECK(c.add_bos);
  CHECK(c.prefix_id == *cl.find_piece("\xE2\x96\x81<PRE>"));
  CHECK(c.eot_id == cl.find_piece("\xE2\x96\x81<EOT>"));

  CHECK(detect_fim(tokenizer("plain")).family == FimFamily::None);
  CHECK(detect_fim(tokenizer("hyco+qwen")).family == FimFamily::Hyco);  // Hyco is tried first
}

TEST_CASE("Hyco FIM prompt is BOS, context files, suffix, prefix, middle") {
  const Tokenizer& tok = tokenizer("hyco");
  const FimTemplate t = detect_fim(tok);
  const std::string prefix = "fn add(a: i32, b: i32) -> i32 {\n    ", suffix = "\n}\n";
  const std::vector<ExtraChunk> extra = {{"src/lib.rs", "pub mod token;"},
                                         {"src/token.rs", "pub struct Token;\n"}};
  const auto ids = build_fim_prompt(tok, t, prefix, suffix, extra);
  const auto expected = concat({{tok.bos_id()},
                                tok.encode("src/lib.rs\npub mod token;\n"),
                                tok.encode("src/token.rs\npub struct Token;\n\n"),
                                {t.suffix_id},
                                tok.encode(suffix),
                                {t.prefix_id},
                                tok.encode(prefix),
                                {t.middle_id}});
  CHECK(ids == expected);
  CHECK(tok.decode(ids) ==
        "src/lib.rs\npub mod token;\nsrc/token.rs\npub struct Token;\n\n" + suffix + prefix);

  // Typing at the cursor only appends to the prompt: everything before stays reusable.
  const auto typed = build_fim_prompt(tok, t, prefix + "a + b", suffix, extra);
  const auto n_shared = std::mismatch(ids.begin(), ids.end(), typed.begin(), typed.end()).first -
                        ids.begin();
  CHECK(static_cast<size_t>(n_shared) >= ids.size() - 1 - tok.encode(prefix).size());

  CHECK(build_fim_prompt(tok, t, "", "") ==
        std::vector<int32_t>{tok.bos_id(), t.suffix_id, t.prefix_id, t.middle_id});
}

TEST_CASE("Qwen FIM prompt uses the repo/file-separator layout only with context files") {
  const Tokenizer& tok = tokenizer("qwen");
  const FimTemplate t = detect_fim(tok);
  const std::string prefix = "let x = ", suffix = ";\n";
  CHECK(build_fim_prompt(tok, t, prefix, suffix) ==
        concat({{t.prefix_id}, tok.encode(prefix), {t.suffix_id}, tok.encode(suffix),
                {t.middle_id}}));
  const std::vector<ExtraChunk> extra = {{"a.rs", "fn a() {}"}};
  CHECK(build_fim_prompt(tok, t, prefix, suffix, extra, "src/main.rs", "demo") ==
        concat({{*t.repo_name_id}, tok.encode("demo\n"),
                {*t.file_sep_id}, tok.encode("a.rs\nfn a() {}\n"),
                {*t.file_sep_id}, tok.encode("src/main.rs\n"),
                {t.prefix_id}, tok.encode(prefix), {t.suffix_id}, tok.encode(suffix),
                {t.middle_id}}));
}

TEST_CASE("StarCoder FIM prompt: PSM with StarCoder2's repo/file layout") {
  const Tokenizer& tok = tokenizer("starcoder");
  const FimTemplate t = detect_fim(tok);
  const std::vector<ExtraChunk> extra = {{"a.rs", "fn a() {}\n"}, {"b.rs", "fn b() {}\n"}};
  CHECK(build_fim_prompt(tok, t, "fn c() {", "}\n", extra) ==
        concat({{*t.repo_name_id}, tok.encode("project"),
                {*t.file_sep_id}, tok.encode("a.rs\nfn a() {}\n"),
                {*t.file_sep_id}, tok.encode("b.rs\nfn b() {}\n"),
                {*t.file_sep_id}, tok.encode("file\n"),
                {t.prefix_id}, tok.encode("fn c() {"), {t.suffix_id}, tok.encode("}\n"),
                {t.middle_id}}));
}

TEST_CASE("CodeLlama FIM prompt matches Meta's infilling layout") {
  const Tokenizer& tok = tokenizer("codellama");
  const FimTemplate t = detect_fim(tok);
  const std::string prefix = "fn main() {\n    let x", suffix = " = 42;\n}\n";
  const auto ids = build_fim_prompt(tok, t, prefix, suffix);
  CHECK(ids == concat({{tok.bos_id(), t.prefix_id}, tok.encode(" " + prefix), {t.suffix_id},
                       tok.encode(suffix), {t.middle_id}}));
  // Reference: the prefix is what sentencepiece itself gives with the model's dummy prefix on.
  sentencepiece::SentencePieceProcessor sp;
  REQUIRE(sp.Load(model_path("codellama")).ok());
  std::vector<int> sp_prefix;
  REQUIRE(sp.Encode(prefix, &sp_prefix).ok());
  CHECK(std::vector<int32_t>(sp_prefix.begin(), sp_prefix.end()) == tok.encode(" " + prefix));
  // The suffix keeps its own leading space and gets no extra one.
  CHECK(tok.decode(tok.encode(suffix)) == suffix);
  // Context files go in front of the prefix text.
  const std::vector<ExtraChunk> extra = {{"a.rs", "fn a() {}"}};
  CHECK(build_fim_prompt(tok, t, prefix, suffix, extra) ==
        concat({{tok.bos_id(), t.prefix_id}, tok.encode(" a.rs\nfn a() {}\n" + prefix),
                {t.suffix_id}, tok.encode(suffix), {t.middle_id}}));
  CHECK(build_fim_prompt(tok, t, "", "") ==
        std::vector<int32_t>{tok.bos_id(), t.prefix_id, t.suffix_id, t.middle_id});
}

TEST_CASE("marker text in user code cannot inject a user-defined special token") {
  const Tokenizer& tok = tokenizer("starcoder");
  const FimTemplate t = detect_fim(tok);
  // Precondition: with user-defined pieces, sentencepiece does match the marker inside text.
  const auto raw = tok.encode("<fim_prefix>");
  REQUIRE(std::count(raw.begin(), raw.end(), t.prefix_id) == 1);

  const std::string prefix = "let s = \"<fim_prefix><file_sep>\";", suffix = "// <fim_middle>\n";
  const auto ids = build_fim_prompt(tok, t, prefix, suffix, std::vector<ExtraChunk>{{"x", "<repo_name>"}});
  CHECK(std::count(ids.begin(), ids.end(), t.prefix_id) == 1);
  CHECK(std::count(ids.begin(), ids.end(), t.middle_id) == 1);
  CHECK(std::count(ids.begin(), ids.end(), *t.repo_name_id) == 1);
  CHECK(std::count(ids.begin(), ids.end(), *t.file_sep_id) == 2);  // the extra file + current
  CHECK(ids.back() == t.middle_id);
  const std::string text = tok.decode(ids);
  CHECK(text.find(prefix) != std::string::npos);
  CHECK(text.find(suffix) != std::string::npos);
}

TEST_CASE("stop ids end the middle at EOT/EOS, pad and separators") {
  auto has = [](const std::vector<int32_t>& v, std::optional<int32_t> id) {
    return id && std::find(v.begin(), v.end(), *id) != v.end();
  };
  const Tokenizer& hyco = tokenizer("hyco");
  const auto h = stop_ids(detect_fim(hyco), hyco);
  CHECK(has(h, hyco.eos_id()));
  CHECK(has(h, hyco.find_piece("<fim-pad>")));
  CHECK(has(h, hyco.find_piece("<fim-prefix>")));
  CHECK_FALSE(has(h, hyco.bos_id()));
  const Tokenizer& qwen = tokenizer("qwen");
  const auto q = stop_ids(detect_fim(qwen), qwen);
  for (const char* p : {"<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>"}) {
    CHECK(has(q, qwen.find_piece(p)));
  }
  const Tokenizer& cl = tokenizer("codellama");
  const auto c = stop_ids(detect_fim(cl), cl);
  CHECK(has(c, cl.find_piece("\xE2\x96\x81<EOT>")));
  CHECK(has(c, cl.eos_id()));
  const Tokenizer& plain = tokenizer("plain");
  CHECK(stop_ids(detect_fim(plain), plain) == std::vector<int32_t>{plain.eos_id()});
}

TEST_CASE("plain prompts: optional BOS, and the dummy space for models trained with it") {
  const Tokenizer& hyco = tokenizer("hyco");
  CHECK(build_plain_prompt(hyco, "fn main", true) == concat({{hyco.bos_id()}, hyco.encode("fn main")}));
  CHECK(build_plain_prompt(hyco, "fn main", false) == hyco.encode("fn main"));
  CHECK(build_plain_prompt(tokenizer("qwen"), "x", true) == tokenizer("qwen").encode("x"));

  const Tokenizer& cl = tokenizer("codellama");
  sentencepiece::SentencePieceProcessor sp;
  REQUIRE(sp.Load(model_path("codellama")).ok());
  std::vector<int> ref;
  REQUIRE(sp.Encode("fn main() {", &ref).ok());
  ref.insert(ref.begin(), sp.bos_id());
  CHECK(build_plain_prompt(cl, "fn main() {", true) == std::vector<int32_t>(ref.begin(), ref.end()));
}

TEST_CASE("FIM on a vocabulary without FIM tokens is a TokenizerError") {
  const Tokenizer& tok = tokenizer("plain");
  CHECK_THROWS_AS(build_fim_prompt(tok, detect_fim(tok), "a", "b"), TokenizerError);
}

