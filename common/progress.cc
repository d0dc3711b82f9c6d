#include "common/progress.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

namespace cleave {
namespace {

constexpr double kTtyRedrawSeconds = 0.1;    // ~10 Hz
constexpr double kLogUnknownSeconds = 10.0;  // non-TTY, unknown total: one line per 10 s
constexpr int kBarWidth = 30;

double SteadySeconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

bool IsTty(std::FILE* out) { return out != nullptr && ::isatty(::fileno(out)) == 1; }

std::string Format(const char* format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, value);
  return buf;
}

}  // namespace

ProgressBar::ProgressBar(std::string label, uint64_t total, std::FILE* out)
    : ProgressBar(std::move(label), total, out, IsTty(out), SteadySeconds) {}

ProgressBar::ProgressBar(std::string label, uint64_t total, std::FILE* out, bool tty, Clock clock)
    : label_(std::move(label)),
      total_(total),
      out_(out),
      tty_(tty),
      clock_(clock ? std::move(clock) : Clock(SteadySeconds)) {
  start_ = clock_();
}

ProgressBar::~ProgressBar() { Finish(suffix_); }

void ProgressBar::Update(uint64_t done, const std::string& suffix) {
  if (finished_) return;
  done_ = done;
  suffix_ = suffix;
  const double now = clock_();
  if (tty_) {
    if (last_draw_ < 0 || now - last_draw_ >= kTtyRedrawSeconds) {
      last_draw_ = now;
      Draw(/*final=*/false);
    }
    return;
  }
  if (total_ == 0) {
    if (now - std::max(last_draw_, start_) >= kLogUnknownSeconds) {
      last_draw_ = now;
      Draw(/*final=*/false);
    }
    return;
  }
  // Deciles 1..9 only: the 100% line is Finish()'s summary.
  const int decile = done >= total_ ? 10 : static_cast<int>(10.0L * done / total_);
  if (decile > last_decile_ && decile < 10) {
    last_decile_ = decile;
    Draw(/*final=*/false);
  }
}

void ProgressBar::Finish(const std::string& suffix) {
  if (finished_) return;
  finished_ = true;
  suffix_ = suffix;
  Draw(/*final=*/true);
}

std::string ProgressBar::StatusText(bool final) const {
  const double elapsed = std::max(0.0, clock_() - start_);
  const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  std::string text = std::to_string(done_);
  if (total_ > 0) {
    const double fraction = static_cast<double>(done_) / static_cast<double>(total_);
    text += "/" + std::to_string(total_) + " " + Format("%5.1f%%", 100.0 * fraction);
  }
  text += " " + FormatRate(rate);
  if (final) return text + " in " + FormatDuration(elapsed);
  text += " elapsed " + FormatDuration(elapsed);
  if (total_ > 0) {
    const double remaining = done_ >= total_ ? 0.0 : static_cast<double>(total_ - done_);
    text += " ETA " + (rate > 0 ? FormatDuration(remaining / rate) : std::string("--:--"));
  }
  return text;
}

void ProgressBar::Draw(bool final) {
  if (out_ == nullptr) return;
  std::string line;
  if (tty_) {
    line = "\r" + label_;
    if (total_ > 0) {
      const double fraction =
          std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
      const int filled = static_cast<int>(fraction * kBarWidth);
      line += " [" + std::string(filled, '=') + (filled < kBarWidth ? ">" : "") +
              std::string(std::max(0, kBarWidth - filled - 1), ' ') + "]";
    }
    line += " " + StatusText(final);
    if (!suffix_.empty()) line += " " + suffix_;
    line += "\x1b[K";  // erase leftovers of a longer previous line
    if (final) line += "\n";
  } else {
    line = label_ + ": " + (final ? "done " : "") + StatusText(final);
    if (!suffix_.empty()) line += " " + suffix_;
    line += "\n";
  }
  std::fputs(line.c_str(), out_);
  std::fflush(out_);
}

std::string ProgressBar::FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const uint64_t total = static_cast<uint64_t>(std::llround(seconds));
  const uint64_t hours = total / 3600, minutes = (total / 60) % 60, secs = total % 60;
  char buf[48];
  if (hours > 0) {
    std::snprintf(buf, sizeof(buf), "%llu:%02llu:%02llu", static_cast<unsigned long long>(hours),
                  static_cast<unsigned long long>(minutes), static_cast<unsigned long long>(secs));
  } else {
    std::snprintf(buf, sizeof(buf), "%llu:%02llu", static_cast<unsigned long long>(minutes),
                  static_cast<unsigned long long>(secs));
  }
  return buf;
}

std::string ProgressBar::FormatRate(double per_second) {
  if (!std::isfinite(per_second) || per_second < 0) return "?/s";
  if (per_second < 10) return Format("%.1f/s", per_second);
  if (per_second < 1e3) return Format("%.0f/s", per_second);
  if (per_second < 1e6) return Format("%.1fk/s", per_second / 1e3);
  if (per_second < 1e9) return Format("%.2fM/s", per_second / 1e6);
  return Format("%.2fG/s", per_second / 1e9);
}

}  // namespace cleave
