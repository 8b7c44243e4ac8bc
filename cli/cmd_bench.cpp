// `hyco bench`: prefill and decode speed, achieved GFLOP/s and GB/s, and KV bytes against context
// length, for several attention configurations of one model (random weights of a preset shape,
// or a real model). Prints a table and optionally writes JSON.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "kernels/backend_select.h"
#include "cli/commands.h"
#include "cli/load.h"
#include "engine/errors.h"
#include "engine/sampler.h"

namespace hyco {
namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown cpu";
}

// Keys a query at position p sees in one layer of the given kind.
int64_t keys_seen(const ModelConfig& c, LayerKind k, int64_t p) {
  if (k == LayerKind::Global) return p + 1;
  int64_t win = std::min<int64_t>(p + 1, c.window);
  int64_t sinks = std::min<int64_t>(c.n_sinks, std::max<int64_t>(0, p + 1 - c.window));
  return win + sinks;
}

// FLOPs of the projections and MLP for one token (2 per multiply-add).
double matmul_flops_per_token(const ModelConfig& c) {
  double per_layer = double(c.d_model) * c.qkv_width() + double(c.q_width()) * c.d_model + 3.0 * c.d_model * c.d_ff;
  return 2.0 * per_layer * c.n_layers;
}

double attention_flops(const ModelConfig& c, int64_t p) {
  double keys = 0;
  for (LayerKind k : c.layer_kinds) keys += double(keys_seen(c, k, p));
  return 4.0 * c.q_width() * keys;  // QKᵀ and PV
}

// Bytes a decode step at position p reads: every matrix once, plus the keys and values it attends.
double decode_bytes(const ModelConfig& c, size_t w_elem, size_t kv_elem, int64_t p) {
  double mats = (matmul_flops_per_token(c) / 2.0 + double(c.n_vocab) * c.d_model) * double(w_elem);
  double keys = 0;
  for (LayerKind k : c.layer_kinds) keys += double(keys_seen(c, k, p));
  return mats + keys * 2.0 * c.kv_width() * double(kv_elem);
}

AttentionOverride config_override(const std::string& name, const ModelConfig& base, int window) {
  AttentionOverride o;
  int w = window > 0 ? window : (base.window > 0 ? base.window : 1024);
  if (name == "model") {
    o.pattern = base.layer_kinds;
    o.window = base.window;
    o.sinks = base.n_sinks;
  } else if (name == "global") {
    o.pattern = {LayerKind::Global};
  } else if (name == "local") {
    o.pattern = {LayerKind::Local};
    o.window = w;
    o.sinks = 0;
  } else if (name == "hybrid") {
    o.pattern = {LayerKind::Local, LayerKind::Local, LayerKind::Local, LayerKind::Global};
    o.window = w;
    o.sinks = 0;
  } else {
    o = parse_attention_override(name, "--configs");
  }
  return o;
}

}  // namespace

int run_bench(const BenchArgs& a) {
  // Checked before the model is built. (Past 4M positions the KV cache of a model of any size is
  // tens of GB: a typo, not a test.)
  if (a.contexts.empty()) throw InvalidArgument("--contexts: none given");
  for (int ctx : a.contexts)
    if (ctx < 1 || ctx > (1 << 22)) throw InvalidArgument("--contexts: " + std::to_string(ctx) + " is not in [1, 4194304]");
  auto backend = make_backend(a.engine.device, a.engine.threads);
  std::unique_ptr<Model> model;
  std::string source;
  if (!a.preset.empty() || a.engine.model.empty()) {
    std::string preset = a.preset.empty() ? "hyco-rust" : a.preset;
    ModelConfig c = load_model_config(preset_path(preset));
    source = "preset " + preset + " (random weights)";
    auto t = clock_type::now();
    model = Model::random(c, *backend, a.seed, parse_dtype_option(a.engine.weights, "--weights", true));
    std::fprintf(stderr, "built %s in %.1f s\n", source.c_str(), seconds_since(t));
  } else {
    source = resolve_model_dir(a.engine);
    model = load_model(a.engine, *backend);
  }
  const ModelConfig base = model->config();
  const size_t w_elem = dtype_size(model->matrix_dtype());

  nlohmann::json out;
  out["machine"] = {{"cpu", cpu_model_name()}, {"hardware_threads", std::thread::hardware_concurrency()},
                    {"backend", backend->describe()}};
  out["model"] = {{"source", source},
                  {"architecture", base.architecture},
                  {"parameters", base.n_params()},
                  {"matrix_dtype", std::string(dtype_name(model->matrix_dtype()))},
                  {"weight_bytes", model->weight_bytes()}};
  out["settings"] = {{"decode_tokens", a.decode_tokens}, {"chunk", a.chunk}, {"repeat", a.repeat}};
  out["results"] = nlohmann::json::array();
  // The JSON is rewritten after every row (through a temporary file, renamed over it), so a run
  // stopped by a time limit keeps what it measured.
  auto write_json = [&] {
    if (a.json.empty()) return;
    const std::string tmp = a.json + ".tmp";
    {
      std::ofstream f(tmp);
      if (!f) throw InvalidArgument("--json: cannot write " + tmp);
      f << out.dump(2) << "\n";
      if (!f.flush()) throw InvalidArgument("--json: cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), a.json.c_str()) != 0) throw InvalidArgument("--json: cannot write " + a.json);
  };
  write_json();

  std::printf("# %s on %s\n", source.c_str(), backend->describe().c_str());
  std::printf("# %.1f M parameters, matrices %s, %s\n", double(base.n_params()) / 1e6,
              std::string(dtype_name(model->matrix_dtype())).c_str(), cpu_model_name().c_str());
  std::printf("%-10s %-12s %7s | %10s %8s | %9s %8s | %12s %10s\n", "config", "pattern", "ctx", "prefill/s",
              "GFLOP/s", "decode/s", "GB/s", "KV B/token", "KV MiB");

  std::mt19937 rng(uint32_t(a.seed));
  for (const std::string& name : a.configs) {
    model->set_attention(config_override(name, base, a.window));
    const ModelConfig& c = model->config();
    for (int ctx : a.contexts) {
      const int B = a.batch;
      KvCacheConfig kc = to_kv_config(a.engine, c, default_kv_dtype(*backend, model->matrix_dtype()), B);
      kc.n_ctx = ctx + a.decode_tokens + 1;
      kc.memory_bytes = 0;
      KvCache kv(c, *backend, kc);
      std::vector<int32_t> prompt(static_cast<size_t>(ctx));
      for (auto& t : prompt) t = int32_t(rng() % uint32_t(c.n_vocab));

      // Prefill: the prompt of every sequence, one sequence at a time, in chunks (best of --repeat).
      double prefill_s = 1e30, decode_s = 1e30;
      std::vector<float> logits;
      Batch b;
      std::vector<SeqId> seqs;
      // Every sequence's prompt from scratch; returns the seconds per sequence.
      auto prefill_all = [&] {
        for (SeqId s : seqs) kv.release(s);
        seqs.clear();
        double total = 0;
        for (int i = 0; i < B; ++i) {
          SeqId seq = *kv.create();
          seqs.push_back(seq);
          auto t = clock_type::now();
          for (int done = 0; done < ctx;) {
            int n = std::min(a.chunk, ctx - done);
            b.clear();
            b.add(seq, std::span<const int32_t>(prompt.data() + done, size_t(n)), done + n == ctx);
            model->forward(b, kv, logits);
            done += n;
          }
          backend->sync();
          total += seconds_since(t);
        }
        return total / B;
      };
      for (int rep = 0; rep < a.repeat; ++rep) prefill_s = std::min(prefill_s, prefill_all());
      // Decode: every sequence one token per step, all in one batch; with --repeat, roll back
      // and decode again. A local layer's ring keeps only --kv-rollback tokens past its window,
      // so longer decodes start again from a fresh prefill (untimed).
      const int32_t base_len = kv.length(seqs[0]);
      std::vector<int32_t> next(size_t(B), std::max(0, Sampler::argmax(std::span<const float>(logits.data(), size_t(c.n_vocab)))));
      for (int rep = 0; rep < a.repeat; ++rep) {
        if (rep && kv.min_length(seqs[0]) > base_len)
          prefill_all();
        else if (rep)
          for (SeqId s : seqs) kv.truncate(s, base_len);
        auto t = clock_type::now();
        for (int i = 0; i < a.decode_tokens; ++i) {
          b.clear();
          for (int k = 0; k < B; ++k) b.add(seqs[size_t(k)], std::span<const int32_t>(&next[size_t(k)], 1));
          model->forward(b, kv, logits);
          for (int k = 0; k < B; ++k) {
            // Greedy, as the server picks it.
            const std::span<const float> row(logits.data() + size_t(k) * size_t(c.n_vocab), size_t(c.n_vocab));
            next[size_t(k)] = std::max(0, Sampler::argmax(row));
          }
        }
        decode_s = std::min(decode_s, seconds_since(t));
      }
      const SeqId seq = seqs[0];
      double pf_flops = matmul_flops_per_token(c) * ctx + 2.0 * c.d_model * c.n_vocab;
      for (int64_t p = 0; p < ctx; ++p) pf_flops += attention_flops(c, p);
      double dec_bytes = 0, dec_flops = 0;
      for (int i = 0; i < a.decode_tokens; ++i) {
        // The weights are read once per step for the whole batch; keys once per sequence.
        const double w_bytes = decode_bytes(c, w_elem, dtype_size(kc.dtype), 0) -
                               decode_bytes(c, 0, dtype_size(kc.dtype), 0);
        dec_bytes += w_bytes + B * (decode_bytes(c, 0, dtype_size(kc.dtype), ctx + i));
        dec_flops += B * (matmul_flops_per_token(c) + 2.0 * c.d_model * c.n_vocab + attention_flops(c, ctx + i));
      }
      const int64_t kv_bytes = kv.bytes_used() / B;  // per sequence
      const int64_t n_pos = kv.length(seq);
      nlohmann::json r = {{"config", name},
                          {"pattern", c.pattern_string()},
                          {"window", c.window},
                          {"sinks", c.n_sinks},
                          {"context", ctx},
                          {"prefill_seconds", prefill_s},
                          {"prefill_tokens_per_s", ctx / prefill_s},
                          {"prefill_gflops", pf_flops / prefill_s / 1e9},
                          {"batch", B},
                          {"decode_tokens_per_s", double(B) * a.decode_tokens / decode_s},
                          {"decode_gflops", dec_flops / decode_s / 1e9},
                          {"decode_gbytes_per_s", dec_bytes / decode_s / 1e9},
                          {"kv_dtype", std::string(dtype_name(kc.dtype))},
                          {"kv_bytes", kv_bytes},
                          {"kv_bytes_per_token", double(kv_bytes) / double(n_pos)}};
      out["results"].push_back(r);
      write_json();
      std::printf("%-10s %-12s %7d | %10.0f %8.1f | %9.1f %8.1f | %12.0f %10.2f\n", name.c_str(),
                  c.pattern_string().substr(0, 12).c_str(), ctx, ctx / prefill_s, pf_flops / prefill_s / 1e9,
                  double(B) * a.decode_tokens / decode_s, dec_bytes / decode_s / 1e9, double(kv_bytes) / double(n_pos),
                  double(kv_bytes) / 1048576.0);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace hyco
