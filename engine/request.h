// What a client asks of the scheduler (token ids, sampling, stops, limits) and what it gets back
// (text chunks with their tokens, then one finish record), through a thread-safe handle.
// The server's dialect adapters build CompletionRequests; nothing here knows HTTP or JSON.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "engine/sampler.h"

namespace hyco {

using Clock = std::chrono::steady_clock;

struct StopConditions {
  int32_t max_tokens = 16;                // < 0: until the context is full; 0: only fill the cache
  std::vector<int32_t> stop_ids;          // end tokens (EOS, end of FIM): not part of the output
  std::vector<std::string> stop_strings;  // output ends before the first of them; never sent partially
  int32_t n_indent = 0;                   // llama.cpp: a later line indented less ends the output
  double t_max_predict_ms = 0;            // llama.cpp: after a newline, stop once generation took this long
};

struct CompletionRequest {
  std::string id;                 // for logs and /slots
  std::vector<int32_t> prompt;    // token ids, not empty
  SamplingParams sampling;
  StopConditions stop;
  std::vector<int32_t> banned_ids;  // never generated (BOS, FIM markers): their logits are -inf
                                    // before sampling and before log-probabilities are taken
  bool cache_prompt = true;       // reuse a cached prefix and keep this sequence's KV afterwards
  bool logprobs = false;          // report each token's log-probability (also when n_probs is 0)
  bool prompt_logprobs = false;   // also score the prompt: log-probability of each prompt token
                                  // given the ones before it (no prefix reuse then)
  Clock::time_point deadline = Clock::time_point::max();  // cancelled when passed
};

struct TokenOut {
  int32_t id = 0;
  float logprob = 0;               // log-probability under the model (before sampling transforms)
  std::vector<TokenLogprob> top;   // sampling.n_probs most likely alternatives
};

// Text that became final, with the tokens generated since the previous chunk.
struct Chunk {
  std::string text;
  std::vector<TokenOut> tokens;
  std::vector<TokenOut> prompt;  // prompt_logprobs: prompt tokens 1.. with their log-probabilities
  Clock::time_point at;
  int32_t slot = -1;              // the scheduler slot (as /slots lists them) serving the request
};

enum class FinishReason { Stop, Length, Cancelled, Error };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error"

struct Finish {
  FinishReason reason = FinishReason::Stop;
  std::string stop_type;      // llama.cpp: "eos", "word", "limit", "none"
  std::string stopping_word;
  std::string error;          // reason == Error
  int32_t n_prompt = 0;       // prompt tokens
  int32_t n_cached = 0;       // of which reused from the cache
  int32_t n_generated = 0;
  double queue_ms = 0, prompt_ms = 0, predict_ms = 0;  // waiting, prompt processing, generation
  double ttft_ms = 0;         // submission to first token
  int32_t slot = -1;          // the slot that served it; -1 if it never got one
};

using Event = std::variant<Chunk, Finish>;

// Wakes a reader that follows several handles (the n choices of one request): every event
// pushed to any of them counts. The reader takes count(), drains its handles without waiting,
// and only if they were all empty waits for the count to move on — an event pushed in between
// is never missed.
class EventSignal {
 public:
  uint64_t count() const;
  void notify();
  // Until count() differs from `seen`, or `timeout`.
  void wait(uint64_t seen, std::chrono::milliseconds timeout);
  // Also calls `wake` on every later notify (a reader that sleeps in poll() rather than in
  // wait()); an empty function stops that. NOTE: `wake` runs on the notifier's thread (the
  // scheduler's) under this signal's lock, so it must be quick, and once set_waker({}) returns
  // it is never called again.
  void set_waker(std::function<void()> wake);

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t n_ = 0;
  std::function<void()> wake_;
};

// Shared by the submitting thread and the scheduler. The client reads events until a Finish;
// cancel() (client gone) frees the request's sequence within one scheduler step.
class RequestHandle {
 public:
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

  // Next event, or nullopt after `timeout` with none.
  std::optional<Event> next(std::chrono::milliseconds timeout);
  // Next event if there is one now (never sleeps, never enters the condition variable).
  std::optional<Event> try_next();
  // Every later event also notifies `s`, or only the Finish with `finish_only` (a reader that
  // sends nothing before the end need not wake for each token); so does one already waiting.
  void set_signal(std::shared_ptr<EventSignal> s, bool finish_only = false);
  // Scheduler side.
  void push(Event e);
  bool finished() const { return finished_.load(); }

 private:
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> finished_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
  std::shared_ptr<EventSignal> signal_;
  bool signal_finish_only_ = false;
};

}  // namespace hyco
