// Typed JSON field access with errors that name the field. See json_fields.h.
#include "server/json_fields.h"

#include <cmath>
#include <cstdint>

namespace hyco::json_fields {

namespace {
std::string type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    default: return "something else";
  }
}
}  // namespace

json parse_body(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // parse errors, and numbers too large for a double
    std::string what = e.what();
    // nlohmann prefixes "[json.exception.parse_error.101] "; keep the useful part.
    auto pos = what.find("] ");
    throw ApiError(400, "request body is not valid JSON: " + (pos == std::string::npos ? what : what.substr(pos + 2)));
  }
  if (!j.is_object()) throw ApiError(400, "request body must be a JSON object, got " + type_name(j));
  return j;
}

const json* find(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<std::string> get_string(const json& j, const char* key) {
  const json* v = find(j, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) throw bad_request(key, "must be a string, got " + type_name(*v));
  return v->get<std::string>();
}

std::optional<bool> get_bool(const json& j, const char* key) {
  const json* v = find(j, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) throw bad_request(key, "must be true or false, got " + type_name(*v));
  return v->get<bool>();
}

std::optional<int64_t> get_int(const json& j, const char* key, int64_t lo, int64_t hi) {
  const json* v = find(j, key);
  if (!v) return std::nullopt;
  int64_t x = 0;
  if (v->is_number_integer()) {
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))
      throw bad_request(key, "must be at most " + std::to_string(hi));
    x = v->get<int64_t>();
  } else if (v->is_number_float()) {
    double d = v->get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9e15)
      throw bad_request(key, "must be a whole number, got " + v->dump());
    x = int64_t(d);
  } else {
    throw bad_request(key, "must be an integer, got " + type_name(*v));
  }
  if (x < lo || x > hi)
    throw bad_request(key, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(x));
  return x;
}

std::optional<double> get_number(const json& j, const char* key, double lo, double hi) {
  const json* v = find(j, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) throw bad_request(key, "must be a number, got " + type_name(*v));
  double d = v->get<double>();
  if (!std::isfinite(d) || d < lo || d > hi) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "must be a number in [%g, %g], got ", lo, hi);
    throw bad_request(key, buf + v->dump());
  }
  return d;
}

std::optional<std::vector<std::string>> get_string_list(const json& j, const char* key, size_t max_items,
                                                        size_t max_len) {
  const json* v = find(j, key);
  if (!v) return std::nullopt;
  std::vector<std::string> out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    for (const auto& e : *v) {
      if (!e.is_string()) throw bad_request(key, "must be a string or a list of strings, found " + type_name(e));
      out.push_back(e.get<std::string>());
    }
  } else {
    throw bad_request(key, "must be a string or a list of strings, got " + type_name(*v));
  }
  if (out.size() > max_items) throw bad_request(key, "has " + std::to_string(out.size()) + " entries, at most " + std::to_string(max_items) + " are allowed");
  for (const auto& s : out)
    if (s.size() > max_len) throw bad_request(key, "entries must be at most " + std::to_string(max_len) + " bytes");
  return out;
}

std::vector<int32_t> to_tokens(const json& v, const std::string& param, int32_t n_vocab) {
  if (!v.is_array()) throw bad_request(param, "must be a list of token ids");
  std::vector<int32_t> out;
  out.reserve(v.size());
  for (const auto& e : v) {
    if (!e.is_number_integer()) throw bad_request(param, "must hold integer token ids, found " + type_name(e));
    // (An id past INT64_MAX parses as an unsigned number: quote it as sent, not wrapped.)
    const bool huge = e.is_number_unsigned() && e.get<uint64_t>() > uint64_t(INT64_MAX);
    int64_t t = huge ? INT64_MAX : e.get<int64_t>();
    if (t < 0 || t >= n_vocab)
      throw bad_request(param, "token id " + e.dump() + " is outside the vocabulary [0, " + std::to_string(n_vocab) + ")");
    out.push_back(int32_t(t));
  }
  return out;
}

}  // namespace hyco::json_fields
