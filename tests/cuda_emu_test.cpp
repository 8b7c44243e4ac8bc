// The CUDA attention kernels (kernels/cuda/attention_split.cuh, attention_prefill.cuh), compiled
// for the CPU and run on an emulated GPU, against attention computed directly from the keys and
// values each row may see. This checks the kernels' own logic (which keys a row sees, tiles,
// splits, the online softmax and its merges, cache and step offsets, GQA, the WMMA tiling) where
// CI runs, without a GPU; the gpu tests check the compiled kernels against the CPU backend on
// the GPU machine.
// The emulated GPU is tests/cuda_emu/include (fibers for threads, WMMA, the runtime API); the
// kernels come from kernels/cuda/cuda_kernels.cu as tests/cuda_emu/make_emu_source.py rewrites it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "engine/dtype.h"
#include "engine/errors.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/ops.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_kernels.h"  // with tests/cuda_emu/include: the emulated GPU
#include "tests/catch.hpp"
#include "tests/test_util.h"

namespace hyco::cuda {
// One attention step on the emulated GPU through the backend's launchers: rows (all when null)
// through the split kernel (and the combine kernel when split), then s's prefill tiles, if any.
void emulated_attention(const AttentionParams& p, const DeviceStep& s, const int32_t* rows, int n_rows,
                        const SplitPlan& plan) {
  std::vector<float> ws(plan.n_splits > 1 ? size_t(n_rows) * p.n_heads * plan.n_splits * (p.head_dim + 2) : 0);
  attention_split(p, s, rows, n_rows, plan, ws.data(), nullptr);
  attention_prefill(p, s, nullptr);
}
float round_kv(float x, DType dt) {
  if (dt == DType::BF16) return bf16_to_f32(f32_to_bf16(x));
  if (dt == DType::F16) return f16_to_f32(f32_to_f16(x));
  return x;
}
}  // namespace hyco::cuda

using namespace hyco;

namespace {

// A cache element of dtype dt at index i, stored from x (round to nearest even, as the backends).
void put(std::vector<uint8_t>& cache, DType dt, int64_t i, float x) {
  if (dt == DType::F32) std::memcpy(cache.data() + i * 4, &x, 4);
  else {
    const uint16_t h = dt == DType::BF16 ? f32_to_bf16(x) : f32_to_f16(x);
    std::memcpy(cache.data() + i * 2, &h, 2);
  }
}

struct Case {
  bool local;
  int sinks, window, n_heads, n_kv, hd;
  DType dt;
};

// Three sequences with histories in the cache (one wrapping its ring, one not, one empty) and a
// step of a decode token, a chunk and a fresh prompt; the kernel's rows against attention
// computed in double from the true keys and values of the positions each row may see.
// With `tiles`, spans of at least kPrefillMinRows new tokens go to the prefill kernel, as in the
// backend (bf16 caches only).
double run_case(const Case& c, cuda::SplitPlan plan, bool use_plan, bool tiles = false) {
  const int hist[3] = {300, 150, 0}, fresh[3] = {1, tiles ? 20 : 9, tiles ? 70 : 12};
  const int kvw = c.n_kv * c.hd, width = (c.n_heads + 2 * c.n_kv) * c.hd, block = 16, R = 8;
  KvLayout layout;
  layout.local = c.local;
  layout.window = c.window;
  layout.n_sinks = c.local ? c.sinks : 0;
  layout.sink_slots = c.local && c.sinks ? 64 : 0;
  layout.ring_len = (c.window + R + 63) / 64 * 64;
  layout.block_size = block;
  const int stride = 24;  // blocks per sequence (384 positions)
  std::vector<int32_t> tables(size_t(3 * stride));
  std::iota(tables.begin(), tables.end(), 0);
  std::shuffle(tables.begin(), tables.end(), std::mt19937(5));
  const int64_t slots = c.local ? 3 * (layout.sink_slots + layout.ring_len) : int64_t(3 * stride) * block;
  const size_t esz = dtype_size(c.dt);
  std::vector<uint8_t> kc(size_t(slots * kvw) * esz), vc(kc.size());

  // True keys and values of every position (rounded to the cache dtype), per sequence.
  std::mt19937 rng(17);
  std::normal_distribution<float> nd;
  std::vector<std::vector<float>> tk(3), tv(3);
  std::vector<SeqSpan> spans(3);
  std::vector<int32_t> positions, tok_span;
  int row = 0;
  for (int q = 0; q < 3; ++q) {
    const int n = hist[q] + fresh[q];
    tk[size_t(q)].resize(size_t(n) * kvw);
    tv[size_t(q)].resize(size_t(n) * kvw);
    for (auto* t : {&tk[size_t(q)], &tv[size_t(q)]})
      for (float& x : *t) x = cuda::round_kv(nd(rng), c.dt);
    SeqSpan& sp = spans[size_t(q)];
    sp.tok_start = row;
    sp.n_tokens = fresh[q];
    sp.pos0 = hist[q];
    sp.ring = c.local ? q : -1;
    sp.table_row = q;
    // The history in the cache, position by position (a ring keeps the last ones).
    for (int j = 0; j < hist[q]; ++j) {
      const int64_t slot = kv_slot(layout, sp, tables.data() + q * stride, j);
      for (int e = 0; e < kvw; ++e) {
        put(kc, c.dt, slot * kvw + e, tk[size_t(q)][size_t(j) * kvw + e]);
        put(vc, c.dt, slot * kvw + e, tv[size_t(q)][size_t(j) * kvw + e]);
      }
    }
    for (int t = 0; t < fresh[q]; ++t) positions.push_back(hist[q] + t), tok_span.push_back(q);
    row += fresh[q];
  }
  const int n_rows = row;
  // The step's rows: random queries; their own keys and values (f32, the kernel rounds them).
  std::vector<float> qkv(size_t(n_rows) * width);
  for (float& x : qkv) x = nd(rng);
  for (int q = 0; q < 3; ++q)
    for (int t = 0; t < fresh[q]; ++t) {
      const int r = spans[size_t(q)].tok_start + t, j = hist[q] + t;
      for (int e = 0; e < kvw; ++e) {
        // A value whose rounding is the true one: the true value itself.
        qkv[size_t(r) * width + size_t(c.n_heads * c.hd + e)] = tk[size_t(q)][size_t(j) * kvw + e];
        qkv[size_t(r) * width + size_t(c.n_heads * c.hd + kvw + e)] = tv[size_t(q)][size_t(j) * kvw + e];
      }
    }

  std::vector<float> out(size_t(n_rows) * c.n_heads * c.hd, NAN);
  AttentionParams p;
  p.qkv = qkv.data();
  p.qkv_stride = width;
  p.out = out.data();
  p.k_cache = kc.data();
  p.v_cache = vc.data();
  p.kv_dtype = c.dt;
  p.n_heads = c.n_heads;
  p.n_kv_heads = c.n_kv;
  p.head_dim = c.hd;
  p.scale = 1.0f / std::sqrt(float(c.hd));
  p.layout = layout;
  cuda::DeviceStep s;
  s.positions = positions.data();
  s.tok_span = tok_span.data();
  s.spans = spans.data();
  s.tables = tables.data();
  s.table_stride = stride;
  s.n_tokens = n_rows;
  s.n_spans = 3;
  std::vector<int32_t> prefill_tiles, split_rows;
  for (int q = 0; q < 3; ++q) {
    if (tiles && fresh[q] >= cuda::kPrefillMinRows)
      for (int t = 0; t < fresh[q]; t += cuda::kPrefillRows) prefill_tiles.insert(prefill_tiles.end(), {q, t});
    else
      for (int t = 0; t < fresh[q]; ++t) split_rows.push_back(spans[size_t(q)].tok_start + t);
  }
  s.prefill_tiles = prefill_tiles.data();
  s.n_prefill_tiles = int32_t(prefill_tiles.size() / 2);
  const int32_t* rows = tiles ? split_rows.data() : nullptr;
  const int n_split = tiles ? int(split_rows.size()) : n_rows;
  if (!use_plan) plan = cuda::plan_split_attention(p, n_split, *std::max_element(positions.begin(), positions.end()), 132);
  cuda::emulated_attention(p, s, rows, n_split, plan);

  // Direct attention in double.
  double num = 0, den = 0;
  const int n_rep = c.n_heads / c.n_kv;
  for (int r = 0; r < n_rows; ++r) {
    const int q = tok_span[size_t(r)], pos = positions[size_t(r)];
    std::vector<int> keys;
    for (int j = 0; j <= pos; ++j)
      if (!c.local || j < c.sinks || j > pos - c.window) keys.push_back(j);
    for (int h = 0; h < c.n_heads; ++h) {
      const int g = h / n_rep;
      const float* qv = &qkv[size_t(r) * width + size_t(h * c.hd)];
      std::vector<double> sc(keys.size());
      double mx = -INFINITY;
      for (size_t i = 0; i < keys.size(); ++i) {
        double d = 0;
        for (int e = 0; e < c.hd; ++e)
          d += double(qv[e] * p.scale) * tk[size_t(q)][size_t(keys[i]) * kvw + size_t(g * c.hd + e)];
        sc[i] = d;
        mx = std::max(mx, d);
      }
      double sum = 0;
      for (double& x : sc) sum += (x = std::exp(x - mx));
      for (int e = 0; e < c.hd; ++e) {
        double o = 0;
        for (size_t i = 0; i < keys.size(); ++i) o += sc[i] * tv[size_t(q)][size_t(keys[i]) * kvw + size_t(g * c.hd + e)];
        o /= sum;
        const double got = out[(size_t(r) * c.n_heads + h) * c.hd + e];
        num += (got - o) * (got - o);
        den += o * o;
      }
    }
  }
  return std::isfinite(num) ? num / den : INFINITY;
}

}  // namespace

TEST_CASE("the CUDA split-KV attention kernel, emulated, equals attention computed directly", "[unit]") {
  const Case cases[] = {
      {false, 0, 0, 8, 2, 64, DType::F32},    {true, 3, 100, 8, 2, 64, DType::BF16},
      {true, 0, 40, 4, 4, 64, DType::F16},    {false, 0, 0, 8, 1, 128, DType::BF16},
      {true, 2, 200, 4, 1, 128, DType::F32},
  };
  for (const Case& c : cases) {
    INFO("local " << c.local << " sinks " << c.sinks << " window " << c.window << " heads " << c.n_heads << "/"
                  << c.n_kv << " x " << c.hd << " " << dtype_name(c.dt));
    // The plan the backend would choose on an H100, then one split, then splits of one or a few
    // tiles (many of them empty for the shorter rows).
    CHECK(run_case(c, {}, false) < 1e-10);
    for (cuda::SplitPlan plan : {cuda::SplitPlan{1, 512}, cuda::SplitPlan{13, 32}, cuda::SplitPlan{3, 128}}) {
      INFO("splits " << plan.n_splits << " of " << plan.split_len);
      CHECK(run_case(c, plan, true) < 1e-10);
    }
  }
}

TEST_CASE("the CUDA tensor-core prefill kernel, emulated, equals attention computed directly", "[unit]") {
  // bf16 caches (what the kernel takes): a 20-token chunk after 150 cached positions and a
  // 70-token prompt (two tiles of rows) on the prefill kernel, the decode row split-KV.
  const Case cases[] = {
      {false, 0, 0, 8, 2, 64, DType::BF16},
      {true, 3, 100, 4, 2, 64, DType::BF16},
      {true, 0, 40, 4, 4, 128, DType::BF16},
      {false, 0, 0, 4, 1, 128, DType::BF16},
  };
  for (const Case& c : cases) {
    INFO("local " << c.local << " sinks " << c.sinks << " window " << c.window << " heads " << c.n_heads << "/"
                  << c.n_kv << " x " << c.hd);
    // One bf16 rounding of queries or weights would give ~1e-6; the high/low split keeps ~1e-11.
    CHECK(run_case(c, {}, false, true) < 1e-10);
  }
}

TEST_CASE("the split plan fills the GPU on decode and keeps one split per prefill row", "[unit]") {
  AttentionParams p;
  p.n_heads = 32;
  p.n_kv_heads = 32;
  p.head_dim = 128;
  // One decoded row at 8K, all-global: 32 blocks alone; split to about four per SM.
  cuda::SplitPlan d = cuda::plan_split_attention(p, 1, 8191, 132);
  CHECK(d.n_splits * 32 >= 4 * 132 - 32);
  CHECK(d.split_len % 32 == 0);
  CHECK(int64_t(d.n_splits) * d.split_len >= 8192);
  CHECK(int64_t(d.n_splits - 1) * d.split_len < 8192);
  // A prefill chunk of 512 rows already fills it.
  CHECK(cuda::plan_split_attention(p, 512, 8191, 132).n_splits == 1);
  // A local layer splits only what its window and sinks hold.
  p.layout.local = true;
  p.layout.window = 1024;
  p.layout.n_sinks = 4;
  cuda::SplitPlan l = cuda::plan_split_attention(p, 1, 32767, 132);
  CHECK(int64_t(l.n_splits) * l.split_len >= 1028);
  CHECK(int64_t(l.n_splits) * l.split_len < 1028 + l.split_len);
}

TEST_CASE("on the emulated GPU, a model or KV pool that does not fit is a clear error", "[unit]") {
  // The emulated device holds 1 MiB: the weights of this model (~1.2 MiB in bf16) do not fit.
  setenv("HYCO_EMU_GPU_MIB", "1", 1);
  auto gpu = make_cuda_backend();
  const ModelConfig big = test::tiny_config("LG", 8, 0, 4, 2, 64, 256);
  try {
    auto m = Model::random(big, *gpu, 1);
    FAIL("a model larger than the device was loaded");
  } catch (const ResourceExhausted& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find("does not fit") != std::string::npos);
  }
  // A model that fits, then a KV pool that does not.
  setenv("HYCO_EMU_GPU_MIB", "4", 1);
  auto m = Model::random(test::tiny_config("LG"), *gpu, 1);
  KvCacheConfig kc;
  kc.n_seqs = 64;
  kc.n_ctx = 4096;
  try {
    KvCache kv(m->config(), *gpu, kc);
    FAIL("a KV pool larger than the device was allocated");
  } catch (const ResourceExhausted& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find("does not fit") != std::string::npos);
  }
  unsetenv("HYCO_EMU_GPU_MIB");
}
