// The CPU backend: memory, weight packing, op dispatch to the ISA variant chosen at start, and
// the split of each op over the thread pool. The reference every other backend is checked against.
#include <sys/mman.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "engine/backend.h"
#include "engine/errors.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/thread_pool.h"

namespace hyco {
namespace cpu {
namespace {

bool machine_has(const std::string& isa) {
  __builtin_cpu_init();
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (isa == "avx2")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return isa == "base";
}

const CpuKernels& pick_kernels(std::string isa) {
  if (isa.empty())
    if (const char* force = std::getenv("HYCO_CPU_ISA")) isa = force;
  if (!isa.empty()) {
    if (isa != "avx512" && isa != "avx2" && isa != "base")
      throw InvalidArgument("unknown CPU kernel variant '" + isa + "' (avx512, avx2, base)");
    if (!machine_has(isa)) throw InvalidArgument("this CPU cannot run the " + isa + " kernels");
    return isa == "avx512" ? kKernelsAvx512 : isa == "avx2" ? kKernelsAvx2 : kKernelsBase;
  }
  if (machine_has("avx512")) return kKernelsAvx512;
  if (machine_has("avx2")) return kKernelsAvx2;
  return kKernelsBase;
}

// Element i of a host buffer, which may be unaligned (safetensors data need not be).
template <class T>
T load_unaligned(const void* base, int64_t i) {
  T v;
  std::memcpy(&v, static_cast<const char*>(base) + i * int64_t(sizeof(T)), sizeof(T));
  return v;
}

float load_as_f32(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return load_unaligned<float>(base, i);
    case DType::BF16: return bf16_to_f32(load_unaligned<uint16_t>(base, i));
    case DType::F16: return f16_to_f32(load_unaligned<uint16_t>(base, i));
    case DType::I32: return float(load_unaligned<int32_t>(base, i));
    case DType::Q8: return float(load_unaligned<int8_t>(base, i));  // the raw value: scales live apart
  }
  return 0.0f;
}

uint16_t load_as_bf16(const void* base, DType t, int64_t i) {
  if (t == DType::BF16) return load_unaligned<uint16_t>(base, i);
  return f32_to_bf16(load_as_f32(base, t, i));
}

int64_t n_panels(int64_t n) { return (n + kPanel - 1) / kPanel; }

class CpuBackend final : public Backend {
 public:
  CpuBackend(int n_threads, const std::string& isa)
      : pool_(n_threads > 0 ? n_threads : int(std::max(1u, std::thread::hardware_concurrency()))),
        k_(&pick_kernels(isa)),
        fast_q8_(k_->fast_q8()),
        scratch_(pool_.size()) {}

  std::string name() const override { return "cpu"; }
  std::string describe() const override {
    return std::string("cpu (") + k_->name + " kernels, " + std::to_string(pool_.size()) + " threads)";
  }

  // f32 checkpoints stay f32 (they are kept for exactness: references, tests). 16-bit ones go to
  // 8 bits where the integer kernels run (AVX-512 VNNI): 1.5-2.3× the speed of bf16 matrices on
  // the shipped model for +0.07% bits/byte (README); elsewhere bf16 (f16 widened to f32).
  DType default_matrix_dtype(DType file_dtype) const override {
    if (file_dtype == DType::F32) return DType::F32;
    if (fast_q8_) return DType::Q8;
    return file_dtype == DType::BF16 ? DType::BF16 : DType::F32;
  }
  bool supports_kv_dtype(DType t) const override { return t == DType::F32 || t == DType::BF16 || t == DType::Q8; }

  Tensor alloc(DType dtype, int64_t rows, int64_t cols) override {
    Tensor t;
    t.dtype = dtype;
    t.rows = rows;
    t.cols = cols;
    t.owner = raw_alloc(t.n_bytes());
    t.data = t.owner.get();
    return t;
  }

  Tensor upload_weight(const HostTensor& src, WeightRole role, DType dtype) override {
    if (role == WeightRole::Vector) {
      Tensor t = alloc(DType::F32, src.rows, src.cols);
      float* d = static_cast<float*>(t.data);
      for (int64_t i = 0; i < src.rows * src.cols; ++i) d[i] = load_as_f32(src.data, src.dtype, i);
      return t;
    }
    const int64_t N = src.rows, K = src.cols, P = n_panels(N);
    Tensor t;
    t.rows = N;
    t.cols = K;
    t.layout = Layout::Packed;
    if (dtype == DType::Q8) {
      // Σ over K of (q_w + 128)·q_x must fit 32 bits: 255 · 127 · K < 2³¹.
      if (K > 65536) throw InvalidArgument("--weights q8: a matrix with " + std::to_string(K) + " inputs (at most 65536)");
      const int64_t Kq = (K + 3) / 4;
      const int64_t panel_bytes = Kq * 4 * kPanel;
      t.dtype = DType::Q8;
      t.owner = raw_alloc(size_t(q8w_scales_offset(P, Kq) + P * kPanel * 4));
      t.data = t.owner.get();
      uint8_t* w = static_cast<uint8_t*>(t.data);
      float* scales = reinterpret_cast<float*>(w + q8w_scales_offset(P, Kq));
      pool_.run_tasks(P, [&](int64_t p, int) {
        std::memset(w + p * panel_bytes, 128, size_t(panel_bytes));
        std::vector<float> col(static_cast<size_t>(K)), q(static_cast<size_t>(K));
        for (int64_t n = p * kPanel; n < std::min(N, (p + 1) * kPanel); ++n) {
          for (int64_t k = 0; k < K; ++k) col[size_t(k)] = load_as_f32(src.data, src.dtype, n * K + k);
          scales[n] = q8_row(col.data(), int(K), q.data());
          for (int64_t k = 0; k < K; ++k) w[q8w_offset(n, k, Kq)] = uint8_t(int(q[size_t(k)]) + 128);
        }
      });
    } else if (dtype == DType::BF16) {
      const int64_t Kp = (K + 1) & ~int64_t(1);
      t.dtype = DType::BF16;
      t.owner = raw_alloc(size_t(P * Kp * kPanel) * 2);
      t.data = t.owner.get();
      uint16_t* w = static_cast<uint16_t*>(t.data);
      pool_.run_tasks(P, [&](int64_t p, int) {
        uint16_t* panel = w + p * Kp * kPanel;
        for (int64_t n = p * kPanel; n < std::min(N, (p + 1) * kPanel); ++n)
          for (int64_t k = 0; k < K; ++k)
            panel[(k / 2) * 2 * kPanel + (n % kPanel) * 2 + (k % 2)] = load_as_bf16(src.data, src.dtype, n * K + k);
      });
    } else {
      t.dtype = DType::F32;
      t.owner = raw_alloc(size_t(P * K * kPanel) * 4);
      t.data = t.owner.get();
      float* w = static_cast<float*>(t.data);
      pool_.run_tasks(P, [&](int64_t p, int) {
        float* panel = w + p * K * kPanel;
        for (int64_t n = p * kPanel; n < std::min(N, (p + 1) * kPanel); ++n)
          for (int64_t k = 0; k < K; ++k) panel[k * kPanel + (n % kPanel)] = load_as_f32(src.data, src.dtype, n * K + k);
      });
    }
    return t;
  }

  void download(const Tensor& src, void* dst) override {
    HYCO_ASSERT(src.layout == Layout::RowMajor);
    std::memcpy(dst, src.data, src.n_bytes());
  }

  void upload(Tensor& dst, const void* src) override {
    HYCO_ASSERT(dst.layout == Layout::RowMajor);
    std::memcpy(dst.data, src, dst.n_bytes());
  }

  size_t bytes_allocated() const override { return allocated_->load(); }

  void begin_step(const StepMeta& meta) override {
    flush_denormals();  // the thread running the step computes too
    meta_ = meta;
    ++step_;
  }

  void embed(const Tensor& table, Tensor& out) override {
    HYCO_ASSERT(out.rows == meta_.n_tokens && out.cols == table.cols && out.dtype == DType::F32);
    const int64_t K = table.cols;
    for (int32_t i = 0; i < meta_.n_tokens; ++i) {
      int64_t n = meta_.tokens[i];
      HYCO_ASSERT(n >= 0 && n < table.rows);
      float* o = static_cast<float*>(out.data) + i * K;
      if (table.layout == Layout::RowMajor) {
        for (int64_t k = 0; k < K; ++k) o[k] = load_as_f32(table.data, table.dtype, n * K + k);
      } else if (table.dtype == DType::Q8) {
        const int64_t Kq = (K + 3) / 4;
        const uint8_t* w = static_cast<const uint8_t*>(table.data);
        const float scale = reinterpret_cast<const float*>(w + q8w_scales_offset(n_panels(table.rows), Kq))[n];
        for (int64_t k = 0; k < K; ++k) o[k] = float(int(w[q8w_offset(n, k, Kq)]) - 128) * scale;
      } else if (table.dtype == DType::BF16) {
        const int64_t Kp = (K + 1) & ~int64_t(1);
        const uint16_t* panel = static_cast<const uint16_t*>(table.data) + (n / kPanel) * Kp * kPanel;
        for (int64_t k = 0; k < K; ++k) o[k] = bf16_to_f32(panel[(k / 2) * 2 * kPanel + (n % kPanel) * 2 + (k % 2)]);
      } else {
        const float* panel = static_cast<const float*>(table.data) + (n / kPanel) * K * kPanel;
        for (int64_t k = 0; k < K; ++k) o[k] = panel[k * kPanel + (n % kPanel)];
      }
    }
  }

  void rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    HYCO_ASSERT(x.cols == w.cols && out.cols == x.cols && out.rows == x.rows);
    rows_parallel(x.rows, x.cols, [&](int64_t r0, int64_t r1) {
      k_->rms_norm(static_cast<const float*>(x.data), static_cast<const float*>(w.data), eps, x.cols,
                   static_cast<float*>(out.data), r0, r1);
    });
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out, bool accumulate) override {
    HYCO_ASSERT(w.layout == Layout::Packed && x.cols == w.cols && out.rows == x.rows && out.cols == w.rows);
    GemmArgs g;
    g.x = static_cast<const float*>(x.data);
    g.ldx = x.cols;
    g.w = w.data;
    g.M = x.rows;
    g.N = w.rows;
    g.K = w.cols;
    g.bias = bias.empty() ? nullptr : static_cast<const float*>(bias.data);
    g.out = static_cast<float*>(out.data);
    g.ldo = out.cols;
    g.accumulate = accumulate;
    const bool bf16 = w.dtype == DType::BF16;
    if (bf16) g.Kp = (g.K + 1) & ~int64_t(1);
    auto gemm = bf16 ? k_->gemm_bf16 : k_->gemm_f32;
    const int64_t P = n_panels(g.N);
    const int nth = pool_.size();
    if (w.dtype == DType::Q8) {
      // The activations to 8 bits, once for all the panels.
      g.Kq = (g.K + 3) / 4;
      gemm = k_->gemm_q8;
      g.w_scale = reinterpret_cast<const float*>(static_cast<const uint8_t*>(w.data) + q8w_scales_offset(P, g.Kq));
      if (xq_.size() < size_t(g.M * g.Kq * 4)) xq_.resize(size_t(g.M * g.Kq * 4));
      if (x_scale_.size() < size_t(g.M)) {
        x_scale_.resize(size_t(g.M));
        x_sum_.resize(size_t(g.M));
      }
      rows_parallel(g.M, g.K, [&](int64_t r0, int64_t r1) {
        k_->quantize_rows(g.x, g.ldx, g.K, g.Kq, xq_.data(), x_scale_.data(), x_sum_.data(), r0, r1);
      });
      g.xq = xq_.data();
      g.x_scale = x_scale_.data();
      g.x_sum = x_sum_.data();
    }
    if (g.M * g.N * g.K < 32 * 1024) {  // too small to share
      gemm(g, 0, P, 0, g.M);
      return;
    }
    // Tasks: a grid of panel groups × row blocks, a few per thread, so a thread that is
    // descheduled (another process on the core) only delays its current task.
    const int64_t want = 4 * int64_t(nth);
    const int64_t pg = std::min(P, want);
    const int64_t row_blocks = (g.M + 5) / 6;
    const int64_t rg = std::max<int64_t>(1, std::min(row_blocks, (want + pg - 1) / pg));
    pool_.run_tasks(pg * rg, [&](int64_t t, int) {
      const int64_t pi = t % pg, ri = t / pg;
      gemm(g, P * pi / pg, P * (pi + 1) / pg, std::min(g.M, row_blocks * ri / rg * 6),
           std::min(g.M, row_blocks * (ri + 1) / rg * 6));
    });
  }

  void rope(const RopeParams& p) override {
    const int half = p.head_dim / 2;
    if (rope_step_ != step_ || rope_hd_ != p.head_dim || rope_theta_ != p.theta || rope_scale_ != p.scale) {
      rope_step_ = step_;
      rope_hd_ = p.head_dim;
      rope_theta_ = p.theta;
      rope_scale_ = p.scale;
      cos_.resize(size_t(meta_.n_tokens) * half);
      sin_.resize(size_t(meta_.n_tokens) * half);
      for (int32_t t = 0; t < meta_.n_tokens; ++t)
        for (int i = 0; i < half; ++i) {
          double inv_freq = std::pow(p.theta, -2.0 * i / p.head_dim);
          double a = double(meta_.positions[t]) / p.scale * inv_freq;
          cos_[size_t(t) * half + i] = float(std::cos(a));
          sin_[size_t(t) * half + i] = float(std::sin(a));
        }
    }
    rows_parallel(meta_.n_tokens, int64_t(p.n_rot_heads) * p.head_dim,
                  [&](int64_t r0, int64_t r1) { k_->rope(p, cos_.data(), sin_.data(), r0, r1); });
  }

  void attention(const AttentionParams& p) override {
    const int n_rep = p.n_heads / p.n_kv_heads;
    HYCO_ASSERT(n_rep <= kMaxRows);
    const int tq = kMaxRows / n_rep;
    const int nth = pool_.size();
    const size_t need = size_t(attention_scratch_floats(p.head_dim));
    for (auto& sc : scratch_)
      if (sc.size() < need) sc.resize(need);

    store_early(p);

    // Base tasks: (span, tile of tq tokens, kv head).
    tasks_.clear();
    for (int32_t s = 0; s < p.meta.n_spans; ++s)
      for (int32_t t0 = 0; t0 < p.meta.spans[s].n_tokens; t0 += tq)
        for (int32_t g = 0; g < p.n_kv_heads; ++g) {
          const SeqSpan& sp = p.meta.spans[s];
          AttnTask t;
          t.s = s;
          t.g = g;
          t.t0 = t0;
          t.t1 = std::min(t0 + tq, sp.n_tokens);
          t.k0 = 0;
          t.k1 = INT32_MAX;
          t.cached_end = sp.pos0 + stored_early_[size_t(s)];
          tasks_.push_back(t);
        }
    // Prefill spans longer than one task: the tiles holding the step's own keys are assembled
    // once per (span, kv head) and shared by the span's tasks, instead of by each task; those
    // stored early are read in place (unless global blocks smaller than a tile split them).
    const bool in_place = p.layout.local || p.layout.block_size % kKeyTile == 0;
    auto stage_from = [&](int32_t s) {  // the span's first key to stage
      return p.meta.spans[s].pos0 + (in_place ? stored_early_[size_t(s)] : 0);
    };
    stage_jobs_.clear();
    staged_at_.assign(size_t(p.meta.n_spans) * size_t(p.n_kv_heads), -1);
    int64_t staged_floats = 0;
    const int64_t tile_floats = attention_tile_floats(p.head_dim);
    for (int32_t s = 0; s < p.meta.n_spans; ++s) {
      const SeqSpan& sp = p.meta.spans[s];
      const int32_t from = stage_from(s);
      if (sp.n_tokens <= tq || from == sp.pos0 + sp.n_tokens) continue;
      const int32_t jb0 = from - from % kKeyTile;
      const int32_t n_tiles = (sp.pos0 + sp.n_tokens - 1 - jb0) / kKeyTile + 1;
      for (int32_t g = 0; g < p.n_kv_heads; ++g) {
        staged_at_[size_t(s) * size_t(p.n_kv_heads) + size_t(g)] = staged_floats;
        for (int32_t i = 0; i < n_tiles; ++i)
          stage_jobs_.push_back({s, g, jb0 + i * kKeyTile, staged_floats + i * tile_floats});
        staged_floats += n_tiles * tile_floats;
      }
    }
    if (!stage_jobs_.empty()) {
      if (staged_.size() < size_t(staged_floats)) staged_.resize(size_t(staged_floats));
      pool_.run_tasks(int64_t(stage_jobs_.size()), [&](int64_t i, int) {
        const StageJob& j = stage_jobs_[size_t(i)];
        k_->stage_tile(p, j.s, j.g, j.jb, staged_.data() + j.offset);
      });
      for (AttnTask& t : tasks_) {
        const int64_t at = staged_at_[size_t(t.s) * size_t(p.n_kv_heads) + size_t(t.g)];
        if (at < 0) continue;
        const int32_t from = stage_from(t.s);
        t.staged = staged_.data() + at;
        t.staged_jb0 = from - from % kKeyTile;
      }
    }
    // Split-KV: too few tasks for the threads (decode) and long key ranges → split each range
    // into chunks aligned to the key tile, run them in parallel, merge their softmax states.
    merges_.clear();
    if (int(tasks_.size()) < 2 * nth) {
      const size_t n_base = tasks_.size();
      std::vector<AttnTask> split;
      int64_t floats = 0;
      for (size_t i = 0; i < n_base; ++i) {
        const AttnTask& t = tasks_[i];
        const SeqSpan& sp = p.meta.spans[t.s];
        const int32_t pa = sp.pos0 + t.t0, pb = sp.pos0 + t.t1 - 1;
        const int32_t lo = p.layout.local ? std::max(p.layout.n_sinks, pa - p.layout.window + 1) : 0;
        const int32_t keys = pb + 1 - lo;
        const int chunks = keys >= 1024 ? std::min<int>((keys + 511) / 512, 2 * nth) : 1;
        if (chunks == 1) {
          split.push_back(t);
          continue;
        }
        const int rows = (t.t1 - t.t0) * n_rep;
        const int32_t step = ((keys + chunks - 1) / chunks + kKeyTile - 1) / kKeyTile * kKeyTile;
        Merge m{t, int(split.size()), 0, floats};
        for (int32_t b = lo - lo % kKeyTile; b <= pb; b += step) {
          AttnTask c = t;
          c.k0 = m.count == 0 ? 0 : b;
          c.k1 = b + step > pb ? INT32_MAX : b + step;
          split.push_back(c);
          ++m.count;
          floats += attention_partial_floats(rows, p.head_dim);
        }
        merges_.push_back(m);
      }
      if (!merges_.empty()) {
        partial_.resize(size_t(floats));
        for (const Merge& m : merges_) {
          const int rows = (m.base.t1 - m.base.t0) * n_rep;
          for (int c = 0; c < m.count; ++c)
            split[size_t(m.first + c)].partial =
                partial_.data() + m.offset + int64_t(c) * attention_partial_floats(rows, p.head_dim);
        }
        tasks_ = std::move(split);
      }
    }
    if (tasks_.size() == 1) {
      k_->attention_task(p, tasks_[0], scratch_[0].data());
    } else {
      // Largest first: causal tiles late in a long prompt cost the most.
      pool_.run_tasks(int64_t(tasks_.size()), [&](int64_t i, int ith) {
        k_->attention_task(p, tasks_[tasks_.size() - 1 - size_t(i)], scratch_[ith].data());
      });
    }
    for (const Merge& m : merges_) merge_partials(p, m, n_rep);
  }

  // The keys and values of the step go into the cache now, before their attention, so that the
  // tiles holding them are read in place (8-bit scores and weights × values with vpdpbusd) instead
  // of being gathered and widened to f32 for every sequence, layer and KV head (decode), or staged
  // once per span (prefill); store_kv then stores the rest. Safe: a global position has a slot of
  // its own; on a local layer position p overwrites p - ring_len, which no token of the span sees
  // while that is a sink or before the window of the span's first token, so a span stores its
  // first ring_len - window + 1 tokens early (all of them while the ring has not wrapped). Same
  // values either way (the step's keys are rounded to what the cache holds), so the results are
  // unchanged. Decode tokens alone: batch-16 decode step at 2.4K context 4-9% faster (hyco bench,
  // random in-process A/B), one sequence unchanged.
  void store_early(const AttentionParams& p) {
    stored_early_.assign(size_t(p.meta.n_spans), 0);
    stored_early_cache_ = p.k_cache;
    stored_early_step_ = step_;
    StoreKvParams st;
    st.qkv = p.qkv;
    st.qkv_stride = p.qkv_stride;
    st.k_cache = const_cast<void*>(p.k_cache);  // the backend's own cache memory
    st.v_cache = const_cast<void*>(p.v_cache);
    st.kv_dtype = p.kv_dtype;
    st.k_scale = const_cast<float*>(p.k_scale);
    st.v_scale = const_cast<float*>(p.v_scale);
    st.n_heads = p.n_heads;
    st.n_kv_heads = p.n_kv_heads;
    st.head_dim = p.head_dim;
    st.layout = p.layout;
    st.meta = p.meta;
    bool any = false;
    for (int32_t s = 0; s < p.meta.n_spans; ++s) {
      const SeqSpan& sp = p.meta.spans[s];
      int32_t n = sp.n_tokens;
      if (p.layout.local) {
        // Token t overwrites the ring slot of position pos0 + t - ring_len: harmless while that
        // is a sink or before the window of the span's first token.
        const int64_t keep = std::max<int64_t>(p.layout.n_sinks, int64_t(sp.pos0) - p.layout.window + 1);
        n = int32_t(std::clamp<int64_t>(keep + p.layout.ring_len - sp.pos0, 0, sp.n_tokens));
      }
      stored_early_[size_t(s)] = n;
      any = any || n > 0;
    }
    if (any) store_spans(st, true);
  }

  void store_kv(const StoreKvParams& p) override {
    const bool early = stored_early_cache_ == p.k_cache && stored_early_step_ == step_ &&
                       stored_early_.size() == size_t(p.meta.n_spans);
    if (!early) stored_early_.assign(size_t(p.meta.n_spans), 0);
    store_spans(p, false);  // the rest
  }

  // The step's rows into the cache: of each span s its first stored_early_[s] tokens (`early`), or
  // the others. Rows write distinct slots (a ring position that a later token overwrites is
  // skipped), so they are stored in parallel.
  void store_spans(const StoreKvParams& p, bool early) {
    const int64_t kvw = int64_t(p.n_kv_heads) * p.head_dim;
    auto range = [&](int32_t s) {
      const int32_t n = stored_early_[size_t(s)];
      return early ? std::pair<int32_t, int32_t>(0, n) : std::pair<int32_t, int32_t>(n, p.meta.spans[s].n_tokens);
    };
    int64_t rows = 0;
    for (int32_t s = 0; s < p.meta.n_spans; ++s) rows += range(s).second - range(s).first;
    if (rows == 0) return;
    rows_parallel(p.meta.n_tokens, rows * 16 * kvw / p.meta.n_tokens, [&](int64_t r0, int64_t r1) {
      for (int32_t s = 0; s < p.meta.n_spans; ++s) {
        const SeqSpan& sp = p.meta.spans[s];
        const auto [t0, t1] = range(s);
        const int64_t a = std::max<int64_t>(r0, sp.tok_start + t0), b = std::min<int64_t>(r1, sp.tok_start + t1);
        for (int64_t r = a; r < b; ++r) store_kv_row(*k_, p, sp, int32_t(r - sp.tok_start), kvw, !early);
      }
    });
  }

  // Token t of span sp into its cache slot. With `skip`, not a ring position that a later token of
  // this step overwrites (the attention is done; an early store must write it, the step reads it).
  static void store_kv_row(const CpuKernels& kern, const StoreKvParams& p, const SeqSpan& sp, int32_t t, int64_t kvw,
                           bool skip) {
    const int32_t pos = sp.pos0 + t;
    if (skip && p.layout.local && pos >= p.layout.n_sinks && pos < sp.pos0 + sp.n_tokens - p.layout.ring_len) return;
    const int32_t* table = p.layout.local ? nullptr : p.meta.global_tables + int64_t(sp.table_row) * p.meta.table_stride;
    const int64_t slot = kv_slot(p.layout, sp, table, pos);
    const float* row = p.qkv + int64_t(sp.tok_start + t) * p.qkv_stride;
    const float* k = row + int64_t(p.n_heads) * p.head_dim;
    const float* v = k + kvw;
    // Keys transposed by group of slots (k_offset), values grouped by head (v_offset); 8-bit ones
    // interleaved for vpdpbusd (k8_offset, v8_offset).
    const int64_t hd = p.head_dim;
    if (p.kv_dtype == DType::Q8) {
      uint8_t* kd = static_cast<uint8_t*>(p.k_cache);
      int8_t* vd = static_cast<int8_t*>(p.v_cache);
      // Each head's key and value rows to 8 bits (q8_row's steps, vectorised), then into place.
      const int64_t hq = (hd + 3) / 4;
      int8_t q[2 * kMaxHeadDim + 8];
      float scale[2];
      int32_t sum[2];
      for (int32_t g = 0; g < p.n_kv_heads; ++g) {
        const int64_t e0 = int64_t(g) * hd;
        kern.quantize_rows(k + e0, 0, hd, hq, q, &scale[0], &sum[0], 0, 1);
        kern.quantize_rows(v + e0, 0, hd, hq, q + 4 * hq, &scale[1], &sum[1], 0, 1);
        p.k_scale[k_offset(slot, g, p.n_kv_heads)] = scale[0];
        p.v_scale[k_offset(slot, g, p.n_kv_heads)] = scale[1];
        for (int d = 0; d < p.head_dim; ++d) kd[k8_offset(slot, e0 + d, kvw, hd)] = uint8_t(q[d] + 128);
        int8_t* vs = vd + v8_offset(slot, e0, kvw, hd);  // dim d 4 bytes after dim d - 1
        for (int d = 0; d < p.head_dim; ++d) vs[4 * d] = q[4 * hq + d];
      }
    } else if (p.kv_dtype == DType::BF16) {
      uint16_t* kd = static_cast<uint16_t*>(p.k_cache);
      uint16_t* vd = static_cast<uint16_t*>(p.v_cache);
      for (int64_t i = 0; i < kvw; ++i) kd[k_offset(slot, i, kvw)] = f32_to_bf16(k[i]);
      for (int64_t i = 0; i < kvw; ++i) vd[v_offset(slot, i, kvw, hd)] = f32_to_bf16(v[i]);
    } else {
      float* kd = static_cast<float*>(p.k_cache);
      for (int64_t i = 0; i < kvw; ++i) kd[k_offset(slot, i, kvw)] = k[i];
      for (int32_t g = 0; g < p.n_kv_heads; ++g)
        std::memcpy(static_cast<float*>(p.v_cache) + v_offset(slot, int64_t(g) * hd, kvw, hd), v + int64_t(g) * hd,
                    size_t(hd) * 4);
    }
  }

  void swiglu(const Tensor& gate_up, Tensor& out) override {
    HYCO_ASSERT(gate_up.cols == 2 * out.cols && gate_up.rows == out.rows);
    rows_parallel(out.rows, out.cols * 8, [&](int64_t r0, int64_t r1) {
      k_->swiglu(static_cast<const float*>(gate_up.data), out.cols, static_cast<float*>(out.data), r0, r1);
    });
  }

  void gather_rows(const Tensor& x, Tensor& out) override {
    HYCO_ASSERT(out.rows == meta_.n_out && out.cols == x.cols);
    for (int32_t i = 0; i < meta_.n_out; ++i)
      std::memcpy(static_cast<float*>(out.data) + int64_t(i) * x.cols,
                  static_cast<const float*>(x.data) + int64_t(meta_.out_rows[i]) * x.cols, size_t(x.cols) * 4);
  }

  void sync() override {}

 private:
  struct Merge {
    AttnTask base;
    int first = 0;       // index of its first chunk in tasks_
    int count = 0;       // chunks
    int64_t offset = 0;  // into partial_
  };

  // Combines the chunks' (m, l, o) of one split task and writes the normalised output.
  void merge_partials(const AttentionParams& p, const Merge& m, int n_rep) {
    const int hd = p.head_dim;
    const int rows = (m.base.t1 - m.base.t0) * n_rep;
    const int64_t stride = attention_partial_floats(rows, hd);
    const SeqSpan& sp = p.meta.spans[m.base.s];
    for (int r = 0; r < rows; ++r) {
      float mx = -INFINITY;
      for (int c = 0; c < m.count; ++c) mx = std::max(mx, partial_[size_t(m.offset + c * stride + r)]);
      float* out = p.out + int64_t(sp.tok_start + m.base.t0 + r / n_rep) * p.n_heads * hd +
                   int64_t(m.base.g * n_rep + r % n_rep) * hd;
      std::fill(out, out + hd, 0.0f);
      float l = 0.0f;
      for (int c = 0; c < m.count; ++c) {
        const float* part = partial_.data() + m.offset + c * stride;
        if (part[r] == -INFINITY) continue;
        const float w = std::exp(part[r] - mx);
        l += part[rows + r] * w;
        const float* o = part + 2 * rows + int64_t(r) * hd;
        for (int d = 0; d < hd; ++d) out[d] += o[d] * w;
      }
      const float inv = 1.0f / l;
      for (int d = 0; d < hd; ++d) out[d] *= inv;
    }
  }

  // Zeroed memory. Large blocks (the KV pool) come straight from mmap: the OS hands out zero
  // pages as they are first touched, so an unused budget costs no RAM and no start-up time.
  std::shared_ptr<void> raw_alloc(size_t bytes) {
    // NOTE: 512 bytes of padding: attention reads a tile's values 64 floats wide from a row start.
    size_t sz = (bytes + 512 + 63) & ~size_t(63);
    auto counter = allocated_;
    if (sz >= (size_t(1) << 20)) {
      void* p = mmap(nullptr, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED)
        throw ResourceExhausted("cpu backend: out of memory allocating " + std::to_string(bytes >> 20) + " MiB");
      *allocated_ += sz;
      return std::shared_ptr<void>(p, [counter, sz](void* q) {
        *counter -= sz;
        munmap(q, sz);
      });
    }
    void* p = std::aligned_alloc(64, sz);
    if (!p) throw ResourceExhausted("cpu backend: out of memory allocating " + std::to_string(bytes) + " bytes");
    std::memset(p, 0, sz);
    *allocated_ += sz;
    return std::shared_ptr<void>(p, [counter, sz](void* q) {
      *counter -= sz;
      std::free(q);
    });
  }

  // Splits rows over the pool when the work is worth a wake-up (cost ≈ rows × cols).
  template <class F>
  void rows_parallel(int64_t rows, int64_t cols, F&& f) {
    if (rows < 2 || rows * cols < 64 * 1024) {
      f(0, rows);
      return;
    }
    const int64_t n = std::min<int64_t>(rows, 4 * int64_t(pool_.size()));
    pool_.run_tasks(n, [&](int64_t t, int) {
      const int64_t r0 = rows * t / n, r1 = rows * (t + 1) / n;
      if (r0 < r1) f(r0, r1);
    });
  }

  ThreadPool pool_;
  const CpuKernels* k_;
  bool fast_q8_;  // the 8-bit matmul and attention kernels run with vpdpbusd
  std::vector<std::vector<float>> scratch_;
  std::vector<AttnTask> tasks_;
  std::vector<int32_t> stored_early_;  // [span] of the last attention: its first tokens stored by it
  const void* stored_early_cache_ = nullptr;
  uint64_t stored_early_step_ = 0;
  std::vector<Merge> merges_;
  std::vector<float> partial_;
  struct StageJob {
    int32_t s, g, jb;
    int64_t offset;  // of its tile in staged_
  };
  std::vector<StageJob> stage_jobs_;
  std::vector<int64_t> staged_at_;  // [span][kv head]: offset of its first staged tile, or -1
  std::vector<float> staged_;
  std::vector<float> cos_, sin_;
  std::vector<int8_t> xq_;  // matmul with q8 weights: the activations in 8 bits, their scales and sums
  std::vector<float> x_scale_;
  std::vector<int32_t> x_sum_;
  uint64_t rope_step_ = 0;
  int rope_hd_ = 0;
  double rope_theta_ = 0, rope_scale_ = 0;
  StepMeta meta_;
  uint64_t step_ = 0;
  std::shared_ptr<std::atomic<size_t>> allocated_ = std::make_shared<std::atomic<size_t>>(0);
};

}  // namespace
}  // namespace cpu

std::unique_ptr<Backend> make_cpu_backend(int n_threads, const std::string& isa) {
  return std::make_unique<cpu::CpuBackend>(n_threads, isa);
}

std::vector<std::string> cpu_isa_variants() {
  std::vector<std::string> v;
  for (const char* isa : {"avx512", "avx2", "base"})
    if (cpu::machine_has(isa)) v.push_back(isa);
  return v;
}

}  // namespace hyco
