// A terminal progress bar with rate and ETA for long work (training, benchmarks).
//
// On a TTY the bar redraws in place ("\r" + erase-to-end-of-line), at most ~10 times a
// second. Elsewhere (CI logs, files) it prints one plain line each time progress crosses
// another 10%, so logs stay short. Not thread-safe: call from one thread (the one doing
// or coordinating the work).
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace cleave {

class ProgressBar {
 public:
  // Monotonic time in seconds; injectable so tests need not sleep.
  using Clock = std::function<double()>;

  // Draws to `out` (borrowed: must outlive the bar). `total` = 0 means unknown: the bar
  // then shows count, rate and elapsed time only. TTY detection uses isatty(fileno(out)).
  ProgressBar(std::string label, uint64_t total, std::FILE* out = stderr);
  // As above with the TTY decision and the clock given explicitly (for tests and for
  // callers that know better, e.g. a --no-progress-tty flag).
  ProgressBar(std::string label, uint64_t total, std::FILE* out, bool tty, Clock clock);
  // Calls Finish() if it has not been called, so a TTY line is always terminated.
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Records that `done` units are complete; `suffix` (e.g. "loss 0.41") is shown after the
  // numbers. Draws only when throttling allows; cheap to call in tight loops.
  void Update(uint64_t done, const std::string& suffix = "");
  // Draws the final state (always) and ends the line. Later calls do nothing.
  void Finish(const std::string& suffix = "");

  // Formatting helpers, exposed for tests and reuse: "0:07", "1:02:03"; "950/s",
  // "12.3k/s", "4.56M/s".
  static std::string FormatDuration(double seconds);
  static std::string FormatRate(double per_second);

 private:
  void Draw(bool final);
  std::string StatusText(bool final) const;

  std::string label_;
  uint64_t total_;
  std::FILE* out_;
  bool tty_;
  Clock clock_;
  double start_ = 0;
  double last_draw_ = -1;  // clock time of the last TTY redraw
  int last_decile_ = 0;    // last 10% step printed when not a TTY
  uint64_t done_ = 0;
  std::string suffix_;
  bool finished_ = false;
};

}  // namespace cleave
