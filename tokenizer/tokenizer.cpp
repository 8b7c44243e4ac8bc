// Tokenizer: loads a sentencepiece model and turns text into ids and back, byte-exactly.
// Owns the per-token byte table that decode and the incremental detokenizer share; does not
// know about FIM templates or prompts (fim.cpp) or streaming (detokenizer.cpp).
#include "tokenizer/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tokenizer/spm_model_proto.h"
#include "tokenizer/utf8.h"

namespace hyco {
namespace {

constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";        // U+2581, sentencepiece's space
constexpr std::string_view kUnknownSurface = " \xE2\x81\x87 ";   // sentencepiece's unk_surface
constexpr uintmax_t kMaxModelBytes = uintmax_t{1} << 30;         // real ones are 0.2-5 MB

std::string read_model_file(const std::string& path) {
  namespace fs = std::filesystem;
  const std::string name = "tokenizer file '" + path + "'";
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw TokenizerError(name + " does not exist");
  if (!fs::is_regular_file(st)) throw TokenizerError(name + " is not a regular file");
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) throw TokenizerError(name + " cannot be read: " + ec.message());
  if (size > kMaxModelBytes) {
    throw TokenizerError(name + " is " + std::to_string(size) +
                         " bytes, too large for a sentencepiece model");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw TokenizerError(name + " cannot be opened");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw TokenizerError(name + " cannot be read");
  return std::move(ss).str();
}

std::string replace_space_markers(std::string_view piece) {
  std::string out;
  out.reserve(piece.size());
  size_t i = 0;
  while (i < piece.size()) {
    if (piece.substr(i, kSpaceMarker.size()) == kSpaceMarker) {
      out.push_back(' ');
      i += kSpaceMarker.size();
    } else {
      out.push_back(piece[i++]);
    }
  }
  return out;
}

std::string byte_piece_name(unsigned byte) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "<0x%02X>", byte);
  return buf;
}

}  // namespace

Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path) {
  const std::string serialized = read_model_file(path);
  const std::string name = "tokenizer file '" + path + "'";
  if (serialized.empty()) throw TokenizerError(name + " is empty");

  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  std::string patched;
  try {
    const SpmNormalizerFlags flags = read_normalizer_flags(serialized);
    tok->model_adds_dummy_prefix_ = flags.add_dummy_prefix;
    // BPE (Unigram's Viterbi sums scores in floating point, so a path's choice can depend on
    // what came before it), and text maps to pieces character by character (no NFKC-style
    // mapping, no whitespace trimming): the conditions for encoding a text in independent
    // parts (split_point).
    tok->incremental_ = is_bpe_model(serialized) && !flags.has_charsmap && !flags.remove_extra_whitespaces;
    // NOTE: encode must give exactly the text's bytes, so the dummy space is switched off here
    // and re-added explicitly by the prompt builders for models trained with it.
    if (tok->model_adds_dummy_prefix_) patched = without_dummy_prefix(serialized);
  } catch (const SpmModelProtoError& e) {
    throw TokenizerError(name + " is not a sentencepiece model (" + e.what() + ")");
  }
  tok->sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status =
      tok->sp_->LoadFromSerializedProto(patched.empty() ? serialized : patched);
  if (!status.ok()) {
    throw TokenizerError(name + " is not a valid sentencepiece model: " + status.ToString());
  }
  const sentencepiece::SentencePieceProcessor& sp = *tok->sp_;
  const int n = sp.GetPieceSize();
  if (n <= 0) throw TokenizerError(name + " has an empty vocabulary");

  tok->kinds_.resize(n);
  tok->bytes_.resize(n);
  for (int id = 0; id < n; ++id) {
    const std::string& p = sp.IdToPiece(id);
    Kind kind = Kind::Normal;
    if (sp.IsControl(id)) kind = Kind::Control;
    else if (sp.IsUnknown(id)) kind = Kind::Unknown;
    else if (sp.IsByte(id)) kind = Kind::Byte;
    else if (sp.IsUnused(id)) kind = Kind::Unused;
    tok->kinds_[id] = kind;
    switch (kind) {
      case Kind::Control: break;
      case Kind::Unknown: tok->bytes_[id] = kUnknownSurface; break;
      case Kind::Byte: {
        unsigned value = 0;
        if (p.size() != 6 || std::sscanf(p.c_str(), "<0x%2X>", &value) != 1 || value > 255) {
          throw TokenizerError(name + ": byte piece '" + p + "' is not of the form <0xNN>");
        }
        tok->bytes_[id] = std::string(1, static_cast<char>(value));
        break;
      }
      case Kind::Normal:
      case Kind::Unused: tok->bytes_[id] = replace_space_markers(p); break;
    }
  }

  tok->has_byte_fallback_ = true;
  for (unsigned b = 0; b < 256; ++b) {
    const std::optional<int32_t> id = tok->find_piece(byte_piece_name(b));
    const bool ok = id && tok->kinds_[*id] == Kind::Byte;
    tok->byte_ids_[b] = ok ? *id : -1;
    tok->has_byte_fallback_ = tok->has_byte_fallback_ && ok;
  }
  // Byte pairs that occur inside some piece a text can produce (with byte fallback every
  // character has pieces, and no unknown token can span characters).
  tok->incremental_ = tok->incremental_ && tok->has_byte_fallback_;
  for (int id = 0; id < n; ++id) {
    // Unused pieces too: BPE merges through them before splitting them back.
    if (tok->kinds_[id] != Kind::Normal && tok->kinds_[id] != Kind::Unused) continue;
    const std::string& b = tok->bytes_[id];
    for (size_t i = 0; i + 1 < b.size(); ++i) {
      const uint8_t x = uint8_t(b[i]), y = uint8_t(b[i + 1]);
      tok->joined_[x * 4 + y / 64] |= uint64_t{1} << (y % 64);
    }
  }
  auto valid = [n](int id) { return id >= 0 && id < n ? id : -1; };
  tok->bos_id_ = valid(sp.bos_id());
  tok->eos_id_ = valid(sp.eos_id());
  tok->unk_id_ = valid(sp.unk_id());
  return tok;
}

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= n_vocab()) {
    throw TokenizerError("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                         std::to_string(n_vocab()) + ")");
  }
}

void Tokenizer::encode_run(std::string_view run, std::vector<int32_t>& out) const {
  if (run.empty()) return;
  std::vector<int> ids;
  const auto status = sp_->Encode(run, &ids);
  if (!status.ok()) throw TokenizerError("sentencepiece failed to encode: " + status.ToString());
  out.insert(out.end(), ids.begin(), ids.end());
}

namespace {
constexpr size_t kCacheMinBytes = 256;         // shorter texts are cheap to encode
constexpr size_t kCacheEntries = 64;           // e.g. prefix and suffix of 32 open files
constexpr size_t kCacheBudget = size_t(16) << 20;  // bytes of text kept in all (ids: ~3x more)
constexpr size_t kMaxSplitSearch = 4096;       // bytes to look back for a split point

size_t common_prefix(std::string_view a, std::string_view b) {
  const size_t n = std::min(a.size(), b.size());
  size_t l = 0;
  while (l + 64 <= n && std::memcmp(a.data() + l, b.data() + l, 64) == 0) l += 64;
  while (l < n && a[l] == b[l]) ++l;
  return l;
}
}  // namespace

// The last p <= common at which neither text can have a token across: p is a UTF-8 character
// boundary of both and the bytes either side of it (in each text that goes on past p) are a pair
// no piece contains. Then every tokenization of a text is one of text[0, p) followed by one of
// text[p, end) — a merge across p would make a piece holding that pair — and sentencepiece's
// BPE choice on each side does not depend on the other (it merges the best pair first, and
// merges on one side never change the candidates of the other). So
// encode(a) = encode(a[0, p)) + encode(a[p, end)) and the same for b. 0 when there is none.
size_t Tokenizer::split_point(std::string_view a, std::string_view b, size_t common) const {
  auto clean = [this](std::string_view t, size_t p) {
    if (p >= t.size()) return true;
    const uint8_t x = uint8_t(t[p - 1]), y = uint8_t(t[p]);
    return (y & 0xC0) != 0x80 && never_joined(x, y);
  };
  const size_t stop = common > kMaxSplitSearch ? common - kMaxSplitSearch : 0;
  for (size_t p = common; p > stop; --p)
    if (clean(a, p) && clean(b, p)) return p;
  return 0;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  // Short texts are cheap; ones over a quarter of the budget are never kept.
  if (!incremental_ || text.size() < kCacheMinBytes || text.size() > kCacheBudget / 4) return encode_uncached(text);
  std::shared_ptr<const Encoded> base;
  size_t common = 0;
  {
    std::lock_guard<std::mutex> lk(cache_mu_);
    for (const auto& e : cache_) {
      const size_t l = common_prefix(e->text, text);
      // The longest common prefix; on a tie the text itself (a longer text from before a
      // backspace can share all of it too, and would only give a split point near its end).
      if (l > common || (l == common && l == text.size() && e->text.size() == text.size())) {
        common = l;
        base = e;
      }
    }
    if (base && common == text.size() && base->text.size() == text.size()) {  // the same text again
      base->used = ++cache_clock_;
      reused_ids_ += base->ids.size();
      return base->ids;
    }
  }
  auto entry = std::make_shared<Encoded>();
  entry->text = std::string(text);
  size_t p = base ? split_point(base->text, text, common) : 0;
  size_t n_reused = 0;
  if (p > 0) {
    // Tokens of base covering exactly [0, p): a split point is a token boundary of base.
    auto it = std::lower_bound(base->ends.begin(), base->ends.end(), int32_t(p));
    if (it != base->ends.end() && size_t(*it) == p) n_reused = size_t(it - base->ends.begin()) + 1;
    else p = 0;
  }
  if (p > 0) entry->ids.assign(base->ids.begin(), base->ids.begin() + std::ptrdiff_t(n_reused));
  const std::vector<int32_t> rest = encode_uncached(text.substr(p));
  entry->ids.insert(entry->ids.end(), rest.begin(), rest.end());
  entry->ends.reserve(entry->ids.size());
  size_t end = 0;
  for (const int32_t id : entry->ids) {
    end += bytes_[size_t(id)].size();
    entry->ends.push_back(int32_t(end));
  }
  std::vector<int32_t> out = entry->ids;
  std::lock_guard<std::mutex> lk(cache_mu_);
  reused_ids_ += n_reused;
  if (end != text.size()) return out;  // not byte-aligned (cannot happen with byte fallback): not kept
  entry->used = ++cache_clock_;
  cache_bytes_ += text.size();
  cache_.push_back(std::move(entry));
  while (cache_.size() > kCacheEntries || cache_bytes_ > kCacheBudget) {
    auto oldest = std::min_element(cache_.begin(), cache_.end(), [](const auto& x, const auto& y) { return x->used < y->used; });
    cache_bytes_ -= (*oldest)->text.size();
    cache_.erase(oldest);
  }
  return out;
}

std::vector<int32_t> Tokenizer::encode_uncached(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  size_t run_start = 0, i = 0;
  while (i < text.size()) {
    const utf8::Scan sc = utf8::scan(text.substr(i));
    const bool is_marker =
        sc.kind == utf8::ScanKind::Complete && text.substr(i, sc.n_bytes) == kSpaceMarker;
    const bool as_bytes = has_byte_fallback_ && (is_marker || sc.kind != utf8::ScanKind::Complete);
    if (as_bytes) {
      encode_run(text.substr(run_start, i - run_start), out);
      for (size_t k = 0; k < sc.n_bytes; ++k) {
        out.push_back(byte_ids_[static_cast<uint8_t>(text[i + k])]);
      }
      run_start = i + sc.n_bytes;
    }
    i += sc.n_bytes;
  }
  encode_run(text.substr(run_start), out);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string raw;
  for (const int32_t id : ids) raw += token_bytes(id);
  return utf8::repaired(raw);
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  check_id(id);
  return bytes_[id];
}

std::optional<int32_t> Tokenizer::find_piece(std::string_view piece) const {
  const int id = sp_->PieceToId(piece);
  if (id < 0 || id >= n_vocab() || sp_->IdToPiece(id) != piece) return std::nullopt;
  return id;
}

std::string Tokenizer::piece(int32_t id) const {
  check_id(id);
  return sp_->IdToPiece(id);
}

bool Tokenizer::is_control(int32_t id) const {
  check_id(id);
  return kinds_[id] == Kind::Control;
}

bool Tokenizer::is_byte(int32_t id) const {
  check_id(id);
  return kinds_[id] == Kind::Byte;
}

}  // namespace hyco
