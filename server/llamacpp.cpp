// llama.cpp server dialect: POST /completion and POST /infill (input_prefix/suffix/extra,
// n_predict, samplers, n_indent, t_max_predict_ms, n_probs, response_fields), with the response
// fields llama.vim and llama.vscode read (content, tokens_cached, truncated, timings, stop_type).
#include "server/dialect.h"
#include "server/json_fields.h"

namespace hyco {

namespace jf = json_fields;

namespace {

json probs_json(const Tokenizer& tok, const std::vector<TokenOut>& toks) {
  json out = json::array();
  auto bytes = [&](int32_t id) {
    json b = json::array();
    for (unsigned char c : tok.token_bytes(id)) b.push_back(int(c));
    return b;
  };
  for (const auto& t : toks) {
    json top = json::array();
    for (const auto& a : t.top)
      top.push_back({{"id", a.id}, {"token", token_text(tok, a.id)}, {"logprob", a.logprob}, {"bytes", bytes(a.id)}});
    out.push_back({{"id", t.id}, {"token", token_text(tok, t.id)}, {"logprob", t.logprob}, {"bytes", bytes(t.id)},
                   {"top_logprobs", top}});
  }
  return out;
}

const char* stop_type(const Finish& f) {
  if (f.reason == FinishReason::Length) return "limit";
  if (f.reason == FinishReason::Stop) return f.stop_type == "eos" ? "eos" : f.stop_type == "word" ? "word" : "limit";
  return "none";
}

class LlamaCppFormatter : public CompletionFormatter {
 public:
  LlamaCppFormatter(const ServiceInfo& info, const GenerationParams& g, bool return_tokens, json response_fields)
      : info_(info), g_(g), return_tokens_(return_tokens), response_fields_(std::move(response_fields)) {}

  std::vector<json> on_chunk(int i, const Chunk& c, const ChoiceState& st) override {
    json j = {{"index", i},
              {"content", c.text},
              {"tokens", ids(c.tokens)},
              {"stop", false},
              {"id_slot", c.slot},
              {"tokens_predicted", st.tokens.size()},
              {"tokens_evaluated", st.n_prompt}};
    if (g_.sampling.n_probs > 0) j["completion_probabilities"] = probs_json(*info_.tok, c.tokens);
    return {j};
  }
  std::vector<json> on_finish(int i, const ChoiceState& st) override {
    json j = final_json(i, st);
    j["content"] = "";
    j["tokens"] = json::array();
    j.erase("completion_probabilities");
    return {j};
  }
  json full(const std::vector<ChoiceState>& all) override {
    json j = final_json(0, all.at(0));
    if (response_fields_.is_array()) {  // only the fields asked for, by path ("a/b")
      json filtered = json::object();
      for (const auto& f : response_fields_) {
        std::string path = f.get<std::string>();
        json::json_pointer ptr("/" + path);
        try {
          if (j.contains(ptr)) filtered[path] = j.at(ptr);
        } catch (const json::exception&) {  // an array index past size_t ("tokens/99999999999999999999"): absent
        }
      }
      return filtered;
    }
    return j;
  }

 private:
  json ids(const std::vector<TokenOut>& toks) const {
    json a = json::array();
    if (return_tokens_)
      for (const auto& t : toks) a.push_back(t.id);
    return a;
  }
  json final_json(int i, const ChoiceState& st) const {
    const Finish& f = *st.finish;
    auto per = [](double ms, int64_t n) { return n > 0 ? ms / double(n) : 0.0; };
    auto rate = [](double ms, int64_t n) { return ms > 0 ? 1e3 * double(n) / ms : 0.0; };
    const int64_t prompt_n = f.n_prompt - f.n_cached;
    json j = {{"index", i},
              {"content", st.text},
              {"tokens", ids(st.tokens)},
              {"id_slot", f.slot},
              {"stop", true},
              {"model", info_.model_name},
              {"tokens_predicted", f.n_generated},
              {"tokens_evaluated", f.n_prompt},
              {"generation_settings", settings()},
              {"has_new_line", st.text.find('\n') != std::string::npos},
              {"truncated", st.truncated},
              {"stop_type", stop_type(f)},
              {"stopping_word", f.stopping_word},
              {"tokens_cached", f.n_cached},
              {"timings",
               {{"cache_n", f.n_cached},
                {"prompt_n", prompt_n},
                {"prompt_ms", f.prompt_ms},
                {"prompt_per_token_ms", per(f.prompt_ms, prompt_n)},
                {"prompt_per_second", rate(f.prompt_ms, prompt_n)},
                {"predicted_n", f.n_generated},
                {"predicted_ms", f.predict_ms},
                {"predicted_per_token_ms", per(f.predict_ms, f.n_generated)},
                {"predicted_per_second", rate(f.predict_ms, f.n_generated)}}}};
    if (g_.sampling.n_probs > 0) j["completion_probabilities"] = probs_json(*info_.tok, st.tokens);
    // An error, or why the generation was cut short (--timeout, a shutdown): stop_type is "none".
    if (f.reason == FinishReason::Error || (f.reason == FinishReason::Cancelled && !f.error.empty())) j["error"] = f.error;
    return j;
  }
  json settings() const {
    const SamplingParams& s = g_.sampling;
    return {{"n_ctx", info_.n_ctx},      {"n_predict", g_.stop.max_tokens}, {"model", info_.model_name},
            {"seed", s.seed},            {"temperature", s.temperature},   {"top_k", s.top_k},
            {"top_p", s.top_p},          {"min_p", s.min_p},               {"repeat_penalty", s.repeat_penalty},
            {"repeat_last_n", s.penalty_last_n}, {"presence_penalty", s.presence_penalty},
            {"frequency_penalty", s.frequency_penalty}, {"n_probs", s.n_probs},
            {"stop", g_.stop.stop_strings}, {"n_indent", g_.stop.n_indent},
            {"t_max_predict_ms", g_.stop.t_max_predict_ms}, {"ignore_eos", g_.ignore_eos},
            {"cache_prompt", g_.cache_prompt}};
  }

  ServiceInfo info_;
  GenerationParams g_;
  bool return_tokens_;
  json response_fields_;
};

// "prompt" of /completion: a string, token ids, or a mix of both.
PromptSpec completion_prompt(const json& b, const ServiceInfo& info) {
  const json* p = jf::find(b, "prompt");
  if (!p) throw bad_request("prompt", "is required");
  PromptSpec ps;
  if (p->is_string()) {
    ps.text = p->get<std::string>();
    if (ps.text.empty()) throw bad_request("prompt", "must not be empty");
    return ps;
  }
  if (!p->is_array() || p->empty()) throw bad_request("prompt", "must be a non-empty string or a list of token ids and strings");
  ps.kind = PromptSpec::Kind::Tokens;
  // As llama.cpp's server does: a leading string is tokenized as a text prompt is (BOS and the
  // model's leading space included); ids are taken as given, so a list that starts with an id
  // gets no BOS (a client that sends [BOS, ...] gets exactly one).
  bool first = true;
  for (const auto& e : *p) {
    if (e.is_string()) {
      auto ids = first ? build_plain_prompt(*info.tok, e.get<std::string>(), true) : info.tok->encode(e.get<std::string>());
      first = false;
      ps.tokens.insert(ps.tokens.end(), ids.begin(), ids.end());
    } else if (e.is_number_integer()) {
      auto ids = jf::to_tokens(json::array({e}), "prompt", info.n_vocab);
      ps.tokens.push_back(ids[0]);
      first = false;
    } else {
      throw bad_request("prompt", "must hold token ids and strings only");
    }
  }
  return ps;
}

}  // namespace

ParsedCompletion parse_llamacpp_completion(const json& b, const ServiceInfo& info, bool infill) {
  check_known_model(b, info, false);
  ParsedCompletion pc;
  pc.errors = ErrorStyle::LlamaCpp;
  pc.stream = jf::get_bool(b, "stream").value_or(false);
  GenerationParams g;
  if (infill) {
    g.prompt.kind = PromptSpec::Kind::Fim;
    g.prompt.text = jf::get_string(b, "input_prefix").value_or("");
    g.prompt.suffix = jf::get_string(b, "input_suffix").value_or("");
    g.prompt.middle = jf::get_string(b, "prompt").value_or("");
    if (const json* extra = jf::find(b, "input_extra")) {
      if (!extra->is_array()) throw bad_request("input_extra", "must be a list of {filename, text} objects");
      if (extra->size() > 256) throw bad_request("input_extra", "has more than 256 chunks");
      for (const auto& e : *extra) {
        if (!e.is_object()) throw bad_request("input_extra", "entries must be {filename, text} objects");
        ExtraChunk c;
        c.filename = jf::get_string(e, "filename").value_or("");
        auto text = jf::get_string(e, "text");
        if (!text) throw bad_request("input_extra", "entries need a 'text' string");
        c.text = *text;
        g.prompt.extra.push_back(std::move(c));
      }
    }
  } else {
    g.prompt = completion_prompt(b, info);
  }
  SamplingParams& s = g.sampling;
  s.temperature = float(jf::get_number(b, "temperature", -100, 100).value_or(0.8));
  if (s.temperature < 0) s.temperature = 0;  // llama.cpp: negative means greedy
  s.top_k = int32_t(jf::get_int(b, "top_k", -1, 1 << 24).value_or(40));
  if (s.top_k < 0) s.top_k = 0;
  s.top_p = float(jf::get_number(b, "top_p", 0, 1).value_or(0.95));
  if (s.top_p <= 0) s.top_p = 1;  // llama.cpp: top_p 0 disables it
  s.min_p = float(jf::get_number(b, "min_p", 0, 1).value_or(0.05));
  s.repeat_penalty = float(jf::get_number(b, "repeat_penalty", 0, 100).value_or(1.0));
  if (s.repeat_penalty == 0) s.repeat_penalty = 1;
  s.penalty_last_n = int32_t(jf::get_int(b, "repeat_last_n", -1, 1 << 24).value_or(64));
  s.presence_penalty = float(jf::get_number(b, "presence_penalty", -100, 100).value_or(0));
  s.frequency_penalty = float(jf::get_number(b, "frequency_penalty", -100, 100).value_or(0));
  s.n_probs = int32_t(jf::get_int(b, "n_probs", 0, 100).value_or(0));
  if (auto seed = jf::get_int(b, "seed", INT64_MIN, INT64_MAX); seed && *seed >= 0) {
    s.seed = uint64_t(*seed);
    g.seed_given = true;
  }
  if (jf::get_int(b, "mirostat", 0, 2).value_or(0) != 0) throw bad_request("mirostat", "is not supported");
  if (auto samplers = jf::get_string_list(b, "samplers", 32, 64)) {
    // Only the listed samplers run (names llama.cpp uses; others it knows are accepted and
    // skipped: hyco has no typical/xtc/dry/infill samplers).
    auto has = [&](const char* n) { return std::find(samplers->begin(), samplers->end(), n) != samplers->end(); };
    if (!has("top_k")) s.top_k = 0;
    if (!has("top_p")) s.top_p = 1;
    if (!has("min_p")) s.min_p = 0;
    if (!has("temperature") && s.temperature > 0) s.temperature = 1;
    if (!has("penalties")) s.repeat_penalty = 1, s.presence_penalty = 0, s.frequency_penalty = 0;
  }
  g.stop.max_tokens = int32_t(jf::get_int(b, "n_predict", -1, info.n_ctx).value_or(-1));
  if (auto mt = jf::get_int(b, "max_tokens", -1, info.n_ctx); mt && !jf::find(b, "n_predict")) g.stop.max_tokens = int32_t(*mt);
  g.stop.stop_strings = jf::get_string_list(b, "stop", 32).value_or(std::vector<std::string>{});
  g.stop.n_indent = int32_t(jf::get_int(b, "n_indent", 0, 1 << 16).value_or(0));
  g.stop.t_max_predict_ms = double(jf::get_number(b, "t_max_predict_ms", 0, 1e9).value_or(0));
  (void)jf::get_number(b, "t_max_prompt_ms", -1, 1e9);  // accepted; prompt processing is not cut short
  (void)jf::get_int(b, "id_slot", -1, 1 << 20);           // accepted; slots are assigned by the scheduler
  g.ignore_eos = jf::get_bool(b, "ignore_eos").value_or(false);
  g.cache_prompt = jf::get_bool(b, "cache_prompt").value_or(true);
  g.logprobs = s.n_probs > 0;
  g.overflow = Overflow::TruncateLeft;
  const bool return_tokens = jf::get_bool(b, "return_tokens").value_or(false);
  json response_fields;
  if (auto rf = jf::get_string_list(b, "response_fields", 64, 256)) {
    for (const auto& f : *rf) {
      try {
        json::json_pointer ptr("/" + f);
      } catch (const json::exception&) {
        throw bad_request("response_fields", "entry '" + f + "' is not a field path like 'timings/prompt_n'");
      }
    }
    response_fields = *rf;
  }
  pc.prompt_texts.push_back(g.prompt.text);
  pc.formatter = std::make_unique<LlamaCppFormatter>(info, g, return_tokens, response_fields);
  pc.choices.push_back(std::move(g));
  return pc;
}

}  // namespace hyco
