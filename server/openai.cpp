// OpenAI /v1/completions (with suffix = FIM, echo, logprobs, n, several prompts) and Mistral's
// /v1/fim/completions: request parsing and response/stream formatting; the shared error body.
#include <chrono>
#include <map>
#include <random>

#include "server/dialect.h"
#include "server/json_fields.h"

namespace hyco {

namespace jf = json_fields;

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool model_name_matches(const std::string& asked, const std::string& served) {
  return asked.empty() || asked == served || asked == served + ":latest";
}

void check_known_model(const json& body, const ServiceInfo& info, bool required) {
  auto m = jf::get_string(body, "model");
  if (!m) {
    if (required) throw bad_request("model", "is required");
    return;
  }
  if (!model_name_matches(*m, info.model_name))
    throw ApiError(404, "model '" + *m + "' is not served here (this server serves '" + info.model_name + "')", "model",
                   "model_not_found");
}

std::string token_text(const Tokenizer& tok, int32_t id) {
  const std::string& b = tok.token_bytes(id);
  // Bytes that are not whole UTF-8 characters are shown as OpenAI does: "bytes:\xNN".
  for (size_t i = 0; i < b.size();) {
    unsigned char c = static_cast<unsigned char>(b[i]);
    size_t n = c < 0x80 ? 1 : c >= 0xF0 && c < 0xF8 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    bool ok = n > 0 && i + n <= b.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(b[i + k]) & 0xC0) == 0x80;
    if (!ok) {
      std::string out = "bytes:";
      for (unsigned char x : b) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02x", x);
        out += buf;
      }
      return out;
    }
    i += n;
  }
  return b;
}

json error_body(ErrorStyle style, const ApiError& e) {
  switch (style) {
    case ErrorStyle::OpenAI: {
      const char* type = e.status == 401 ? "authentication_error"
                         : e.status == 404 ? "invalid_request_error"
                         : e.status >= 500 ? "server_error"
                                           : "invalid_request_error";
      return {{"error",
               {{"message", e.what()},
                {"type", type},
                {"param", e.param.empty() ? json(nullptr) : json(e.param)},
                {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
    }
    case ErrorStyle::LlamaCpp: {
      const char* type = e.status == 401 ? "authentication_error"
                         : e.status == 404 ? "not_found_error"
                         : e.status == 503 ? "unavailable_error"
                         : e.status >= 500 ? "server_error"
                                           : "invalid_request_error";
      return {{"error", {{"code", e.status}, {"message", e.what()}, {"type", type}}}};
    }
    case ErrorStyle::Ollama: return {{"error", e.what()}};
  }
  return {};
}

namespace {

std::string random_id(const char* prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s%016llx", prefix, (unsigned long long)rng());
  return buf;
}

const char* openai_finish(const Finish& f) {
  switch (f.reason) {
    case FinishReason::Length: return "length";
    // Cut short by --timeout or a shutdown: the output is partial, as at max_tokens.
    case FinishReason::Cancelled: return "length";
    case FinishReason::Error: return "error";
    default: return "stop";
  }
}

// OpenAI's legacy logprobs object for a run of tokens; offsets start at `offset`. With `first`,
// that token leads with null log-probabilities (the first prompt token has no context).
json logprobs_json(const Tokenizer& tok, const std::vector<TokenOut>& toks, size_t offset, int32_t first = -1) {
  json tokens = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  if (first >= 0) {
    tokens.push_back(token_text(tok, first));
    lps.push_back(nullptr);
    tops.push_back(nullptr);
    offs.push_back(offset);
    offset += tok.token_bytes(first).size();
  }
  for (const auto& t : toks) {
    std::string s = token_text(tok, t.id);
    tokens.push_back(s);
    lps.push_back(t.logprob);
    json top = json::object();
    for (const auto& a : t.top) top[token_text(tok, a.id)] = a.logprob;
    tops.push_back(top);
    offs.push_back(offset);
    offset += tok.token_bytes(t.id).size();
  }
  return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

void parse_common_sampling(const json& b, GenerationParams& g, double t_default, double t_max) {
  g.sampling.temperature = float(jf::get_number(b, "temperature", 0, t_max).value_or(t_default));
  g.sampling.top_p = float(jf::get_number(b, "top_p", 0, 1).value_or(1.0));
  if (g.sampling.top_p <= 0) throw bad_request("top_p", "must be greater than 0");
  g.sampling.presence_penalty = float(jf::get_number(b, "presence_penalty", -2, 2).value_or(0));
  g.sampling.frequency_penalty = float(jf::get_number(b, "frequency_penalty", -2, 2).value_or(0));
  // llama.cpp extensions clients also send to the OpenAI routes.
  g.sampling.top_k = int32_t(jf::get_int(b, "top_k", 0, 1 << 20).value_or(0));
  g.sampling.min_p = float(jf::get_number(b, "min_p", 0, 1).value_or(0));
  g.sampling.repeat_penalty = float(jf::get_number(b, "repeat_penalty", 0.01, 100).value_or(1));
  g.cache_prompt = jf::get_bool(b, "cache_prompt").value_or(true);
  g.ignore_eos = jf::get_bool(b, "ignore_eos").value_or(false);  // also vLLM's
}

class OpenAiFormatter : public CompletionFormatter {
 public:
  // n: choices per prompt (they are consecutive and share their prompt).
  OpenAiFormatter(const ServiceInfo& info, bool echo, bool logprobs, bool usage_chunk, int n = 1)
      : info_(info), id_(random_id("cmpl-")), created_(unix_now()), echo_(echo), logprobs_(logprobs),
        usage_chunk_(usage_chunk), n_(n < 1 ? 1 : n) {}

  std::vector<json> on_chunk(int i, const Chunk& c, const ChoiceState& st) override {
    if (!c.prompt.empty()) {
      // echo + logprobs: the scored prompt, in as many chunks as it was computed in; the first
      // brings the prompt's text, the others their logprobs at their offsets in it.
      if (!echoed_[i]) {
        echoed_[i] = true;
        return {chunk_json(i, st.prompt_text, logprobs_json(*info_.tok, c.prompt, 0, st.first_prompt_token), nullptr)};
      }
      size_t offset = info_.tok->token_bytes(st.first_prompt_token).size();
      for (size_t k = 0; k + c.prompt.size() < st.prompt_tokens.size(); ++k)
        offset += info_.tok->token_bytes(st.prompt_tokens[k].id).size();
      return {chunk_json(i, "", logprobs_json(*info_.tok, c.prompt, offset), nullptr)};
    }
    std::string text = c.text;
    size_t offset = st.text.size() - c.text.size();
    if (echo_ && !echoed_[i]) {
      text = st.prompt_text + text;
      echoed_[i] = true;
    }
    if (echo_) offset += st.prompt_text.size();
    if (text.empty() && !logprobs_) return {};
    return {chunk_json(i, text, logprobs_ ? logprobs_json(*info_.tok, c.tokens, offset) : json(nullptr), nullptr)};
  }
  std::vector<json> on_finish(int i, const ChoiceState& st) override {
    std::vector<json> out;
    if (echo_ && !echoed_[i]) {
      echoed_[i] = true;
      out.push_back(chunk_json(i, st.prompt_text, nullptr, nullptr));
    }
    out.push_back(chunk_json(i, "", nullptr, openai_finish(*st.finish)));
    return out;
  }
  std::vector<json> on_end(const std::vector<ChoiceState>& all) override {
    if (!usage_chunk_) return {};
    json j = base();
    j["choices"] = json::array();
    j["usage"] = usage(all);
    return {j};
  }
  json full(const std::vector<ChoiceState>& all) override {
    json j = base();
    j["choices"] = json::array();
    for (size_t i = 0; i < all.size(); ++i) {
      const ChoiceState& st = all[i];
      std::string text = (echo_ ? st.prompt_text : "") + st.text;
      json lp = nullptr;
      if (logprobs_ && echo_) {  // the scored prompt, then the generated tokens
        std::vector<TokenOut> all_toks = st.prompt_tokens;
        all_toks.insert(all_toks.end(), st.tokens.begin(), st.tokens.end());
        lp = logprobs_json(*info_.tok, all_toks, 0, st.first_prompt_token);
      } else if (logprobs_) {
        lp = logprobs_json(*info_.tok, st.tokens, 0);
      }
      j["choices"].push_back({{"text", text},
                              {"index", i},
                              {"logprobs", lp},
                              {"finish_reason", st.finish ? openai_finish(*st.finish) : "stop"}});
    }
    j["usage"] = usage(all);
    return j;
  }

 private:
  json base() const {
    return {{"id", id_}, {"object", "text_completion"}, {"created", created_}, {"model", info_.model_name}};
  }
  json chunk_json(int i, const std::string& text, json logprobs, json finish) {
    json j = base();
    j["choices"] = json::array({{{"text", text}, {"index", i}, {"logprobs", logprobs}, {"finish_reason", finish}}});
    if (usage_chunk_) j["usage"] = nullptr;
    return j;
  }
  // A prompt's tokens count once however many choices it has (OpenAI).
  json usage(const std::vector<ChoiceState>& all) const {
    int64_t p = 0, c = 0;
    for (size_t i = 0; i < all.size(); ++i) {
      const ChoiceState& st = all[i];
      if (i % size_t(n_) == 0) p += st.n_prompt;
      c += st.finish ? st.finish->n_generated : int32_t(st.tokens.size());
    }
    return {{"prompt_tokens", p}, {"completion_tokens", c}, {"total_tokens", p + c}};
  }

  ServiceInfo info_;
  std::string id_;
  int64_t created_;
  bool echo_, logprobs_, usage_chunk_;
  int n_;
  std::map<int, bool> echoed_;
};

class MistralFimFormatter : public CompletionFormatter {
 public:
  explicit MistralFimFormatter(const ServiceInfo& info) : info_(info), id_(random_id("fim-")), created_(unix_now()) {}
  std::vector<json> on_chunk(int i, const Chunk& c, const ChoiceState&) override {
    if (c.text.empty()) return {};
    json delta = {{"content", c.text}};
    if (!started_) delta["role"] = "assistant";
    started_ = true;
    return {chunk(i, delta, nullptr)};
  }
  std::vector<json> on_finish(int i, const ChoiceState& st) override {
    json j = chunk(i, json{{"content", ""}}, openai_finish(*st.finish));
    j["usage"] = usage(st);
    return {j};
  }
  json full(const std::vector<ChoiceState>& all) override {
    const ChoiceState& st = all.at(0);
    return {{"id", id_},
            {"object", "chat.completion"},
            {"created", created_},
            {"model", info_.model_name},
            {"choices", json::array({{{"index", 0},
                                      {"message", {{"role", "assistant"}, {"content", st.text}, {"tool_calls", nullptr}}},
                                      {"finish_reason", st.finish ? openai_finish(*st.finish) : "stop"}}})},
            {"usage", usage(st)}};
  }

 private:
  json chunk(int i, json delta, json finish) const {
    return {{"id", id_},
            {"object", "chat.completion.chunk"},
            {"created", created_},
            {"model", info_.model_name},
            {"choices", json::array({{{"index", i}, {"delta", delta}, {"finish_reason", finish}}})}};
  }
  static json usage(const ChoiceState& st) {
    int32_t c = st.finish ? st.finish->n_generated : int32_t(st.tokens.size());
    return {{"prompt_tokens", st.n_prompt}, {"completion_tokens", c}, {"total_tokens", st.n_prompt + c}};
  }
  ServiceInfo info_;
  std::string id_;
  int64_t created_;
  bool started_ = false;
};

}  // namespace

ParsedCompletion parse_openai_completion(const json& b, const ServiceInfo& info) {
  check_known_model(b, info, false);
  ParsedCompletion pc;
  pc.errors = ErrorStyle::OpenAI;
  pc.stream = jf::get_bool(b, "stream").value_or(false);
  bool include_usage = false;
  if (const json* so = jf::find(b, "stream_options")) {
    if (!so->is_object()) throw bad_request("stream_options", "must be an object");
    if (!pc.stream) throw bad_request("stream_options", "is only allowed when 'stream' is true");
    include_usage = jf::get_bool(*so, "include_usage").value_or(false);
  }
  const int n = int(jf::get_int(b, "n", 1, 16).value_or(1));
  if (auto best_of = jf::get_int(b, "best_of", 1, 16); best_of && *best_of != n)
    throw bad_request("best_of", "is not supported (only best_of = n)");
  if (const json* lb = jf::find(b, "logit_bias"); lb && !(lb->is_object() && lb->empty()))
    throw bad_request("logit_bias", "is not supported");
  const bool echo = jf::get_bool(b, "echo").value_or(false);
  const auto logprobs = jf::get_int(b, "logprobs", 0, 5);
  const int32_t max_tokens = int32_t(jf::get_int(b, "max_tokens", 0, info.n_ctx).value_or(16));
  // OpenAI allows 4 stop strings; clients such as Continue send more to other hosts: up to 32.
  auto stops = jf::get_string_list(b, "stop", 32).value_or(std::vector<std::string>{});
  auto seed = jf::get_int(b, "seed", INT64_MIN, INT64_MAX);
  auto suffix = jf::get_string(b, "suffix");
  (void)jf::get_string(b, "user");  // accepted, unused

  // prompt: a string, a list of strings, a list of token ids, or a list of lists of ids.
  const json* prompt = jf::find(b, "prompt");
  if (!prompt) throw bad_request("prompt", "is required");
  std::vector<PromptSpec> prompts;
  auto text_prompt = [&](const std::string& s) {
    PromptSpec p;
    if (suffix) {
      p.kind = PromptSpec::Kind::Fim;
      p.suffix = *suffix;
    } else if (s.empty()) {
      throw bad_request("prompt", "must not be empty");
    }
    p.text = s;
    prompts.push_back(std::move(p));
  };
  auto token_prompt = [&](const json& v) {
    if (suffix) throw bad_request("suffix", "cannot be combined with a prompt of token ids");
    PromptSpec p;
    p.kind = PromptSpec::Kind::Tokens;
    p.tokens = jf::to_tokens(v, "prompt", info.n_vocab);
    if (p.tokens.empty()) throw bad_request("prompt", "must not be empty");
    prompts.push_back(std::move(p));
  };
  if (prompt->is_string()) {
    text_prompt(prompt->get<std::string>());
  } else if (prompt->is_array() && !prompt->empty()) {
    if ((*prompt)[0].is_number_integer()) {
      token_prompt(*prompt);
    } else {
      for (const auto& e : *prompt) {
        if (e.is_string()) text_prompt(e.get<std::string>());
        else if (e.is_array()) token_prompt(e);
        else throw bad_request("prompt", "must be a string, a list of strings or a list of token ids");
      }
    }
  } else {
    throw bad_request("prompt", "must be a non-empty string, a list of strings or a list of token ids");
  }
  if (prompts.size() * size_t(n) > 16) throw bad_request("n", "times the number of prompts must be at most 16");

  for (const auto& p : prompts)
    for (int i = 0; i < n; ++i) {
      GenerationParams g;
      g.prompt = p;
      parse_common_sampling(b, g, 1.0, 2.0);
      g.stop.max_tokens = max_tokens;
      g.stop.stop_strings = stops;
      if (seed) {
        g.sampling.seed = uint64_t(*seed) + uint64_t(i);
        g.seed_given = true;
      }
      if (logprobs) g.sampling.n_probs = int32_t(*logprobs);
      g.overflow = Overflow::Error;
      pc.choices.push_back(std::move(g));
      pc.prompt_texts.push_back(p.kind == PromptSpec::Kind::Tokens ? info.tok->decode(p.tokens) : p.text);
    }
  for (auto& g : pc.choices) {
    g.logprobs = logprobs.has_value();
    g.prompt_logprobs = logprobs.has_value() && echo;  // echo + logprobs scores the prompt (OpenAI)
  }
  pc.formatter = std::make_unique<OpenAiFormatter>(info, echo, logprobs.has_value(), pc.stream && include_usage, n);
  return pc;
}

ParsedCompletion parse_mistral_fim(const json& b, const ServiceInfo& info) {
  check_known_model(b, info, false);
  ParsedCompletion pc;
  pc.errors = ErrorStyle::OpenAI;
  pc.stream = jf::get_bool(b, "stream").value_or(false);
  GenerationParams g;
  g.prompt.kind = PromptSpec::Kind::Fim;
  auto prompt = jf::get_string(b, "prompt");
  if (!prompt) throw bad_request("prompt", "is required (the text before the cursor)");
  g.prompt.text = *prompt;
  g.prompt.suffix = jf::get_string(b, "suffix").value_or("");
  parse_common_sampling(b, g, 0.7, 1.5);
  g.stop.max_tokens = int32_t(jf::get_int(b, "max_tokens", 0, info.n_ctx).value_or(-1));
  if (jf::get_int(b, "min_tokens", 0, info.n_ctx).value_or(0) > 0) throw bad_request("min_tokens", "is not supported");
  g.stop.stop_strings = jf::get_string_list(b, "stop", 32).value_or(std::vector<std::string>{});
  if (auto seed = jf::get_int(b, "random_seed", INT64_MIN, INT64_MAX)) {
    g.sampling.seed = uint64_t(*seed);
    g.seed_given = true;
  }
  g.overflow = Overflow::Error;
  pc.choices.push_back(std::move(g));
  pc.prompt_texts.push_back(*prompt);
  pc.formatter = std::make_unique<MistralFimFormatter>(info);
  return pc;
}

}  // namespace hyco
