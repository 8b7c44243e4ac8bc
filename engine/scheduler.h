// The continuous-batching scheduler (DESIGN.md "Scheduler"): one loop thread owns the model, the
// KV cache and the prefix cache; each step it admits queued requests, drops cancelled ones, and
// runs one batch of decode tokens plus prefill chunks (bounded by batch_tokens) so that long
// prompts never stall running streams. There is no separate prefill or decode mode.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/prefix_cache.h"
#include "engine/request.h"
#include "engine/sampler.h"
#include "engine/text_stream.h"
#include "tokenizer/tokenizer.h"

namespace hyco {

struct SchedulerConfig {
  int32_t parallel = 4;        // running sequences at most
  int32_t batch_tokens = 512;  // tokens per step: decode tokens + prefill chunks
  int32_t max_queue = 64;      // requests waiting for a slot; one more is refused (QueueFull)
};

// The queue is full: the HTTP edge answers 503 with Retry-After.
class QueueFull : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SchedulerStats {
  int32_t n_waiting = 0, n_running = 0, n_cached_seqs = 0;
  int64_t kv_bytes_used = 0, kv_bytes_total = 0;
  uint64_t n_steps = 0;
  uint64_t n_finished = 0, n_cancelled = 0, n_errors = 0, n_rejected = 0;
  uint64_t n_prompt_tokens = 0, n_cached_tokens = 0, n_generated_tokens = 0;
  // Prompt tokens computed by forward steps (not reused from the cache).
  uint64_t n_prefill_tokens = 0;
  // Forward steps that carried prefill chunks (the rest only decoded), and the seconds spent in
  // each kind of step: the forward and the sampling and emitting after it. What the loop spends
  // outside steps (admission, waiting for work, other threads on the same cores) is wall time
  // minus both.
  uint64_t n_steps_prefill = 0;
  double step_seconds_decode = 0, step_seconds_prefill = 0;
  // Of those, the seconds in the model's forward alone; the rest of a step is sampling,
  // detokenising and handing the tokens to the clients' threads (and whatever preempts the
  // loop meanwhile).
  double forward_seconds_decode = 0, forward_seconds_prefill = 0;
};

struct SlotInfo {
  int32_t id = 0;
  bool busy = false;
  std::string request_id;
  int32_t n_prompt = 0, n_cached = 0, n_computed = 0, n_generated = 0;
};

class Scheduler {
 public:
  // `tok` may be null (no text: tests with fake models). With start_thread false nothing runs
  // until step() is called (unit tests drive the loop by hand).
  Scheduler(StepExecutor& exec, KvCache& kv, const Tokenizer* tok, const SchedulerConfig& cfg,
            bool start_thread = true);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Thread-safe. Throws InvalidArgument (bad request), QueueFull, or ResourceExhausted when the
  // scheduler no longer accepts work (shutting down).
  std::shared_ptr<RequestHandle> submit(CompletionRequest req);

  // Stops accepting; lets running and queued requests finish for up to `grace`, then cancels
  // what is left and stops the loop. Idempotent.
  void shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds(0));

  SchedulerStats stats() const;
  std::vector<SlotInfo> slots() const;
  const SchedulerConfig& config() const { return cfg_; }
  int32_t n_ctx() const { return kv_.n_ctx(); }

  // One loop iteration (admission, cancellation, one forward step). Returns false when there
  // was nothing to do. Only for start_thread = false.
  bool step();

 private:
  // Positions of KV a request reserves on admission: its prompt and all it may generate.
  int32_t kv_need(const CompletionRequest& req) const;
  struct Active;
  void loop();
  void take_inbox();
  void drop_cancelled();
  void admit();
  bool run_batch();
  void sample_and_emit(Active& a, std::span<float> row);  // row: this step's scratch, may be changed
  // Sends a chunk of `a` to its client, stamped with `at` and a's slot.
  void emit(Active& a, Chunk&& c, Clock::time_point at);
  void finish(Active& a, FinishReason reason, const std::string& stop_type, const std::string& word = {},
              const std::string& error = {});
  void release(Active& a);
  void finish_waiting(std::shared_ptr<RequestHandle> h, const CompletionRequest& r, FinishReason reason,
                      const std::string& error);
  void publish();
  // Running requests not yet finished (a finished one leaves running_ later in the step).
  int32_t n_live() const;

  StepExecutor& exec_;
  KvCache& kv_;
  const Tokenizer* tok_;
  SchedulerConfig cfg_;
  PrefixCache prefix_;

  // Owned by the loop thread.
  struct Waiting {
    std::shared_ptr<RequestHandle> handle;
    CompletionRequest req;
    Clock::time_point t_submit;
  };
  std::deque<Waiting> waiting_;
  std::list<std::unique_ptr<Active>> running_;  // admission order
  std::vector<int32_t> free_slots_;
  Batch batch_;
  std::vector<Active*> batch_owner_;
  std::vector<float> logits_;
  std::vector<float> unpenalised_;  // a row before penalties, for log-probabilities

  // Shared with submitters.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Waiting> inbox_;
  int32_t n_queued_ = 0;  // inbox + waiting
  bool accepting_ = true;
  bool stop_ = false;
  Clock::time_point drain_deadline_ = Clock::time_point::max();
  SchedulerStats stats_;
  std::vector<SlotInfo> slots_;
  std::thread thread_;
};

}  // namespace hyco
