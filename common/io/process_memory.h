// This process's memory as Linux reports it in /proc/self/status, for job
// reports and benchmarks.
#ifndef WQ_COMMON_PROCESS_MEMORY_H_
#define WQ_COMMON_PROCESS_MEMORY_H_

#include <cstdint>

namespace wq {

// Resident set now (VmRSS) in bytes; 0 if unknown.
int64_t ResidentBytes();
// Peak resident set (VmHWM) in bytes; 0 if unknown.
int64_t PeakResidentBytes();
// Anonymous resident memory now (RssAnon): what the process allocated, not
// the file pages it maps, which the kernel can drop. 0 if unknown.
int64_t AnonymousResidentBytes();

}  // namespace wq

#endif  // WQ_COMMON_PROCESS_MEMORY_H_
