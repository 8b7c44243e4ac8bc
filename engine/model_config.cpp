// config.json parsing for the Llama, Mistral and Qwen2 families and the --attention override.
// Every problem becomes a ModelError that names the file and the key; nothing is defaulted silently
// except what transformers itself defaults.
#include "engine/model_config.h"

#include <charconv>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/errors.h"

namespace hyco {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& source, const std::string& msg) {
  throw ModelError(source + ": " + msg);
}

// A value for an error message: short, and never a deep dump (a config nested 100,000 levels
// deep must end in an error, not a stack overflow).
std::string describe(const json& v) {
  if (!v.is_primitive()) return std::string("a JSON ") + v.type_name();
  std::string s = v.dump();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

// Reads an integer key; std::nullopt when absent or null.
std::optional<int64_t> opt_int(const json& j, const char* key, const std::string& src) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) fail(src, std::string("key '") + key + "' must be an integer, got " + describe(*it));
  return it->get<int64_t>();
}

int req_int(const json& j, const char* key, const std::string& src, int64_t lo, int64_t hi) {
  auto v = opt_int(j, key, src);
  if (!v) fail(src, std::string("missing required key '") + key + "'");
  if (*v < lo || *v > hi)
    fail(src, std::string("key '") + key + "' = " + std::to_string(*v) + " is out of range [" + std::to_string(lo) +
                  ", " + std::to_string(hi) + "]");
  return int(*v);
}

std::optional<double> opt_num(const json& j, const char* key, const std::string& src) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) fail(src, std::string("key '") + key + "' must be a number, got " + describe(*it));
  return it->get<double>();
}

std::optional<bool> opt_bool(const json& j, const char* key, const std::string& src) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) fail(src, std::string("key '") + key + "' must be true or false, got " + describe(*it));
  return it->get<bool>();
}

std::string family_of(const json& j, const std::string& src, std::string* arch) {
  static const std::pair<const char*, const char*> kKnown[] = {
      {"LlamaForCausalLM", "llama"}, {"MistralForCausalLM", "mistral"}, {"Qwen2ForCausalLM", "qwen2"}};
  auto it = j.find("architectures");
  if (it != j.end() && !it->is_null()) {
    if (!it->is_array() || it->empty() || !(*it)[0].is_string())
      fail(src, "key 'architectures' must be a non-empty list of strings");
    *arch = (*it)[0].get<std::string>();
    for (auto& [a, f] : kKnown)
      if (*arch == a) return f;
    fail(src, "unsupported architecture '" + *arch +
                  "' (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)");
  }
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string()) fail(src, "neither 'architectures' nor 'model_type' says what the model is");
  std::string t = mt->get<std::string>();
  for (auto& [a, f] : kKnown)
    if (t == f) {
      *arch = a;
      return f;
    }
  fail(src, "unsupported model_type '" + t + "' (supported: llama, mistral, qwen2)");
}

DType dtype_of(const json& j, const std::string& src) {
  for (const char* key : {"torch_dtype", "dtype"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_string()) fail(src, std::string("key '") + key + "' must be a string");
    std::string s = it->get<std::string>();
    if (s == "float32") return DType::F32;
    if (s == "float16") return DType::F16;
    if (s == "bfloat16") return DType::BF16;
    fail(src, std::string("key '") + key + "' = '" + s + "' is not one of float32, float16, bfloat16");
  }
  return DType::F32;
}

}  // namespace

int ModelConfig::n_layers_of(LayerKind k) const {
  int n = 0;
  for (auto lk : layer_kinds) n += lk == k;
  return n;
}

int64_t ModelConfig::n_params() const {
  int64_t attn = int64_t(d_model) * qkv_width() + int64_t(q_width()) * d_model;
  if (qkv_bias) attn += qkv_width();
  if (o_bias) attn += d_model;
  int64_t mlp = 3 * int64_t(d_model) * d_ff;
  int64_t per_layer = attn + mlp + 2 * int64_t(d_model);
  int64_t emb = int64_t(n_vocab) * d_model;
  return per_layer * n_layers + emb * (tie_embeddings ? 1 : 2) + d_model;
}

int64_t ModelConfig::kv_position_bytes(DType dtype) const {
  const int64_t scales = dtype == DType::Q8 ? 4 * int64_t(n_kv_heads) : 0;
  return 2 * (int64_t(kv_width()) * int64_t(dtype_size(dtype)) + scales);
}

int64_t ModelConfig::kv_bytes(int64_t n_ctx, DType dtype, int reserve) const {
  const int64_t per_pos = kv_position_bytes(dtype);
  int64_t local_slots = std::min<int64_t>(n_ctx, int64_t(n_sinks) + window + reserve);
  return per_pos * (n_ctx * n_layers_of(LayerKind::Global) + local_slots * n_layers_of(LayerKind::Local));
}

std::string ModelConfig::pattern_string() const {
  std::string s;
  for (size_t i = 0; i < layer_kinds.size(); ++i) {
    if (i && i % 4 == 0) s += ' ';
    s += layer_kinds[i] == LayerKind::Local ? 'L' : 'G';
  }
  return s;
}

void validate_model_config(const ModelConfig& c, const std::string& src) {
  auto pos = [&](int v, const char* what) {
    if (v <= 0) fail(src, std::string(what) + " must be positive, got " + std::to_string(v));
  };
  pos(c.n_vocab, "vocab_size");
  pos(c.d_model, "hidden_size");
  pos(c.d_ff, "intermediate_size");
  pos(c.n_layers, "num_hidden_layers");
  pos(c.n_heads, "num_attention_heads");
  pos(c.n_kv_heads, "num_key_value_heads");
  pos(c.head_dim, "head_dim");
  if (c.n_heads % c.n_kv_heads != 0)
    fail(src, "num_attention_heads (" + std::to_string(c.n_heads) + ") must be a multiple of num_key_value_heads (" +
                  std::to_string(c.n_kv_heads) + ")");
  if (c.head_dim % 2 != 0) fail(src, "head_dim must be even for RoPE, got " + std::to_string(c.head_dim));
  if (c.head_dim > 512) fail(src, "head_dim " + std::to_string(c.head_dim) + " is larger than the supported 512");
  if (int(c.layer_kinds.size()) != c.n_layers)
    fail(src, "layer_types has " + std::to_string(c.layer_kinds.size()) + " entries for " +
                  std::to_string(c.n_layers) + " layers");
  bool any_local = c.n_layers_of(LayerKind::Local) > 0;
  if (any_local && c.window <= 0) fail(src, "local (sliding_attention) layers need a positive sliding_window");
  if (c.n_sinks < 0 || c.n_sinks > 65536) fail(src, "attention_sinks out of range [0, 65536]: " + std::to_string(c.n_sinks));
  if (c.window > (1 << 30)) fail(src, "sliding_window out of range: " + std::to_string(c.window));
  if (!(c.rms_eps > 0)) fail(src, "rms_norm_eps must be positive");
  if (!(c.rope_theta > 0)) fail(src, "rope_theta must be positive");
  if (!(c.rope_scale > 0)) fail(src, "rope_scaling factor must be positive");
  if (c.bos_id >= c.n_vocab) fail(src, "bos_token_id " + std::to_string(c.bos_id) + " is outside the vocabulary");
  for (int32_t e : c.eos_ids)
    if (e < 0 || e >= c.n_vocab) fail(src, "eos_token_id " + std::to_string(e) + " is outside the vocabulary");
}

ModelConfig parse_model_config(std::string_view text, const std::string& src) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // parse errors, and numbers too large for a double
    fail(src, std::string("invalid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(src, "must hold a JSON object");

  ModelConfig c;
  c.family = family_of(j, src, &c.architecture);
  constexpr int64_t kBig = int64_t(1) << 30;
  c.n_vocab = req_int(j, "vocab_size", src, 1, kBig);
  c.d_model = req_int(j, "hidden_size", src, 1, 1 << 20);
  c.d_ff = req_int(j, "intermediate_size", src, 1, 1 << 22);
  c.n_layers = req_int(j, "num_hidden_layers", src, 1, 4096);
  c.n_heads = req_int(j, "num_attention_heads", src, 1, 4096);
  c.n_kv_heads = opt_int(j, "num_key_value_heads", src) ? req_int(j, "num_key_value_heads", src, 1, 4096) : c.n_heads;
  if (opt_int(j, "head_dim", src)) {
    c.head_dim = req_int(j, "head_dim", src, 1, 1 << 16);
  } else {
    if (c.d_model % c.n_heads) fail(src, "hidden_size is not a multiple of num_attention_heads and no head_dim is given");
    c.head_dim = c.d_model / c.n_heads;
  }
  c.rms_eps = float(opt_num(j, "rms_norm_eps", src).value_or(1e-6));
  c.rope_theta = opt_num(j, "rope_theta", src).value_or(10000.0);
  const int64_t n_pos = opt_int(j, "max_position_embeddings", src).value_or(0);
  if (n_pos < 0 || n_pos > (int64_t(1) << 30))
    fail(src, "max_position_embeddings out of range: " + std::to_string(n_pos));
  c.n_ctx_train = int(n_pos);
  c.tie_embeddings = opt_bool(j, "tie_word_embeddings", src).value_or(false);
  if (c.family == "qwen2") {
    c.qkv_bias = true;
  } else if (c.family == "llama") {
    c.qkv_bias = c.o_bias = opt_bool(j, "attention_bias", src).value_or(false);
  }
  c.dtype = dtype_of(j, src);

  if (auto rs = j.find("rope_scaling"); rs != j.end() && !rs->is_null()) {
    if (!rs->is_object()) fail(src, "rope_scaling must be an object or null");
    std::string type;
    for (const char* k : {"rope_type", "type"})
      if (rs->contains(k) && (*rs)[k].is_string()) type = (*rs)[k].get<std::string>();
    if (type == "linear") {
      auto f = opt_num(*rs, "factor", src);
      if (!f) fail(src, "rope_scaling of type linear needs a 'factor'");
      c.rope_scale = *f;
    } else if (type != "default") {
      fail(src, "unsupported rope_scaling type '" + type + "' (supported: linear, default)");
    }
  }

  auto window = opt_int(j, "sliding_window", src);
  if (c.family == "qwen2" && !opt_bool(j, "use_sliding_window", src).value_or(false)) window.reset();
  if (window && (*window <= 0 || *window > kBig)) fail(src, "sliding_window must be positive, got " + std::to_string(*window));
  c.n_sinks = int(opt_int(j, "attention_sinks", src).value_or(0));
  if (c.n_sinks < 0 || c.n_sinks > 65536) fail(src, "attention_sinks out of range: " + std::to_string(c.n_sinks));

  if (auto lt = j.find("layer_types"); lt != j.end() && !lt->is_null()) {
    if (!lt->is_array()) fail(src, "layer_types must be a list");
    for (const auto& e : *lt) {
      std::string s = e.is_string() ? e.get<std::string>() : describe(e);
      if (s == "full_attention") {
        c.layer_kinds.push_back(LayerKind::Global);
      } else if (s == "sliding_attention") {
        c.layer_kinds.push_back(LayerKind::Local);
      } else {
        fail(src, "unsupported layer type " + s + " (supported: full_attention, sliding_attention)");
      }
    }
  } else {
    c.layer_kinds.assign(c.n_layers, LayerKind::Global);
    if (window && c.family == "mistral") c.layer_kinds.assign(c.n_layers, LayerKind::Local);
    if (window && c.family == "qwen2") {
      int first = int(opt_int(j, "max_window_layers", src).value_or(c.n_layers));
      for (int i = std::max(first, 0); i < c.n_layers; ++i) c.layer_kinds[i] = LayerKind::Local;
    }
  }
  if (c.n_layers_of(LayerKind::Local) > 0) c.window = window ? int(*window) : 0;

  // Token ids are checked against the vocabulary before they are narrowed to 32 bits.
  auto token_id = [&](int64_t v, const char* key) {
    if (v < 0 || v >= c.n_vocab) fail(src, std::string(key) + " " + std::to_string(v) + " is outside the vocabulary");
    return int32_t(v);
  };
  if (auto b = opt_int(j, "bos_token_id", src)) c.bos_id = token_id(*b, "bos_token_id");
  if (auto e = j.find("eos_token_id"); e != j.end() && !e->is_null()) {
    if (e->is_number_integer()) {
      c.eos_ids.push_back(token_id(e->get<int64_t>(), "eos_token_id"));
    } else if (e->is_array()) {
      for (const auto& v : *e) {
        if (!v.is_number_integer()) fail(src, "eos_token_id list must hold integers");
        c.eos_ids.push_back(token_id(v.get<int64_t>(), "eos_token_id"));
      }
    } else {
      fail(src, "eos_token_id must be an integer or a list of integers");
    }
  }
  validate_model_config(c, src);
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::string file = path;
  if (file.size() < 5 || file.substr(file.size() - 5) != ".json") file += "/config.json";
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ModelError(file + ": cannot open (missing file or not a model directory)");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_model_config(ss.str(), file);
}

AttentionOverride parse_attention_override(std::string_view spec, std::string_view flag) {
  AttentionOverride o;
  auto bad = [&](const std::string& why) -> InvalidArgument {
    return InvalidArgument(std::string(flag) + " '" + std::string(spec) + "': " + why +
                           " (expected e.g. 'pattern=LLLG,window=4096,sinks=4', 'global' or 'local,window=512')");
  };
  auto parse_int = [&](std::string_view v, const char* what) {
    int x = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (ec != std::errc() || p != v.data() + v.size() || x < 0) throw bad(std::string(what) + " must be a non-negative integer");
    return x;
  };
  size_t i = 0;
  while (i <= spec.size()) {
    size_t j = spec.find(',', i);
    if (j == std::string_view::npos) j = spec.size();
    std::string_view part = spec.substr(i, j - i);
    i = j + 1;
    if (part.empty()) {
      if (j == spec.size()) break;
      throw bad("empty field");
    }
    size_t eq = part.find('=');
    std::string_view key = part.substr(0, eq), val = eq == std::string_view::npos ? "" : part.substr(eq + 1);
    if (eq == std::string_view::npos && (key == "global" || key == "local")) {
      o.pattern = {key == "global" ? LayerKind::Global : LayerKind::Local};
    } else if (key == "pattern") {
      if (val.empty()) throw bad("pattern is empty");
      o.pattern.clear();
      for (char ch : val) {
        if (ch == 'L' || ch == 'l') o.pattern.push_back(LayerKind::Local);
        else if (ch == 'G' || ch == 'g') o.pattern.push_back(LayerKind::Global);
        else throw bad(std::string("pattern letter '") + ch + "' is not L or G");
      }
    } else if (key == "window") {
      o.window = parse_int(val, "window");
    } else if (key == "sinks") {
      o.sinks = parse_int(val, "sinks");
    } else {
      throw bad("unknown field '" + std::string(key) + "'");
    }
  }
  if (o.empty()) throw bad("nothing to override");
  return o;
}

void apply_attention_override(ModelConfig& c, const AttentionOverride& o) {
  if (!o.pattern.empty())
    for (int i = 0; i < c.n_layers; ++i) c.layer_kinds[i] = o.pattern[i % o.pattern.size()];
  if (o.window) c.window = *o.window;
  if (o.sinks) c.n_sinks = *o.sinks;
  if (c.n_layers_of(LayerKind::Local) == 0) c.n_sinks = 0;
  validate_model_config(c, "--attention override");
}

}  // namespace hyco
