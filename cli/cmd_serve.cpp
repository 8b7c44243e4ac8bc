// `hyco serve`: binds the port first (a port in use fails at once), loads the model in the
// background (/health answers 503 meanwhile), serves until SIGTERM/SIGINT, then drains: no new
// work, in-flight requests finish within --shutdown-grace or are cancelled, exit 0.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <thread>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/service.h"

namespace hyco {

int run_serve(const ServeOptions& o) {
  spdlog::set_default_logger(spdlog::stderr_color_mt("hyco"));  // logs on stderr, like every server
  spdlog::set_level(spdlog::level::from_str(o.log_level));
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  // Signals are taken by one thread with sigwait; every other thread has them blocked.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  ServiceOptions so;
  so.engine = o.engine;
  so.scheduler = o.scheduler;
  so.cache_seqs = o.cache_seqs;
  so.model_alias = o.model_alias;
  CompletionService svc(so);
  Metrics metrics;
  HttpServer http(svc, metrics, o.http);
  http.bind();
  const bool loopback = o.http.host == "127.0.0.1" || o.http.host == "localhost" || o.http.host == "::1";
  if (!loopback && o.http.api_key.empty())
    spdlog::warn("listening on {} without --api-key: anyone who can reach this port can use the server", o.http.host);
  spdlog::info("hyco listening on http://{}:{} (model {} from {})", o.http.host, http.port(), svc.model_name(),
               svc.model_dir());
  svc.start_loading();

  std::atomic<bool> done{false};
  std::atomic<int> exit_code{0};
  std::thread watcher([&] {
    timespec tick{0, 100 * 1000 * 1000};
    while (!done) {
      int sig = sigtimedwait(&sigs, nullptr, &tick);
      if (sig == SIGTERM || sig == SIGINT) {
        spdlog::info("{} received: draining (grace {:.1f} s)", sig == SIGTERM ? "SIGTERM" : "SIGINT", o.shutdown_grace_s);
        svc.shutdown(std::chrono::milliseconds(int64_t(o.shutdown_grace_s * 1000)));
        http.stop();
        return;
      }
      if (!svc.ready() && !svc.load_error().empty()) {
        spdlog::error("cannot serve: {}", svc.load_error());
        exit_code = 2;
        http.stop();
        return;
      }
    }
  });
  http.run();
  done = true;
  watcher.join();
  if (exit_code == 0) spdlog::info("stopped");
  return exit_code;
}

}  // namespace hyco
