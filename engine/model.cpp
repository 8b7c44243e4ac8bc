// The forward pass: one pre-norm decoder block per layer, hybrid local/global attention over the
// KV cache, logits for the rows the batch asks for. Ops run on the Backend; this file only
// sequences them and builds the step metadata.
#include "engine/model.h"

#include <algorithm>
#include <cmath>

#include "engine/errors.h"

namespace hyco {

void Batch::add(SeqId seq, std::span<const int32_t> toks, bool logits_last, bool logits_all) {
  HYCO_ASSERT(!toks.empty());
  tokens.insert(tokens.end(), toks.begin(), toks.end());
  spans.push_back(BatchSpan{seq, int32_t(toks.size()), logits_all, logits_last});
}

int32_t Batch::n_out() const {
  int32_t n = 0;
  for (const auto& s : spans) n += s.logits_all ? s.n_tokens : (s.logits_last ? 1 : 0);
  return n;
}

Model::~Model() = default;

void Model::ensure_buffers(int32_t n_tokens, int32_t n_out) {
  if (n_tokens > cap_tokens_) {
    int32_t cap = std::max(n_tokens, cap_tokens_ * 2);
    x_ = backend_.alloc(DType::F32, cap, cfg_.d_model);
    xn_ = backend_.alloc(DType::F32, cap, cfg_.d_model);
    qkv_ = backend_.alloc(DType::F32, cap, cfg_.qkv_width());
    attn_ = backend_.alloc(DType::F32, cap, cfg_.q_width());
    gate_up_ = backend_.alloc(DType::F32, cap, 2 * int64_t(cfg_.d_ff));
    act_ = backend_.alloc(DType::F32, cap, cfg_.d_ff);
    cap_tokens_ = cap;
  }
  if (n_out > cap_out_) {
    int32_t cap = std::max(n_out, cap_out_ * 2);
    rows_ = backend_.alloc(DType::F32, cap, cfg_.d_model);
    rows_n_ = backend_.alloc(DType::F32, cap, cfg_.d_model);
    logits_ = backend_.alloc(DType::F32, cap, cfg_.n_vocab);
    cap_out_ = cap;
  }
}

void Model::forward(const Batch& batch, KvCache& kv, std::vector<float>& logits) {
  const int32_t n = int32_t(batch.tokens.size());
  HYCO_ASSERT(n > 0);
  for (int32_t t : batch.tokens)
    if (t < 0 || t >= cfg_.n_vocab)
      throw InvalidArgument("token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                            std::to_string(cfg_.n_vocab) + ")");

  // Step metadata, and the blocks every span needs — checked before anything is reserved.
  spans_.resize(batch.spans.size());
  positions_.resize(size_t(n));
  out_rows_.clear();
  int64_t blocks_needed = 0;
  int32_t stride = 1;
  int32_t row = 0;
  for (size_t i = 0; i < batch.spans.size(); ++i) {
    const BatchSpan& b = batch.spans[i];
    HYCO_ASSERT(kv.is_live(b.seq) && b.n_tokens > 0);
    for (size_t j = 0; j < i; ++j) HYCO_ASSERT(batch.spans[j].seq != b.seq);
    const int32_t pos0 = kv.length(b.seq);
    if (int64_t(pos0) + b.n_tokens > kv.n_ctx())
      throw InvalidArgument("sequence of " + std::to_string(pos0 + int64_t(b.n_tokens)) +
                            " tokens exceeds the context of " + std::to_string(kv.n_ctx()));
    blocks_needed += kv.blocks_missing(b.seq, pos0 + b.n_tokens);
    stride = std::max<int32_t>(stride, int32_t(kv.blocks_for(pos0 + b.n_tokens)));
    SeqSpan& s = spans_[i];
    s.tok_start = row;
    s.n_tokens = b.n_tokens;
    s.pos0 = pos0;
    s.ring = kv.ring_of(b.seq);
    s.table_row = int32_t(i);
    for (int32_t t = 0; t < b.n_tokens; ++t) positions_[size_t(row + t)] = pos0 + t;
    if (b.logits_all) {
      for (int32_t t = 0; t < b.n_tokens; ++t) out_rows_.push_back(row + t);
    } else if (b.logits_last) {
      out_rows_.push_back(row + b.n_tokens - 1);
    }
    row += b.n_tokens;
  }
  HYCO_ASSERT(row == n);
  if (blocks_needed > kv.n_free_blocks())
    throw ResourceExhausted("KV pool has " + std::to_string(kv.n_free_blocks()) + " free blocks, the batch needs " +
                            std::to_string(blocks_needed));
  tables_.assign(size_t(batch.spans.size()) * stride, 0);
  for (size_t i = 0; i < batch.spans.size(); ++i) {
    const BatchSpan& b = batch.spans[i];
    HYCO_ASSERT(kv.reserve(b.seq, spans_[i].pos0 + b.n_tokens));
    kv.fill_table(b.seq, tables_.data() + i * stride, stride);
  }

  const int32_t n_out = int32_t(out_rows_.size());
  ensure_buffers(n, std::max(n_out, 1));
  StepMeta meta;
  meta.tokens = batch.tokens.data();
  meta.positions = positions_.data();
  meta.n_tokens = n;
  meta.spans = spans_.data();
  meta.n_spans = int32_t(spans_.size());
  meta.global_tables = tables_.data();
  meta.table_stride = stride;
  meta.out_rows = out_rows_.data();
  meta.n_out = n_out;
  backend_.begin_step(meta);

  Tensor x = x_.first_rows(n), xn = xn_.first_rows(n), qkv = qkv_.first_rows(n), attn = attn_.first_rows(n),
         gate_up = gate_up_.first_rows(n), act = act_.first_rows(n);
  const Tensor none;
  backend_.embed(embed_, x);

  RopeParams rope;
  rope.qkv = static_cast<float*>(qkv.data);
  rope.qkv_stride = qkv.cols;
  rope.n_rot_heads = cfg_.n_heads + cfg_.n_kv_heads;
  rope.head_dim = cfg_.head_dim;
  rope.theta = cfg_.rope_theta;
  rope.scale = cfg_.rope_scale;
  rope.meta = meta;

  AttentionParams ap;
  ap.qkv = static_cast<const float*>(qkv.data);
  ap.qkv_stride = qkv.cols;
  ap.out = static_cast<float*>(attn.data);
  ap.kv_dtype = kv.config().dtype;
  ap.n_heads = cfg_.n_heads;
  ap.n_kv_heads = cfg_.n_kv_heads;
  ap.head_dim = cfg_.head_dim;
  ap.scale = float(1.0 / std::sqrt(double(cfg_.head_dim)));
  ap.meta = meta;

  StoreKvParams sp;
  sp.qkv = ap.qkv;
  sp.qkv_stride = ap.qkv_stride;
  sp.kv_dtype = ap.kv_dtype;
  sp.n_heads = cfg_.n_heads;
  sp.n_kv_heads = cfg_.n_kv_heads;
  sp.head_dim = cfg_.head_dim;
  sp.meta = meta;

  // Everything that can fail for want of memory comes before the first KV write.
  logits.resize(size_t(n_out) * cfg_.n_vocab);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const Layer& L = layers_[size_t(l)];
    backend_.rms_norm(x, L.attn_norm, cfg_.rms_eps, xn);
    backend_.matmul(xn, L.wqkv, L.bqkv, qkv, false);
    backend_.rope(rope);
    ap.layout = sp.layout = kv.layout(cfg_.layer_kinds[size_t(l)]);
    ap.k_cache = sp.k_cache = kv.k(l).data;
    ap.v_cache = sp.v_cache = kv.v(l).data;
    ap.k_scale = sp.k_scale = kv.k_scale(l);
    ap.v_scale = sp.v_scale = kv.v_scale(l);
    backend_.attention(ap);
    backend_.store_kv(sp);
    backend_.matmul(attn, L.wo, L.bo, x, true);
    backend_.rms_norm(x, L.mlp_norm, cfg_.rms_eps, xn);
    backend_.matmul(xn, L.w_gate_up, none, gate_up, false);
    backend_.swiglu(gate_up, act);
    backend_.matmul(act, L.w_down, none, x, true);
  }

  if (n_out > 0) {
    Tensor rows = rows_.first_rows(n_out), rows_n = rows_n_.first_rows(n_out), lg = logits_.first_rows(n_out);
    backend_.gather_rows(x, rows);
    backend_.rms_norm(rows, final_norm_, cfg_.rms_eps, rows_n);
    backend_.matmul(rows_n, lm_head_, none, lg, false);
    backend_.download(lg, logits.data());
  }
  backend_.sync();
  for (size_t i = 0; i < batch.spans.size(); ++i)
    kv.set_length(batch.spans[i].seq, spans_[i].pos0 + batch.spans[i].n_tokens);
}

}  // namespace hyco
