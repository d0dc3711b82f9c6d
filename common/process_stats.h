// Memory figures of the running process, for benchmark reports and round histories.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace cleave {

// Peak resident set size (VmHWM from /proc/self/status), in bytes; 0 when unavailable.
int64_t PeakRssBytes();
// Current resident set size (VmRSS), in bytes; 0 when unavailable.
int64_t CurrentRssBytes();
// Another process's resident set size: `field` is "VmRSS" (current) or "VmHWM" (peak), read
// from /proc/<pid>/status, in bytes; 0 when unavailable (no such process, no such field).
int64_t ProcessRssBytes(pid_t pid, const char* field);

}  // namespace cleave
