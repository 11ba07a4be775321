#include "common/io/logging.h"

#include <cstdio>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace wq {
namespace {

absl::Mutex g_mu;
std::string* g_service ABSL_GUARDED_BY(g_mu) = nullptr;

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "info";
}

}  // namespace

void SetLogServiceName(std::string_view service) {
  absl::MutexLock lock(&g_mu);
  delete g_service;
  g_service = new std::string(service);
}

void Log(LogLevel level, std::string_view event, const nlohmann::json& fields) {
  // ordered_json keeps ts/level/service/event first, which reads better.
  nlohmann::ordered_json line;
  line["ts"] = absl::FormatTime("%Y-%m-%d%ET%H:%M:%E3SZ", absl::Now(),
                                absl::UTCTimeZone());
  line["level"] = LevelName(level);
  {
    absl::MutexLock lock(&g_mu);
    line["service"] = g_service != nullptr ? *g_service : "";
  }
  line["event"] = std::string(event);
  if (fields.is_object()) {
    for (auto it = fields.begin(); it != fields.end(); ++it) {
      line[it.key()] = it.value();
    }
  } else if (!fields.is_null()) {
    line["fields"] = fields;
  }
  // Untrusted strings (prompts, ids) may hold invalid UTF-8: replace it
  // rather than throw.
  std::string text =
      line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text.push_back('\n');
  absl::MutexLock lock(&g_mu);
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

}  // namespace wq
