// Single-sequence generation loop. See generate.h.
#include "engine/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "engine/errors.h"

namespace hyco {

GenerateResult generate(Model& model, KvCache& kv, SeqId seq, std::span<const int32_t> prompt,
                        const GenerateOptions& opts, const std::function<bool(int32_t)>& on_token) {
  using clock = std::chrono::steady_clock;
  GenerateResult r;
  if (prompt.empty()) throw InvalidArgument("prompt is empty");
  int32_t done = kv.length(seq);
  HYCO_ASSERT(done <= int32_t(prompt.size()));
  if (done == int32_t(prompt.size())) {  // logits of the last token are needed again
    HYCO_ASSERT(kv.min_length(seq) <= done - 1);
    kv.truncate(seq, --done);
  }
  std::vector<float> logits;
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  Batch b;
  auto t0 = clock::now();
  while (done < int32_t(prompt.size())) {
    int32_t n = std::min<int32_t>(opts.chunk, int32_t(prompt.size()) - done);
    b.clear();
    b.add(seq, prompt.subspan(size_t(done), size_t(n)), done + n == int32_t(prompt.size()));
    model.forward(b, kv, logits);
    done += n;
  }
  auto t1 = clock::now();
  r.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  Sampler sampler(opts.sampling, model.config().n_vocab);
  r.finish = "length";
  const size_t n_real = opts.n_tokens > 0 ? std::min<size_t>(size_t(opts.n_tokens), size_t(model.config().n_vocab))
                                          : size_t(model.config().n_vocab);
  for (int32_t i = 0; i < opts.max_tokens; ++i) {
    std::fill(logits.begin() + std::ptrdiff_t(n_real), logits.end(), -INFINITY);
    for (const int32_t id : opts.banned_ids)
      if (id >= 0 && size_t(id) < n_real) logits[size_t(id)] = -INFINITY;
    int32_t tok = sampler.sample(logits, history);
    if (std::find(opts.stop_ids.begin(), opts.stop_ids.end(), tok) != opts.stop_ids.end()) {
      r.finish = "stop";
      break;
    }
    r.tokens.push_back(tok);
    history.push_back(tok);
    if (on_token && !on_token(tok)) {
      r.finish = "callback";
      break;
    }
    if (i + 1 == opts.max_tokens || kv.length(seq) + 1 > kv.n_ctx()) break;
    b.clear();
    b.add(seq, std::span<const int32_t>(&tok, 1));
    model.forward(b, kv, logits);
  }
  r.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return r;
}

}  // namespace hyco
