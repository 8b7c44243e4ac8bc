// Typed access to JSON request fields: each getter either returns a valid value or throws an
// ApiError (400) that names the field and says what was expected. Absent and null mean "not
// given" everywhere.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/api_error.h"

namespace hyco::json_fields {

using nlohmann::json;

// Parses a request body; throws ApiError 400 for invalid JSON or a non-object.
json parse_body(const std::string& body);

const json* find(const json& j, const char* key);
std::optional<std::string> get_string(const json& j, const char* key);
std::optional<bool> get_bool(const json& j, const char* key);
// Integers must be whole numbers within [lo, hi] (a float like 3.0 is accepted as 3).
std::optional<int64_t> get_int(const json& j, const char* key, int64_t lo, int64_t hi);
// Finite numbers within [lo, hi].
std::optional<double> get_number(const json& j, const char* key, double lo, double hi);
// A string or a list of strings (at most max_items, none longer than max_len).
std::optional<std::vector<std::string>> get_string_list(const json& j, const char* key, size_t max_items,
                                                        size_t max_len = 1024);
// A list of integer token ids in [0, n_vocab).
std::vector<int32_t> to_tokens(const json& v, const std::string& param, int32_t n_vocab);

}  // namespace hyco::json_fields
