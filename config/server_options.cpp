// `hyco serve` options and the JSON config file. See server_options.h.
#include "config/server_options.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/errors.h"

namespace hyco {

void add_serve_options(CLI::App& app, ServeOptions& o) {
  add_engine_options(app, o.engine);
  app.add_option("--host", o.http.host, "Address to listen on (0.0.0.0: every interface; set --api-key then)")
      ->envname("HYCO_HOST")
      ->check(kNotEmpty)
      ->capture_default_str();
  app.add_option("--port", o.http.port, "Port to listen on (0: any free port)")
      ->envname("HYCO_PORT")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  app.add_option("--api-key", o.http.api_key, "Require 'Authorization: Bearer <key>' on every route but /health")
      ->envname("HYCO_API_KEY");
  app.add_option("--cors-origins", o.http.cors_origins, "Browser origins allowed by CORS, comma separated ('*': any); default: CORS off")
      ->envname("HYCO_CORS_ORIGINS")
      ->delimiter(',');
  app.add_option("--allowed-hosts", o.http.allowed_hosts,
                 "Host header names served besides localhost/127.x/[::1] while listening on loopback (a reverse proxy's public name), comma separated ('*': any)")
      ->envname("HYCO_ALLOWED_HOSTS")
      ->delimiter(',');
  app.add_option("--max-body", o.http.max_body_bytes, "Largest request body in bytes (larger: 413)")
      ->envname("HYCO_MAX_BODY")
      ->check(CLI::Range(size_t(1024), size_t(1) << 30))
      ->capture_default_str();
  app.add_option("--http-threads", o.http.threads, "HTTP worker threads (each open stream or idle keep-alive connection holds one)")
      ->envname("HYCO_HTTP_THREADS")
      ->check(CLI::Range(2, 4096))
      ->capture_default_str();
  app.add_option("--timeout", o.http.request_timeout_s, "Seconds after which a completion is cancelled")
      ->envname("HYCO_TIMEOUT")
      ->check(finite_range(0.001, 86400.0))
      ->capture_default_str();
  app.add_option("--read-timeout", o.http.read_timeout_s, "Seconds a client has to send a whole request (headers and body); also the limit on each read and write")
      ->envname("HYCO_READ_TIMEOUT")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  app.add_option("--parallel", o.scheduler.parallel, "Sequences generated at once (continuous batching)")
      ->envname("HYCO_PARALLEL")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("-b,--batch-tokens", o.scheduler.batch_tokens, "Tokens per scheduler step (decode tokens + prefill chunks)")
      ->envname("HYCO_BATCH_TOKENS")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-queue", o.scheduler.max_queue, "Requests that may wait for a slot; more get 503")
      ->envname("HYCO_MAX_QUEUE")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--cache-seqs", o.cache_seqs, "Finished sequences kept in the KV cache for prefix reuse")
      ->envname("HYCO_CACHE_SEQS")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  app.add_option("--alias", o.model_alias, "Model name clients use (default: the model directory's name)")
      ->envname("HYCO_ALIAS");
  app.add_option("--shutdown-grace", o.shutdown_grace_s, "Seconds in-flight requests get to finish on SIGTERM")
      ->envname("HYCO_SHUTDOWN_GRACE")
      ->check(finite_range(0.0, 3600.0))
      ->capture_default_str();
  app.add_option("--log-level", o.log_level, "trace, debug, info, warn, error, off")
      ->envname("HYCO_LOG_LEVEL")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
      ->capture_default_str();
  app.add_option("--config", o.config_file, "JSON file with any of these options by long name, e.g. {\"port\": 8080}")
      ->envname("HYCO_CONFIG");
}

void apply_config_file(CLI::App& app, const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw InvalidArgument("--config " + path + ": is a directory, not a JSON file");
  std::ifstream in(path);
  if (!in) throw InvalidArgument("--config " + path + ": cannot open the file");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  // A key given twice would silently take its last value: refused, like any other mistake.
  std::set<std::string> seen;
  std::string twice;
  const nlohmann::json::parser_callback_t no_repeats = [&](int depth, nlohmann::json::parse_event_t event,
                                                           nlohmann::json& parsed) {
    if (depth == 1 && event == nlohmann::json::parse_event_t::key && parsed.is_string() &&
        !seen.insert(parsed.get<std::string>()).second && twice.empty())
      twice = parsed.get<std::string>();
    return true;
  };
  try {
    j = nlohmann::json::parse(ss.str(), no_repeats, true, /*ignore_comments=*/true);
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument("--config " + path + ": not valid JSON: " + e.what());
  }
  if (!twice.empty()) throw InvalidArgument("--config " + path + ": '" + twice + "' is given more than once");
  if (!j.is_object()) throw InvalidArgument("--config " + path + ": must hold a JSON object of option: value");
  for (auto& item : j.items()) {
    const std::string key = item.key();
    const nlohmann::json& value = item.value();
    if (key == "config") throw InvalidArgument("--config " + path + ": a config file cannot name another");
    CLI::Option* opt = app.get_option_no_throw("--" + key);
    if (!opt) throw InvalidArgument("--config " + path + ": unknown option '" + key + "'");
    if (opt->count() > 0) continue;  // given on the command line or in the environment
    std::vector<std::string> vals;
    auto one = [&](const nlohmann::json& v) {
      if (v.is_string()) vals.push_back(v.get<std::string>());
      else if (v.is_boolean()) vals.push_back(v.get<bool>() ? "true" : "false");
      else if (v.is_number()) vals.push_back(v.dump());
      else throw InvalidArgument("--config " + path + ": '" + key + "' must be a string, number, boolean or a list of them");
    };
    if (value.is_array()) {
      if (value.empty()) continue;  // an empty list leaves the default (empty) in place
      for (const auto& v : value) one(v);
    } else {
      one(value);
    }
    try {
      opt->add_result(vals);
      opt->run_callback();
    } catch (const CLI::Error& e) {
      throw InvalidArgument("--config " + path + ": '" + key + "': " + e.what());
    }
  }
}

}  // namespace hyco
