// Loading model directories: every broken file, header, config or shard index ends in one
// ModelError naming the file (and the tensor); valid f32, bf16, f16, tied and sharded directories
// load and run. Also config.json parsing per family, the shape presets and the --attention override.
// The bf16/f16 bytes are encoded here, independently of engine/dtype.h.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "engine/errors.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "tests/catch.hpp"
#include "tests/test_util.h"

using namespace hyco;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// ---- a tiny model of the Llama family, as files --------------------------------------------------

struct Tiny {
  std::string arch = "LlamaForCausalLM";
  int V = 48, D = 32, F = 40, L = 2, H = 4, KV = 2, HD = 12;  // q width 48 != D: shapes are not square
  bool tied = false;
};

json config_json(const Tiny& t) {
  return json{{"architectures", {t.arch}},
              {"vocab_size", t.V},
              {"hidden_size", t.D},
              {"intermediate_size", t.F},
              {"num_hidden_layers", t.L},
              {"num_attention_heads", t.H},
              {"num_key_value_heads", t.KV},
              {"head_dim", t.HD},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", 10000.0},
              {"max_position_embeddings", 256},
              {"tie_word_embeddings", t.tied},
              {"bos_token_id", 1},
              {"eos_token_id", 2}};
}

using Weights = std::map<std::string, test::StTensor>;

// Every tensor the loader expects, with HF names and shapes ([out, in] for projections).
Weights tiny_weights(const Tiny& t, uint32_t seed = 1) {
  std::mt19937 rng(seed);
  Weights w;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float mean, float sd) {
    std::normal_distribution<float> nd(mean, sd);
    int64_t n = 1;
    for (auto d : shape) n *= d;
    test::StTensor st;
    st.shape = shape;
    for (int64_t i = 0; i < n; ++i) st.data.push_back(nd(rng));
    w[name] = st;
  };
  const int64_t D = t.D, F = t.F, V = t.V, QW = t.H * t.HD, KW = t.KV * t.HD;
  const bool qwen = t.arch == "Qwen2ForCausalLM";
  add("model.embed_tokens.weight", {V, D}, 0, 1);
  if (!t.tied) add("lm_head.weight", {V, D}, 0, 2 / std::sqrt(float(D)));
  add("model.norm.weight", {D}, 1, 0.1f);
  for (int l = 0; l < t.L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {D}, 1, 0.1f);
    add(p + "post_attention_layernorm.weight", {D}, 1, 0.1f);
    add(p + "self_attn.q_proj.weight", {QW, D}, 0, 1 / std::sqrt(float(D)));
    add(p + "self_attn.k_proj.weight", {KW, D}, 0, 1 / std::sqrt(float(D)));
    add(p + "self_attn.v_proj.weight", {KW, D}, 0, 1 / std::sqrt(float(D)));
    if (qwen) {
      add(p + "self_attn.q_proj.bias", {QW}, 0, 0.1f);
      add(p + "self_attn.k_proj.bias", {KW}, 0, 0.1f);
      add(p + "self_attn.v_proj.bias", {KW}, 0, 0.1f);
    }
    add(p + "self_attn.o_proj.weight", {D, QW}, 0, 1 / std::sqrt(float(QW)));
    add(p + "mlp.gate_proj.weight", {F, D}, 0, 1 / std::sqrt(float(D)));
    add(p + "mlp.up_proj.weight", {F, D}, 0, 1 / std::sqrt(float(D)));
    add(p + "mlp.down_proj.weight", {D, F}, 0, 1 / std::sqrt(float(F)));
  }
  return w;
}

// A fresh temporary directory, removed when the test program exits.
fs::path model_dir(const std::string& name) {
  struct Cleanup {
    std::set<fs::path> dirs;
    ~Cleanup() {
      std::error_code ec;
      for (const auto& d : dirs) fs::remove_all(d, ec);
    }
  };
  static Cleanup cleanup;
  fs::path dir = test::temp_dir("loader-" + name);
  cleanup.dirs.insert(dir);
  return dir;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary).write(text.data(), std::streamsize(text.size()));
}

fs::path write_model(const std::string& name, const json& cfg, const Weights& w,
                     const std::function<void(json&)>& header_patch = {}, size_t truncate_bytes = 0) {
  fs::path dir = model_dir(name);
  write_text(dir / "config.json", cfg.dump(2));
  test::write_safetensors(dir / "model.safetensors", w, header_patch, truncate_bytes);
  return dir;
}

// ---- 16-bit encodings, written out here (round to nearest even) -----------------------------------

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

// bf16 is the top half of an f32: add half an ulp of the kept part (ties to even), cut.
uint16_t encode_bf16(float x) { return uint16_t((bits_of(x) + 0x7fffu + ((bits_of(x) >> 16) & 1u)) >> 16); }
float decode_bf16(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// f16: 1 sign, 5 exponent (bias 15), 10 mantissa bits; values below 2^-14 are subnormal,
// multiples of 2^-24. For the magnitudes of these weights (< 2^15) no overflow handling is needed.
uint16_t encode_f16(float x) {
  uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  double a = std::fabs(double(x));
  if (a < std::ldexp(1.0, -14)) return uint16_t(sign | uint16_t(std::nearbyint(a * std::ldexp(1.0, 24))));
  int e;
  double m = std::frexp(a, &e);                          // a = m · 2^e, m in [0.5, 1)
  double q = std::nearbyint(m * 2048.0);                 // 11 significant bits, ties to even
  if (q == 2048.0) q = 1024.0, ++e;                      // rounded up to the next binade
  uint16_t exp_field = uint16_t(e - 1 + 15), mant = uint16_t(q - 1024.0);  // a = (q/1024) · 2^(e-1)
  return uint16_t(sign | exp_field << 10 | mant);
}
float decode_f16(uint16_t h) {
  double s = (h & 0x8000) ? -1.0 : 1.0;
  int exp_field = (h >> 10) & 0x1f, mant = h & 0x3ff;
  if (exp_field == 0) return float(s * std::ldexp(mant, -24));
  return float(s * std::ldexp(1024 + mant, exp_field - 15 - 10));
}

enum class Half { BF16, F16 };
const char* st_name(Half h) { return h == Half::BF16 ? "BF16" : "F16"; }
uint16_t encode(Half h, float x) { return h == Half::BF16 ? encode_bf16(x) : encode_f16(x); }
float decode(Half h, uint16_t v) { return h == Half::BF16 ? decode_bf16(v) : decode_f16(v); }

// Writes every tensor in the 16-bit format (its own writer: test::write_safetensors writes f32).
void write_half_safetensors(const fs::path& path, const Weights& w, Half half) {
  json h = json::object();
  std::string data;
  for (const auto& [name, t] : w) {
    size_t off = data.size();
    for (float x : t.data) {
      uint16_t v = encode(half, x);
      data.push_back(char(v & 0xff));  // little-endian
      data.push_back(char(v >> 8));
    }
    h[name] = {{"dtype", st_name(half)}, {"shape", t.shape}, {"data_offsets", {off, data.size()}}};
  }
  std::string hs = h.dump();
  while (hs.size() % 8) hs += ' ';  // keeps the data aligned, as real files do
  uint64_t len = hs.size();
  std::string out(reinterpret_cast<const char*>(&len), 8);
  write_text(path, out + hs + data);
}

// The f32 values a 16-bit file holds.
Weights rounded(const Weights& w, Half half) {
  Weights r = w;
  for (auto& [_, t] : r)
    for (float& x : t.data) x = decode(half, encode(half, x));
  return r;
}

// ---- loading and running -------------------------------------------------------------------------

Backend& cpu() {
  static std::unique_ptr<Backend> b = make_cpu_backend(2);
  return *b;
}

// The logits of every position of a fixed 12-token prompt.
std::vector<float> run_logits(Model& m) {
  KvCacheConfig kc;
  kc.n_seqs = 1;
  kc.n_ctx = 64;
  kc.rollback = 4;
  kc.block_size = 16;
  KvCache kv(m.config(), cpu(), kc);
  SeqId s = *kv.create();
  auto toks = test::random_tokens(12, m.config().n_vocab, 3);
  Batch b;
  b.add(s, toks, true, true);
  std::vector<float> logits;
  m.forward(b, kv, logits);
  return logits;
}

std::vector<float> load_and_run(const fs::path& dir, const LoadOptions& opts = {}) {
  auto m = Model::load(dir.string(), cpu(), opts);
  return run_logits(*m);
}

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

double rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s / double(v.size()));
}

// Loading `dir` must end in a ModelError (any other exception fails the test); its message.
std::string load_error(const fs::path& dir, const LoadOptions& opts = {}) {
  try {
    Model::load(dir.string(), cpu(), opts);
  } catch (const ModelError& e) {
    return e.what();
  }
  FAIL("loaded " << dir << " without a ModelError");
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

void check_mentions(const std::string& msg, const std::vector<std::string>& parts) {
  INFO("message: " << msg);
  for (const auto& p : parts) {
    INFO("expected to mention: " << p);
    CHECK(contains(msg, p));
  }
}

// The byte range of one tensor in a header being patched.
std::pair<uint64_t, uint64_t> range_of(const json& h, const std::string& name) {
  return {h[name]["data_offsets"][0].get<uint64_t>(), h[name]["data_offsets"][1].get<uint64_t>()};
}
void set_range(json& h, const std::string& name, uint64_t b, uint64_t e) { h[name]["data_offsets"] = {b, e}; }

const std::string kUp1 = "model.layers.1.mlp.up_proj.weight";
const std::string kDown0 = "model.layers.0.mlp.down_proj.weight";
const std::string kNorm = "model.norm.weight";  // last in the file (names are sorted)

}  // namespace

// ---- valid directories ---------------------------------------------------------------------------

TEST_CASE("a complete f32 directory loads and its forward pass gives finite logits", "[loader]") {
  Tiny t;
  auto dir = write_model("f32", config_json(t), tiny_weights(t));
  auto m = Model::load(dir.string(), cpu());
  const ModelConfig& c = m->config();
  CHECK(c.family == "llama");
  CHECK(c.n_vocab == t.V);
  CHECK(c.d_model == t.D);
  CHECK(c.n_layers == t.L);
  CHECK(c.q_width() == t.H * t.HD);
  CHECK(c.kv_width() == t.KV * t.HD);
  auto logits = run_logits(*m);
  REQUIRE(logits.size() == size_t(12 * t.V));
  CHECK(all_finite(logits));
  CHECK(test::max_abs(logits) > 0.1f);  // not a zeroed model
}

TEST_CASE("bf16 and f16 files decode to the values they hold", "[loader]") {
  // The f32 file holds exactly the values the 16-bit file encodes (rounded here), and both load
  // into f32 matrices: the same numbers, the same kernels, so the logits must be identical. A
  // byte-order, exponent-bias or mantissa mistake in the decoder would change them by O(1).
  Tiny t;
  auto w = tiny_weights(t);
  for (Half half : {Half::BF16, Half::F16}) {
    SECTION(st_name(half)) {
      std::string tag = st_name(half);
      auto dir32 = write_model("exact32-" + tag, config_json(t), rounded(w, half));
      auto dir16 = model_dir("exact16-" + tag);
      write_text(dir16 / "config.json", config_json(t).dump());
      write_half_safetensors(dir16 / "model.safetensors", w, half);
      LoadOptions f32;
      f32.matrix_dtype = DType::F32;
      auto want = load_and_run(dir32, f32);
      auto got = load_and_run(dir16, f32);
      CHECK(test::max_abs_diff(got, want) <= 1e-6f * test::max_abs(want));
    }
  }
}

TEST_CASE("bf16 and f16 weights give logits within their rounding error of the f32 ones", "[loader]") {
  // Tolerance from the format's unit roundoff u (bf16: 8 significant bits, u = 2^-8; f16: 11,
  // u = 2^-11). Rounding a weight changes it by a relative δ with |δ| <= u, about uniform, so
  // rms u/√3. For y = W·x with independent errors, Δy_i = Σ_j w_ij δ_ij x_j has rms
  // (u/√3)·sqrt(Σ_j (w_ij x_j)²), which for random W is (u/√3)·rms(y): each matrix on the way adds
  // a relative rms error u/√3 (RMSNorm and residual sums do not amplify it). A path from the
  // tokens to the logits crosses m = 2 + 7·L matrices (embedding, lm_head, q k v o gate up down per
  // layer); summing their errors linearly (pessimistic against adding in quadrature) bounds the
  // rms logit error by m·u/√3·rms(logits), and the largest of a few hundred such errors is within
  // 5 rms. The 16-bit matrices are kept as loaded (bf16 as bf16, f16 widened to f32; by default a
  // CPU with VNNI would hold them in 8 bits, which test_backend_ops and the consistency tests
  // cover); the bf16 path may round the activations to bf16 too: twice the error.
  Tiny t;
  auto w = tiny_weights(t);
  auto dir32 = write_model("round32", config_json(t), w);
  auto ref = load_and_run(dir32);
  const double m = 2 + 7 * t.L;
  double err[2] = {0, 0};
  for (Half half : {Half::BF16, Half::F16}) {
    std::string tag = st_name(half);
    auto dir = model_dir("round16-" + tag);
    write_text(dir / "config.json", config_json(t).dump());
    write_half_safetensors(dir / "model.safetensors", w, half);
    LoadOptions keep;
    keep.matrix_dtype = half == Half::BF16 ? DType::BF16 : DType::F32;
    auto got = load_and_run(dir, keep);
    REQUIRE(got.size() == ref.size());
    CHECK(all_finite(got));
    const double u = half == Half::BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    const double roundings = half == Half::BF16 ? 2 : 1;
    const double tol = 5 * roundings * m * u / std::sqrt(3.0) * rms(ref);
    err[half == Half::BF16 ? 0 : 1] = test::max_abs_diff(got, ref);
    INFO(tag << ": max |Δlogit| " << test::max_abs_diff(got, ref) << ", tolerance " << tol << ", rms(logits) "
             << rms(ref));
    CHECK(test::max_abs_diff(got, ref) <= tol);
    CHECK(test::max_abs_diff(got, ref) > 0);  // the weights really were rounded
  }
  CHECK(err[1] < err[0]);  // f16 keeps three more mantissa bits than bf16
}

TEST_CASE("a tied model loads, ignoring a redundant lm_head.weight", "[loader]") {
  // The tied model reads lm_head from the embedding; an untied model whose lm_head is a copy of
  // the embedding is the same function, loaded through the other code path.
  Tiny tied;
  tied.tied = true;
  auto w = tiny_weights(tied);
  auto plain = write_model("tied", config_json(tied), w);
  auto with_copy = w;
  with_copy["lm_head.weight"] = w["model.embed_tokens.weight"];
  auto redundant = write_model("tied-redundant", config_json(tied), with_copy);
  Tiny untied;
  auto untied_dir = write_model("untied-copy", config_json(untied), with_copy);

  auto a = load_and_run(plain), b = load_and_run(redundant), c = load_and_run(untied_dir);
  CHECK(all_finite(a));
  CHECK(test::max_abs_diff(a, b) == 0.0f);
  CHECK(test::max_abs_diff(a, c) <= 1e-6f * test::max_abs(a));
}

TEST_CASE("rotary_emb.inv_freq tensors of old exports are ignored", "[loader]") {
  Tiny t;
  auto w = tiny_weights(t);
  auto with_freq = w;
  for (int l = 0; l < t.L; ++l) {
    test::StTensor f;
    f.shape = {t.HD / 2};
    for (int i = 0; i < t.HD / 2; ++i) f.data.push_back(std::pow(10000.0f, -2.0f * float(i) / float(t.HD)));
    with_freq["model.layers." + std::to_string(l) + ".self_attn.rotary_emb.inv_freq"] = f;
  }
  auto a = load_and_run(write_model("no-freq", config_json(t), w));
  auto b = load_and_run(write_model("inv-freq", config_json(t), with_freq));
  CHECK(test::max_abs_diff(a, b) == 0.0f);
}

TEST_CASE("a Qwen2 directory needs and uses the q/k/v biases", "[loader]") {
  Tiny t;
  t.arch = "Qwen2ForCausalLM";
  auto w = tiny_weights(t);
  auto logits = load_and_run(write_model("qwen2", config_json(t), w));
  CHECK(all_finite(logits));
  // Zero biases give other logits: they are read, not skipped.
  auto zero = w;
  for (auto& [name, st] : zero)
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) std::fill(st.data.begin(), st.data.end(), 0.0f);
  CHECK(test::max_abs_diff(load_and_run(write_model("qwen2-zero-bias", config_json(t), zero)), logits) > 1e-3f);
  auto no_bias = w;
  no_bias.erase("model.layers.1.self_attn.k_proj.bias");
  check_mentions(load_error(write_model("qwen2-no-bias", config_json(t), no_bias)),
                 {"model.safetensors", "model.layers.1.self_attn.k_proj.bias"});
}

TEST_CASE("sharded weights load and give the logits of the single file", "[loader]") {
  Tiny t;
  auto w = tiny_weights(t);
  auto single = load_and_run(write_model("single", config_json(t), w));
  fs::path dir = model_dir("sharded");
  write_text(dir / "config.json", config_json(t).dump());
  Weights s1, s2;
  json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
  for (const auto& [name, st] : w) {
    bool second = name.rfind("model.layers.1.", 0) == 0 || name == kNorm;
    (second ? s2 : s1)[name] = st;
    index["weight_map"][name] = second ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  }
  test::write_safetensors(dir / "model-00001-of-00002.safetensors", s1);
  test::write_safetensors(dir / "model-00002-of-00002.safetensors", s2);
  write_text(dir / "model.safetensors.index.json", index.dump(2));
  CHECK(test::max_abs_diff(load_and_run(dir), single) == 0.0f);
}

// ---- broken weight files ---------------------------------------------------------------------------

TEST_CASE("every broken safetensors file ends in a ModelError naming the file and the tensor", "[loader]") {
  Tiny t;
  const json cfg = config_json(t);
  const Weights w = tiny_weights(t);
  const std::string file = "model.safetensors";

  SECTION("missing tensor") {
    auto bad = w;
    bad.erase(kUp1);
    check_mentions(load_error(write_model("missing", cfg, bad)), {file, kUp1});
  }
  SECTION("unexpected extra tensor") {
    auto bad = w;
    bad["model.layers.2.self_attn.q_proj.weight"] = w.at("model.layers.0.self_attn.q_proj.weight");
    check_mentions(load_error(write_model("extra", cfg, bad)), {file, "model.layers.2.self_attn.q_proj.weight"});
  }
  SECTION("wrong shape (transposed)") {
    auto bad = w;
    bad["model.layers.0.self_attn.o_proj.weight"].shape = {t.H * t.HD, t.D};
    check_mentions(load_error(write_model("shape", cfg, bad)), {file, "model.layers.0.self_attn.o_proj.weight", "[48, 32]"});
  }
  SECTION("integer dtype") {
    check_mentions(load_error(write_model("i32", cfg, w, [](json& h) { h[kDown0]["dtype"] = "I32"; })),
                   {file, kDown0, "I32"});
  }
  SECTION("truncated file: the data is cut short") {
    check_mentions(load_error(write_model("truncated", cfg, w, {}, 64)), {file, kNorm});
  }
  SECTION("header length larger than the file") {
    auto dir = write_model("header-len", cfg, w);
    uint64_t len = fs::file_size(dir / file);  // more than the file holds after the length
    std::fstream f(dir / file, std::ios::in | std::ios::out | std::ios::binary);
    f.write(reinterpret_cast<const char*>(&len), 8);
    f.close();
    check_mentions(load_error(dir), {file, "header"});
  }
  SECTION("header: end offset beyond the data") {
    auto patch = [](json& h) {
      auto [b, e] = range_of(h, kDown0);
      set_range(h, kDown0, b + (1u << 20), e + (1u << 20));
    };
    check_mentions(load_error(write_model("past-end", cfg, w, patch)), {file, kDown0});
  }
  SECTION("header: begin > end") {
    auto patch = [](json& h) {
      auto [b, e] = range_of(h, kDown0);
      set_range(h, kDown0, e, b);
    };
    check_mentions(load_error(write_model("begin-end", cfg, w, patch)), {file, kDown0});
  }
  SECTION("header: byte size does not match the shape") {
    auto patch = [&](json& h) { h[kNorm]["shape"] = {t.D, 2}; };
    check_mentions(load_error(write_model("size-shape", cfg, w, patch)), {file, kNorm});
  }
  SECTION("header: byte size does not match the dtype") {
    auto patch = [](json& h) { h[kDown0]["dtype"] = "F16"; };  // f32 bytes: twice the size F16 needs
    check_mentions(load_error(write_model("size-dtype", cfg, w, patch)), {file, kDown0});
  }
  SECTION("header: two tensors overlap") {
    const std::string a = "model.layers.0.input_layernorm.weight", b = "model.layers.0.post_attention_layernorm.weight";
    auto patch = [&](json& h) {
      auto [ab, ae] = range_of(h, a);
      set_range(h, b, ab + 4, ae + 4);  // same size, shifted by one element into a
    };
    check_mentions(load_error(write_model("overlap", cfg, w, patch)), {file, a, b});
  }
  SECTION("header: two tensors overlap with an empty tensor between them") {
    // An empty tensor placed inside the embedding must not hide a tensor that overlaps it too.
    const std::string emb = "model.embed_tokens.weight", b = "model.layers.0.post_attention_layernorm.weight";
    const std::string empty = "model.layers.0.self_attn.rotary_emb.inv_freq";
    auto bad = w;
    bad[empty] = test::StTensor{{0}, {}};
    auto patch = [&](json& h) {
      auto [eb, ee] = range_of(h, emb);
      set_range(h, empty, eb + 8, eb + 8);
      set_range(h, b, eb + 16, eb + 16 + uint64_t(t.D) * 4);
    };
    check_mentions(load_error(write_model("overlap-empty", cfg, bad, patch)), {file, emb, b});
  }
  for (const char* dt : {"F64", "I8", "bf16"}) {
    SECTION(std::string("unknown dtype ") + dt) {
      auto patch = [&](json& h) { h[kDown0]["dtype"] = dt; };
      check_mentions(load_error(write_model(std::string("dtype-") + dt, cfg, w, patch)), {file, kDown0, dt});
    }
  }
  SECTION("header that is not JSON") {
    auto dir = write_model("not-json", cfg, w);
    std::string header = "{\"model.norm.weight\": nope}     ";
    uint64_t len = header.size();
    write_text(dir / file, std::string(reinterpret_cast<const char*>(&len), 8) + header);
    check_mentions(load_error(dir), {file, "JSON"});
  }
  SECTION("header that is JSON but not an object") {
    auto dir = write_model("header-array", cfg, w);
    std::string header = "[1, 2, 3]";
    uint64_t len = header.size();
    write_text(dir / file, std::string(reinterpret_cast<const char*>(&len), 8) + header);
    check_mentions(load_error(dir), {file});
  }
  SECTION("file shorter than 8 bytes") {
    auto dir = write_model("short", cfg, w);
    write_text(dir / file, "abcde");
    check_mentions(load_error(dir), {file});
  }
  SECTION("no weights at all") {
    auto dir = write_model("no-weights", cfg, w);
    fs::remove(dir / file);
    check_mentions(load_error(dir), {file});
  }
}

// ---- broken config.json ----------------------------------------------------------------------------

TEST_CASE("every broken config.json ends in a ModelError naming the file and the key", "[loader][config]") {
  Tiny t;
  const Weights w = tiny_weights(t);
  const std::string file = "config.json";
  auto with = [&](const std::function<void(json&)>& edit) {
    json c = config_json(t);
    edit(c);
    return c;
  };
  struct Case {
    const char* name;
    json cfg;
    std::vector<std::string> mentions;
  };
  const std::vector<Case> cases = {
      {"unknown architecture", with([](json& c) { c["architectures"] = {"GPT2LMHeadModel"}; }), {"GPT2LMHeadModel"}},
      {"unknown model_type", with([](json& c) {
         c.erase("architectures");
         c["model_type"] = "gpt2";
       }),
       {"gpt2"}},
      {"missing hidden_size", with([](json& c) { c.erase("hidden_size"); }), {"hidden_size"}},
      {"missing vocab_size", with([](json& c) { c.erase("vocab_size"); }), {"vocab_size"}},
      {"hidden_size as a string", with([](json& c) { c["hidden_size"] = "32"; }), {"hidden_size"}},
      {"num_hidden_layers as a float", with([](json& c) { c["num_hidden_layers"] = 2.5; }), {"num_hidden_layers"}},
      {"tie_word_embeddings as a number", with([](json& c) { c["tie_word_embeddings"] = 1; }), {"tie_word_embeddings"}},
      {"rope_theta as a string", with([](json& c) { c["rope_theta"] = "1e4"; }), {"rope_theta"}},
      {"negative hidden_size", with([](json& c) { c["hidden_size"] = -32; }), {"hidden_size"}},
      {"heads not a multiple of kv heads", with([](json& c) { c["num_key_value_heads"] = 3; }),
       {"num_attention_heads", "num_key_value_heads"}},
      {"layer_types too short", with([](json& c) { c["layer_types"] = {"full_attention"}; }), {"layer_types"}},
      {"layer_types too long", with([](json& c) { c["layer_types"] = {"full_attention", "full_attention", "full_attention"}; }),
       {"layer_types"}},
      {"layer_types with an unknown kind", with([](json& c) { c["layer_types"] = {"full_attention", "linear_attention"}; }),
       {"linear_attention"}},
      {"layer_types not a list", with([](json& c) { c["layer_types"] = "full_attention"; }), {"layer_types"}},
      {"sliding layers without sliding_window",
       with([](json& c) { c["layer_types"] = {"sliding_attention", "full_attention"}; }), {"sliding_window"}},
      {"sliding_window of 0", with([](json& c) {
         c["layer_types"] = {"sliding_attention", "full_attention"};
         c["sliding_window"] = 0;
       }),
       {"sliding_window"}},
      {"eos_token_id outside the vocabulary", with([](json& c) { c["eos_token_id"] = {2, 48}; }), {"eos_token_id"}},
      {"eos_token_id as a string", with([](json& c) { c["eos_token_id"] = "2"; }), {"eos_token_id"}},
      // Ids past 32 bits must not wrap into the vocabulary (4294967298 = 2 mod 2^32).
      {"eos_token_id past 32 bits", with([](json& c) { c["eos_token_id"] = int64_t(4294967298); }), {"eos_token_id"}},
      {"negative bos_token_id", with([](json& c) { c["bos_token_id"] = -5; }), {"bos_token_id"}},
      {"max_position_embeddings past 32 bits",
       with([](json& c) { c["max_position_embeddings"] = int64_t(1) << 40; }), {"max_position_embeddings"}},
      {"attention_sinks past the limit", with([](json& c) { c["attention_sinks"] = 1 << 20; }), {"attention_sinks"}},
      {"odd head_dim", with([](json& c) { c["head_dim"] = 11; }), {"head_dim"}},
      {"unsupported rope_scaling", with([](json& c) { c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}}; }),
       {"rope_scaling", "yarn"}},
  };
  for (const Case& c : cases) {
    SECTION(c.name) {
      auto mentions = c.mentions;
      mentions.push_back(file);
      check_mentions(load_error(write_model("cfg", c.cfg, w)), mentions);
    }
  }
  SECTION("config.json missing") {
    auto dir = write_model("no-config", config_json(t), w);
    fs::remove(dir / file);
    check_mentions(load_error(dir), {file});
  }
  SECTION("config.json not JSON") {
    auto dir = write_model("cfg-not-json", config_json(t), w);
    write_text(dir / file, "{\"vocab_size\": 48,");
    check_mentions(load_error(dir), {file, "JSON"});
  }
  SECTION("a value nested 100,000 levels deep") {  // an error, not a stack overflow in its message
    auto dir = write_model("cfg-deep", config_json(t), w);
    std::string deep = config_json(t).dump();
    const std::string key = "\"vocab_size\":";
    const size_t at = deep.find(key) + key.size();
    const size_t end = deep.find_first_of(",}", at);
    deep = deep.substr(0, at) + std::string(100000, '[') + std::string(100000, ']') + deep.substr(end);
    write_text(dir / file, deep);
    check_mentions(load_error(dir), {file, "vocab_size", "array"});
  }
  SECTION("config.json not an object") {
    auto dir = write_model("cfg-array", config_json(t), w);
    write_text(dir / file, "[]");
    check_mentions(load_error(dir), {file});
  }
}

// ---- broken shard index ----------------------------------------------------------------------------

TEST_CASE("every broken shard index ends in a ModelError naming the file and the tensor", "[loader]") {
  Tiny t;
  const Weights w = tiny_weights(t);
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  const std::string index_name = "model.safetensors.index.json";
  // Layer 1 and the final norm go to the second shard.
  auto in_second = [](const std::string& name) { return name.rfind("model.layers.1.", 0) == 0 || name == kNorm; };
  // Writes the shards from `w` and an index from `weight_map` (default: where each tensor is).
  auto write_sharded = [&](const std::string& name, const Weights& w1, const Weights& w2,
                           const std::function<void(json&)>& edit_map = {}) {
    fs::path dir = model_dir("shard-" + name);
    write_text(dir / "config.json", config_json(t).dump());
    test::write_safetensors(dir / s1, w1);
    test::write_safetensors(dir / s2, w2);
    json map = json::object();
    for (const auto& [n, _] : w) map[n] = in_second(n) ? s2 : s1;
    if (edit_map) edit_map(map);
    write_text(dir / index_name, json{{"metadata", json::object()}, {"weight_map", map}}.dump(2));
    return dir;
  };
  Weights w1, w2;
  for (const auto& [n, st] : w) (in_second(n) ? w2 : w1)[n] = st;

  SECTION("the valid split loads") { CHECK_NOTHROW(load_and_run(write_sharded("ok", w1, w2))); }
  SECTION("the index names a shard file that does not exist") {
    auto dir = write_sharded("missing-file", w1, w2, [&](json& m) { m[kUp1] = "model-00003-of-00003.safetensors"; });
    check_mentions(load_error(dir), {"model-00003-of-00003.safetensors"});
  }
  SECTION("a tensor listed in the index is absent from its shard") {
    auto w2_short = w2;
    w2_short.erase(kUp1);
    check_mentions(load_error(write_sharded("absent", w1, w2_short)), {s2, kUp1});
  }
  SECTION("a tensor present in a shard is listed under another shard") {
    auto dir = write_sharded("elsewhere", w1, w2, [&](json& m) { m[kDown0] = s2; });  // it is in s1
    check_mentions(load_error(dir), {s1, kDown0, s2});
  }
  SECTION("a tensor in a shard that the index does not list") {
    auto dir = write_sharded("unlisted", w1, w2, [&](json& m) { m.erase(kDown0); });
    check_mentions(load_error(dir), {s1, kDown0, index_name});
  }
  for (const char* name : {"../x", "sub/model.safetensors", "/etc/passwd"}) {
    SECTION(std::string("a shard name with a path separator: ") + name) {
      auto dir = write_sharded("path", w1, w2, [&](json& m) { m[kUp1] = name; });
      check_mentions(load_error(dir), {index_name, name});
    }
  }
  SECTION("an index that is not JSON") {
    auto dir = write_sharded("index-not-json", w1, w2);
    write_text(dir / index_name, "{\"weight_map\": ");
    check_mentions(load_error(dir), {index_name});
  }
  SECTION("an index without weight_map") {
    auto dir = write_sharded("index-no-map", w1, w2);
    write_text(dir / index_name, "{\"metadata\": {}}");
    check_mentions(load_error(dir), {index_name, "weight_map"});
  }
}

// ---- config.json per family --------------------------------------------------------------------------

namespace {

json family_json(const std::string& arch, int n_layers = 4) {
  Tiny t;
  t.arch = arch;
  t.L = n_layers;
  json c = config_json(t);
  c.erase("head_dim");
  return c;
}

std::vector<LayerKind> kinds(const std::string& letters) {
  std::vector<LayerKind> k;
  for (char ch : letters) k.push_back(ch == 'L' ? LayerKind::Local : LayerKind::Global);
  return k;
}

ModelConfig parse(const json& j) { return parse_model_config(j.dump(), "test/config.json"); }

}  // namespace

TEST_CASE("config.json: each family's sliding-window keys give the layer kinds transformers uses", "[config]") {
  SECTION("Mistral with sliding_window: every layer local") {
    json j = family_json("MistralForCausalLM");
    j["sliding_window"] = 4096;
    auto c = parse(j);
    CHECK(c.family == "mistral");
    CHECK(c.layer_kinds == kinds("LLLL"));
    CHECK(c.window == 4096);
  }
  SECTION("Mistral with sliding_window null: every layer global") {
    json j = family_json("MistralForCausalLM");
    j["sliding_window"] = nullptr;
    auto c = parse(j);
    CHECK(c.layer_kinds == kinds("GGGG"));
    CHECK(c.window == 0);
  }
  SECTION("Qwen2 with use_sliding_window false: every layer global") {
    json j = family_json("Qwen2ForCausalLM");
    j["sliding_window"] = 4096;
    j["use_sliding_window"] = false;
    j["max_window_layers"] = 2;
    auto c = parse(j);
    CHECK(c.family == "qwen2");
    CHECK(c.qkv_bias);
    CHECK(c.layer_kinds == kinds("GGGG"));
    CHECK(c.window == 0);
  }
  SECTION("Qwen2 with use_sliding_window true and max_window_layers 2: GGLL") {
    json j = family_json("Qwen2ForCausalLM");
    j["sliding_window"] = 4096;
    j["use_sliding_window"] = true;
    j["max_window_layers"] = 2;
    auto c = parse(j);
    CHECK(c.layer_kinds == kinds("GGLL"));
    CHECK(c.window == 4096);
  }
  SECTION("Llama with layer_types") {
    json j = family_json("LlamaForCausalLM");
    j["sliding_window"] = 16;
    j["attention_sinks"] = 2;
    j["layer_types"] = {"sliding_attention", "sliding_attention", "sliding_attention", "full_attention"};
    auto c = parse(j);
    CHECK(c.layer_kinds == kinds("LLLG"));
    CHECK(c.window == 16);
    CHECK(c.n_sinks == 2);
  }
  SECTION("Llama without layer_types ignores sliding_window") {
    json j = family_json("LlamaForCausalLM");
    j["sliding_window"] = 16;
    CHECK(parse(j).layer_kinds == kinds("GGGG"));
  }
  SECTION("model_type alone names the family") {
    json j = family_json("LlamaForCausalLM");
    j.erase("architectures");
    j["model_type"] = "mistral";
    auto c = parse(j);
    CHECK(c.family == "mistral");
    CHECK(c.architecture == "MistralForCausalLM");
  }
}

TEST_CASE("config.json: token ids, head_dim and defaults", "[config]") {
  SECTION("eos_token_id as an integer") {
    json j = family_json("LlamaForCausalLM");
    j["eos_token_id"] = 7;
    CHECK(parse(j).eos_ids == std::vector<int32_t>{7});
  }
  SECTION("eos_token_id as a list") {
    json j = family_json("LlamaForCausalLM");
    j["eos_token_id"] = {2, 7, 9};
    CHECK(parse(j).eos_ids == std::vector<int32_t>{2, 7, 9});
  }
  SECTION("head_dim absent: hidden_size / num_attention_heads") {
    json j = family_json("LlamaForCausalLM");  // hidden 32, 4 heads
    auto c = parse(j);
    CHECK(c.head_dim == 8);
    CHECK(c.q_width() == 32);
  }
  SECTION("head_dim given: the attention width differs from hidden_size") {
    json j = family_json("LlamaForCausalLM");
    j["head_dim"] = 64;
    auto c = parse(j);
    CHECK(c.head_dim == 64);
    CHECK(c.q_width() == 256);
  }
  SECTION("num_key_value_heads absent: as many as query heads") {
    json j = family_json("LlamaForCausalLM");
    j.erase("num_key_value_heads");
    CHECK(parse(j).n_kv_heads == 4);
  }
}

TEST_CASE("the shape presets parse and count the published numbers of parameters", "[config]") {
  // Parameter counts as the model cards state them; ours come from the shape alone.
  const std::map<std::string, double> published = {
      {"codellama-7b.json", 6.74e9},        {"mistral-7b.json", 7.24e9},          {"tinyllama-1.1b.json", 1.10e9},
      {"qwen2.5-coder-0.5b.json", 0.49e9}, {"qwen2.5-coder-1.5b.json", 1.54e9},
  };
  std::set<std::string> seen;
  for (const auto& entry : fs::directory_iterator(fs::path(HYCO_SOURCE_DIR) / "models" / "shapes")) {
    if (entry.path().extension() != ".json") continue;
    const std::string name = entry.path().filename().string();
    INFO(name);
    ModelConfig c;
    REQUIRE_NOTHROW(c = load_model_config(entry.path().string()));
    CHECK(c.n_layers == int(c.layer_kinds.size()));
    seen.insert(name);
    auto it = published.find(name);
    if (it == published.end()) continue;
    INFO("ours " << double(c.n_params()) / 1e9 << "B, published " << it->second / 1e9 << "B");
    CHECK(std::fabs(double(c.n_params()) / it->second - 1) <= 0.02);
  }
  for (const auto& [name, _] : published) {
    INFO("preset " << name);
    CHECK(seen.count(name) == 1);
  }
}

// ---- the --attention override ---------------------------------------------------------------------

TEST_CASE("attention override specs set the layer kinds, window and sinks", "[config]") {
  struct Case {
    const char* spec;
    const char* model;  // 8 layers
    int window;         // of the model
    const char* want_kinds;
    int want_window, want_sinks;
  };
  for (const Case& c : {Case{"pattern=LLLG,window=4096,sinks=4", "GGGGGGGG", 0, "LLLGLLLG", 4096, 4},
                        Case{"global", "LLLGLLLG", 64, "GGGGGGGG", 64, 0},
                        Case{"local,window=512", "GGGGGGGG", 0, "LLLLLLLL", 512, 0},
                        Case{"local", "LLLGLLLG", 64, "LLLLLLLL", 64, 0},
                        Case{"pattern=lg", "LLLGLLLG", 64, "LGLGLGLG", 64, 0},
                        Case{"window=128", "LLLGLLLG", 64, "LLLGLLLG", 128, 0},
                        Case{"sinks=2", "LLLGLLLG", 64, "LLLGLLLG", 64, 2},
                        Case{"pattern=LLG,window=16", "GGGGGGGG", 0, "LLGLLGLL", 16, 0}}) {
    SECTION(std::string(c.spec) + " on " + c.model) {
      ModelConfig m = test::tiny_config(c.model, c.window);
      auto o = parse_attention_override(c.spec);
      apply_attention_override(m, o);
      CHECK(m.layer_kinds == kinds(c.want_kinds));
      if (m.n_layers_of(LayerKind::Local) > 0) CHECK(m.window == c.want_window);
      CHECK(m.n_sinks == c.want_sinks);
    }
  }
}

TEST_CASE("invalid --attention specs are rejected naming the offending part", "[config]") {
  struct Case {
    const char* spec;
    const char* mentions;
  };
  for (const Case& c : {Case{"pattern=LXG", "'X'"}, Case{"window=-1", "window"}, Case{"window=abc", "window"},
                        Case{"window=12x", "window"}, Case{"window=", "window"}, Case{"sinks=-3", "sinks"},
                        Case{"foo=1", "foo"}, Case{"pattern=", "pattern"}, Case{"global,,window=4", "empty"},
                        Case{"", "nothing"}, Case{"window=99999999999", "window"}}) {
    SECTION(std::string("'") + c.spec + "'") {
      try {
        parse_attention_override(c.spec);
        FAIL("accepted " << c.spec);
      } catch (const InvalidArgument& e) {
        INFO("message: " << e.what());
        CHECK(contains(e.what(), c.mentions));
      }
    }
  }
  SECTION("local layers on a model without a window") {
    ModelConfig m = test::tiny_config("GGGGGGGG");
    try {
      apply_attention_override(m, parse_attention_override("local"));
      FAIL("accepted local layers without a window");
    } catch (const ModelError& e) {
      INFO("message: " << e.what());
      CHECK(contains(e.what(), "window"));
      CHECK(contains(e.what(), "--attention"));
    }
  }
  SECTION("sinks past the limit") {  // the ring's size must not overflow
    ModelConfig m = test::tiny_config("LLLGLLLG", 64);
    CHECK_THROWS_AS(apply_attention_override(m, parse_attention_override("sinks=2147483647")), ModelError);
  }
  SECTION("window=0 on a model with local layers") {
    ModelConfig m = test::tiny_config("LLLGLLLG", 64);
    CHECK_THROWS_AS(apply_attention_override(m, parse_attention_override("window=0")), ModelError);
  }
}

TEST_CASE("an --attention override given to Model::load changes the loaded pattern", "[loader][config]") {
  Tiny t;
  auto dir = write_model("override", config_json(t), tiny_weights(t));
  LoadOptions opts;
  opts.attention = parse_attention_override("local,window=4");
  auto m = Model::load(dir.string(), cpu(), opts);
  CHECK(m->config().layer_kinds == kinds("LL"));
  CHECK(m->config().window == 4);
  auto local = run_logits(*m);
  CHECK(all_finite(local));
  // A 4-token window over a 12-token prompt sees less than global attention: other logits.
  CHECK(test::max_abs_diff(local, load_and_run(dir)) > 1e-3f);

  opts.attention = parse_attention_override("local");  // the file has no sliding_window
  check_mentions(load_error(dir, opts), {"window"});
}
