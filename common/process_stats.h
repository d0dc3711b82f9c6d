// Memory figures of the running process, for benchmark reports and round histories.
#pragma once

#include <cstdint>

namespace cleave {

// Peak resident set size (VmHWM from /proc/self/status), in bytes; 0 when unavailable.
int64_t PeakRssBytes();
// Current resident set size (VmRSS), in bytes; 0 when unavailable.
int64_t CurrentRssBytes();

}  // namespace cleave
