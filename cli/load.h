// Loading the model a subcommand runs on, with a progress line on stderr.
#pragma once

#include <memory>
#include <string>

#include "config/engine_options.h"
#include "engine/backend.h"
#include "engine/model.h"

namespace hyco {

std::string resolve_model_dir(const EngineOptions& o);
// Loads with a progress line (bytes, tensors, seconds) on stderr when stderr is a terminal or
// the model is large.
std::unique_ptr<Model> load_model(const EngineOptions& o, Backend& backend);

}  // namespace hyco
