// Typed errors of the engine. The CLI and the HTTP edge map them to exit codes / statuses;
// invariants inside the engine use HYCO_ASSERT instead.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace hyco {

// A model directory, config or weight file that cannot be used. The message names the file and,
// where there is one, the tensor.
class ModelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A request the engine cannot serve as asked (too long, bad sampling parameters, ...).
class InvalidArgument : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The engine is out of a resource (KV memory, sequences); retry later.
class ResourceExhausted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace hyco

#define HYCO_ASSERT(cond)                                                              \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                    \
    }                                                                                  \
  } while (0)
