// The HTTP edge: binds the listening socket, registers every route of DESIGN.md's table (the only
// file that includes cpp-httplib), checks the API key, body size and CORS, streams SSE/NDJSON,
// notices clients that leave and cancels their work, logs one line per completion.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/server_options.h"
#include "server/metrics.h"
#include "server/service.h"

namespace hyco {

class HttpServer {
 public:
  HttpServer(CompletionService& svc, Metrics& metrics, const HttpOptions& opts);
  ~HttpServer();
  // Throws std::runtime_error naming host:port when the socket cannot be bound (e.g. in use).
  void bind();
  int port() const;
  // Serves until stop(); returns when every in-flight request has ended.
  void run();
  // Stops accepting connections (thread-safe, idempotent).
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hyco
