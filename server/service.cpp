// The completion service: background model loading, prompt building and truncation, submission.
#include "server/service.h"

#include <unistd.h>

#include <filesystem>
#include <random>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "engine/errors.h"
#include "engine/thread_name.h"
#include "kernels/backend_select.h"
#include "server/api_error.h"

namespace hyco {

CompletionService::CompletionService(ServiceOptions opts) : opts_(std::move(opts)) {
  dir_ = opts_.engine.model.empty() ? default_model_dir() : opts_.engine.model;
  name_ = opts_.model_alias.empty() ? std::filesystem::path(dir_).filename().string() : opts_.model_alias;
  if (name_.empty()) name_ = "hyco";
}

CompletionService::~CompletionService() {
  if (loader_.joinable()) loader_.join();
  if (sched_) sched_->shutdown();
}

void CompletionService::start_loading() {
  loader_ = std::thread([this] {
    name_this_thread("hyco-load");
    try {
      load();
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lk(mu_);
      load_error_ = e.what();
      if (draining_)
        spdlog::info("loading the model stopped: the server is shutting down");
      else
        spdlog::error("loading the model failed: {}", e.what());
    }
  });
}

std::string CompletionService::load_error() const {
  std::lock_guard<std::mutex> lk(mu_);
  return load_error_;
}

void CompletionService::load() {
  namespace fs = std::filesystem;
  backend_ = make_backend(opts_.engine.device, opts_.engine.threads);
  tok_ = Tokenizer::load((fs::path(dir_) / "tokenizer.model").string());
  LoadOptions lo = to_load_options(opts_.engine);
  double last = -1;
  lo.progress = [&](const LoadProgress& p) {
    // A shutdown during the load ends it at the next tensor rather than after the last one.
    if (draining_) throw std::runtime_error("shutting down");
    if (p.tensors_done != p.tensors_total && p.seconds - last < 1.0) return;
    last = p.seconds;
    spdlog::info("loading model: {:.1f} / {:.1f} MB, {} / {} tensors, {:.1f} s", double(p.bytes_done) / 1e6,
                 double(p.bytes_total) / 1e6, p.tensors_done, p.tensors_total, p.seconds);
  };
  model_ = Model::load(dir_, *backend_, lo);
  const ModelConfig& c = model_->config();
  if (tok_->n_vocab() > c.n_vocab)
    throw ModelError(dir_ + ": tokenizer has " + std::to_string(tok_->n_vocab()) + " pieces but the model " +
                     std::to_string(c.n_vocab));
  fim_ = detect_fim(*tok_);
  eos_ids_ = c.eos_ids;
  if (tok_->eos_id() >= 0 && std::find(eos_ids_.begin(), eos_ids_.end(), tok_->eos_id()) == eos_ids_.end())
    eos_ids_.push_back(tok_->eos_id());
  KvCacheConfig kc = to_kv_config(opts_.engine, c, default_kv_dtype(*backend_, model_->matrix_dtype()), opts_.scheduler.parallel + opts_.cache_seqs);
  kc.n_seqs_full = opts_.scheduler.parallel;
  kv_ = std::make_unique<KvCache>(c, *backend_, kc);
  // On the CPU the pool is reserved, not touched: a budget past this machine's memory starts
  // fine and fails under load (the kernel's OOM killer), so say so now.
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const double ram = pages > 0 && page > 0 ? double(pages) * double(page) : 0;
  if (backend_->describe().rfind("cpu", 0) == 0 && ram > 0 && double(kv_->bytes_total()) + double(model_->weight_bytes()) > 0.9 * ram)
    spdlog::warn("the KV cache ({:.0f} MiB) and the weights ({:.0f} MiB) are more than 90% of this machine's {:.0f} MiB of "
                 "memory: under load the server may be killed for lack of memory (lower --kv-memory, --ctx or --parallel)",
                 double(kv_->bytes_total()) / 1048576.0, double(model_->weight_bytes()) / 1048576.0, ram / 1048576.0);
  sched_ = std::make_unique<Scheduler>(*model_, *kv_, tok_.get(), opts_.scheduler);
  spdlog::info("model {} ready: {} ({:.1f} M parameters, pattern {}), {}, matrices {}, context {}, KV {} {:.1f} MiB "
               "for {} sequences, FIM {}",
               name_, c.architecture, double(c.n_params()) / 1e6, c.pattern_string(), backend_->describe(),
               dtype_name(model_->matrix_dtype()), kv_->n_ctx(), dtype_name(kc.dtype),
               double(kv_->bytes_total()) / 1048576.0, kc.n_seqs, fim_family_name(fim_.family));
  ready_ = true;
}

std::string CompletionService::backend_name() const { return backend_ ? backend_->describe() : ""; }
int64_t CompletionService::weight_bytes() const { return model_ ? model_->weight_bytes() : 0; }

void CompletionService::shutdown(std::chrono::milliseconds grace) {
  draining_ = true;
  if (loader_.joinable()) loader_.join();
  if (sched_) sched_->shutdown(grace);
}

std::vector<int32_t> CompletionService::build_prompt(const GenerationParams& p, int32_t budget, bool* truncated) const {
  const Tokenizer& tok = *tok_;
  const PromptSpec& ps = p.prompt;
  const bool cut = p.overflow == Overflow::TruncateLeft;
  switch (ps.kind) {
    case PromptSpec::Kind::Tokens:
    case PromptSpec::Kind::Text: {
      std::vector<int32_t> ids = ps.kind == PromptSpec::Kind::Tokens
                                     ? ps.tokens
                                     : build_plain_prompt(tok, ps.text, ps.add_bos && tok.bos_id() >= 0);
      if (int32_t(ids.size()) > budget && cut && budget > 1) {
        // Keep the end (the text next to the cursor) and a leading BOS.
        const bool bos = !ids.empty() && ids[0] == tok.bos_id();
        std::vector<int32_t> kept;
        if (bos) kept.push_back(ids[0]);
        kept.insert(kept.end(), ids.end() - (budget - int32_t(kept.size())), ids.end());
        ids = std::move(kept);
        *truncated = true;
      }
      return ids;
    }
    case PromptSpec::Kind::Fim: {
      if (!fim_.supported())
        throw ApiError(400, "this model's vocabulary has no fill-in-the-middle tokens, so 'suffix' cannot be used", "suffix");
      const std::vector<int32_t> middle = tok.encode(ps.middle);
      auto build = [&](std::string_view prefix, std::string_view suffix, std::span<const ExtraChunk> extra) {
        std::vector<int32_t> ids = build_fim_prompt(tok, fim_, prefix, suffix, extra);
        ids.insert(ids.end(), middle.begin(), middle.end());
        return ids;
      };
      std::vector<int32_t> ids = build(ps.text, ps.suffix, ps.extra);
      if (int32_t(ids.size()) <= budget || !cut) return ids;
      *truncated = true;
      // Too long: first the extra files go, the first ones first (editors send the most recent
      // context last), as few as make the prompt fit: the fewest dropped is found by bisection.
      const std::span<const ExtraChunk> extra(ps.extra);
      if (!extra.empty() && int32_t(build(ps.text, ps.suffix, {}).size()) <= budget) {
        size_t lo = 1, hi = extra.size();  // dropping hi fits; find the least that does
        while (lo < hi) {
          const size_t mid = lo + (hi - lo) / 2;
          if (int32_t(build(ps.text, ps.suffix, extra.subspan(mid)).size()) <= budget)
            hi = mid;
          else
            lo = mid + 1;
        }
        return build(ps.text, ps.suffix, extra.subspan(lo));
      }
      // Still too long without any: keep the prefix's end and the suffix's start, the suffix
      // getting at most a quarter of what is left (the prefix matters most).
      const int32_t overhead = int32_t(build("", "", {}).size());
      const int32_t avail = budget - overhead;
      if (avail < 0) return ids;  // reported as too long by the caller
      std::vector<int32_t> P = tok.encode(ps.text), S = tok.encode(ps.suffix);
      int32_t s_keep = std::min<int32_t>(int32_t(S.size()), avail / 4);
      int32_t p_keep = std::min<int32_t>(int32_t(P.size()), avail - s_keep);
      s_keep = std::min<int32_t>(int32_t(S.size()), avail - p_keep);
      std::string prefix = tok.decode(std::vector<int32_t>(P.end() - p_keep, P.end()));
      std::string suffix = tok.decode(std::vector<int32_t>(S.begin(), S.begin() + s_keep));
      ids = build(prefix, suffix, {});
      // Re-encoding a cut text can differ by a token; shave the prefix until it fits.
      while (int32_t(ids.size()) > budget && !prefix.empty()) {
        prefix.erase(0, std::min<size_t>(prefix.size(), 16));
        ids = build(prefix, suffix, {});
      }
      return ids;
    }
  }
  return {};
}

Prepared CompletionService::prepare(const GenerationParams& p) const {
  Prepared out;
  const int32_t n_ctx = kv_->n_ctx();
  const int32_t reserve = p.stop.max_tokens >= 0 ? p.stop.max_tokens : std::min<int32_t>(256, n_ctx / 4);
  if (reserve >= n_ctx)
    throw ApiError(400, "the number of tokens to generate (" + std::to_string(reserve) +
                            ", max_tokens / n_predict / num_predict) must be below the context of " +
                            std::to_string(n_ctx) + " tokens");
  // Prompt + tokens to generate within the context (OpenAI's rule), and at least one position
  // left after the prompt.
  const int32_t budget = std::min(n_ctx - reserve, n_ctx - 1);
  std::vector<int32_t> ids = build_prompt(p, budget, &out.truncated);
  if (ids.empty()) throw ApiError(400, "the prompt is empty", "prompt");
  if (int32_t(ids.size()) > budget)
    throw ApiError(400,
                   "this model's context is " + std::to_string(n_ctx) + " tokens, but the prompt has " +
                       std::to_string(ids.size()) + " and " + std::to_string(reserve) + " more were asked for",
                   "prompt", "context_length_exceeded");
  for (int32_t t : ids)
    if (t < 0 || t >= model_->config().n_vocab)
      throw ApiError(400, "token id " + std::to_string(t) + " is outside the vocabulary", "prompt");
  CompletionRequest& r = out.req;
  r.id = p.id;
  r.prompt = std::move(ids);
  r.sampling = p.sampling;
  if (!p.seed_given) r.sampling.seed = std::random_device{}() | (uint64_t(std::random_device{}()) << 32);
  r.stop = p.stop;
  if (!p.ignore_eos) {
    r.stop.stop_ids = eos_ids_;
    if (p.prompt.kind == PromptSpec::Kind::Fim)
      for (int32_t id : stop_ids(fim_, *tok_))
        if (std::find(r.stop.stop_ids.begin(), r.stop.stop_ids.end(), id) == r.stop.stop_ids.end())
          r.stop.stop_ids.push_back(id);
  }
  // (a model's own end ids stay possible)
  r.banned_ids = banned_ids(fim_, *tok_, p.prompt.kind == PromptSpec::Kind::Fim, eos_ids_);
  r.cache_prompt = p.cache_prompt;
  r.logprobs = p.logprobs;
  r.prompt_logprobs = p.prompt_logprobs;
  out.n_prompt = int32_t(r.prompt.size());
  return out;
}

std::shared_ptr<RequestHandle> CompletionService::submit(CompletionRequest req) {
  try {
    return sched_->submit(std::move(req));
  } catch (const QueueFull& e) {
    throw ApiError(503, std::string("server busy: ") + e.what(), "", "server_busy");
  } catch (const ResourceExhausted& e) {
    throw ApiError(503, e.what(), "", "unavailable");
  } catch (const InvalidArgument& e) {
    throw ApiError(400, e.what());
  }
}

std::vector<int32_t> CompletionService::tokenize(const std::string& text, bool add_special) const {
  return build_plain_prompt(*tok_, text, add_special && tok_->bos_id() >= 0);
}

std::string CompletionService::detokenize(const std::vector<int32_t>& ids) const {
  for (int32_t t : ids)
    if (t < 0 || t >= tok_->n_vocab())
      throw ApiError(400, "token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                              std::to_string(tok_->n_vocab()) + ")", "tokens");
  return tok_->decode(ids);
}

}  // namespace hyco
