#include "common/io/process_memory.h"

#include <cstdio>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"

namespace wq {
namespace {

// The "<field>: <n> kB" line of /proc/self/status, in bytes; 0 if absent.
int64_t StatusBytes(std::string_view field) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  int64_t kb = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    absl::string_view rest(line);
    if (!absl::ConsumePrefix(&rest, absl::string_view(field.data(), field.size())) ||
        !absl::ConsumePrefix(&rest, ":")) {
      continue;
    }
    rest = absl::StripAsciiWhitespace(rest);
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(rest, "kB")), &kb)) {
      kb = 0;
    }
    break;
  }
  std::fclose(f);
  return kb * 1024;
}

}  // namespace

int64_t ResidentBytes() { return StatusBytes("VmRSS"); }
int64_t PeakResidentBytes() { return StatusBytes("VmHWM"); }
int64_t AnonymousResidentBytes() { return StatusBytes("RssAnon"); }

}  // namespace wq
