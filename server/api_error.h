// The error every request parser and handler throws; the HTTP edge turns it into the dialect's
// error body and status. Never thrown for engine invariants (those assert).
#pragma once

#include <stdexcept>
#include <string>

namespace hyco {

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = {}, std::string code = {})
      : std::runtime_error(message), status(status), param(std::move(param)), code(std::move(code)) {}
  int status;          // 400, 401, 404, 413, 503, ...
  std::string param;   // the offending field, when there is one
  std::string code;    // OpenAI-style machine code, e.g. "model_not_found"
};

inline ApiError bad_request(const std::string& param, const std::string& why) {
  return ApiError(400, (param.empty() ? "" : "'" + param + "' ") + why, param);
}

}  // namespace hyco
