// The op cases. Tolerances: f32 ops may differ by accumulation order only, NMSE ≤ 1e-10; ops that
// round activations or KV to bf16 may differ by one bf16 rounding per input, NMSE ≤ 2^-16.
#include "tests/backend_op_cases.h"

#include <cmath>
#include <numeric>
#include <random>

#include "engine/kv_cache.h"

namespace hyco::test {

namespace {

constexpr double kF32 = 1e-10;
constexpr double kBf16 = 1.0 / 65536;

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

Tensor up(Backend& b, const std::vector<float>& h, int64_t rows, int64_t cols) {
  Tensor t = b.alloc(DType::F32, rows, cols);
  b.upload(t, h.data());
  return t;
}

std::vector<float> down(Backend& b, const Tensor& t) {
  std::vector<float> h(size_t(t.n_elements()));
  b.download(t, h.data());
  b.sync();
  return h;
}

Tensor weight(Backend& b, const std::vector<float>& h, int64_t rows, int64_t cols, DType dt) {
  return b.upload_weight(HostTensor{h.data(), DType::F32, rows, cols}, WeightRole::Matrix, dt);
}

// Step metadata for one test, kept alive with its arrays.
struct Step {
  std::vector<int32_t> tokens, positions, tables, out_rows;
  std::vector<SeqSpan> spans;
  StepMeta meta() const {
    StepMeta m;
    m.tokens = tokens.data();
    m.positions = positions.data();
    m.n_tokens = int32_t(positions.size());
    m.spans = spans.data();
    m.n_spans = int32_t(spans.size());
    m.global_tables = tables.data();
    m.table_stride = spans.empty() ? 0 : int32_t(tables.size() / spans.size());
    m.out_rows = out_rows.data();
    m.n_out = int32_t(out_rows.size());
    return m;
  }
};

OpCase matmul_case(int M, int N, int K, DType w, bool bias, bool acc) {
  std::string name = "matmul " + std::string(dtype_name(w)) + " M" + std::to_string(M) + " N" + std::to_string(N) +
                     " K" + std::to_string(K) + (bias ? " +bias" : "") + (acc ? " +=" : "");
  return {name, w == DType::BF16 ? kBf16 : kF32, [=](Backend& b) {
            auto x = randn(size_t(M) * K, 1), wt = randn(size_t(N) * K, 2, 1.0f / std::sqrt(float(K))),
                 bv = randn(size_t(N), 3), o = randn(size_t(M) * N, 4);
            Tensor X = up(b, x, M, K), W = weight(b, wt, N, K, w), B, O = up(b, o, M, N);
            if (bias) B = b.upload_weight(HostTensor{bv.data(), DType::F32, 1, N}, WeightRole::Vector, DType::F32);
            b.matmul(X, W, B, O, acc);
            return down(b, O);
          }};
}

OpCase embed_case(DType w) {
  return {"embed " + std::string(dtype_name(w)), kF32, [=](Backend& b) {
            const int V = 300, D = 96;
            auto table = randn(size_t(V) * D, 5);
            Tensor T = weight(b, table, V, D, w);
            Step s;
            s.tokens = {0, 299, 17, 64, 65, 128, 17};
            s.positions.assign(s.tokens.size(), 0);
            b.begin_step(s.meta());
            Tensor O = b.alloc(DType::F32, int64_t(s.tokens.size()), D);
            b.embed(T, O);
            return down(b, O);
          }};
}

OpCase rms_norm_case(int n, int D) {
  return {"rms_norm n" + std::to_string(n) + " D" + std::to_string(D), kF32, [=](Backend& b) {
            auto x = randn(size_t(n) * D, 6, 3.0f), w = randn(size_t(D), 7);
            Tensor X = up(b, x, n, D), O = b.alloc(DType::F32, n, D);
            Tensor W = b.upload_weight(HostTensor{w.data(), DType::F32, 1, D}, WeightRole::Vector, DType::F32);
            b.rms_norm(X, W, 1e-5f, O);
            return down(b, O);
          }};
}

OpCase swiglu_case(int n, int F) {
  return {"swiglu n" + std::to_string(n) + " F" + std::to_string(F), kF32, [=](Backend& b) {
            auto gu = randn(size_t(n) * 2 * F, 8, 4.0f);
            Tensor G = up(b, gu, n, 2 * F), O = b.alloc(DType::F32, n, F);
            b.swiglu(G, O);
            return down(b, O);
          }};
}

OpCase rope_case(int hd, double theta) {
  return {"rope hd" + std::to_string(hd) + " theta" + std::to_string(int(theta)), kF32, [=](Backend& b) {
            const int Hq = 4, Hkv = 2, n = 9, width = (Hq + 2 * Hkv) * hd;
            auto x = randn(size_t(n) * width, 9);
            Tensor X = up(b, x, n, width);
            Step s;
            s.positions = {0, 1, 2, 511, 512, 4095, 16384, 30000, 131071};
            s.tokens.assign(size_t(n), 0);
            b.begin_step(s.meta());
            RopeParams p;
            p.qkv = static_cast<float*>(X.data);
            p.qkv_stride = width;
            p.n_rot_heads = Hq + Hkv;
            p.head_dim = hd;
            p.theta = theta;
            p.meta = s.meta();
            b.rope(p);
            return down(b, X);
          }};
}

OpCase gather_case() {
  return {"gather_rows", 0.0, [](Backend& b) {
            const int n = 12, D = 40;
            auto x = randn(size_t(n) * D, 10);
            Tensor X = up(b, x, n, D);
            Step s;
            s.positions.assign(size_t(n), 0);
            s.tokens.assign(size_t(n), 0);
            s.out_rows = {11, 0, 5};
            b.begin_step(s.meta());
            Tensor O = b.alloc(DType::F32, 3, D);
            b.gather_rows(X, O);
            return down(b, O);
          }};
}

// Attention over a ragged batch whose sequences have history in the cache: a decode token deep
// in a wrapped ring, a prefill chunk continuing a sequence, and a fresh prompt. The history is
// written by store_kv (each backend keeps its own cache layout); a second step, one decode token
// per sequence, then reads what the first step stored. Output: both steps' attention rows.
// `long_ctx`: histories of 700 and 300 positions and a 200-token window, so that a row's keys
// span many tiles (and the CUDA kernel splits them over several blocks).
// `stale`: the cache starts filled with all-ones bytes (NaN in f32, bf16 and the Q8 scales) instead
// of zeros, like slots last written by another sequence that overflowed; none of it may reach the
// output.
OpCase attention_case(bool local, int sinks, int n_heads, int n_kv, int hd, DType kv_dtype, bool long_ctx = false,
                      bool stale = false) {
  std::string name = std::string("attention ") + (local ? "local" : "global") + (sinks ? "+sinks" : "") + " " +
                     std::to_string(n_heads) + "/" + std::to_string(n_kv) + "x" + std::to_string(hd) + " kv " +
                     std::string(dtype_name(kv_dtype)) + (long_ctx ? " long" : "");
  // Every backend reads the same cached values and rounds the step's own keys the same way, so
  // only the order of f32 sums may differ (the CUDA prefill kernel's split bf16 products add
  // ~5e-12): a tight bound whatever the cache's dtype.
  return {name, 1e-10, [=](Backend& b) {
            const int W = long_ctx ? 200 : 24, R = 8, block = 64;
            const int kvw = n_kv * hd, width = (n_heads + 2 * n_kv) * hd;
            KvLayout layout;
            layout.local = local;
            layout.window = W;
            layout.n_sinks = local ? sinks : 0;
            layout.sink_slots = local && sinks ? kKvGroup : 0;
            layout.ring_len = (W + R + kKvGroup - 1) / kKvGroup * kKvGroup;  // W + R rounded up to a group
            layout.block_size = block;
            const int stride = long_ctx ? 12 : 4;  // blocks per table row (× 64 positions)
            const int n_blocks = 3 * stride;
            const int64_t slots = local ? 3 * (layout.sink_slots + layout.ring_len) : int64_t(n_blocks) * block;
            std::vector<int32_t> perm(n_blocks);
            std::iota(perm.begin(), perm.end(), 0);
            std::shuffle(perm.begin(), perm.end(), std::mt19937(11));
            Tensor K = b.alloc(kv_dtype, slots, kvw), V = b.alloc(kv_dtype, slots, kvw);
            Tensor KS, VS;  // scales of a Q8 cache
            if (kv_dtype == DType::Q8) {
              KS = b.alloc(DType::F32, slots, n_kv);
              VS = b.alloc(DType::F32, slots, n_kv);
            }
            if (stale)
              for (Tensor* t : {&K, &V, &KS, &VS})
                if (!t->empty()) b.upload(*t, std::vector<uint8_t>(t->n_bytes(), 0xFF).data());
            (void)R;
            // One step: spans of the given (start position, new tokens); attention + store_kv.
            std::vector<float> out;
            int seed = 20;
            auto step = [&](const int* pos0, const int* fresh, bool attend) {
              Step s;
              int row = 0;
              s.tables.assign(size_t(3 * stride), 0);
              for (int q = 0; q < 3; ++q) {
                SeqSpan sp;
                sp.tok_start = row;
                sp.n_tokens = fresh[q];
                sp.pos0 = pos0[q];
                sp.ring = local ? q : -1;
                sp.table_row = q;
                for (int t = 0; t < fresh[q]; ++t) s.positions.push_back(pos0[q] + t);
                for (int k = 0; k < stride; ++k) s.tables[size_t(q * stride + k)] = perm[size_t(q * stride + k)];
                s.spans.push_back(sp);
                row += fresh[q];
              }
              s.tokens.assign(size_t(row), 0);
              auto qkv = randn(size_t(row) * width, uint32_t(seed++));
              Tensor QKV = up(b, qkv, row, width), OUT = b.alloc(DType::F32, row, n_heads * hd);
              b.begin_step(s.meta());
              AttentionParams p;
              p.qkv = static_cast<const float*>(QKV.data);
              p.qkv_stride = width;
              p.out = static_cast<float*>(OUT.data);
              p.k_cache = K.data;
              p.v_cache = V.data;
              p.kv_dtype = kv_dtype;
              p.k_scale = static_cast<const float*>(KS.data);
              p.v_scale = static_cast<const float*>(VS.data);
              p.n_heads = n_heads;
              p.n_kv_heads = n_kv;
              p.head_dim = hd;
              p.scale = 1.0f / std::sqrt(float(hd));
              p.layout = layout;
              p.meta = s.meta();
              if (attend) b.attention(p);
              StoreKvParams st;
              st.qkv = p.qkv;
              st.qkv_stride = width;
              st.k_cache = K.data;
              st.v_cache = V.data;
              st.kv_dtype = kv_dtype;
              st.k_scale = static_cast<float*>(KS.data);
              st.v_scale = static_cast<float*>(VS.data);
              st.n_heads = n_heads;
              st.n_kv_heads = n_kv;
              st.head_dim = hd;
              st.layout = layout;
              st.meta = s.meta();
              b.store_kv(st);
              if (attend) {
                auto o = down(b, OUT);
                out.insert(out.end(), o.begin(), o.end());
              }
            };
            // History: 100, 70 and 0 positions (the first wraps its ring), written by store_kv.
            const int zero[3] = {0, 0, 0};
            const int hist[3] = {long_ctx ? 700 : 100, long_ctx ? 300 : 70, 0};
            step(zero, hist, false);
            // A decode token deep in the first sequence, a 20-token chunk (one tile of its keys
            // wholly cached, one shared with its own keys), a 45-token prompt.
            const int fresh[3] = {1, 20, 45};
            step(hist, fresh, true);
            // Then one token each, reading what the previous step stored.
            const int after[3] = {hist[0] + 1, hist[1] + 20, 45}, one[3] = {1, 1, 1};
            step(after, one, true);
            return out;
          }};
}

}  // namespace

double nmse(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return den == 0 ? num : num / den;
}

std::vector<OpCase> backend_op_cases() {
  std::vector<OpCase> c;
  for (DType w : {DType::F32, DType::BF16}) {
    for (int M : {1, 5, 6, 7, 33})
      for (int N : {1, 64, 65, 200}) c.push_back(matmul_case(M, N, 130, w, false, false));
    c.push_back(matmul_case(3, 70, 1, w, false, false));
    c.push_back(matmul_case(3, 70, 3, w, false, false));
    c.push_back(matmul_case(17, 96, 64, w, true, false));
    c.push_back(matmul_case(17, 96, 64, w, true, true));
    c.push_back(matmul_case(64, 512, 512, w, false, true));
    c.push_back(embed_case(w));
  }
  for (int D : {1, 15, 64, 1000}) c.push_back(rms_norm_case(7, D));
  for (int F : {1, 33, 256}) c.push_back(swiglu_case(5, F));
  for (int hd : {16, 64, 128}) c.push_back(rope_case(hd, 10000.0));
  c.push_back(rope_case(64, 1e6));
  c.push_back(gather_case());
  for (DType kv : {DType::F32, DType::BF16})
    for (OpCase& a : attention_cases(kv)) c.push_back(std::move(a));
  return c;
}

std::vector<OpCase> q8_weight_cases() {
  std::vector<OpCase> c;
  // 12 to 24 rows: the decode kernel that fetches the next panel (2, 3 and 4 blocks of rows).
  for (int M : {1, 5, 6, 7, 12, 13, 16, 24, 25, 33})
    for (int N : {1, 64, 65, 200}) c.push_back(matmul_case(M, N, 130, DType::Q8, false, false));
  c.push_back(matmul_case(13, 200, 130, DType::Q8, true, true));
  c.push_back(matmul_case(3, 70, 1, DType::Q8, false, false));
  c.push_back(matmul_case(3, 70, 3, DType::Q8, false, false));
  c.push_back(matmul_case(17, 96, 64, DType::Q8, true, false));
  c.push_back(matmul_case(17, 96, 64, DType::Q8, true, true));
  c.push_back(matmul_case(64, 512, 512, DType::Q8, false, true));
  c.push_back(embed_case(DType::Q8));
  return c;
}

std::vector<OpCase> attention_cases_extra(DType kv) {
  return {attention_case(false, 0, 6, 2, 96, kv), attention_case(true, 2, 5, 1, 80, kv, true),
          attention_case(false, 0, 3, 1, 112, kv, true), attention_case(true, 0, 4, 2, 18, kv)};
}

std::vector<OpCase> attention_cases_stale(DType kv) {
  return {attention_case(true, 0, 4, 2, 32, kv, false, true), attention_case(false, 0, 8, 2, 64, kv, true, true),
          attention_case(true, 4, 8, 1, 128, kv, true, true)};
}

std::vector<OpCase> attention_cases(DType kv) {
  return {attention_case(false, 0, 4, 4, 16, kv), attention_case(true, 0, 4, 2, 32, kv),
          attention_case(true, 3, 8, 2, 64, kv), attention_case(false, 0, 6, 1, 128, kv),
          attention_case(true, 2, 2, 2, 24, kv), attention_case(false, 0, 8, 2, 64, kv, true),
          attention_case(true, 4, 8, 1, 128, kv, true), attention_case(true, 0, 4, 4, 64, kv, true)};
}

}  // namespace hyco::test
