// The scheduler loop: admission with prefix reuse and KV reservation, cancellation, one batch
// per step (decode tokens first, then prefill chunks in admission order), sampling and stops.
#include "engine/scheduler.h"
#include "engine/thread_name.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "engine/errors.h"

namespace hyco {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "?";
}

std::optional<Event> RequestHandle::next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  if (!cv_.wait_for(lk, timeout, [&] { return !events_.empty(); })) return std::nullopt;
  Event e = std::move(events_.front());
  events_.pop_front();
  return e;
}

std::optional<Event> RequestHandle::try_next() {
  std::lock_guard<std::mutex> lk(mu_);
  if (events_.empty()) return std::nullopt;
  Event e = std::move(events_.front());
  events_.pop_front();
  return e;
}

void RequestHandle::set_signal(std::shared_ptr<EventSignal> s, bool finish_only) {
  bool pending;
  {
    std::lock_guard<std::mutex> lk(mu_);
    signal_ = s;
    signal_finish_only_ = finish_only;
    pending = finish_only ? finished_.load() : !events_.empty();
  }
  if (pending && s) s->notify();
}

void RequestHandle::push(Event e) {
  std::shared_ptr<EventSignal> s;
  {
    std::lock_guard<std::mutex> lk(mu_);
    const bool finish = std::holds_alternative<Finish>(e);
    if (finish) finished_.store(true);
    events_.push_back(std::move(e));
    if (finish || !signal_finish_only_) s = signal_;
  }
  cv_.notify_all();
  if (s) s->notify();
}

uint64_t EventSignal::count() const {
  std::lock_guard<std::mutex> lk(mu_);
  return n_;
}

void EventSignal::notify() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++n_;
    if (wake_) wake_();
  }
  cv_.notify_all();
}

void EventSignal::set_waker(std::function<void()> wake) {
  std::lock_guard<std::mutex> lk(mu_);
  wake_ = std::move(wake);
}

void EventSignal::wait(uint64_t seen, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return n_ != seen; });
}

namespace {
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
}  // namespace

struct Scheduler::Active {
  std::shared_ptr<RequestHandle> handle;
  CompletionRequest req;
  SeqId seq = -1;
  int32_t slot = 0;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int32_t n_prompt = 0;
  int32_t n_computed = 0;       // tokens the KV holds
  int32_t n_cached = 0;
  int32_t n_generated = 0;
  bool kv_suspect = false;      // a forward failed mid-step: its KV may hold partial writes
  Sampler sampler;
  TextStream text;
  Chunk chunk;                  // tokens generated since the last chunk with text
  Clock::time_point t_submit, t_admit, t_prompt_done, t_first;
  bool done = false;

  Active(CompletionRequest r, const Tokenizer* tok, int32_t n_vocab)
      : req(std::move(r)),
        sampler(req.sampling, n_vocab),
        text(tok, req.stop.stop_strings, req.stop.n_indent) {}
};

Scheduler::Scheduler(StepExecutor& exec, KvCache& kv, const Tokenizer* tok, const SchedulerConfig& cfg,
                     bool start_thread)
    : exec_(exec), kv_(kv), tok_(tok), cfg_(cfg), prefix_(kv) {
  if (cfg_.parallel < 1) throw InvalidArgument("parallel must be at least 1");
  if (cfg_.parallel > kv.n_free_seqs())
    throw InvalidArgument("parallel (" + std::to_string(cfg_.parallel) + ") exceeds the sequences the KV cache holds (" +
                          std::to_string(kv.n_free_seqs()) + ")");
  if (cfg_.batch_tokens < cfg_.parallel)
    throw InvalidArgument("batch-tokens (" + std::to_string(cfg_.batch_tokens) + ") must be at least parallel (" +
                          std::to_string(cfg_.parallel) + ")");
  if (cfg_.max_queue < 0) throw InvalidArgument("max-queue must not be negative");
  for (int32_t i = cfg_.parallel - 1; i >= 0; --i) free_slots_.push_back(i);
  slots_.resize(size_t(cfg_.parallel));
  for (int32_t i = 0; i < cfg_.parallel; ++i) slots_[size_t(i)].id = i;
  publish();
  if (start_thread) thread_ = std::thread([this] {
    name_this_thread("hyco-sched");
    loop();
  });
}

Scheduler::~Scheduler() { shutdown(); }

std::shared_ptr<RequestHandle> Scheduler::submit(CompletionRequest req) {
  if (req.prompt.empty()) throw InvalidArgument("prompt is empty");
  const int32_t n_vocab = exec_.config().n_vocab;
  for (int32_t t : req.prompt)
    if (t < 0 || t >= n_vocab)
      throw InvalidArgument("prompt token " + std::to_string(t) + " is outside the vocabulary [0, " +
                            std::to_string(n_vocab) + ")");
  validate_sampling(req.sampling, n_vocab);
  const int64_t n_ctx = kv_.n_ctx();
  const int64_t want = int64_t(req.prompt.size()) + std::max<int32_t>(req.stop.max_tokens, 0);
  if (int64_t(req.prompt.size()) >= n_ctx || want > n_ctx)
    throw InvalidArgument("prompt of " + std::to_string(req.prompt.size()) + " tokens" +
                          (req.stop.max_tokens > 0 ? " plus " + std::to_string(req.stop.max_tokens) + " to generate" : "") +
                          " exceeds the context of " + std::to_string(n_ctx) + " tokens");
  if (!(req.stop.t_max_predict_ms >= 0)) throw InvalidArgument("t_max_predict_ms must not be negative");
  // What the whole KV pool could never hold is refused now rather than queued (admission
  // reserves the same amount).
  const int32_t need = kv_need(req);
  if (kv_.blocks_for(need) > kv_.n_total_blocks())
    throw ResourceExhausted("the request needs " + std::to_string(kv_.blocks_for(need)) + " KV blocks but the pool has " +
                            std::to_string(kv_.n_total_blocks()) + " (raise --kv-memory or lower max tokens)");
  auto h = std::make_shared<RequestHandle>();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!accepting_) throw ResourceExhausted("the server is shutting down");
    // Requests beyond the free slots wait; at most max_queue of them.
    if (n_queued_ >= cfg_.max_queue + (cfg_.parallel - stats_.n_running)) {
      ++stats_.n_rejected;
      throw QueueFull("all " + std::to_string(cfg_.parallel) + " slots are busy and " + std::to_string(n_queued_) +
                      " requests are queued");
    }
    ++n_queued_;
    inbox_.push_back(Waiting{h, std::move(req), Clock::now()});
  }
  cv_.notify_all();
  return h;
}

void Scheduler::shutdown(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    accepting_ = false;
    drain_deadline_ = std::min(drain_deadline_, Clock::now() + grace);
  }
  cv_.notify_all();
  if (thread_.joinable()) {
    thread_.join();
  } else if (!stop_) {
    // Driven by hand (tests): finish what the grace allows, then cancel the rest.
    while (Clock::now() < drain_deadline_ && step()) {
    }
    take_inbox();
    for (auto& w : waiting_) finish_waiting(w.handle, w.req, FinishReason::Cancelled, "server shutting down");
    waiting_.clear();
    for (auto& a : running_) finish(*a, FinishReason::Cancelled, "none", {}, "server shutting down");
    running_.clear();
    stop_ = true;
    publish();
  }
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      const bool idle = inbox_.empty() && waiting_.empty() && running_.empty();
      if (idle && !accepting_) break;
      if (!accepting_ && Clock::now() >= drain_deadline_) break;
      if (idle) cv_.wait_for(lk, std::chrono::milliseconds(100));
    }
    step();
  }
  take_inbox();
  for (auto& w : waiting_) finish_waiting(w.handle, w.req, FinishReason::Cancelled, "server shutting down");
  waiting_.clear();
  for (auto& a : running_) finish(*a, FinishReason::Cancelled, "none", {}, "server shutting down");
  running_.clear();
  publish();
}

bool Scheduler::step() {
  take_inbox();
  drop_cancelled();
  admit();
  bool worked = run_batch();
  publish();
  return worked || !waiting_.empty();
}

void Scheduler::take_inbox() {
  std::lock_guard<std::mutex> lk(mu_);
  while (!inbox_.empty()) {
    waiting_.push_back(std::move(inbox_.front()));
    inbox_.pop_front();
  }
}

void Scheduler::drop_cancelled() {
  const auto now = Clock::now();
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    bool late = now >= it->req.deadline;
    if (it->handle->cancelled() || late) {
      finish_waiting(it->handle, it->req, FinishReason::Cancelled, late ? "deadline passed" : "");
      it = waiting_.erase(it);
      std::lock_guard<std::mutex> lk(mu_);
      --n_queued_;
    } else {
      ++it;
    }
  }
  for (auto it = running_.begin(); it != running_.end();) {
    Active& a = **it;
    bool late = now >= a.req.deadline;
    if (a.handle->cancelled() || late) {
      finish(a, FinishReason::Cancelled, "none", {}, late ? "deadline passed" : "");
      it = running_.erase(it);
    } else {
      ++it;
    }
  }
}

int32_t Scheduler::kv_need(const CompletionRequest& req) const {
  const int32_t n_prompt = int32_t(req.prompt.size());
  const int32_t max_new = req.stop.max_tokens < 0 ? kv_.n_ctx() - n_prompt : req.stop.max_tokens;
  return std::min(kv_.n_ctx(), n_prompt + max_new);
}

void Scheduler::admit() {
  while (!waiting_.empty() && int32_t(running_.size()) < cfg_.parallel) {
    Waiting& w = waiting_.front();
    const int32_t n_prompt = int32_t(w.req.prompt.size());
    const int32_t need = kv_need(w.req);

    std::optional<PrefixCache::Hit> hit;
    if (w.req.cache_prompt && !w.req.prompt_logprobs) hit = prefix_.take(w.req.prompt);
    std::optional<SeqId> seq = hit ? std::optional<SeqId>(hit->seq) : kv_.create();
    while (!seq && prefix_.evict_one()) seq = kv_.create();
    if (!seq) break;  // every sequence is running: wait
    // Reserve the KV the whole request can need, so it never has to be preempted.
    bool ok = kv_.reserve(*seq, need);
    // Cached sequences are evicted for it only when that can make room: while running requests
    // hold the blocks, the cache is kept (the next keystroke's request will want its entry).
    if (!ok && kv_.blocks_missing(*seq, need) <= kv_.n_free_blocks() + prefix_.n_blocks_held())
      while (!ok && prefix_.evict_one()) ok = kv_.reserve(*seq, need);
    if (!ok) {
      const int32_t held = kv_.length(*seq);
      if (running_.empty()) {
        // Nothing will ever free enough: this request cannot be served with this KV budget.
        kv_.release(*seq);
        finish_waiting(w.handle, w.req, FinishReason::Error,
                       "the request needs " + std::to_string(kv_.blocks_for(need)) + " KV blocks but the pool has " +
                           std::to_string(kv_.n_total_blocks()) + " (raise --kv-memory or lower max tokens)");
        waiting_.pop_front();
        std::lock_guard<std::mutex> lk(mu_);
        --n_queued_;
        continue;
      }
      if (hit) {
        prefix_.put(*seq, std::vector<int32_t>(w.req.prompt.begin(), w.req.prompt.begin() + held));
      } else {
        kv_.release(*seq);
      }
      break;  // wait for running requests to finish
    }

    auto a = std::make_unique<Active>(std::move(w.req), tok_, exec_.config().n_vocab);
    a->handle = std::move(w.handle);
    a->t_submit = w.t_submit;
    a->t_admit = Clock::now();
    a->seq = *seq;
    a->slot = free_slots_.back();
    free_slots_.pop_back();
    a->tokens = a->req.prompt;
    a->n_prompt = n_prompt;
    a->n_computed = a->n_cached = hit ? hit->n_reused : 0;
    waiting_.pop_front();
    const int32_t n_cached = a->n_cached;
    running_.push_back(std::move(a));
    std::lock_guard<std::mutex> lk(mu_);
    --n_queued_;
    stats_.n_running = n_live();
    stats_.n_prompt_tokens += uint64_t(n_prompt);
    stats_.n_cached_tokens += uint64_t(n_cached);
  }
}

bool Scheduler::run_batch() {
  const auto t_step = Clock::now();
  batch_.clear();
  batch_owner_.clear();
  int32_t budget = cfg_.batch_tokens;
  // Decode tokens first: every running stream advances every step.
  for (auto& ap : running_) {
    Active& a = *ap;
    if (a.n_computed >= a.n_prompt && int32_t(a.tokens.size()) == a.n_computed + 1 && budget > 0) {
      batch_.add(a.seq, std::span<const int32_t>(a.tokens.data() + a.n_computed, 1));
      batch_owner_.push_back(&a);
      --budget;
    }
  }
  // Then prefill chunks, oldest request first, within what is left of the budget.
  int32_t n_prefill = 0;
  for (auto& ap : running_) {
    Active& a = *ap;
    if (a.n_computed >= a.n_prompt || budget <= 0) continue;
    int32_t n = std::min(budget, a.n_prompt - a.n_computed);
    bool last = a.n_computed + n == a.n_prompt;
    batch_.add(a.seq, std::span<const int32_t>(a.tokens.data() + a.n_computed, size_t(n)), last,
               a.req.prompt_logprobs);
    batch_owner_.push_back(&a);
    budget -= n;
    n_prefill += n;
  }
  if (batch_.spans.empty()) return false;

  try {
    exec_.forward(batch_, kv_, logits_);
  } catch (const std::exception& e) {
    // Fail the requests of this batch. Forward validates before it writes, but a failure later
    // in the step (out of memory, a device error) can leave ring slots overwritten past the
    // sequence's length: such a sequence is not kept for reuse.
    for (Active* a : batch_owner_) {
      a->kv_suspect = true;
      finish(*a, FinishReason::Error, "none", {}, e.what());
    }
    running_.remove_if([](const std::unique_ptr<Active>& a) { return a->done; });
    return true;
  }
  const size_t V = size_t(exec_.config().n_vocab);
  size_t row = 0;
  const auto now = Clock::now();
  const double forward_seconds = std::chrono::duration<double>(now - t_step).count();
  for (size_t i = 0; i < batch_.spans.size(); ++i) {
    Active& a = *batch_owner_[i];
    const BatchSpan& sp = batch_.spans[i];
    const int32_t pos0 = a.n_computed;
    a.n_computed += sp.n_tokens;
    if (sp.logits_all) {  // prompt scoring: row k predicts the prompt token after position pos0 + k
      Chunk c;
      for (int32_t k = 0; k + 1 < sp.n_tokens || (k + 1 == sp.n_tokens && pos0 + k + 1 < a.n_prompt); ++k) {
        const int32_t next = a.tokens[size_t(pos0 + k + 1)];
        TokenOut t;
        t.id = next;
        float* rk = logits_.data() + (row + size_t(k)) * V;
        // As for sampling: ids past the tokenizer's vocabulary (a padded one) are not tokens.
        if (tok_ && size_t(tok_->n_vocab()) < V) std::fill(rk + tok_->n_vocab(), rk + V, -INFINITY);
        const std::span<const float> r(rk, V);
        t.logprob = Sampler::logprob_of(r, next);
        if (a.req.sampling.n_probs > 0) t.top = Sampler::top_logprobs(r, a.req.sampling.n_probs);
        c.prompt.push_back(std::move(t));
      }
      if (!c.prompt.empty()) emit(a, std::move(c), now);  // (a 1-token last chunk scores nothing new)
      row += size_t(sp.n_tokens) - 1;  // now the span's last row
      if (!sp.logits_last) {
        ++row;
        continue;
      }
    }
    if (!sp.logits_last) continue;
    if (a.n_computed == a.n_prompt && a.n_generated == 0) a.t_prompt_done = now;
    try {
      sample_and_emit(a, std::span<float>(logits_.data() + row * V, V));
    } catch (const std::exception& e) {  // one request's failure must not end the loop
      finish(a, FinishReason::Error, "none", {}, e.what());
    }
    ++row;
  }
  running_.remove_if([](const std::unique_ptr<Active>& a) { return a->done; });
  const double seconds = std::chrono::duration<double>(Clock::now() - t_step).count();
  std::lock_guard<std::mutex> lk(mu_);
  ++stats_.n_steps;
  stats_.n_prefill_tokens += uint64_t(n_prefill);
  if (n_prefill > 0) {
    ++stats_.n_steps_prefill;
    stats_.step_seconds_prefill += seconds;
    stats_.forward_seconds_prefill += forward_seconds;
  } else {
    stats_.step_seconds_decode += seconds;
    stats_.forward_seconds_decode += forward_seconds;
  }
  return true;
}

void Scheduler::sample_and_emit(Active& a, std::span<float> row) {
  const StopConditions& st = a.req.stop;
  if (st.max_tokens == 0) {  // only fill the cache (plugins warm up this way)
    finish(a, FinishReason::Length, "limit");
    return;
  }
  // `row` is this step's scratch. A model's vocabulary may be padded past its tokenizer's
  // (Qwen2.5): never pick those ids.
  if (tok_ && tok_->n_vocab() < int32_t(row.size())) std::fill(row.begin() + tok_->n_vocab(), row.end(), -INFINITY);
  for (const int32_t id : a.req.banned_ids)
    if (id >= 0 && size_t(id) < row.size()) row[size_t(id)] = -INFINITY;
  TokenOut out;
  const bool want_logprob = a.req.logprobs || a.req.sampling.n_probs > 0;
  if (a.req.sampling.n_probs > 0) out.top = Sampler::top_logprobs(row, a.req.sampling.n_probs);
  // Log-probabilities describe the model's distribution: keep a copy when penalties change the row.
  std::span<const float> model_row = row;
  if (want_logprob && a.sampler.changes_logits()) {
    unpenalised_.assign(row.begin(), row.end());
    model_row = unpenalised_;
  }
  const int32_t tok = a.sampler.sample(row, a.tokens);
  out.id = tok;
  if (want_logprob) out.logprob = Sampler::logprob_of(model_row, tok);
  const auto now = Clock::now();
  if (a.n_generated == 0) a.t_first = now;
  if (std::find(st.stop_ids.begin(), st.stop_ids.end(), tok) != st.stop_ids.end()) {
    finish(a, FinishReason::Stop, "eos");
    return;
  }
  a.tokens.push_back(tok);
  ++a.n_generated;
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.n_generated_tokens;
  }
  TextStream::Step ts = a.text.push(tok);
  a.chunk.tokens.push_back(std::move(out));
  a.chunk.text += ts.text;
  if (ts.stop) {
    finish(a, FinishReason::Stop, ts.stop_word.empty() ? "limit" : "word", ts.stop_word);
    return;
  }
  if (!a.chunk.text.empty() || !tok_) {
    emit(a, std::exchange(a.chunk, Chunk{}), now);
  }
  if (a.n_generated >= st.max_tokens && st.max_tokens > 0) {
    finish(a, FinishReason::Length, "limit");
  } else if (int32_t(a.tokens.size()) >= kv_.n_ctx()) {
    finish(a, FinishReason::Length, "limit");
  } else if (st.t_max_predict_ms > 0 && a.text.has_newline() && ms_between(a.t_first, now) > st.t_max_predict_ms) {
    finish(a, FinishReason::Stop, "limit");
  }
}

void Scheduler::emit(Active& a, Chunk&& c, Clock::time_point at) {
  c.at = at;
  c.slot = a.slot;
  a.handle->push(std::move(c));
}

void Scheduler::finish(Active& a, FinishReason reason, const std::string& stop_type, const std::string& word,
                       const std::string& error) {
  if (a.done) return;
  a.done = true;
  if (reason != FinishReason::Cancelled && reason != FinishReason::Error) {
    std::string rest = a.text.finish();
    a.chunk.text += rest;
  }
  if (!a.chunk.text.empty() || !a.chunk.tokens.empty()) {
    emit(a, std::exchange(a.chunk, Chunk{}), Clock::now());
  }
  Finish f;
  f.reason = reason;
  f.stop_type = stop_type;
  f.stopping_word = word;
  f.error = error;
  f.n_prompt = a.n_prompt;
  f.n_cached = a.n_cached;
  f.n_generated = a.n_generated;
  f.slot = a.slot;
  const auto now = Clock::now();
  f.queue_ms = ms_between(a.t_submit, a.t_admit);
  const auto prompt_done = a.t_prompt_done == Clock::time_point() ? now : a.t_prompt_done;
  f.prompt_ms = ms_between(a.t_admit, prompt_done);
  f.predict_ms = a.n_generated ? ms_between(prompt_done, now) : 0.0;
  f.ttft_ms = a.n_generated ? ms_between(a.t_submit, a.t_first) : 0.0;
  release(a);
  {
    std::lock_guard<std::mutex> lk(mu_);
    // Its slot is free from now on (release), before its client hears that it ended: a client
    // that sends its next request at once must find that slot counted free, not get a 503.
    --stats_.n_running;
    ++stats_.n_finished;
    if (reason == FinishReason::Cancelled) ++stats_.n_cancelled;
    if (reason == FinishReason::Error) ++stats_.n_errors;
  }
  a.handle->push(std::move(f));
}

void Scheduler::release(Active& a) {
  // The KV of a finished or cancelled request stays cached for the next one (an IDE request
  // after a keystroke cancels this one and extends its prompt).
  if (a.req.cache_prompt && a.n_computed > 0 && !a.kv_suspect) {
    prefix_.put(a.seq, std::vector<int32_t>(a.tokens.begin(), a.tokens.begin() + a.n_computed));
    // Drop the blocks reserved for tokens that were never generated.
    kv_.truncate(a.seq, a.n_computed);
  } else {
    kv_.release(a.seq);
  }
  free_slots_.push_back(a.slot);
}

void Scheduler::finish_waiting(std::shared_ptr<RequestHandle> h, const CompletionRequest& r, FinishReason reason,
                               const std::string& error) {
  Finish f;
  f.reason = reason;
  f.stop_type = "none";
  f.error = error;
  f.n_prompt = int32_t(r.prompt.size());
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.n_finished;
    if (reason == FinishReason::Cancelled) ++stats_.n_cancelled;
    if (reason == FinishReason::Error) ++stats_.n_errors;
  }
  h->push(std::move(f));
}

int32_t Scheduler::n_live() const {
  return int32_t(std::count_if(running_.begin(), running_.end(), [](const auto& a) { return !a->done; }));
}

void Scheduler::publish() {
  std::vector<SlotInfo> slots(size_t(cfg_.parallel));
  for (int32_t i = 0; i < cfg_.parallel; ++i) slots[size_t(i)].id = i;
  for (const auto& ap : running_) {
    const Active& a = *ap;
    SlotInfo& s = slots[size_t(a.slot)];
    s.busy = true;
    s.request_id = a.req.id;
    s.n_prompt = a.n_prompt;
    s.n_cached = a.n_cached;
    s.n_computed = a.n_computed;
    s.n_generated = a.n_generated;
  }
  std::lock_guard<std::mutex> lk(mu_);
  slots_ = std::move(slots);
  stats_.n_waiting = n_queued_;
  stats_.n_running = n_live();
  stats_.n_cached_seqs = int32_t(prefix_.size());
  stats_.kv_bytes_used = kv_.bytes_used();
  stats_.kv_bytes_total = kv_.bytes_total();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

std::vector<SlotInfo> Scheduler::slots() const {
  std::lock_guard<std::mutex> lk(mu_);
  return slots_;
}

}  // namespace hyco
