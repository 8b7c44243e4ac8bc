// The hyco binary: `hyco serve | complete | bench | info`. Parses the command line (CLI11) and
// maps typed errors to exit codes with one clear message; no engine logic here.
#include <cstdio>
#include <exception>
#include <filesystem>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "engine/errors.h"
#include "tokenizer/tokenizer.h"

namespace hyco {

std::string preset_path(const std::string& name) {
  namespace fs = std::filesystem;
  if (fs::exists(name) && fs::is_regular_file(name)) return name;
  fs::path p = fs::path(HYCO_SHAPES_DIR) / (name + ".json");
  if (!fs::exists(p)) {
    std::string known;
    if (fs::exists(HYCO_SHAPES_DIR))
      for (auto& e : fs::directory_iterator(HYCO_SHAPES_DIR))
        if (e.path().extension() == ".json") known += (known.empty() ? "" : ", ") + e.path().stem().string();
    throw InvalidArgument("unknown preset '" + name + "' (known: " + known + ")");
  }
  return p.string();
}

}  // namespace hyco

#ifndef HYCO_HAVE_SERVER
#define HYCO_HAVE_SERVER 0
#endif

int main(int argc, char** argv) {
  using namespace hyco;
  CLI::App app{"hyco — local code-completion server with hybrid attention"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "hyco 0.1.0");

  ServeOptions serve;
#if HYCO_HAVE_SERVER
  auto* serve_cmd = app.add_subcommand("serve", "Serve completions over HTTP (OpenAI, llama.cpp and Ollama routes)");
  add_serve_options(*serve_cmd, serve);
#endif

  InfoArgs info;
  auto* info_cmd = app.add_subcommand("info", "Print a model's shape, attention pattern and KV bytes per token");
  add_engine_options(*info_cmd, info.engine);
  info_cmd->add_option("--preset", info.preset, "A shape under models/shapes (e.g. codellama-7b) instead of a model");

  CompleteArgs comp;
  auto* comp_cmd = app.add_subcommand("complete", "Print one completion of a prompt (with --suffix: fill in the middle)");
  add_engine_options(*comp_cmd, comp.engine);
  comp_cmd->add_option("-p,--prompt", comp.prompt, "Text before the cursor")->required();
  auto* suf = comp_cmd->add_option("-s,--suffix", comp.suffix, "Text after the cursor (fill-in-the-middle)");
  comp_cmd->add_option("-n,--max-tokens", comp.max_tokens, "Tokens to generate")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  comp_cmd->add_option("--temperature", comp.temperature, "0: greedy")->check(finite_range(0.0, 100.0))->capture_default_str();
  comp_cmd->add_option("--top-k", comp.top_k, "0: off")->check(CLI::Range(0, 1 << 24))->capture_default_str();
  comp_cmd->add_option("--top-p", comp.top_p, "1: off")->check(finite_range_open_low(0.0, 1.0))->capture_default_str();
  comp_cmd->add_option("--min-p", comp.min_p, "0: off")->check(finite_range(0.0, 1.0))->capture_default_str();
  comp_cmd->add_option("--seed", comp.seed, "Sampling seed")->capture_default_str();
  comp_cmd->add_flag("--stats", comp.stats, "Print timings to stderr");

  BenchArgs bench;
  auto* bench_cmd = app.add_subcommand("bench", "Measure prefill/decode speed and KV memory against context length");
  add_engine_options(*bench_cmd, bench.engine);
  bench_cmd->add_option("--preset", bench.preset, "Shape preset with random weights (models/shapes); default: --model or the default model's shape");
  bench_cmd->add_option("--configs", bench.configs, "Attention configurations: model, global, local, hybrid, or specs like 'pattern=LLLG,window=4096'")
      ->delimiter(';')
      ->capture_default_str();
  bench_cmd->add_option("--contexts", bench.contexts, "Context lengths")->delimiter(',')->capture_default_str();
  bench_cmd->add_option("--window", bench.window, "Window of the local/hybrid configurations (0: the model's, else 1024)")->check(CLI::Range(0, 1 << 24))->capture_default_str();
  bench_cmd->add_option("--decode-tokens", bench.decode_tokens, "Decode steps timed per context")->check(CLI::Range(1, 100000))->capture_default_str();
  bench_cmd->add_option("--batch", bench.batch, "Sequences decoded together (aggregate tokens/s)")->check(CLI::Range(1, 4096))->capture_default_str();
  bench_cmd->add_option("--chunk", bench.chunk, "Prefill tokens per forward")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  bench_cmd->add_option("--repeat", bench.repeat, "Repeat each timing, keep the best")->check(CLI::Range(1, 100))->capture_default_str();
  bench_cmd->add_option("--json", bench.json, "Write the results as JSON to this file");
  bench_cmd->add_option("--seed", bench.seed, "Seed of the random weights")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  comp.has_suffix = suf->count() > 0;
  try {
#if HYCO_HAVE_SERVER
    if (*serve_cmd) {
      if (!serve.config_file.empty()) apply_config_file(*serve_cmd, serve.config_file);
      return run_serve(serve);
    }
#endif
    if (*info_cmd) return run_info(info);
    if (*comp_cmd) return run_complete(comp);
    if (*bench_cmd) return run_bench(bench);
  } catch (const ModelError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const TokenizerError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const InvalidArgument& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const ResourceExhausted& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
