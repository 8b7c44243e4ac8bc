// The completion service behind every dialect: owns the model, tokenizer, KV cache and
// scheduler (loaded in the background so /health can answer 503 while loading), and turns a
// dialect-independent GenerationParams into a CompletionRequest: prompt building (plain, token
// ids, FIM with the model's template), truncation, stop ids. No HTTP here; JSON only for /props.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config/engine_options.h"
#include "engine/backend.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "tokenizer/fim.h"
#include "tokenizer/tokenizer.h"

namespace hyco {

struct PromptSpec {
  enum class Kind { Text, Tokens, Fim };
  Kind kind = Kind::Text;
  std::string text;                 // Text: the prompt; Fim: the prefix
  std::vector<int32_t> tokens;      // Tokens
  std::string suffix;               // Fim
  std::vector<ExtraChunk> extra;    // Fim: other files (llama.cpp input_extra)
  std::string middle;               // Fim: text that starts the middle (llama.cpp /infill "prompt")
  bool add_bos = true;              // Text
};

enum class Overflow { Error, TruncateLeft };  // a prompt longer than the context allows

struct GenerationParams {
  PromptSpec prompt;
  SamplingParams sampling;
  bool seed_given = false;  // else a random seed per request
  StopConditions stop;
  bool ignore_eos = false;
  bool cache_prompt = true;
  bool logprobs = false;  // each token's log-probability (n_probs adds alternatives)
  bool prompt_logprobs = false;  // score the prompt tokens too (OpenAI echo + logprobs)
  Overflow overflow = Overflow::Error;
  std::string id;
};

struct Prepared {
  CompletionRequest req;
  bool truncated = false;
  int32_t n_prompt = 0;
};

struct ServiceOptions {
  EngineOptions engine;
  SchedulerConfig scheduler;
  int32_t cache_seqs = 8;        // finished sequences kept for prefix reuse (beyond --parallel)
  std::string model_alias;       // the model's name in the API; default: the directory's name
};

class CompletionService {
 public:
  explicit CompletionService(ServiceOptions opts);
  ~CompletionService();

  // Loads in a background thread; ready() turns true when done, failed() when it failed.
  void start_loading();
  // Loads on the calling thread (throws on failure).
  void load();
  bool ready() const { return ready_.load(); }
  // Since shutdown() began (SIGTERM): /health says 503 so that a balancer stops sending work.
  bool draining() const { return draining_.load(); }
  std::string load_error() const;

  // Throws ApiError (400 with the field name) when the prompt cannot be served.
  Prepared prepare(const GenerationParams& p) const;
  // Throws ApiError (400, 503) as the scheduler refuses.
  std::shared_ptr<RequestHandle> submit(CompletionRequest req);

  const std::string& model_name() const { return name_; }
  const std::string& model_dir() const { return dir_; }
  const ModelConfig& config() const { return model_->config(); }
  const Tokenizer& tokenizer() const { return *tok_; }
  const FimTemplate& fim() const { return fim_; }
  int32_t n_ctx() const { return kv_->n_ctx(); }
  const SchedulerConfig& scheduler_config() const { return opts_.scheduler; }
  Scheduler& scheduler() { return *sched_; }
  std::string backend_name() const;
  int64_t weight_bytes() const;
  // Graceful stop: no new requests; in-flight ones finish within `grace`, then are cancelled.
  void shutdown(std::chrono::milliseconds grace);

  std::vector<int32_t> tokenize(const std::string& text, bool add_special) const;
  std::string detokenize(const std::vector<int32_t>& ids) const;

 private:
  std::vector<int32_t> build_prompt(const GenerationParams& p, int32_t budget, bool* truncated) const;

  ServiceOptions opts_;
  std::string dir_, name_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<KvCache> kv_;
  std::unique_ptr<Scheduler> sched_;
  FimTemplate fim_;
  std::vector<int32_t> eos_ids_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  mutable std::mutex mu_;
  std::string load_error_;
  std::thread loader_;
};

}  // namespace hyco
