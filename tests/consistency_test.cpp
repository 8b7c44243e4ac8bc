// Consistency of the engine with itself through different code paths (mistral-inference style):
// token-by-token decode vs one prefill, ragged batch vs each sequence alone, rollback and prefix
// reuse vs a fresh computation. Random tiny models; every pattern kind.
#include <memory>

#include "engine/backend.h"
#include "engine/errors.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/prefix_cache.h"
#include "tests/catch.hpp"
#include "tests/test_util.h"

using namespace hyco;
using hyco::test::max_abs;
using hyco::test::max_abs_diff;

namespace {

struct Engine {
  std::unique_ptr<Backend> backend = make_cpu_backend(2);
  std::unique_ptr<Model> model;
  KvCacheConfig kc;

  explicit Engine(const ModelConfig& c, DType kv_dtype = DType::F32, int rollback = 6, DType weights = DType::F32,
                  int block = 16) {
    model = Model::random(c, *backend, 7, weights);
    kc.dtype = kv_dtype;
    kc.n_seqs = 4;
    kc.n_ctx = 256;
    kc.rollback = rollback;
    kc.block_size = block;
  }
  std::unique_ptr<KvCache> cache() { return std::make_unique<KvCache>(model->config(), *backend, kc); }

  // Feeds `toks` to `seq` in chunks of `chunk` and returns the logits of every token, row by row.
  std::vector<float> feed(KvCache& kv, SeqId seq, const std::vector<int32_t>& toks, int chunk) {
    std::vector<float> all, logits;
    Batch b;
    for (size_t i = 0; i < toks.size(); i += size_t(chunk)) {
      size_t n = std::min(toks.size() - i, size_t(chunk));
      b.clear();
      b.add(seq, std::span<const int32_t>(toks.data() + i, n), true, true);
      model->forward(b, kv, logits);
      all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
  }
};

struct Case {
  const char* name;
  ModelConfig cfg;
  DType kv = DType::F32;
  DType weights = DType::F32;
  int block = 16;  // positions per block of a global layer
};

std::vector<Case> cases() {
  using hyco::test::tiny_config;
  return {
      {"global", tiny_config("GG")},
      {"local, ring wraps", tiny_config("LL", 8)},
      {"hybrid with sinks", tiny_config("LLLG", 8, 3)},
      {"gqa 8:2", tiny_config("LG", 12, 0, 8, 2)},
      {"narrow attention", tiny_config("LG", 8, 0, 2, 1, 16, 96)},
      {"bf16 kv cache", tiny_config("LLLG", 8, 2), DType::BF16},
      {"q8 kv cache", tiny_config("LLLG", 8, 2), DType::Q8},
      {"q8 weights", tiny_config("LLLG", 8, 2), DType::BF16, DType::Q8},
      {"q8 weights and q8 kv cache (the CPU default)", tiny_config("LG", 12, 0, 6, 2, 24), DType::Q8, DType::Q8},
      // Blocks of whole 64-slot tiles (the server's default): the CPU backend stores a prefill
      // chunk of a global layer before its attention and reads its tiles in place.
      {"q8 kv cache, 64-position blocks", tiny_config("LLLG", 8, 2), DType::Q8, DType::Q8, 64},
      {"f32 kv cache, 64-position blocks", tiny_config("LG", 12, 0, 6, 2, 24), DType::F32, DType::F32, 64},
  };
}

}  // namespace

TEST_CASE("decoding token by token gives the logits of one prefill", "[consistency]") {
  for (const Case& c : cases()) {
    SECTION(c.name) {
      Engine e(c.cfg, c.kv, 6, c.weights, c.block);
      auto toks = hyco::test::random_tokens(70, c.cfg.n_vocab, 11);
      auto kv1 = e.cache(), kv2 = e.cache(), kv3 = e.cache();
      auto prefill = e.feed(*kv1, *kv1->create(), toks, 70);
      auto decode = e.feed(*kv2, *kv2->create(), toks, 1);
      auto chunks = e.feed(*kv3, *kv3->create(), toks, 13);  // chunks longer than the window
      REQUIRE(prefill.size() == toks.size() * size_t(c.cfg.n_vocab));
      INFO("max |logit| " << max_abs(prefill));
      CHECK(max_abs_diff(prefill, decode) <= 1e-5f * max_abs(prefill));
      CHECK(max_abs_diff(prefill, chunks) <= 1e-5f * max_abs(prefill));
    }
  }
}

TEST_CASE("a ragged batch gives each sequence the logits it gets alone", "[consistency]") {
  for (const Case& c : cases()) {
    SECTION(c.name) {
      Engine e(c.cfg, c.kv, 6, c.weights, c.block);
      auto a = hyco::test::random_tokens(21, c.cfg.n_vocab, 1);
      auto b = hyco::test::random_tokens(40, c.cfg.n_vocab, 2);
      auto d = hyco::test::random_tokens(12, c.cfg.n_vocab, 3);
      // Alone: each sequence fed in two steps (history, then the part that is batched below).
      auto alone = e.cache();
      auto la = e.feed(*alone, *alone->create(), a, 20);
      auto lb = e.feed(*alone, *alone->create(), b, 33);
      auto ld = e.feed(*alone, *alone->create(), d, 12);
      // Batched: the same histories, then one step with a decode token, a 7-token chunk and a
      // new 12-token prompt together.
      auto kv = e.cache();
      SeqId sa = *kv->create(), sb = *kv->create(), sd = *kv->create();
      e.feed(*kv, sa, std::vector<int32_t>(a.begin(), a.begin() + 20), 20);
      e.feed(*kv, sb, std::vector<int32_t>(b.begin(), b.begin() + 33), 33);
      Batch batch;
      batch.add(sa, std::span<const int32_t>(a.data() + 20, 1), true, true);
      batch.add(sb, std::span<const int32_t>(b.data() + 33, 7), true, true);
      batch.add(sd, std::span<const int32_t>(d.data(), 12), true, true);
      std::vector<float> logits;
      e.model->forward(batch, *kv, logits);
      const size_t V = size_t(c.cfg.n_vocab);
      REQUIRE(logits.size() == 20 * V);
      std::vector<float> got_a(logits.begin(), logits.begin() + V), got_b(logits.begin() + V, logits.begin() + 8 * V),
          got_d(logits.begin() + 8 * V, logits.end());
      std::vector<float> want_a(la.end() - V, la.end()), want_b(lb.end() - 7 * V, lb.end());
      float tol = 1e-5f * max_abs(lb);
      CHECK(max_abs_diff(got_a, want_a) <= tol);
      CHECK(max_abs_diff(got_b, want_b) <= tol);
      CHECK(max_abs_diff(got_d, ld) <= tol);
    }
  }
}

TEST_CASE("rolling back by up to the reserve and recomputing equals a fresh computation", "[consistency]") {
  for (const Case& c : cases()) {
    SECTION(c.name) {
      const int R = 6;
      Engine e(c.cfg, c.kv, R, c.weights, c.block);
      // Longer than a ring (W + R rounded up to a group of 64 slots), so the rings wrap.
      auto first = hyco::test::random_tokens(150, c.cfg.n_vocab, 5);
      auto kv = e.cache();
      SeqId s = *kv->create();
      e.feed(*kv, s, first, 9);
      // Roll back as far as the cache allows (the rings must still hold every key the window
      // needs), then continue with different tokens. At least R tokens can always be rolled back.
      int32_t keep = kv->min_length(s);
      CHECK(keep <= int32_t(first.size()) - R);
      if (c.cfg.n_layers_of(LayerKind::Local) > 0) CHECK(keep > 0);  // the rings did wrap
      kv->truncate(s, keep);
      auto more = hyco::test::random_tokens(15, c.cfg.n_vocab, 6);
      auto got = e.feed(*kv, s, more, 4);

      std::vector<int32_t> whole(first.begin(), first.begin() + keep);
      whole.insert(whole.end(), more.begin(), more.end());
      auto fresh_kv = e.cache();
      auto fresh = e.feed(*fresh_kv, *fresh_kv->create(), whole, 64);
      std::vector<float> want(fresh.end() - std::ptrdiff_t(more.size()) * c.cfg.n_vocab, fresh.end());
      CHECK(max_abs_diff(got, want) <= 1e-5f * max_abs(want));
    }
  }
}

TEST_CASE("a prompt that extends a cached one reuses its prefix and equals a fresh computation", "[consistency]") {
  for (const Case& c : cases()) {
    SECTION(c.name) {
      Engine e(c.cfg, c.kv, 8, c.weights, c.block);
      auto kv = e.cache();
      PrefixCache cache(*kv);
      // The IDE case: same file, the cursor moved on by a few tokens; the old completion's
      // tokens (here 5) follow the shared part in the cached sequence.
      auto shared = hyco::test::random_tokens(50, c.cfg.n_vocab, 8);
      auto old_tail = hyco::test::random_tokens(5, c.cfg.n_vocab, 9);
      auto old = shared;
      old.insert(old.end(), old_tail.begin(), old_tail.end());
      SeqId s = *kv->create();
      e.feed(*kv, s, old, 16);
      cache.put(s, old);

      auto prompt = shared;
      auto typed = hyco::test::random_tokens(3, c.cfg.n_vocab, 10);
      prompt.insert(prompt.end(), typed.begin(), typed.end());
      auto hit = cache.take(prompt);
      REQUIRE(hit);
      CHECK(hit->n_reused == int32_t(shared.size()) - (old_tail[0] == typed[0] ? -1 : 0));
      std::vector<int32_t> rest(prompt.begin() + hit->n_reused, prompt.end());
      auto got = e.feed(*kv, hit->seq, rest, 64);

      auto fresh_kv = e.cache();
      auto fresh = e.feed(*fresh_kv, *fresh_kv->create(), prompt, 64);
      std::vector<float> want(fresh.end() - std::ptrdiff_t(rest.size()) * c.cfg.n_vocab, fresh.end());
      CHECK(max_abs_diff(got, want) <= 1e-5f * max_abs(want));
    }
  }
}

TEST_CASE("keys in blocks out of order, first and last of a tile in place, equal a fresh computation",
          "[consistency]") {
  // 16-position blocks: a sequence whose table is [0, 5, 2, 3] has a 64-slot tile whose first and
  // last slots are where one run of slots 0..63 would put them, while positions 16..31 live in
  // block 5 (block 1 holds another sequence's keys). Built with the cache's LIFO free list.
  for (DType kv_dtype : {DType::F32, DType::Q8}) {
    SECTION(kv_dtype == DType::Q8 ? "q8 kv cache" : "f32 kv cache") {
      Engine e(hyco::test::tiny_config("GG"), kv_dtype, 0, DType::F32, 16);
      auto kv = e.cache();
      SeqId a = *kv->create(), b = *kv->create(), c = *kv->create();
      auto ta = hyco::test::random_tokens(64, 200, 21), tb = hyco::test::random_tokens(32, 200, 22),
           tc = hyco::test::random_tokens(16, 200, 23), more = hyco::test::random_tokens(49, 200, 24);
      e.feed(*kv, a, ta, 64);                                                    // a: 0 1 2 3
      e.feed(*kv, b, std::vector<int32_t>(tb.begin(), tb.begin() + 16), 16);     // b: 4
      e.feed(*kv, c, tc, 16);                                                    // c: 5
      kv->truncate(a, 16);                                                       // frees 3, 2, 1
      e.feed(*kv, b, std::vector<int32_t>(tb.begin() + 16, tb.end()), 16);       // b: 4 1
      kv->release(c);                                                            // frees 5
      auto got = e.feed(*kv, a, more, 7);                                        // a: 0 5 2 3 6
      std::vector<int32_t> table(size_t(kv->max_table_len()));
      kv->fill_table(a, table.data(), int32_t(table.size()));
      INFO("table " << table[0] << " " << table[1] << " " << table[2] << " " << table[3]);
      REQUIRE((table[0] == 0 && table[1] == 5 && table[2] == 2 && table[3] == 3));
      std::vector<int32_t> all(ta.begin(), ta.begin() + 16);
      all.insert(all.end(), more.begin(), more.end());
      auto fresh_kv = e.cache();
      auto fresh = e.feed(*fresh_kv, *fresh_kv->create(), all, 65);
      std::vector<float> want(fresh.end() - std::ptrdiff_t(more.size()) * e.model->config().n_vocab, fresh.end());
      CHECK(max_abs_diff(got, want) <= 1e-5f * max_abs(want));
    }
  }
}

TEST_CASE("a cached sequence rolled past its ring reserve is not reused on local layers", "[consistency]") {
  Engine e(hyco::test::tiny_config("LLLG", 8), DType::F32, 4);
  auto kv = e.cache();
  PrefixCache cache(*kv);
  auto shared = hyco::test::random_tokens(30, 200, 12);
  auto old = shared;
  // Far more than the ring (W + R = 12 rounded up to 64 slots) can roll back.
  auto tail = hyco::test::random_tokens(100, 200, 13);
  old.insert(old.end(), tail.begin(), tail.end());
  SeqId s = *kv->create();
  e.feed(*kv, s, old, 64);
  cache.put(s, old);
  auto prompt = shared;
  prompt.push_back((tail[0] + 1) % 200);
  CHECK_FALSE(cache.take(prompt));
  CHECK(cache.size() == 1);

  // The same on an all-global model: any common prefix can be restored.
  Engine g(hyco::test::tiny_config("GG"), DType::F32, 4);
  auto kvg = g.cache();
  PrefixCache cg(*kvg);
  SeqId sg = *kvg->create();
  g.feed(*kvg, sg, old, 64);
  cg.put(sg, old);
  auto hit = cg.take(prompt);
  REQUIRE(hit);
  CHECK(hit->n_reused == 30);
}

TEST_CASE("decode over a long context, split across threads, equals one prefill", "[consistency]") {
  // Past 1024 keys a decode step splits its key range over the threads (split-KV) and merges.
  for (const char* pattern : {"GG", "LG"}) {
    SECTION(pattern) {
      ModelConfig c = hyco::test::tiny_config(pattern, 1100, 2);
      Engine e(c);
      e.kc.n_ctx = 1600;
      auto toks = hyco::test::random_tokens(1500, c.n_vocab, 21);
      auto kv1 = e.cache(), kv2 = e.cache();
      auto prefill = e.feed(*kv1, *kv1->create(), toks, 1500);
      SeqId s = *kv2->create();
      std::vector<int32_t> head(toks.begin(), toks.end() - 6), tail(toks.end() - 6, toks.end());
      e.feed(*kv2, s, head, 512);
      auto decode = e.feed(*kv2, s, tail, 1);
      std::vector<float> want(prefill.end() - 6 * c.n_vocab, prefill.end());
      CHECK(max_abs_diff(decode, want) <= 1e-5f * max_abs(want));
    }
  }
}

TEST_CASE("short chunks on a local layer whose window nearly fills its ring equal one prefill", "[consistency]") {
  // Window 60 and no reserve: the ring is one group of 64 slots. A step of a few tokens may put
  // its keys into the cache before attending only while they overwrite no key its first token
  // still sees (the CPU backend stores decode tokens and short chunks first).
  for (DType kv_dtype : {DType::F32, DType::Q8}) {
    SECTION(kv_dtype == DType::Q8 ? "q8 kv cache" : "f32 kv cache") {
      ModelConfig c = hyco::test::tiny_config("LL", 60);
      Engine e(c, kv_dtype, 0);
      auto toks = hyco::test::random_tokens(150, c.n_vocab, 5);
      auto kv1 = e.cache(), kv2 = e.cache(), kv3 = e.cache();
      auto prefill = e.feed(*kv1, *kv1->create(), toks, 150);
      auto chunks = e.feed(*kv2, *kv2->create(), toks, 7);
      auto decode = e.feed(*kv3, *kv3->create(), toks, 1);
      CHECK(max_abs_diff(prefill, chunks) <= 1e-5f * max_abs(prefill));
      CHECK(max_abs_diff(prefill, decode) <= 1e-5f * max_abs(prefill));
    }
  }
}

TEST_CASE("blocks reserved ahead of time (as the scheduler does) do not change the logits", "[consistency]") {
  ModelConfig c = hyco::test::tiny_config("LG", 8);
  Engine e(c);
  auto toks = hyco::test::random_tokens(40, c.n_vocab, 31);
  auto kv1 = e.cache(), kv2 = e.cache();
  auto plain = e.feed(*kv1, *kv1->create(), toks, 7);
  SeqId s = *kv2->create();
  REQUIRE(kv2->reserve(s, 200));  // far more blocks than the 40 tokens reach
  auto reserved = e.feed(*kv2, s, toks, 7);
  CHECK(max_abs_diff(plain, reserved) == 0.0f);
}

TEST_CASE("a sequence's KV cache holds the bytes ModelConfig::kv_bytes counts, in every dtype", "[consistency]") {
  // Window 8 + reserve 56 fill one group of ring slots exactly and 128 positions fill whole
  // blocks, so nothing is rounded up and the two counts must agree to the byte.
  const ModelConfig c = hyco::test::tiny_config("LLLG", 8);
  int64_t bf16 = 0, q8 = 0;
  for (DType dt : {DType::F32, DType::BF16, DType::Q8}) {
    Engine e(c, dt, 56);
    auto kv = e.cache();
    SeqId s = *kv->create();
    REQUIRE(kv->reserve(s, 128));
    INFO(dtype_name(dt));
    CHECK(kv->bytes_used() == c.kv_bytes(128, dt, 56));
    if (dt == DType::BF16) bf16 = kv->bytes_used();
    if (dt == DType::Q8) q8 = kv->bytes_used();
  }
  // 8 bits and a 4-byte scale per 16-value head row: (16 + 4) / 32 of bf16.
  CHECK(q8 * 32 == bf16 * 20);
}

TEST_CASE("a KV dtype the backend cannot hold is refused with a clear error", "[consistency]") {
  Engine e(hyco::test::tiny_config("LG"), DType::F16);  // the CPU backend keeps f32, bf16 or q8
  try {
    e.cache();
    FAIL("an f16 KV cache was accepted by the CPU backend");
  } catch (const InvalidArgument& x) {
    const std::string m = x.what();
    CHECK(m.find("cpu backend cannot hold the KV cache in f16") != std::string::npos);
    CHECK(m.find("--kv-dtype") != std::string::npos);
  }
}
