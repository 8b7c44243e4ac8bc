// Trains the tokenizer tests' tiny sentencepiece models into a per-process temp dir (removed
// at exit). Training all of them takes ~50 ms.
#include "tests/tokenizer_models.h"

#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <unordered_map>

namespace hyco::test {
namespace fs = std::filesystem;
namespace {

const char* const kRustCorpus = R"rs(use std::collections::HashMap;
use std::fmt;

/// A token with its byte span in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    Ident,
    Number,
    Punct,
    Whitespace,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{}..{}", self.kind, self.start, self.end)
    }
}

pub fn tokenize(src: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let bytes = src.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let kind = if bytes[i].is_ascii_alphabetic() || bytes[i] == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            TokenKind::Ident
        } else if bytes[i].is_ascii_digit() {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            TokenKind::Number
        } else if bytes[i].is_ascii_whitespace() {
            i += 1;
            TokenKind::Whitespace
        } else {
            i += 1;
            TokenKind::Punct
        };
        tokens.push(Token { kind, start, end: i });
    }
    tokens
}

pub fn count_kinds(tokens: &[Token]) -> HashMap<TokenKind, usize> {
    let mut counts = HashMap::new();
    for token in tokens {
        *counts.entry(token.kind).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_identifiers_and_numbers() {
        let tokens = tokenize("let x = 42;");
        assert_eq!(tokens.len(), 8);
        assert_eq!(tokens[0].kind, TokenKind::Ident);
        assert_eq!(tokens[6].kind, TokenKind::Number);
    }

    #[test]
    fn counts_each_kind() {
        let counts = count_kinds(&tokenize("a b c"));
        assert_eq!(counts[&TokenKind::Ident], 3);
        assert_eq!(counts.get(&TokenKind::Number), None);
    }
}

// Le café est prêt: métadonnées élémentaires.
fn main() {
	let text = std::fs::read_to_string("input.rs").expect("read input");
	for token in tokenize(&text) {
		println!("{}", token);
	}
}
)rs";

class ChunkIterator : public sentencepiece::SentenceIterator {
 public:
  explicit ChunkIterator(std::vector<std::string> chunks) : chunks_(std::move(chunks)) {}
  bool done() const override { return i_ >= chunks_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return chunks_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  std::vector<std::string> chunks_;
  size_t i_ = 0;
};

// Multi-line chunks of ~8 lines (so pieces may span newlines), plus a CRLF copy of the corpus.
std::vector<std::string> corpus_chunks() {
  std::vector<std::string> lines;
  std::string text = kRustCorpus, line;
  for (char c : text) {
    line.push_back(c);
    if (c == '\n') lines.push_back(std::move(line)), line.clear();
  }
  std::vector<std::string> chunks;
  for (int crlf = 0; crlf < 2; ++crlf) {
    for (size_t i = 0; i < lines.size(); i += 8) {
      std::string chunk;
      for (size_t k = i; k < std::min(i + 8, lines.size()); ++k) {
        const std::string& l = lines[k];  // ends in '\n'
        chunk.append(l, 0, l.size() - 1);
        chunk += crlf ? "\r\n" : "\n";
      }
      chunks.push_back(chunk);
    }
  }
  return chunks;
}

// Protobuf varints, for editing a serialized ModelProto (sentencepiece's C++ headers do not
// expose the message classes).
uint64_t read_varint(const std::string& s, size_t& pos) {
  uint64_t v = 0;
  for (int shift = 0; pos < s.size(); shift += 7) {
    const uint8_t b = uint8_t(s[pos++]);
    v |= uint64_t(b & 0x7f) << shift;
    if (!(b & 0x80)) break;
  }
  return v;
}
void write_varint(std::string& out, uint64_t v) {
  do {
    out += char((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
    v >>= 7;
  } while (v);
}

}  // namespace

// ModelProto field 1 holds the pieces, each a message with the piece (1), its score (2) and its
// type (3; NORMAL = 1 or absent, UNUSED = 5). A type appended to a message overrides an earlier
// one.
std::string mark_pieces_unused(const std::string& proto, const std::set<std::string>& names) {
  std::string out;
  size_t pos = 0;
  while (pos < proto.size()) {
    const uint64_t key = read_varint(proto, pos);
    write_varint(out, key);
    const int wire = int(key & 7);
    if (wire == 0) {
      write_varint(out, read_varint(proto, pos));
    } else if (wire == 1 || wire == 5) {
      const size_t n = wire == 1 ? 8 : 4;
      out.append(proto, pos, n);
      pos += n;
    } else if (wire == 2) {
      const size_t len = size_t(read_varint(proto, pos));
      std::string msg = proto.substr(pos, len);
      pos += len;
      if ((key >> 3) == 1) {  // a piece: find its text and type
        std::string piece;
        uint64_t type = 1;
        for (size_t p = 0; p < msg.size();) {
          const uint64_t k = read_varint(msg, p);
          if ((k & 7) == 2) {
            const size_t l = size_t(read_varint(msg, p));
            if ((k >> 3) == 1) piece = msg.substr(p, l);
            p += l;
          } else if ((k & 7) == 5) {
            p += 4;
          } else {
            const uint64_t v = read_varint(msg, p);
            if ((k >> 3) == 3) type = v;
          }
        }
        if (type == 1 && names.count(piece)) msg += "\x18\x05";
      }
      write_varint(out, msg.size());
      out += msg;
    } else {
      throw std::runtime_error("unexpected protobuf wire type in a trained model");
    }
  }
  return out;
}

namespace {

// Trains the models once per process into a temp dir that is removed at exit.
struct Models {
  fs::path dir;
  std::map<std::string, std::string> paths;  // name -> tokenizer.model path

  Models() {
    dir = fs::temp_directory_path() / ("hyco_tokenizer_test_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const std::string hyco_fim = "<fim-prefix>,<fim-suffix>,<fim-middle>,<fim-pad>";
    const std::string qwen_fim =
        "<|fim_prefix|>,<|fim_suffix|>,<|fim_middle|>,<|fim_pad|>,<|file_sep|>,<|repo_name|>";
    train("hyco", {{"control_symbols", hyco_fim}});
    train("plain", {});
    train("nobytes", {{"byte_fallback", "false"}});
    // Qwen2.5-Coder: no BOS, <|endoftext|> is the EOS.
    train("qwen", {{"control_symbols", qwen_fim},
                   {"bos_id", "-1"},
                   {"eos_piece", "<|endoftext|>"}});
    // StarCoder's markers are added tokens that match inside text: user-defined here.
    train("starcoder", {{"user_defined_symbols",
                         "<fim_prefix>,<fim_middle>,<fim_suffix>,<fim_pad>,<file_sep>,<repo_name>"},
                        {"bos_id", "-1"},
                        {"eos_piece", "<|endoftext|>"}});
    // CodeLlama: sentencepiece with a dummy prefix space and ▁-prefixed infilling pieces.
    train("codellama", {{"control_symbols", "\xE2\x96\x81<PRE>,\xE2\x96\x81<SUF>,"
                                            "\xE2\x96\x81<MID>,\xE2\x96\x81<EOT>"},
                        {"add_dummy_prefix", "true"}});
    train("hyco+qwen", {{"control_symbols", qwen_fim + "," + hyco_fim}});
    // Other algorithms and normalisers, for incremental encoding (Tokenizer::split_point).
    train("unigram", {{"model_type", "unigram"}});
    train("nfkc", {{"normalization_rule_name", "nmt_nfkc"}});
  }
  ~Models() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }

  void train(const std::string& name, const std::map<std::string, std::string>& extra) {
    std::unordered_map<std::string, std::string> args = {
        {"model_type", "bpe"},
        {"vocab_size", "400"},
        {"normalization_rule_name", "identity"},
        {"remove_extra_whitespaces", "false"},
        {"add_dummy_prefix", "false"},
        {"allow_whitespace_only_pieces", "true"},
        {"byte_fallback", "true"},
        {"split_digits", "true"},
        {"character_coverage", "0.9999"},
        {"max_sentence_length", "16384"},
        {"num_threads", "1"},
        {"minloglevel", "2"},
    };
    for (const auto& [k, v] : extra) args[k] = v;
    ChunkIterator it(corpus_chunks());
    std::string serialized;
    const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &serialized);
    if (!status.ok()) throw std::runtime_error("training " + name + ": " + status.ToString());
    const fs::path path = dir / (name + ".model");
    std::ofstream(path, std::ios::binary) << serialized;
    paths[name] = path.string();
  }
};

const Models& models() {
  static const Models m;
  return m;
}

}  // namespace

const fs::path& models_dir() { return models().dir; }

const std::string& model_path(const std::string& name) { return models().paths.at(name); }

const Tokenizer& tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& t = cache[name];
  if (!t) t = Tokenizer::load(model_path(name));
  return *t;
}

std::vector<int32_t> concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

std::string raw_bytes(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += tok.token_bytes(id);
  return s;
}


}  // namespace hyco::test
