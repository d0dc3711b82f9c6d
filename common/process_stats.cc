#include "common/process_stats.h"

#include <fstream>
#include <sstream>
#include <string>

namespace cleave {
namespace {

int64_t StatusFieldKib(const std::string& path, const std::string& field) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      std::istringstream value(line.substr(field.size() + 1));
      int64_t kib = 0;
      if (value >> kib) return kib;
      return 0;
    }
  }
  return 0;
}

}  // namespace

int64_t PeakRssBytes() { return StatusFieldKib("/proc/self/status", "VmHWM") * 1024; }
int64_t CurrentRssBytes() { return StatusFieldKib("/proc/self/status", "VmRSS") * 1024; }
int64_t ProcessRssBytes(pid_t pid, const char* field) {
  return StatusFieldKib("/proc/" + std::to_string(pid) + "/status", field) * 1024;
}

}  // namespace cleave
