// The subcommands of the hyco binary and their arguments. main.cpp parses, these run.
#pragma once

#include <string>
#include <vector>

#include "config/engine_options.h"
#include "config/server_options.h"

namespace hyco {

struct InfoArgs {
  EngineOptions engine;
  std::string preset;  // a shape under models/shapes instead of a model directory
};

struct CompleteArgs {
  EngineOptions engine;
  std::string prompt;
  std::string suffix;
  bool has_suffix = false;
  int max_tokens = 64;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  unsigned long long seed = 0;
  bool stats = false;
};

struct BenchArgs {
  EngineOptions engine;
  std::string preset;                        // shape preset (random weights); default: the default model's shape
  std::vector<std::string> configs = {"model"};  // model | global | local | hybrid | an --attention spec
  std::vector<int> contexts = {512, 1024, 2048, 4096, 8192, 16384};
  int window = 0;          // window for local/hybrid configs (0: the model's, else 1024)
  int decode_tokens = 32;  // decode steps timed at each context
  int batch = 1;           // sequences decoded together (each with a prompt of the context length)
  int chunk = 512;         // prefill tokens per forward
  int repeat = 1;          // best of N timings
  std::string json;        // write results here
  unsigned long long seed = 1;
};

int run_info(const InfoArgs& a);
int run_serve(const ServeOptions& o);
int run_complete(const CompleteArgs& a);
int run_bench(const BenchArgs& a);

// Path of models/shapes/<name>.json (also accepts a path to a config file).
std::string preset_path(const std::string& name);

}  // namespace hyco
