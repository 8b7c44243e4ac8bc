// Ollama dialect: POST /api/generate (prompt, suffix = FIM, options, NDJSON streaming by default),
// with Ollama's response fields and durations in nanoseconds.
#include <ctime>

#include "server/dialect.h"
#include "server/json_fields.h"

namespace hyco {

namespace jf = json_fields;

std::string rfc3339_now() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, (long long)us);
  return buf;
}

namespace {

class OllamaFormatter : public CompletionFormatter {
 public:
  explicit OllamaFormatter(const ServiceInfo& info) : info_(info) {}
  std::vector<json> on_chunk(int, const Chunk& c, const ChoiceState&) override {
    if (c.text.empty()) return {};
    return {{{"model", info_.model_name}, {"created_at", rfc3339_now()}, {"response", c.text}, {"done", false}}};
  }
  std::vector<json> on_finish(int, const ChoiceState& st) override { return {final_json(st, "")}; }
  json full(const std::vector<ChoiceState>& all) override { return final_json(all.at(0), all.at(0).text); }

 private:
  json final_json(const ChoiceState& st, const std::string& text) const {
    const Finish& f = *st.finish;
    auto ns = [](double ms) { return int64_t(ms * 1e6); };
    json j = {{"model", info_.model_name},
              {"created_at", rfc3339_now()},
              {"response", text},
              {"done", true},
              // Cut short by --timeout or a shutdown: partial, as at num_predict.
              {"done_reason", f.reason == FinishReason::Length || f.reason == FinishReason::Cancelled ? "length" : "stop"},
              {"total_duration", ns(f.queue_ms + f.prompt_ms + f.predict_ms)},
              {"load_duration", 0},
              // As Ollama counts it: the whole prompt, however much of it came from the cache.
              {"prompt_eval_count", f.n_prompt},
              {"prompt_eval_duration", ns(f.prompt_ms)},
              {"eval_count", f.n_generated},
              {"eval_duration", ns(f.predict_ms)}};
    if (f.reason == FinishReason::Error || (f.reason == FinishReason::Cancelled && !f.error.empty())) j["error"] = f.error;
    return j;
  }
  ServiceInfo info_;
};

}  // namespace

ParsedCompletion parse_ollama_generate(const json& b, const ServiceInfo& info) {
  check_known_model(b, info, false);
  ParsedCompletion pc;
  pc.errors = ErrorStyle::Ollama;
  pc.stream = jf::get_bool(b, "stream").value_or(true);
  for (const char* unsupported : {"images", "context", "format", "template", "system"})
    if (const json* v = jf::find(b, unsupported); v && !(v->is_string() && v->get<std::string>().empty()) &&
                                                   !(v->is_array() && v->empty()))
      throw bad_request(unsupported, "is not supported by this server (raw completion and FIM only)");
  (void)jf::get_bool(b, "raw");
  const std::string prompt = jf::get_string(b, "prompt").value_or("");
  const auto suffix = jf::get_string(b, "suffix");
  GenerationParams g;
  if (suffix) {
    g.prompt.kind = PromptSpec::Kind::Fim;
    g.prompt.suffix = *suffix;
  }
  g.prompt.text = prompt;
  // NOTE: read in place, never copied: a copy recurses once per nesting level of the client's
  // JSON, and a deep enough value (1M levels, a 2 MB body) overflowed the stack.
  static const json kNoOptions = json::object();
  const json& opts = [&]() -> const json& {
    const json* o = jf::find(b, "options");
    if (!o) return kNoOptions;
    if (!o->is_object()) throw bad_request("options", "must be an object");
    return *o;
  }();
  SamplingParams& s = g.sampling;
  s.temperature = float(jf::get_number(opts, "temperature", 0, 100).value_or(0.8));
  s.top_k = int32_t(jf::get_int(opts, "top_k", 0, 1 << 24).value_or(40));
  s.top_p = float(jf::get_number(opts, "top_p", 0, 1).value_or(0.9));
  if (s.top_p <= 0) s.top_p = 1;
  s.min_p = float(jf::get_number(opts, "min_p", 0, 1).value_or(0.0));
  s.repeat_penalty = float(jf::get_number(opts, "repeat_penalty", 0, 100).value_or(1.1));
  if (s.repeat_penalty == 0) s.repeat_penalty = 1;
  s.penalty_last_n = int32_t(jf::get_int(opts, "repeat_last_n", -1, 1 << 24).value_or(64));
  s.presence_penalty = float(jf::get_number(opts, "presence_penalty", -100, 100).value_or(0));
  s.frequency_penalty = float(jf::get_number(opts, "frequency_penalty", -100, 100).value_or(0));
  // Ollama's documented default is 0 and its own runner's -1, both a random seed: only a
  // positive seed fixes the sampling.
  if (auto seed = jf::get_int(opts, "seed", INT64_MIN, INT64_MAX); seed && *seed > 0) {
    s.seed = uint64_t(*seed);
    g.seed_given = true;
  }
  g.stop.max_tokens = int32_t(jf::get_int(opts, "num_predict", -2, info.n_ctx).value_or(-1));
  if (g.stop.max_tokens < -1) g.stop.max_tokens = -1;  // -2: "fill the context" in Ollama
  g.stop.stop_strings = jf::get_string_list(opts, "stop", 32).value_or(std::vector<std::string>{});
  g.overflow = Overflow::TruncateLeft;
  pc.prompt_texts.push_back(prompt);
  pc.formatter = std::make_unique<OllamaFormatter>(info);
  // An empty prompt (and no suffix) only loads the model in Ollama: answered without generating.
  if (!prompt.empty() || suffix) pc.choices.push_back(std::move(g));
  return pc;
}

}  // namespace hyco
