// Options of `hyco serve`: HTTP edge, scheduler, logging, and the JSON config file that can
// set any of them. CLI flags win over HYCO_* environment variables, which win over the file.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "config/engine_options.h"
#include "engine/scheduler.h"

namespace hyco {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8012;
  std::string api_key;                    // required as "Authorization: Bearer <key>" except on /health
  std::vector<std::string> cors_origins;  // allowed browser origins ("*" for any); empty: CORS off
  std::vector<std::string> allowed_hosts;  // Host names served besides loopback ones ("*": any)
  size_t max_body_bytes = 8u << 20;
  int threads = 64;                       // HTTP worker threads: open streams + idle keep-alive connections
  double request_timeout_s = 600;         // a completion still running after this is cancelled
  int read_timeout_s = 30;                // a request must arrive in full within this; also per read/write
};

struct ServeOptions {
  EngineOptions engine;
  HttpOptions http;
  SchedulerConfig scheduler;
  int cache_seqs = 8;             // finished sequences kept for prefix reuse
  std::string model_alias;        // the model's name in the API
  double shutdown_grace_s = 10;   // on SIGTERM, in-flight requests get this long to finish
  std::string log_level = "info";
  std::string config_file;
};

void add_serve_options(CLI::App& app, ServeOptions& o);

// Applies a JSON config file: each key names a long option without dashes ("port",
// "kv-memory", "cors-origins"); options already given on the command line or in the
// environment keep their value. Throws InvalidArgument naming the file and the key.
void apply_config_file(CLI::App& app, const std::string& path);

}  // namespace hyco
