// Fuzz target: the safetensors header parser. Each input is written to one in-memory file
// (memfd, nothing touches the disk) and opened through its /proc/self/fd path with
// SafetensorsFile::open and TensorStore::open_file, exactly as a model file is.
//
// Findings: any exception but ModelError; a file that opens with a tensor whose bytes are not
// its shape × dtype size, lie outside the data section, or overlap another tensor's; crashes
// (every accepted tensor byte is read), leaks and UB.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine/errors.h"
#include "engine/safetensors.h"
#include "fuzz/fuzz_util.h"

using namespace hyco;

namespace {

int g_fd = -1;
std::string g_path;
volatile uint32_t g_sink = 0;  // keeps the reads of tensor bytes

struct Span {
  const uint8_t* begin;
  size_t n_bytes;
};

void check_file(const SafetensorsFile& f, size_t size) {
  FUZZ_CHECK(f.file_size() == size);
  std::vector<Span> spans;
  size_t n_total = 0;
  uint32_t sum = 0;
  for (const auto& [name, t] : f.tensors()) {
    FUZZ_CHECK(name == t.name);
    FUZZ_CHECK(t.n_elements() >= 0);
    FUZZ_CHECK(t.n_bytes == uint64_t(t.n_elements()) * dtype_size(t.dtype));
    for (size_t k = 0; k < t.n_bytes; ++k) sum += t.data[k];  // every accepted byte is mapped
    n_total += t.n_bytes;
    if (t.n_bytes) spans.push_back({t.data, t.n_bytes});
  }
  FUZZ_CHECK(n_total <= size - 8);
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < spans.size(); ++i) FUZZ_CHECK(spans[i - 1].begin + spans[i - 1].n_bytes <= spans[i].begin);
  if (!spans.empty()) FUZZ_CHECK(size_t(spans.back().begin + spans.back().n_bytes - spans.front().begin) <= size - 8);
  g_sink = sum;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_fd = memfd_create("hyco_fuzz_safetensors", MFD_CLOEXEC);
  FUZZ_CHECK(g_fd >= 0);
  g_path = "/proc/self/fd/" + std::to_string(g_fd);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FUZZ_CHECK(ftruncate(g_fd, 0) == 0);
  FUZZ_CHECK(pwrite(g_fd, data, size, 0) == ssize_t(size));
  try {
    const auto f = SafetensorsFile::open(g_path);
    check_file(*f, size);
    const TensorStore store = TensorStore::open_file(g_path);
    FUZZ_CHECK(store.tensors().size() == f->tensors().size());
    FUZZ_CHECK(store.total_bytes() <= size);
  } catch (const ModelError&) {
  }
  return 0;
}
