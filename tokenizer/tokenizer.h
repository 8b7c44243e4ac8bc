// Tokenizer: a sentencepiece model (tokenizer.model) as text <-> token ids, byte-exact.
// Owns loading, encoding, decoding and per-token bytes; knows nothing of FIM or models.
// NOTE: encode never adds BOS or a dummy-prefix space; decode is the concatenation of
// token_bytes() with invalid UTF-8 repaired to U+FFFD, so it agrees with IncrementalDetokenizer.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace hyco {

// A tokenizer file that cannot be loaded, or an id outside the vocabulary.
struct TokenizerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Tokenizer {
 public:
  // Throws TokenizerError naming the file when it is missing, unreadable or not a valid model.
  static std::unique_ptr<Tokenizer> load(const std::string& path_to_tokenizer_model);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text to ids, no BOS, no dummy-prefix space. With a byte-fallback vocabulary
  // decode(encode(s)) == s for every valid UTF-8 s: a literal U+2581 '▁' (which sentencepiece
  // would turn into a space) is encoded as its three byte pieces, and each invalid UTF-8 byte as
  // its byte piece (so the model sees the raw byte; decode shows it as U+FFFD). Without byte
  // fallback, '▁' comes back as a space and invalid bytes as U+FFFD / unknown pieces.
  // Long texts are encoded incrementally: when `text` shares a start with a recently encoded
  // one (the IDE case: the same file, the cursor a few characters on), the ids up to the last
  // point both texts cannot have a token across are reused and only the rest is encoded. The
  // result is the same as encode_uncached(text) (see split_point); thread-safe.
  std::vector<int32_t> encode(std::string_view text) const;
  std::vector<int32_t> encode_uncached(std::string_view text) const;
  // Ids encode() took from earlier encodings so far (0 when the vocabulary does not allow it).
  uint64_t reused_ids() const {
    std::lock_guard<std::mutex> lk(cache_mu_);
    return reused_ids_;
  }

  // Concatenated token_bytes(), invalid UTF-8 repaired to U+FFFD (always valid UTF-8).
  // Control tokens contribute nothing. Throws TokenizerError on an out-of-range id.
  std::string decode(std::span<const int32_t> ids) const;

  // The exact bytes one token adds to the text: a byte piece <0xNN> gives that one raw byte
  // (possibly part of a UTF-8 sequence), '▁' in a piece gives ' ', control tokens give "",
  // the unknown token gives " \u2047 " (sentencepiece's surface for it).
  const std::string& token_bytes(int32_t id) const;

  int32_t n_vocab() const { return static_cast<int32_t>(kinds_.size()); }
  int32_t bos_id() const { return bos_id_; }  // -1 if the vocabulary has none
  int32_t eos_id() const { return eos_id_; }  // -1 if the vocabulary has none
  int32_t unk_id() const { return unk_id_; }  // -1 if the vocabulary has none
  // Exact piece lookup ("<fim-prefix>", "▁<PRE>", "<0x0A>"); nullopt when absent.
  std::optional<int32_t> find_piece(std::string_view piece) const;
  std::string piece(int32_t id) const;
  bool is_control(int32_t id) const;
  bool is_byte(int32_t id) const;
  bool has_byte_fallback() const { return has_byte_fallback_; }
  // Id of the byte piece <0xNN>; -1 without byte fallback.
  int32_t byte_id(uint8_t byte) const { return byte_ids_[byte]; }
  // Whether the model file asked sentencepiece to prepend a space to every input (Llama,
  // CodeLlama). encode() never does; prompt builders re-add it where the model expects it.
  bool model_adds_dummy_prefix() const { return model_adds_dummy_prefix_; }

 private:
  enum class Kind : uint8_t { Normal, Control, Unknown, Byte, Unused };

  Tokenizer() = default;
  void check_id(int32_t id) const;
  void encode_run(std::string_view run, std::vector<int32_t>& out) const;
  // No piece contains the bytes a, b next to each other: no token can cross between them.
  bool never_joined(uint8_t a, uint8_t b) const { return (joined_[a * 4 + b / 64] >> (b % 64) & 1) == 0; }
  size_t split_point(std::string_view a, std::string_view b, size_t common) const;

  struct Encoded {
    std::string text;
    std::vector<int32_t> ids;
    std::vector<int32_t> ends;  // [ids.size()] byte offset where each token's bytes end
    mutable uint64_t used = 0;  // LRU stamp, under cache_mu_
  };
  // Recent encodings of long texts, for encode(); empty unless split points are exact.
  bool incremental_ = false;
  std::array<uint64_t, 256 * 4> joined_{};  // bit (a, b): some piece holds bytes a, b in a row
  mutable std::mutex cache_mu_;
  mutable std::vector<std::shared_ptr<const Encoded>> cache_;
  mutable uint64_t cache_clock_ = 0;
  mutable uint64_t reused_ids_ = 0;
  mutable size_t cache_bytes_ = 0;  // text bytes in cache_

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<Kind> kinds_;               // [n_vocab]
  std::vector<std::string> bytes_;        // [n_vocab] token_bytes()
  std::array<int32_t, 256> byte_ids_{};   // <0xNN> piece ids, -1 when absent
  bool has_byte_fallback_ = false;
  bool model_adds_dummy_prefix_ = false;
  int32_t bos_id_ = -1, eos_id_ = -1, unk_id_ = -1;
};

}  // namespace hyco
