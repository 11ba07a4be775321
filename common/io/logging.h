// Structured logs: one JSON object per line on stderr, so that log shippers
// and tests can parse them without guessing at formats. No gRPC dependency.
//
//   {"ts":"2026-11-23T10:00:00.123Z","level":"info","service":"quantizer",
//    "event":"job_progress","job_id":"...","percent":42.0}
#ifndef WQ_COMMON_LOGGING_H_
#define WQ_COMMON_LOGGING_H_

#include <string_view>

#include "nlohmann/json.hpp"

namespace wq {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// The "service" field of every later line; set once at start-up.
void SetLogServiceName(std::string_view service);

// Writes one line atomically (lines of concurrent threads never interleave).
// `fields` must be a JSON object; its keys follow the fixed ones.
void Log(LogLevel level, std::string_view event,
         const nlohmann::json& fields = nlohmann::json::object());

inline void LogInfo(std::string_view event,
                    const nlohmann::json& fields = nlohmann::json::object()) {
  Log(LogLevel::kInfo, event, fields);
}
inline void LogWarning(std::string_view event,
                       const nlohmann::json& fields = nlohmann::json::object()) {
  Log(LogLevel::kWarning, event, fields);
}
inline void LogError(std::string_view event,
                     const nlohmann::json& fields = nlohmann::json::object()) {
  Log(LogLevel::kError, event, fields);
}

}  // namespace wq

#endif  // WQ_COMMON_LOGGING_H_
