// Fuzz target: every dialect's request parser (JSON body → ParsedCompletion) and its formatter
// (scheduler events → streaming events and the whole response), driven as http_server.cpp and
// the scheduler drive them, with every event and response serialised by a strict json dump.
// Input: a request body; optionally a NUL, a byte that picks the tokenizer, and bytes that script
// the generation (token ids, log-probabilities, finish reason). Seeds are plain request bodies.
//
// Findings: parsing may only throw ApiError (400/404), TokenizerError or json::exception (the
// route handler turns those into 4xx); once parsed, nothing may throw (the formatter runs inside
// the chunked content provider, where an exception terminates the server).
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/text_stream.h"
#include "fuzz/fuzz_util.h"
#include "server/dialect.h"
#include "server/json_fields.h"
#include "tokenizer/fim.h"

using namespace hyco;

namespace {

struct Route {
  const char* path;
  ErrorStyle style;
  ParsedCompletion (*parse)(const json&, const ServiceInfo&);
};

const Route kRoutes[] = {
    {"/v1/completions", ErrorStyle::OpenAI, parse_openai_completion},
    {"/v1/fim/completions", ErrorStyle::OpenAI, parse_mistral_fim},
    {"/completion", ErrorStyle::LlamaCpp,
     [](const json& b, const ServiceInfo& i) { return parse_llamacpp_completion(b, i, false); }},
    {"/infill", ErrorStyle::LlamaCpp,
     [](const json& b, const ServiceInfo& i) { return parse_llamacpp_completion(b, i, true); }},
    {"/api/generate", ErrorStyle::Ollama, parse_ollama_generate},
};

// Generated text when the input scripts no tokens: code with a newline and an indented line.
constexpr std::string_view kDefaultGeneration = "x + 1;\n    let y = \"caf\xC3\xA9\";\n}\n";

// An SSE or NDJSON line as HttpServer::write_event frames it, but with the strict dump: the
// server replaces invalid UTF-8, so a throw here means a response would carry U+FFFD garbage.
void write_event(const json& j) {
  const std::string line = j.dump();
  FUZZ_CHECK(line.find('\n') == std::string::npos);  // one event per line
}

// The prompt's token ids, as CompletionService::build_prompt makes them before truncation
// (it is private and needs a loaded model).
std::vector<int32_t> prompt_ids(const Tokenizer& tok, const FimTemplate& fim, const PromptSpec& ps) {
  switch (ps.kind) {
    case PromptSpec::Kind::Tokens: return ps.tokens;
    case PromptSpec::Kind::Text: return build_plain_prompt(tok, ps.text, ps.add_bos && tok.bos_id() >= 0);
    case PromptSpec::Kind::Fim: {
      if (!fim.supported()) throw ApiError(400, "no fill-in-the-middle tokens", "suffix");
      std::vector<int32_t> ids = build_fim_prompt(tok, fim, ps.text, ps.suffix, ps.extra);
      const std::vector<int32_t> middle = tok.encode(ps.middle);
      ids.insert(ids.end(), middle.begin(), middle.end());
      return ids;
    }
  }
  return {};
}

// A token as the sampler reports it: an id, its log-probability and n_probs alternatives.
TokenOut token_out(FuzzedDataProvider& sc, int32_t id, int32_t n_probs, int32_t n_vocab) {
  TokenOut t;
  t.id = id;
  t.logprob = -float(sc.ConsumeIntegral<uint16_t>()) / 256.0f;
  for (int32_t k = 0; k < std::min(n_probs, n_vocab); ++k)
    t.top.push_back({sc.ConsumeIntegralInRange<int32_t>(0, n_vocab - 1), -float(k) * 0.5f});
  return t;
}

// Replays one choice the way Scheduler::sample_and_emit / finish produce events and
// HttpServer::pump consumes them.
void run_choice(CompletionFormatter& fmt, int i, const GenerationParams& g, const std::vector<int32_t>& prompt,
                const Tokenizer& tok, const FimTemplate& fim, FuzzedDataProvider& sc, ChoiceState& st) {
  const int32_t n_vocab = tok.n_vocab();
  auto deliver = [&](const Chunk& c) {
    st.text += c.text;
    st.tokens.insert(st.tokens.end(), c.tokens.begin(), c.tokens.end());
    st.prompt_tokens.insert(st.prompt_tokens.end(), c.prompt.begin(), c.prompt.end());
    for (const json& j : fmt.on_chunk(i, c, st)) write_event(j);
  };
  if (g.prompt_logprobs) {  // prompt scoring: tokens 1.. in one or two chunks (prefill spans)
    const size_t split = sc.ConsumeIntegralInRange<size_t>(1, prompt.size());
    Chunk c;
    for (size_t k = 1; k < prompt.size(); ++k) {
      if (k == split) {
        deliver(c);
        c = Chunk{};
      }
      c.prompt.push_back(token_out(sc, prompt[k], g.sampling.n_probs, n_vocab));
    }
    deliver(c);
  }

  std::vector<int32_t> stop_ids;
  if (!g.ignore_eos) {
    if (tok.eos_id() >= 0) stop_ids.push_back(tok.eos_id());
    if (g.prompt.kind == PromptSpec::Kind::Fim)
      for (int32_t id : hyco::stop_ids(fim, tok)) stop_ids.push_back(id);
  }
  std::vector<int32_t> scripted;
  if (sc.remaining_bytes() == 0) scripted = tok.encode(kDefaultGeneration);
  else scripted.resize(sc.ConsumeIntegralInRange<size_t>(0, 48));

  TextStream text(&tok, g.stop.stop_strings, g.stop.n_indent);
  Chunk chunk;
  Finish f;
  f.reason = FinishReason::Length;
  f.stop_type = "limit";
  bool done = g.stop.max_tokens == 0;  // only fill the cache
  for (size_t k = 0; k < scripted.size() && !done; ++k) {
    const int32_t id = sc.remaining_bytes() ? sc.ConsumeIntegralInRange<int32_t>(0, n_vocab - 1) : scripted[k];
    TokenOut out = token_out(sc, id, g.sampling.n_probs, n_vocab);
    if (std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end()) {
      f.reason = FinishReason::Stop, f.stop_type = "eos", done = true;
      break;
    }
    ++f.n_generated;
    const TextStream::Step step = text.push(id);
    chunk.tokens.push_back(std::move(out));
    chunk.text += step.text;
    if (step.stop) {
      f.reason = FinishReason::Stop;
      f.stop_type = step.stop_word.empty() ? "limit" : "word";
      f.stopping_word = step.stop_word;
      done = true;
      break;
    }
    if (!chunk.text.empty()) {
      deliver(chunk);
      chunk = Chunk{};
    }
    if (g.stop.max_tokens > 0 && f.n_generated >= g.stop.max_tokens) done = true;
  }
  if (!done) {  // the script ran out: a time limit, the context, a cancellation or an error
    switch (sc.ConsumeIntegralInRange<int>(0, 3)) {
      case 0: f.reason = FinishReason::Stop, f.stop_type = "limit"; break;
      case 1: f.reason = FinishReason::Length, f.stop_type = "limit"; break;
      case 2: f.reason = FinishReason::Cancelled, f.stop_type = "none", f.error = "deadline passed"; break;
      default: f.reason = FinishReason::Error, f.stop_type = "none", f.error = "backend failed"; break;
    }
  }
  if (f.reason != FinishReason::Cancelled && f.reason != FinishReason::Error) chunk.text += text.finish();
  if (!chunk.text.empty() || !chunk.tokens.empty()) deliver(chunk);
  f.n_prompt = int32_t(prompt.size());
  f.n_cached = sc.ConsumeIntegralInRange<int32_t>(0, f.n_prompt);
  f.queue_ms = sc.ConsumeIntegral<uint16_t>() / 16.0;
  f.prompt_ms = sc.ConsumeIntegral<uint16_t>() / 16.0;
  f.predict_ms = f.n_generated ? sc.ConsumeIntegral<uint16_t>() / 16.0 : 0.0;
  f.ttft_ms = f.n_generated ? f.queue_ms + f.prompt_ms : 0.0;
  st.finish = f;
  for (const json& j : fmt.on_finish(i, st)) write_event(j);
}

// Parses `body` for one route and, when the request is valid, runs it to its end.
void run_route(const Route& route, const json& body, const ServiceInfo& info, const FimTemplate& fim,
               std::string_view script) {
  const Tokenizer& tok = *info.tok;
  ParsedCompletion pc;
  std::vector<std::vector<int32_t>> prompts;
  try {
    pc = route.parse(body, info);
    for (const GenerationParams& g : pc.choices) {
      prompts.push_back(prompt_ids(tok, fim, g.prompt));
      if (prompts.back().empty()) throw ApiError(400, "the prompt is empty", "prompt");
    }
  } catch (const ApiError& e) {
    FUZZ_CHECK(e.status == 400 || e.status == 404);
    (void)error_body(route.style, e).dump();  // the message quotes the request: must stay UTF-8
    return;
  } catch (const TokenizerError&) {
    return;
  } catch (const json::exception&) {
    return;
  }
  FUZZ_CHECK(pc.formatter != nullptr);
  FUZZ_CHECK(pc.prompt_texts.size() == pc.choices.size() || pc.choices.empty());
  if (pc.choices.empty()) return;  // Ollama: an empty prompt only loads the model
  for (const auto& ids : prompts)
    for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < info.n_vocab);

  FuzzedDataProvider sc(reinterpret_cast<const uint8_t*>(script.data()), script.size());
  std::vector<ChoiceState> states(pc.choices.size());
  for (size_t i = 0; i < pc.choices.size(); ++i) {
    ChoiceState& st = states[i];
    st.n_prompt = int32_t(prompts[i].size());
    st.truncated = sc.ConsumeBool();
    st.prompt_text = pc.prompt_texts.at(i);
    st.first_prompt_token = prompts[i].front();
    run_choice(*pc.formatter, int(i), pc.choices[i], prompts[i], tok, fim, sc, st);
  }
  for (const json& j : pc.formatter->on_end(states)) write_event(j);
  (void)pc.formatter->full(states).dump();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::load_tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_nul(std::string_view(reinterpret_cast<const char*>(data), size), 2);
  std::string_view script = parts.size() > 1 ? parts[1] : std::string_view();
  size_t tok_index = 0;
  if (!script.empty()) {
    tok_index = uint8_t(script[0]);
    script.remove_prefix(1);
  }
  const Tokenizer& tok = fuzz::tokenizer_at(tok_index);
  const FimTemplate fim = detect_fim(tok);
  ServiceInfo info;
  info.model_name = "test-model";
  info.n_vocab = tok.n_vocab();
  info.n_ctx = 2048;
  info.tok = &tok;
  info.fim = fim.supported();

  json body;
  try {
    body = json_fields::parse_body(std::string(parts[0]));
  } catch (const ApiError& e) {
    FUZZ_CHECK(e.status == 400);
    return 0;
  }
  try {
    for (const Route& r : kRoutes) run_route(r, body, info, fim, script);
  } catch (const std::exception& e) {  // after parsing nothing may throw: report what did
    std::fprintf(stderr, "uncaught exception after a request parsed: %s\n", e.what());
    std::abort();
  }
  return 0;
}
