// Tokenizer: loads a sentencepiece model and turns text into ids and back, byte-exactly.
// Owns the per-token byte table that decode and the incremental detokenizer share; does not
// know about FIM templates or prompts (fim.cpp) or streaming (detokenizer.cpp).
#include "tokenizer/tokenizer.h"

#include <sentencepiece_processor.h>

#include <cstdio>
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
    tok->model_adds_dummy_prefix_ = read_normalizer_flags(serialized).add_dummy_prefix;
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

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
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
