// Injectable time. Code that measures durations or deadlines takes a Clock& so tests can
// drive time by hand (FakeClock) instead of sleeping.
//
// Only steady (monotonic) time lives here: it never goes backwards and has no relation to
// the calendar. Wall-clock time for logs and file names comes from elsewhere.
#pragma once

#include <atomic>
#include <cstdint>

namespace cleave {

class Clock {
 public:
  virtual ~Clock() = default;
  // Microseconds since an arbitrary fixed origin; never decreases. Safe from any thread.
  virtual int64_t NowMicros() const = 0;
};

// The process-wide steady clock (std::chrono::steady_clock). Lives for the whole program.
Clock& SystemClock();

// A clock that moves only when told. All methods are safe to call concurrently; readers see
// every update in a single total order, and time never runs backwards.
class FakeClock : public Clock {
 public:
  explicit FakeClock(int64_t start_micros = 0) : now_micros_(start_micros) {}

  int64_t NowMicros() const override { return now_micros_.load(); }

  // Moves time forward by `micros`. A negative step is treated as 0 (steady time cannot
  // go back).
  void Advance(int64_t micros);

  // Moves time to `now_micros` if that is not earlier than the current time; an earlier
  // value is ignored for the same reason.
  void Set(int64_t now_micros);

 private:
  std::atomic<int64_t> now_micros_;
};

}  // namespace cleave
