// Unit tests of tokenizer/: byte-exact round trips, the incremental detokenizer, and errors
// on bad files and ids. Models are trained at test time (tests/tokenizer_models.cpp).
#include "tests/catch.hpp"
#include "tests/tokenizer_models.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace hyco;
using namespace hyco::test;
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kTrickyTexts = {
    "fn main() {\n    let x = 42;\n}\n",
    "\tindented\twith\ttabs\n\t\t}\n",
    "windows\r\nline\r\nendings\r\n",
    "many     spaces   inside    and at the end   ",
    "   leading spaces",
    " ",
    "\n\n\n",
    "caf\xC3\xA9 na\xC3\xAFve \xE4\xB8\xAD\xE6\x96\x87 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",
    "let crab = \"" + kEmoji + kEmoji + "\"; // " + kEmoji,
    "a literal " + kMarker + " and " + kMarker + kMarker + " at " + kMarker,
    kMarker + "leading marker",
    std::string("nul\0byte", 8),
    "digits 1234567890 and 3.14159",
    "let s = \"<fim-prefix><|fim_prefix|><fim_prefix>\";",
};

}  // namespace

TEST_CASE("decode(encode(s)) is byte-exact for source text with whitespace and non-ASCII") {
  for (const std::string name : {"hyco", "plain", "qwen", "starcoder", "codellama"}) {
    const Tokenizer& tok = tokenizer(name);
    for (const std::string& s : kTrickyTexts) {
      INFO(name << ": \"" << s << "\"");
      const std::vector<int32_t> ids = tok.encode(s);
      CHECK(tok.decode(ids) == s);
      CHECK(raw_bytes(tok, ids) == s);
      for (int32_t id : ids) CHECK_FALSE(tok.is_control(id));
    }
  }
}

TEST_CASE("decode agrees with sentencepiece's own decoder on text without a literal U+2581") {
  const Tokenizer& tok = tokenizer("hyco");
  sentencepiece::SentencePieceProcessor sp;
  REQUIRE(sp.Load(model_path("hyco")).ok());
  for (const std::string& s : kTrickyTexts) {
    if (s.find(kMarker) != std::string::npos) continue;
    INFO(s);
    const std::vector<int32_t> ids = tok.encode(s);
    std::vector<int> sp_ids;
    REQUIRE(sp.Encode(s, &sp_ids).ok());
    CHECK(std::vector<int>(ids.begin(), ids.end()) == sp_ids);
    std::string sp_text;
    REQUIRE(sp.Decode(sp_ids, &sp_text).ok());
    CHECK(tok.decode(ids) == sp_text);
  }
}

TEST_CASE("a literal U+2581 is encoded as its three byte pieces") {
  const Tokenizer& tok = tokenizer("hyco");
  REQUIRE(tok.has_byte_fallback());
  const std::vector<int32_t> ids = tok.encode("a" + kMarker + "b");
  const std::vector<int32_t> bytes = {tok.byte_id(0xE2), tok.byte_id(0x96), tok.byte_id(0x81)};
  CHECK(std::search(ids.begin(), ids.end(), bytes.begin(), bytes.end()) != ids.end());
  CHECK(tok.decode(ids) == "a" + kMarker + "b");
}

TEST_CASE("invalid UTF-8 input keeps its bytes as byte pieces and decodes to U+FFFD") {
  const Tokenizer& tok = tokenizer("hyco");
  const std::string bad = "ok\xFF" "x\xC3" "\xE2\x96 end\xF0\x9F\xA6";
  const std::vector<int32_t> ids = tok.encode(bad);
  CHECK(raw_bytes(tok, ids) == bad);
  CHECK(tok.decode(ids) == "ok" + kFffd + "x" + kFffd + kFffd + " end" + kFffd);
  CHECK(utf8::is_valid(tok.decode(ids)));
}

TEST_CASE("without byte fallback a literal U+2581 comes back as a space and nothing crashes") {
  const Tokenizer& tok = tokenizer("nobytes");
  REQUIRE_FALSE(tok.has_byte_fallback());
  CHECK(tok.decode(tok.encode("a" + kMarker + "b")) == "a b");
  CHECK(utf8::is_valid(tok.decode(tok.encode("x\xFFy" + kEmoji))));
}

TEST_CASE("text containing a control marker's literal text encodes to ordinary pieces") {
  const Tokenizer& tok = tokenizer("hyco");
  const auto prefix_id = tok.find_piece("<fim-prefix>");
  REQUIRE(prefix_id);
  REQUIRE(tok.is_control(*prefix_id));
  const std::string s = "x<fim-prefix>y<fim-middle></s><s>";
  const std::vector<int32_t> ids = tok.encode(s);
  for (int32_t id : ids) CHECK_FALSE(tok.is_control(id));
  CHECK(tok.decode(ids) == s);
  CHECK(tok.token_bytes(*prefix_id).empty());
  CHECK(tok.decode(std::vector<int32_t>{tok.bos_id(), *prefix_id, tok.eos_id()}).empty());
}

TEST_CASE("vocabulary metadata: BOS/EOS ids, piece lookup, byte pieces") {
  const Tokenizer& hyco = tokenizer("hyco");
  CHECK(hyco.piece(hyco.bos_id()) == "<s>");
  CHECK(hyco.piece(hyco.eos_id()) == "</s>");
  CHECK(hyco.is_control(hyco.bos_id()));
  CHECK_FALSE(hyco.find_piece("<not-a-piece>"));
  CHECK(hyco.find_piece("<fim-pad>"));
  CHECK(hyco.piece(hyco.byte_id(0x0A)) == "<0x0A>");
  CHECK(hyco.token_bytes(hyco.byte_id(0xE2)) == "\xE2");
  CHECK(hyco.n_vocab() == 400);
  CHECK_FALSE(hyco.model_adds_dummy_prefix());
  const Tokenizer& qwen = tokenizer("qwen");
  CHECK(qwen.bos_id() == -1);
  CHECK(qwen.piece(qwen.eos_id()) == "<|endoftext|>");
  CHECK(tokenizer("codellama").model_adds_dummy_prefix());
}

TEST_CASE("detokenizer deltas are whole UTF-8 characters and concatenate to the text") {
  for (const std::string name : {"hyco", "codellama"}) {
    const Tokenizer& tok = tokenizer(name);
    for (const std::string& s : kTrickyTexts) {
      INFO(name << ": \"" << s << "\"");
      IncrementalDetokenizer detok(tok);
      std::string text;
      for (int32_t id : tok.encode(s)) {
        const std::string delta = detok.push(id);
        CHECK(utf8::is_valid(delta));
        text += delta;
      }
      text += detok.flush();
      CHECK(text == s);
      CHECK(detok.n_bytes_emitted() == s.size());
    }
  }
}

TEST_CASE("a 4-byte emoji spelled as 4 byte pieces comes out only when complete") {
  const Tokenizer& tok = tokenizer("hyco");
  const std::vector<int32_t> ids = tok.encode(kEmoji);
  REQUIRE(ids.size() == 4);
  for (int32_t id : ids) REQUIRE(tok.is_byte(id));
  IncrementalDetokenizer detok(tok);
  CHECK(detok.push(ids[0]).empty());
  CHECK(detok.push(ids[1]).empty());
  CHECK(detok.push(ids[2]).empty());
  CHECK(detok.n_bytes_held() == 3);
  CHECK(detok.push(ids[3]) == kEmoji);
  CHECK(detok.flush().empty());
  CHECK(detok.n_bytes_emitted() == 4);
}

TEST_CASE("detokenizer repairs a broken character at once or at flush, like decode") {
  const Tokenizer& tok = tokenizer("hyco");
  const int32_t f0 = tok.byte_id(0xF0), x9f = tok.byte_id(0x9F);
  const int32_t a = tok.encode("a").at(0);
  {
    IncrementalDetokenizer detok(tok);
    CHECK(detok.push(f0).empty());
    CHECK(detok.push(x9f).empty());
    CHECK(detok.push(a) == kFffd + "a");  // 'a' cannot continue the sequence: decided now
    CHECK(detok.flush().empty());
  }
  {
    IncrementalDetokenizer detok(tok);
    detok.push(f0);
    detok.push(x9f);
    CHECK(detok.flush() == kFffd);
    CHECK(tok.decode(std::vector<int32_t>{f0, x9f}) == kFffd);
  }
}

TEST_CASE("streamed deltas equal batch decode for random token sequences") {
  const Tokenizer& tok = tokenizer("hyco");
  std::mt19937 rng(1234);
  // Mostly byte pieces so that partial and invalid sequences are common.
  std::uniform_int_distribution<int32_t> any(0, tok.n_vocab() - 1), byte(0, 255), coin(0, 2);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int32_t> ids(1 + trial % 17);
    for (int32_t& id : ids) id = coin(rng) ? tok.byte_id(static_cast<uint8_t>(byte(rng))) : any(rng);
    IncrementalDetokenizer detok(tok);
    std::string text;
    for (int32_t id : ids) {
      const std::string delta = detok.push(id);
      REQUIRE(utf8::is_valid(delta));
      text += delta;
    }
    text += detok.flush();
    REQUIRE(text == tok.decode(ids));
  }
}

TEST_CASE("incremental encoding gives exactly the ids of a fresh encoding") {
  // An editing session over real source files: the cursor moves on (the file's next characters
  // are typed), backspaces, odd text is pasted anywhere, a character in the middle changes, and
  // another file is encoded in between. Every text encodes to what encode_uncached gives.
  auto read = [](const std::string& rel) {
    std::ifstream in(fs::path(HYCO_SOURCE_DIR) / rel, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string src = read("engine/scheduler.cpp"), other = read("tokenizer/tokenizer.cpp");
  REQUIRE(src.size() > 8000);
  REQUIRE(other.size() > 4000);
  const auto shipped = Tokenizer::load((fs::path(HYCO_SOURCE_DIR) / "models/hyco-rust/tokenizer.model").string());
  const std::vector<std::string> pastes = {kEmoji, kMarker, "\xFF", "\xE2\x96", "\r\n", "    ", "<fim-prefix>",
                                           "<fim_suffix>", "caf\xC3\xA9", "\t}\n\n", "1234567", "\xEF\xBC\xA1"};
  struct Case {
    std::string name;
    const Tokenizer* tok;
    bool reuses;  // BPE, byte fallback, no normaliser mapping: split points are exact
  };
  const std::vector<Case> cases = {{"shipped", shipped.get(), true},           {"hyco", &tokenizer("hyco"), true},
                                   {"unigram", &tokenizer("unigram"), false},   {"starcoder", &tokenizer("starcoder"), true},
                                   {"codellama", &tokenizer("codellama"), true}, {"nfkc", &tokenizer("nfkc"), false},
                                   {"nobytes", &tokenizer("nobytes"), false}};
  for (const Case& c : cases) {
    const Tokenizer& tok = *c.tok;
    std::mt19937 rng(11);
    std::string text = src.substr(0, 3000);
    size_t cursor = 3000;
    const uint64_t reused_before = tok.reused_ids();
    for (int step = 0; step < 300; ++step) {
      const unsigned action = rng() % 10;
      if (action < 6 && cursor + 10 < src.size()) {  // typing on
        const size_t k = 1 + rng() % 8;
        text += src.substr(cursor, k);
        cursor += k;
      } else if (action == 6) {  // backspace
        text.erase(text.size() - std::min<size_t>(text.size() - 300, 1 + rng() % 20));
      } else if (action == 7) {  // paste odd text anywhere
        text.insert(rng() % text.size(), pastes[rng() % pastes.size()]);
      } else if (action == 8) {  // another file, a random start of it
        const std::string o = other.substr(0, 300 + rng() % (other.size() - 300));
        CHECK(tok.encode(o) == tok.encode_uncached(o));
      } else {  // a character in the middle changes
        text[rng() % text.size()] = "x {;\n"[rng() % 5];
      }
      INFO(c.name << " step " << step);
      CHECK(tok.encode(text) == tok.encode_uncached(text));
      if (step % 50 == 0) {  // the same text again (a request repeated unchanged): all of it reused
        const uint64_t before = tok.reused_ids();
        const std::vector<int32_t> again = tok.encode(text);
        CHECK(again == tok.encode_uncached(text));
        CHECK(tok.reused_ids() - before == (c.reuses ? again.size() : 0));
      }
    }
    INFO(c.name);
    if (c.reuses)
      CHECK(tok.reused_ids() > reused_before + 100000);  // most of each text came from the cache
    else
      CHECK(tok.reused_ids() == 0);
  }
}

TEST_CASE("incremental encoding never splits between bytes that only an UNUSED piece joins") {
  // sentencepiece's BPE merges through UNUSED pieces and splits them back at the end, so such a
  // merge can keep a NORMAL one from happening: with UNUSED "xy" merged before NORMAL "yz",
  // "...xyz" encodes as x y z, not x yz. A text cached up to its "x" must not be reused up to
  // there. Each NORMAL pair "xy" merged before a NORMAL "yz", marked UNUSED in turn.
  std::ifstream in(model_path("hyco"), std::ios::binary);
  const std::string proto(std::istreambuf_iterator<char>(in), {});
  const Tokenizer& base = tokenizer("hyco");
  auto plain_pair = [&](int32_t id) {
    const std::string p = base.piece(id);
    return p.size() == 2 && std::isalpha(uint8_t(p[0])) && std::isalpha(uint8_t(p[1]));
  };
  int tried = 0;
  for (int32_t a = 0; a < base.n_vocab() && tried < 12; ++a) {
    if (!plain_pair(a)) continue;
    const std::string xy = base.piece(a);
    for (int32_t b = a + 1; b < base.n_vocab(); ++b) {
      if (!plain_pair(b) || base.piece(b)[0] != xy[1]) continue;
      const std::string yz = base.piece(b);
      const fs::path path = models_dir() / ("unused-" + xy + ".model");
      std::ofstream(path, std::ios::binary) << mark_pieces_unused(proto, {xy});
      const auto tok = Tokenizer::load(path.string());
      const std::string prefix = std::string(300, ' ') + "let ";
      const std::string text = prefix + xy + yz.substr(1) + " = 1;";
      INFO("UNUSED " << xy << ", NORMAL " << yz);
      tok->encode(prefix + xy.substr(0, 1));  // cached up to "x"
      CHECK(tok->encode(text) == tok->encode_uncached(text));
      ++tried;
      break;
    }
  }
  CHECK(tried > 0);
}

TEST_CASE("incremental encoding from several threads at once gives fresh encodings") {
  // HTTP threads share one tokenizer: each thread types through its own file while the others
  // fill and evict the shared cache.
  const auto tok = Tokenizer::load((fs::path(HYCO_SOURCE_DIR) / "models/hyco-rust/tokenizer.model").string());
  const std::vector<std::string> files = {"engine/scheduler.cpp", "tokenizer/tokenizer.cpp", "engine/model.cpp",
                                          "server/http_server.cpp"};
  std::vector<int> mismatches(files.size(), 0);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < files.size(); ++t)
    threads.emplace_back([&, t] {
      std::ifstream in(fs::path(HYCO_SOURCE_DIR) / files[t], std::ios::binary);
      const std::string src(std::istreambuf_iterator<char>(in), {});
      for (size_t end = 2000; end < std::min<size_t>(src.size(), 5000); end += 1 + end % 13)
        if (tok->encode(std::string_view(src).substr(0, end)) != tok->encode_uncached(std::string_view(src).substr(0, end)))
          ++mismatches[t];
    });
  for (auto& th : threads) th.join();
  for (size_t t = 0; t < files.size(); ++t) {
    INFO(files[t]);
    CHECK(mismatches[t] == 0);
  }
  CHECK(tok->reused_ids() > 0);
}

TEST_CASE("a missing or corrupt tokenizer file is a TokenizerError naming the file") {
  const fs::path dir = models_dir();
  auto expect_error = [](const std::string& path) {
    INFO(path);
    try {
      Tokenizer::load(path);
      FAIL("no exception");
    } catch (const TokenizerError& e) {
      CHECK(std::string(e.what()).find(path) != std::string::npos);
    }
  };
  auto write = [&](const std::string& name, const std::string& bytes) {
    const fs::path p = dir / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  };
  std::ifstream in(model_path("hyco"), std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  expect_error((dir / "does-not-exist.model").string());
  expect_error(dir.string());  // a directory
  expect_error(write("empty.model", ""));
  expect_error(write("text.model", "this is not a protobuf\n"));
  expect_error(write("truncated.model", good.substr(0, good.size() / 2)));
  expect_error(write("noise.model", std::string("\x0a\xff\xff\xff\xff\x0f\x01\x02", 8)));
  expect_error(write("no-unk.model", std::string("\x0a\x05\x0a\x01" "a\x18\x01", 7)));
}

TEST_CASE("randomly damaged model files load or throw TokenizerError, never crash") {
  std::ifstream in(model_path("hyco"), std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string path = (models_dir() / "damaged.model").string();
  std::mt19937 rng(42);
  int n_loaded = 0;
  for (int trial = 0; trial < 200; ++trial) {
    std::string bytes = good;
    for (int k = 0; k < 1 + trial % 4; ++k) {
      const size_t pos = rng() % bytes.size();
      switch (rng() % 3) {
        case 0: bytes[pos] = static_cast<char>(rng()); break;
        case 1: bytes.erase(pos, 1 + rng() % 8); break;
        default: bytes.insert(pos, 1, static_cast<char>(rng())); break;
      }
    }
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    try {
      const auto tok = Tokenizer::load(path);
      ++n_loaded;  // some damage is harmless (a changed score or piece): it must still work
      const std::vector<int32_t> ids = tok->encode("fn main() {\n\tlet x = 1;\n}\xFF");
      CHECK(utf8::is_valid(tok->decode(ids)));
    } catch (const TokenizerError& e) {
      CHECK(std::string(e.what()).find(path) != std::string::npos);
    }
  }
  CHECK(n_loaded < 200);
}

TEST_CASE("out-of-range token ids throw TokenizerError") {
  const Tokenizer& tok = tokenizer("hyco");
  const int32_t n = tok.n_vocab();
  CHECK_THROWS_AS(tok.decode(std::vector<int32_t>{1, n}), TokenizerError);
  CHECK_THROWS_AS(tok.token_bytes(-1), TokenizerError);
  CHECK_THROWS_AS(tok.piece(n), TokenizerError);
  CHECK_THROWS_AS(tok.is_control(-5), TokenizerError);
  IncrementalDetokenizer detok(tok);
  CHECK(detok.push(tok.byte_id(0xF0)).empty());
  CHECK_THROWS_AS(detok.push(n + 100), TokenizerError);
  CHECK(detok.n_bytes_held() == 1);  // state unchanged by the bad id
}