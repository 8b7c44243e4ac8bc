// `hyco complete`: one completion of a prompt (FIM with --suffix) printed as it is generated.
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "kernels/backend_select.h"
#include "cli/commands.h"
#include "cli/load.h"
#include "engine/errors.h"
#include "engine/generate.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/fim.h"
#include "tokenizer/tokenizer.h"

namespace hyco {

int run_complete(const CompleteArgs& a) {
  auto backend = make_backend(a.engine.device, a.engine.threads);
  const std::string dir = resolve_model_dir(a.engine);
  auto tok = Tokenizer::load((std::filesystem::path(dir) / "tokenizer.model").string());
  auto model = load_model(a.engine, *backend);
  const ModelConfig& cfg = model->config();
  if (tok->n_vocab() > cfg.n_vocab)
    throw ModelError(dir + ": tokenizer has " + std::to_string(tok->n_vocab()) + " pieces but the model only " +
                     std::to_string(cfg.n_vocab));

  std::vector<int32_t> prompt;
  std::vector<int32_t> stops;
  FimTemplate fim = detect_fim(*tok);
  if (a.has_suffix) {
    if (!fim.supported()) throw InvalidArgument("--suffix: this model's vocabulary has no fill-in-the-middle tokens");
    prompt = build_fim_prompt(*tok, fim, a.prompt, a.suffix);
    stops = stop_ids(fim, *tok);
  } else {
    prompt = build_plain_prompt(*tok, a.prompt, tok->bos_id() >= 0);
  }
  for (int32_t e : cfg.eos_ids) stops.push_back(e);
  if (tok->eos_id() >= 0) stops.push_back(tok->eos_id());

  KvCache kv(cfg, *backend, to_kv_config(a.engine, cfg, default_kv_dtype(*backend, model->matrix_dtype()), 1));
  if (int64_t(prompt.size()) + a.max_tokens > kv.n_ctx())
    throw InvalidArgument("prompt of " + std::to_string(prompt.size()) + " tokens plus " + std::to_string(a.max_tokens) +
                          " new ones exceeds the context of " + std::to_string(kv.n_ctx()));
  GenerateOptions go;
  go.max_tokens = a.max_tokens;
  go.stop_ids = stops;
  go.banned_ids = banned_ids(fim, *tok, a.has_suffix, stops);
  go.n_tokens = tok->n_vocab();
  go.sampling.temperature = a.temperature;
  go.sampling.top_k = a.top_k;
  go.sampling.top_p = a.top_p;
  go.sampling.min_p = a.min_p;
  go.sampling.seed = a.seed;
  validate_sampling(go.sampling, cfg.n_vocab);

  SeqId seq = *kv.create();
  IncrementalDetokenizer detok(*tok);
  GenerateResult r = generate(*model, kv, seq, prompt, go, [&](int32_t t) {
    std::string d = detok.push(t);
    std::fwrite(d.data(), 1, d.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::string rest = detok.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  if (a.stats)
    std::fprintf(stderr, "%s; prompt %zu tokens in %.3f s (%.0f tok/s), %zu generated in %.3f s (%.1f tok/s), finish: %s\n",
                 backend->describe().c_str(), prompt.size(), r.prefill_seconds, double(prompt.size()) / r.prefill_seconds,
                 r.tokens.size(), r.decode_seconds,
                 r.tokens.size() > 1 ? double(r.tokens.size() - 1) / r.decode_seconds : 0.0, r.finish.c_str());
  return 0;
}

}  // namespace hyco
