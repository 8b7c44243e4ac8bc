// The scheduler as a pure component: a fake model (next token = last token + 1) records every
// batch, and the tests drive the loop step by step — ordering, chunking, fairness, admission
// against KV memory, queue limits, cancellation at every point, prefix reuse, stops.
#include <stdexcept>
#include <cmath>
#include <memory>
#include <thread>

#include "engine/errors.h"
#include "engine/scheduler.h"
#include "tests/catch.hpp"
#include "tests/test_util.h"

using namespace hyco;

namespace {

class FakeModel : public StepExecutor {
 public:
  explicit FakeModel(const ModelConfig& c) : cfg_(c) {}
  const ModelConfig& config() const override { return cfg_; }
  void forward(const Batch& b, KvCache& kv, std::vector<float>& logits) override {
    batches.push_back(b);
    if (delay.count() > 0) std::this_thread::sleep_for(delay);  // a forward that takes time
    if (fail_next) {  // as a device error or an allocation failure partway through a step
      fail_next = false;
      throw std::runtime_error("device lost");
    }
    logits.assign(size_t(b.n_out()) * size_t(cfg_.n_vocab), 0.0f);
    size_t tok = 0, row = 0;
    for (const auto& s : b.spans) {
      const int32_t len = kv.length(s.seq) + s.n_tokens;
      REQUIRE(kv.reserve(s.seq, len));  // the scheduler reserved this at admission
      kv.set_length(s.seq, len);
      tok += size_t(s.n_tokens);
      if (s.logits_last) {
        int32_t next = (b.tokens[tok - 1] + 1) % cfg_.n_vocab;
        logits[row * size_t(cfg_.n_vocab) + size_t(next)] = 10.0f;
        ++row;
      }
    }
  }
  std::vector<Batch> batches;
  bool fail_next = false;
  std::chrono::microseconds delay{0};

 private:
  ModelConfig cfg_;
};

struct Rig {
  ModelConfig cfg = hyco::test::tiny_config("LG", 8);
  std::unique_ptr<Backend> backend = make_cpu_backend(1);
  FakeModel model{cfg};
  std::unique_ptr<KvCache> kv;
  std::unique_ptr<Scheduler> sched;

  explicit Rig(SchedulerConfig sc, int n_seqs = 8, int n_ctx = 512, int64_t kv_bytes = 0) {
    KvCacheConfig kc;
    kc.n_seqs = n_seqs;
    kc.n_ctx = n_ctx;
    kc.block_size = 16;
    kc.rollback = 16;
    kc.memory_bytes = kv_bytes;
    kv = std::make_unique<KvCache>(cfg, *backend, kc);
    sched = std::make_unique<Scheduler>(model, *kv, nullptr, sc, false);
  }
  std::shared_ptr<RequestHandle> submit(std::vector<int32_t> prompt, int max_tokens, std::string id = "") {
    CompletionRequest r;
    r.id = id;
    r.prompt = std::move(prompt);
    r.stop.max_tokens = max_tokens;
    return sched->submit(std::move(r));
  }
};

// A KV budget for Rig's model: the rings of 4 sequences (W + R = 24 rounded up to 64 slots) plus
// 8 blocks of 16 positions in the global layer.
int64_t small_pool_bytes() {
  const ModelConfig cfg = hyco::test::tiny_config("LG", 8);
  const int64_t row = int64_t(cfg.kv_width()) * 4 * 2;
  return 4 * 64 * row + 8 * 16 * row;
}

std::vector<int32_t> seq_tokens(int32_t first, int32_t n) {
  std::vector<int32_t> t;
  for (int32_t i = 0; i < n; ++i) t.push_back((first + i) % 200);
  return t;
}

// All events so far; the finish, if any, last.
struct Drained {
  std::vector<int32_t> tokens;
  std::optional<Finish> finish;
};
Drained drain(RequestHandle& h) {
  Drained d;
  while (auto e = h.next(std::chrono::milliseconds(0))) {
    if (auto* c = std::get_if<Chunk>(&*e)) {
      for (auto& t : c->tokens) d.tokens.push_back(t.id);
    } else {
      d.finish = std::get<Finish>(*e);
    }
  }
  return d;
}

}  // namespace

TEST_CASE("running streams decode every step while a long prompt is prefilled in chunks behind them", "[scheduler]") {
  SchedulerConfig sc;
  sc.parallel = 3;
  sc.batch_tokens = 16;
  Rig r(sc);
  auto a = r.submit(seq_tokens(1, 5), 50, "a");
  auto b = r.submit(seq_tokens(40, 4), 50, "b");
  r.sched->step();  // both prompts in one batch, each gets its first token
  REQUIRE(r.model.batches.size() == 1);
  CHECK(r.model.batches[0].spans.size() == 2);
  CHECK(r.sched->stats().n_prefill_tokens == 9);
  CHECK(r.sched->stats().n_steps_prefill == 1);
  auto c = r.submit(seq_tokens(80, 100), 5, "c");
  r.model.delay = std::chrono::milliseconds(2);  // each forward from here on takes >= 2 ms
  int prefill_steps = 0;
  for (int step = 0; step < 8; ++step) {
    r.sched->step();
    const Batch& bt = r.model.batches.back();
    CHECK(int(bt.tokens.size()) <= sc.batch_tokens);
    REQUIRE(bt.spans.size() == 3);
    CHECK(bt.spans[0].n_tokens == 1);  // a's decode token
    CHECK(bt.spans[1].n_tokens == 1);  // b's decode token
    CHECK(bt.spans[2].n_tokens <= 14);  // c's prompt, in the budget that is left
    ++prefill_steps;
  }
  CHECK(prefill_steps == 8);  // ceil(100 / 14)
  CHECK(r.sched->slots()[2].n_computed == 100);
  // Step accounting (the /metrics counters): every prompt token once, 9 steps with prompt
  // chunks, and decode-only steps timed apart from them.
  SchedulerStats st = r.sched->stats();
  CHECK(st.n_prefill_tokens == 109);
  CHECK(st.n_steps == 9);
  CHECK(st.n_steps_prefill == 9);
  CHECK(st.step_seconds_prefill > 0);
  CHECK(st.step_seconds_decode == 0);
  // The forward's share of the steps: 8 forwards of >= 2 ms, within the steps' time.
  CHECK(st.forward_seconds_prefill >= 8 * 0.002);
  CHECK(st.forward_seconds_prefill <= st.step_seconds_prefill);
  CHECK(st.forward_seconds_decode == 0);
  auto da = drain(*a);
  CHECK(da.tokens == seq_tokens(6, 9));  // one token per step: no stall during c's prefill
  auto dc = drain(*c);
  CHECK(dc.tokens == std::vector<int32_t>{180 % 200});
  r.sched->step();  // decode only
  st = r.sched->stats();
  CHECK(st.n_steps == 10);
  CHECK(st.n_steps_prefill == 9);
  CHECK(st.n_prefill_tokens == 109);
  CHECK(st.step_seconds_decode > 0);
  CHECK(st.forward_seconds_decode >= 0.002);
  CHECK(st.forward_seconds_decode <= st.step_seconds_decode);
}

TEST_CASE("at most parallel sequences run and waiting requests start in arrival order", "[scheduler]") {
  SchedulerConfig sc;
  sc.parallel = 2;
  sc.batch_tokens = 64;
  Rig r(sc);
  auto a = r.submit(seq_tokens(1, 4), 2, "a");
  auto b = r.submit(seq_tokens(10, 4), 6, "b");
  auto c = r.submit(seq_tokens(20, 4), 2, "c");
  auto d = r.submit(seq_tokens(30, 4), 2, "d");
  r.sched->step();
  auto slots = r.sched->slots();
  CHECK(slots[0].request_id == "a");
  CHECK(slots[1].request_id == "b");
  CHECK(r.sched->stats().n_waiting == 2);
  r.sched->step();  // a generates its 2nd token and finishes; c takes its slot next step
  CHECK(drain(*a).finish.has_value());
  r.sched->step();
  slots = r.sched->slots();
  CHECK(slots[0].request_id == "c");
  CHECK(slots[1].request_id == "b");
  CHECK(r.sched->stats().n_waiting == 1);
  while (r.sched->step()) {
  }
  for (auto* h : {&b, &c, &d}) {
    auto dd = drain(**h);
    REQUIRE(dd.finish);
    CHECK(dd.finish->reason == FinishReason::Length);
  }
}

TEST_CASE("a full queue refuses new requests", "[scheduler]") {
  SchedulerConfig sc;
  sc.parallel = 1;
  sc.max_queue = 2;
  Rig r(sc);
  auto a = r.submit(seq_tokens(1, 4), 100);
  r.sched->step();  // a runs
  auto b = r.submit(seq_tokens(2, 4), 1);
  auto c = r.submit(seq_tokens(3, 4), 1);
  CHECK_THROWS_AS(r.submit(seq_tokens(4, 4), 1), QueueFull);
  CHECK(r.sched->stats().n_rejected == 1);
  a->cancel();
  r.sched->step();
  CHECK_NOTHROW(r.submit(seq_tokens(5, 4), 1));  // a left, b runs: room in the queue again
}

TEST_CASE("a cancelled request frees its sequence within one step wherever it is", "[scheduler]") {
  SchedulerConfig sc;
  sc.parallel = 2;
  sc.batch_tokens = 8;
  for (const char* when : {"queued", "prefill", "decode"}) {
    SECTION(when) {
      Rig r(sc);
      auto blocker = r.submit(seq_tokens(1, 3), 100);
      auto blocker2 = r.submit(seq_tokens(2, 3), 100);
      std::shared_ptr<RequestHandle> h;
      if (std::string(when) == "queued") {
        r.sched->step();
        h = r.submit(seq_tokens(50, 30), 20);
        r.sched->step();
        CHECK(r.sched->stats().n_waiting == 1);
      } else {
        blocker2->cancel();
        r.sched->step();
        h = r.submit(seq_tokens(50, 30), 20);
        r.sched->step();  // admitted, first chunk of the 30-token prompt
        if (std::string(when) == "decode")
          for (int i = 0; i < 6; ++i) r.sched->step();
        auto s = r.sched->slots();
        CHECK((s[0].busy && s[1].busy));
      }
      const size_t batches = r.model.batches.size();
      h->cancel();
      r.sched->step();
      auto d = drain(*h);
      REQUIRE(d.finish);
      CHECK(d.finish->reason == FinishReason::Cancelled);
      const int others = std::string(when) == "queued" ? 2 : 1;  // the blockers still running
      CHECK(r.sched->stats().n_running == others);
      CHECK(r.sched->stats().n_waiting == 0);
      // The step after the cancel ran without it.
      const Batch& last = r.model.batches.back();
      CHECK(r.model.batches.size() == batches + 1);
      CHECK(int(last.spans.size()) == others);
      CHECK(r.sched->stats().n_cancelled >= 1);
    }
  }
}

TEST_CASE("a request whose deadline passes is cancelled", "[scheduler]") {
  SchedulerConfig sc;
  Rig r(sc);
  CompletionRequest req;
  req.prompt = seq_tokens(1, 4);
  req.stop.max_tokens = 100;
  req.deadline = Clock::now() + std::chrono::milliseconds(30);
  auto h = r.sched->submit(req);
  r.sched->step();
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  r.sched->step();
  auto d = drain(*h);
  REQUIRE(d.finish);
  CHECK(d.finish->reason == FinishReason::Cancelled);
  CHECK(d.finish->error == "deadline passed");
}

TEST_CASE("admission waits for KV blocks and refuses what can never fit", "[scheduler]") {
  SchedulerConfig sc;
  sc.parallel = 3;
  sc.batch_tokens = 256;
  Rig r(sc, 4, 512, small_pool_bytes());
  REQUIRE(r.kv->n_total_blocks() == 8);
  auto a = r.submit(seq_tokens(1, 40), 20);   // 60 positions: 4 blocks
  auto b = r.submit(seq_tokens(2, 40), 20);   // 4 blocks
  auto c = r.submit(seq_tokens(3, 40), 20);   // must wait
  r.sched->step();
  CHECK(r.sched->stats().n_running == 2);
  CHECK(r.sched->stats().n_waiting == 1);
  a->cancel();
  r.sched->step();  // a's KV is kept for reuse, but evicted when c needs the blocks
  r.sched->step();
  CHECK(r.sched->slots()[0].busy);
  CHECK(r.sched->stats().n_running == 2);
  // 14 blocks > 8 in the pool: refused at submission, nothing queued.
  CHECK_THROWS_WITH(r.submit(seq_tokens(4, 200), 10), Catch::Matchers::Contains("needs 14 KV blocks but the pool has 8"));
  CHECK(r.sched->stats().n_waiting == 0);
}

TEST_CASE("a waiting request evicts cached sequences only when that makes room for it", "[scheduler]") {
  SchedulerConfig sc;
  sc.parallel = 3;
  sc.batch_tokens = 256;
  Rig r(sc, 4, 512, small_pool_bytes());
  REQUIRE(r.kv->n_total_blocks() == 8);
  auto x = r.submit(seq_tokens(5, 20), 4);  // 24 positions: 2 blocks, kept after it ends
  while (r.sched->step()) {
  }
  REQUIRE(drain(*x).finish);
  REQUIRE(r.sched->stats().n_cached_seqs == 1);
  auto a = r.submit(seq_tokens(1, 40), 20);  // 4 blocks: 2 left free
  r.sched->step();
  auto c = r.submit(seq_tokens(3, 60), 20);  // 5 blocks > 2 free + 2 cached: evicting is no use
  r.sched->step();
  r.sched->step();
  CHECK(r.sched->stats().n_running == 1);
  CHECK(r.sched->stats().n_waiting == 1);
  CHECK(r.sched->stats().n_cached_seqs == 1);  // x is still there for its next keystroke
  a->cancel();  // a's 4 blocks come back (cached): now evicting makes room
  r.sched->step();
  r.sched->step();
  CHECK(r.sched->stats().n_running == 1);
  CHECK(r.sched->stats().n_waiting == 0);
}

TEST_CASE("a prompt that extends a finished one reuses its cached prefix", "[scheduler]") {
  SchedulerConfig sc;
  Rig r(sc);
  auto p = seq_tokens(100, 30);
  auto a = r.submit(p, 4);
  while (r.sched->step()) {
  }
  auto da = drain(*a);
  REQUIRE(da.finish);
  CHECK(da.finish->n_cached == 0);
  auto p2 = p;
  p2.push_back(7);  // the user typed; 7 is not what a generated next
  p2.push_back(8);
  auto b = r.submit(p2, 4);
  while (r.sched->step()) {
  }
  auto db = drain(*b);
  REQUIRE(db.finish);
  CHECK(db.finish->n_cached == 30);
  CHECK(r.sched->stats().n_cached_tokens == 30);
  CHECK(r.sched->stats().n_prefill_tokens == 30 + 2);  // a's prompt, then only what b added
  // And the output is the one a fresh computation gives (the fake continues from the last token).
  CHECK(db.tokens == std::vector<int32_t>{9, 10, 11, 12});
}

TEST_CASE("generation ends at max tokens, at a stop id, and max_tokens 0 only fills the cache", "[scheduler]") {
  SchedulerConfig sc;
  Rig r(sc);
  CompletionRequest req;
  req.prompt = seq_tokens(10, 5);  // ..14: the fake then generates 15, 16, ...
  req.stop.max_tokens = 50;
  req.stop.stop_ids = {18};
  auto h = r.sched->submit(req);
  while (r.sched->step()) {
  }
  auto d = drain(*h);
  REQUIRE(d.finish);
  CHECK(d.tokens == std::vector<int32_t>{15, 16, 17});
  CHECK(d.finish->reason == FinishReason::Stop);
  CHECK(d.finish->stop_type == "eos");

  req.stop.stop_ids.clear();
  req.stop.max_tokens = 3;
  h = r.sched->submit(req);
  while (r.sched->step()) {
  }
  d = drain(*h);
  CHECK(d.finish->reason == FinishReason::Length);
  CHECK(d.tokens.size() == 3);

  req.prompt = seq_tokens(60, 20);
  req.stop.max_tokens = 0;
  h = r.sched->submit(req);
  while (r.sched->step()) {
  }
  d = drain(*h);
  CHECK(d.tokens.empty());
  CHECK(d.finish->stop_type == "limit");
  req.prompt.push_back(3);
  req.stop.max_tokens = 1;
  h = r.sched->submit(req);
  while (r.sched->step()) {
  }
  CHECK(drain(*h).finish->n_cached == 20);
}

TEST_CASE("banned ids are never generated nor listed among the likeliest", "[scheduler]") {
  SchedulerConfig sc;
  Rig r(sc);
  const int32_t V = r.cfg.n_vocab;
  CompletionRequest req;
  req.prompt = seq_tokens(10, 3);  // ..12: the fake puts logit 10 on 13, then on 14, ...
  req.stop.max_tokens = 3;
  req.banned_ids = {13, 1};
  req.logprobs = true;
  req.sampling.n_probs = 3;
  auto h = r.sched->submit(req);
  while (r.sched->step()) {
  }
  std::vector<TokenOut> toks;
  while (auto e = h->next(std::chrono::milliseconds(0)))
    if (auto* c = std::get_if<Chunk>(&*e)) toks.insert(toks.end(), c->tokens.begin(), c->tokens.end());
  REQUIRE(toks.size() == 3);
  // 13 is banned: greedy takes the first of the zeros, 0; after 0 the fake favours 1 (banned too),
  // so 0 again; then 0 again.
  CHECK(toks[0].id == 0);
  CHECK(toks[1].id == 0);
  // The distribution is the model's over the ids it may produce: V - 2 equal logits.
  CHECK(std::fabs(toks[0].logprob - float(-std::log(double(V - 2)))) < 1e-4f);
  for (const TokenOut& t : toks)
    for (const TokenLogprob& alt : t.top) CHECK((alt.id != 13 && alt.id != 1));
}

TEST_CASE("penalties steer the choice; log-probabilities stay the model's", "[scheduler]") {
  SchedulerConfig sc;
  Rig r(sc);
  const int32_t V = r.cfg.n_vocab;
  CompletionRequest req;
  req.prompt = {3, 2};  // the fake puts logit 10 on 3, which the prompt already holds
  req.stop.max_tokens = 1;
  req.logprobs = true;
  req.sampling.n_probs = 2;
  req.sampling.presence_penalty = 20.0f;  // 3 drops to -10: greedy takes id 0, the first of the zeros
  auto h = r.sched->submit(req);
  while (r.sched->step()) {
  }
  std::vector<TokenOut> toks;
  while (auto e = h->next(std::chrono::milliseconds(0)))
    if (auto* c = std::get_if<Chunk>(&*e)) toks.insert(toks.end(), c->tokens.begin(), c->tokens.end());
  REQUIRE(toks.size() == 1);
  CHECK(toks[0].id == 0);
  // Under the model's logits (10 on id 3, 0 elsewhere), not the penalised ones.
  const double z = std::exp(10.0) + (V - 1);
  CHECK(std::fabs(toks[0].logprob - float(-std::log(z))) < 1e-4f);
  REQUIRE(toks[0].top.size() == 2);
  CHECK(toks[0].top[0].id == 3);
  CHECK(std::fabs(toks[0].top[0].logprob - float(10.0 - std::log(z))) < 1e-4f);
}

TEST_CASE("invalid requests are refused at submission", "[scheduler]") {
  SchedulerConfig sc;
  Rig r(sc, 8, 64);
  CHECK_THROWS_AS(r.submit({}, 4), InvalidArgument);
  CHECK_THROWS_AS(r.submit({1, 2, 500}, 4), InvalidArgument);   // outside the vocabulary
  CHECK_THROWS_AS(r.submit(seq_tokens(1, 60), 10), InvalidArgument);  // past the context
  CompletionRequest bad;
  bad.prompt = {1, 2};
  bad.sampling.temperature = -1;
  CHECK_THROWS_AS(r.sched->submit(bad), InvalidArgument);
}

TEST_CASE("with its own thread the scheduler serves concurrent clients and drains on shutdown", "[scheduler]") {
  ModelConfig cfg = hyco::test::tiny_config("LG", 8);
  auto backend = make_cpu_backend(1);
  FakeModel model(cfg);
  KvCacheConfig kc;
  kc.n_seqs = 8;
  kc.n_ctx = 256;
  kc.block_size = 16;
  KvCache kv(cfg, *backend, kc);
  SchedulerConfig sc;
  sc.parallel = 4;
  Scheduler sched(model, kv, nullptr, sc);
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i)
    clients.emplace_back([&, i] {
      CompletionRequest req;
      req.prompt = seq_tokens(i * 10, 6);
      req.stop.max_tokens = 10;
      auto h = sched.submit(req);
      std::vector<int32_t> got;
      for (;;) {
        auto e = h->next(std::chrono::seconds(10));
        REQUIRE(e);
        if (auto* c = std::get_if<Chunk>(&*e)) {
          for (auto& t : c->tokens) got.push_back(t.id);
        } else {
          break;
        }
      }
      if (got == seq_tokens(i * 10 + 6, 10)) ++ok;
    });
  for (auto& t : clients) t.join();
  CHECK(ok == 8);
  sched.shutdown(std::chrono::milliseconds(100));
  CompletionRequest late;
  late.id = "x";
  late.prompt = {1};
  CHECK_THROWS_AS(sched.submit(late), ResourceExhausted);
}

TEST_CASE("a step that fails ends its requests with an error and keeps none of their KV for reuse", "[scheduler]") {
  SchedulerConfig sc;
  Rig r(sc);
  auto p = seq_tokens(100, 30);
  auto a = r.submit(p, 8);
  r.sched->step();  // the prompt and the first token
  r.sched->step();  // a second token
  r.model.fail_next = true;
  r.sched->step();  // fails partway: the KV past the length may have been written
  auto da = drain(*a);
  REQUIRE(da.finish);
  CHECK(da.finish->reason == FinishReason::Error);
  CHECK(da.finish->error == "device lost");
  CHECK(r.sched->stats().n_errors == 1);
  CHECK(r.sched->stats().n_cached_seqs == 0);
  // The same file again: computed afresh, nothing reused from the failed sequence.
  auto p2 = p;
  p2.push_back(130);
  auto b = r.submit(p2, 2);
  while (r.sched->step()) {
  }
  auto db = drain(*b);
  REQUIRE(db.finish);
  CHECK(db.finish->reason == FinishReason::Length);
  CHECK(db.finish->n_cached == 0);
}

TEST_CASE("a KV budget that makes more blocks than 32-bit ids can name is refused before allocating", "[kv]") {
  ModelConfig cfg = hyco::test::tiny_config("LG", 8);
  auto backend = make_cpu_backend(1);
  KvCacheConfig kc;
  kc.n_seqs = 2;
  kc.n_ctx = 512;
  kc.block_size = 1;
  kc.memory_bytes = int64_t(1) << 42;  // 4 TiB: billions of one-position blocks
  try {
    KvCache kv(cfg, *backend, kc);
    FAIL("accepted");
  } catch (const ResourceExhausted& e) {
    CHECK(std::string(e.what()).find("block table") != std::string::npos);
  }
}
