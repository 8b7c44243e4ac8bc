// What the three API dialects (OpenAI, llama.cpp, Ollama) have in common: a parser turns a request
// body into one GenerationParams per choice, and a formatter turns the scheduler's events into the
// dialect's streaming chunks and final response. Transport (SSE vs NDJSON, HTTP) is http_server's.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/request.h"
#include "server/api_error.h"
#include "server/service.h"

namespace hyco {

using nlohmann::json;

enum class ErrorStyle { OpenAI, LlamaCpp, Ollama };

// The body and status of an error in a dialect's own shape.
json error_body(ErrorStyle style, const ApiError& e);

// Everything a formatter knows about one choice as it progresses.
struct ChoiceState {
  std::string text;               // generated text so far
  std::vector<TokenOut> tokens;   // generated tokens so far
  std::optional<Finish> finish;
  int32_t n_prompt = 0;
  bool truncated = false;
  std::string prompt_text;        // for echo
  int32_t first_prompt_token = -1;     // echo + logprobs: listed first, with a null log-probability
  std::vector<TokenOut> prompt_tokens; // echo + logprobs: the other prompt tokens, scored
};

class CompletionFormatter {
 public:
  virtual ~CompletionFormatter() = default;
  // Streaming: the events one chunk of choice i produces (possibly none).
  virtual std::vector<json> on_chunk(int choice, const Chunk& c, const ChoiceState& st) = 0;
  // Streaming: the events the end of choice i produces.
  virtual std::vector<json> on_finish(int choice, const ChoiceState& st) = 0;
  // Streaming: after every choice finished (e.g. a usage chunk).
  virtual std::vector<json> on_end(const std::vector<ChoiceState>& all) { (void)all; return {}; }
  // Non-streaming: the whole response.
  virtual json full(const std::vector<ChoiceState>& all) = 0;
};

struct ParsedCompletion {
  std::vector<GenerationParams> choices;
  std::vector<std::string> prompt_texts;  // per choice, for echo
  std::unique_ptr<CompletionFormatter> formatter;
  bool stream = false;
  ErrorStyle errors = ErrorStyle::OpenAI;
};

// Facts about the served model the parsers and formatters need.
struct ServiceInfo {
  std::string model_name;
  int32_t n_vocab = 0;
  int32_t n_ctx = 0;
  const Tokenizer* tok = nullptr;
  bool fim = false;
};

// Route parsers. Each throws ApiError (400/404) naming the offending field.
ParsedCompletion parse_openai_completion(const json& body, const ServiceInfo& info);
ParsedCompletion parse_mistral_fim(const json& body, const ServiceInfo& info);
ParsedCompletion parse_llamacpp_completion(const json& body, const ServiceInfo& info, bool infill);
ParsedCompletion parse_ollama_generate(const json& body, const ServiceInfo& info);

// Model names a request may use for the served model ("" = the default).
bool model_name_matches(const std::string& asked, const std::string& served);

// Helpers shared by the parsers.
void check_known_model(const json& body, const ServiceInfo& info, bool required);
std::string token_text(const Tokenizer& tok, int32_t id);
int64_t unix_now();
// The time now as Ollama writes it (RFC 3339, UTC, microseconds).
std::string rfc3339_now();

}  // namespace hyco
