// Memory-mapped, validated reading of safetensors files, single or sharded (HF index.json).
// Owns the mapping and the header checks; knows nothing of which tensors a model needs.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace hyco {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the mapping; valid while the file is open
  size_t n_bytes = 0;
  std::string file;  // for error messages

  int64_t n_elements() const;
  std::string shape_string() const;  // "[4096, 11008]"
};

// One mapped file. Every header entry is checked against the file: known dtype, shape × dtype size
// equal to the byte range, ranges inside the data section and not overlapping.
class SafetensorsFile {
 public:
  // Throws ModelError naming the file (and the tensor) on any problem.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  size_t file_size() const { return size_; }

 private:
  SafetensorsFile() = default;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model directory: `model.safetensors`, or the shards named by
// `model.safetensors.index.json` (each tensor must be in the shard the index names, exactly once).
class TensorStore {
 public:
  static TensorStore open_dir(const std::string& dir);  // throws ModelError
  // A single file (tests, reference outputs).
  static TensorStore open_file(const std::string& path);

  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, TensorInfo>& tensors() const { return all_; }
  size_t total_bytes() const;
  std::string describe() const;  // "model.safetensors" or "3 shards"

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, TensorInfo> all_;
  std::string describe_;
};

}  // namespace hyco
