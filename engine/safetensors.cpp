// safetensors reading: mmap, header parsing and validation, sharded index resolution.
// A header that lies (offsets past the end, overlaps, sizes that do not match shapes) is an error.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/errors.h"

namespace hyco {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr uint64_t kMaxHeader = 100u << 20;  // the format's own limit

bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32") *out = DType::F32;
  else if (s == "F16") *out = DType::F16;
  else if (s == "BF16") *out = DType::BF16;
  else if (s == "I32") *out = DType::I32;
  else return false;
  return true;
}

}  // namespace

int64_t TensorInfo::n_elements() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string TensorInfo::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, size_);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto fail = [&](const std::string& msg) -> ModelError { return ModelError(path + ": " + msg); };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail(std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw fail("not a regular file");
  }
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->size_ = size_t(st.st_size);
  if (f->size_ < 8) {
    ::close(fd);
    throw fail("truncated: " + std::to_string(f->size_) + " bytes, too short for a safetensors header");
  }
  void* m = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) throw fail(std::string("mmap failed: ") + std::strerror(errno));
  f->map_ = m;
  const uint8_t* base = static_cast<const uint8_t*>(m);

  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);  // little-endian on every platform we build for
  if (header_len > kMaxHeader) throw fail("header length " + std::to_string(header_len) + " exceeds 100 MB");
  if (header_len > f->size_ - 8)
    throw fail("truncated: header says " + std::to_string(header_len) + " bytes but the file has " +
               std::to_string(f->size_ - 8) + " after the length");
  const uint8_t* data = base + 8 + header_len;
  const size_t data_size = f->size_ - 8 - header_len;

  json h;
  try {
    h = json::parse(reinterpret_cast<const char*>(base + 8), reinterpret_cast<const char*>(base + 8 + header_len));
  } catch (const json::exception& e) {  // parse errors, and numbers too large for a double
    throw fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!h.is_object()) throw fail("header is not a JSON object");

  struct Range {
    size_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (auto& [name, e] : h.items()) {
    if (name == "__metadata__") {
      if (e.is_object())
        for (auto& [k, v] : e.items())
          if (v.is_string()) f->metadata_[k] = v.get<std::string>();
      continue;
    }
    auto bad = [&, &name = name](const std::string& msg) { return fail("tensor '" + name + "': " + msg); };
    if (!e.is_object()) throw bad("header entry is not an object");
    TensorInfo t;
    t.name = name;
    t.file = path;
    if (!e.contains("dtype") || !e["dtype"].is_string()) throw bad("missing dtype");
    std::string dt = e["dtype"].get<std::string>();
    if (!parse_dtype(dt, &t.dtype)) throw bad("unsupported dtype '" + dt + "' (supported: F32, F16, BF16, I32)");
    if (!e.contains("shape") || !e["shape"].is_array()) throw bad("missing shape");
    int64_t n = 1;
    for (auto& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) throw bad("shape must hold non-negative integers");
      int64_t v = d.get<int64_t>();
      if (v > 0 && n > (int64_t(1) << 50) / v) throw bad("shape is absurdly large");
      t.shape.push_back(v);
      n *= v;
    }
    auto& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw bad("data_offsets must be two non-negative integers");
    uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    if (b > en) throw bad("data_offsets begin > end");
    if (en > data_size)
      throw bad("data_offsets end " + std::to_string(en) + " is past the end of the data (" + std::to_string(data_size) +
                " bytes): file truncated or header wrong");
    if (en - b != uint64_t(n) * dtype_size(t.dtype))
      throw bad("byte range of " + std::to_string(en - b) + " does not match shape " + t.shape_string() + " of " +
                dt + " (" + std::to_string(uint64_t(n) * dtype_size(t.dtype)) + " bytes)");
    t.data = data + b;
    t.n_bytes = size_t(en - b);
    auto it = f->tensors_.emplace(name, std::move(t)).first;
    ranges.push_back({size_t(b), size_t(en), &it->first});
  }
  // NOTE: compared with the range that reaches furthest so far, not just the previous one: an
  // empty range inside a tensor must not hide a later tensor that overlaps that tensor.
  std::sort(ranges.begin(), ranges.end(), [](const Range& x, const Range& y) {
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  });
  const Range* furthest = nullptr;
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;  // empty tensors hold no bytes
    if (furthest && r.begin < furthest->end)
      throw fail("tensors '" + *furthest->name + "' and '" + *r.name + "' overlap at data offset " +
                 std::to_string(r.begin));
    if (!furthest || r.end > furthest->end) furthest = &r;
  }
  return f;
}

const TensorInfo* TensorStore::find(const std::string& name) const {
  auto it = all_.find(name);
  return it == all_.end() ? nullptr : &it->second;
}

size_t TensorStore::total_bytes() const {
  size_t n = 0;
  for (auto& [_, t] : all_) n += t.n_bytes;
  return n;
}

std::string TensorStore::describe() const { return describe_; }

TensorStore TensorStore::open_file(const std::string& path) {
  TensorStore s;
  s.files_.push_back(SafetensorsFile::open(path));
  s.all_ = s.files_.back()->tensors();
  s.describe_ = fs::path(path).filename().string();
  return s;
}

TensorStore TensorStore::open_dir(const std::string& dir) {
  fs::path d(dir);
  fs::path single = d / "model.safetensors", index = d / "model.safetensors.index.json";
  if (!fs::exists(index)) {
    if (!fs::exists(single))
      throw ModelError(dir + ": no model.safetensors and no model.safetensors.index.json");
    return open_file(single.string());
  }
  std::ifstream in(index);
  std::stringstream ss;
  ss << in.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::exception& e) {  // parse errors, and numbers too large for a double
    throw ModelError(index.string() + ": invalid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw ModelError(index.string() + ": missing 'weight_map' object");
  std::map<std::string, std::string> weight_map;
  std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
  for (auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string()) throw ModelError(index.string() + ": weight_map entry '" + name + "' is not a file name");
    std::string fn = file.get<std::string>();
    if (fn.find('/') != std::string::npos || fn.find("..") != std::string::npos)
      throw ModelError(index.string() + ": shard name '" + fn + "' must be a plain file name");
    weight_map[name] = fn;
    shards.emplace(fn, nullptr);
  }
  TensorStore s;
  for (auto& [fn, ptr] : shards) {
    ptr = SafetensorsFile::open((d / fn).string());
    s.files_.push_back(ptr);
  }
  for (auto& [fn, ptr] : shards)
    for (auto& [name, t] : ptr->tensors()) {
      auto it = weight_map.find(name);
      if (it == weight_map.end())
        throw ModelError((d / fn).string() + ": tensor '" + name + "' is not listed in " + index.filename().string());
      if (it->second != fn)
        throw ModelError((d / fn).string() + ": tensor '" + name + "' is listed in " + index.filename().string() +
                         " as being in " + it->second);
      s.all_.emplace(name, t);
    }
  for (auto& [name, fn] : weight_map)
    if (!s.all_.count(name))
      throw ModelError((d / fn).string() + ": tensor '" + name + "' named by the index is missing from the shard");
  s.describe_ = std::to_string(shards.size()) + " shards";
  return s;
}

}  // namespace hyco
