// Model loading for the CLI: directory resolution and the progress line.
#include "cli/load.h"

#include <unistd.h>

#include <cstdio>

namespace hyco {

std::string resolve_model_dir(const EngineOptions& o) { return o.model.empty() ? default_model_dir() : o.model; }

std::unique_ptr<Model> load_model(const EngineOptions& o, Backend& backend) {
  LoadOptions lo = to_load_options(o);
  const bool tty = isatty(STDERR_FILENO);
  double last = -1;
  lo.progress = [&](const LoadProgress& p) {
    const bool final = p.tensors_done == p.tensors_total;
    if (!final && p.seconds - last < 0.25) return;
    if (!tty && !final) return;
    last = p.seconds;
    std::fprintf(stderr, "%sloading model: %.1f / %.1f MB, %d / %d tensors, %.1f s%s", tty ? "\r" : "",
                 double(p.bytes_done) / 1e6, double(p.bytes_total) / 1e6, p.tensors_done, p.tensors_total, p.seconds,
                 final || !tty ? "\n" : "");
    std::fflush(stderr);
  };
  return Model::load(resolve_model_dir(o), backend, lo);
}

}  // namespace hyco
