#include "common/clock.h"

#include <chrono>

namespace cleave {
namespace {

class SteadyClock final : public Clock {
 public:
  int64_t NowMicros() const override {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

}  // namespace

Clock& SystemClock() {
  // Never destroyed, so it stays usable from other static destructors and detached threads.
  static SteadyClock* const clock = new SteadyClock();
  return *clock;
}

void FakeClock::Advance(int64_t micros) {
  if (micros > 0) now_micros_.fetch_add(micros);
}

void FakeClock::Set(int64_t now_micros) {
  int64_t current = now_micros_.load();
  while (now_micros > current && !now_micros_.compare_exchange_weak(current, now_micros)) {
  }
}

}  // namespace cleave
