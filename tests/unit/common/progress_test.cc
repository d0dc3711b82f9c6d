#include "common/progress.h"

#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace cleave {
namespace {

// Captures what a ProgressBar writes, via an in-memory FILE*.
class Capture {
 public:
  Capture() { file_ = open_memstream(&buffer_, &size_); }
  ~Capture() {
    std::fclose(file_);
    std::free(buffer_);
  }
  std::FILE* file() { return file_; }
  std::string text() {
    std::fflush(file_);
    return std::string(buffer_, size_);
  }
  std::vector<std::string> lines() {
    std::vector<std::string> out;
    std::string all = text();
    size_t start = 0;
    for (size_t nl; (nl = all.find('\n', start)) != std::string::npos; start = nl + 1) {
      out.push_back(all.substr(start, nl - start));
    }
    return out;
  }

 private:
  std::FILE* file_ = nullptr;
  char* buffer_ = nullptr;
  size_t size_ = 0;
};

// A fake clock the test advances by hand.
struct FakeClock {
  double now = 1000.0;
  ProgressBar::Clock fn() {
    return [this] { return now; };
  }
};

size_t Count(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = 0; (pos = haystack.find(needle, pos)) != std::string::npos; ++pos) ++n;
  return n;
}

TEST(ProgressBarTest, NonTtyPrintsOneLinePerTenPercentPlusSummary) {
  Capture out;
  FakeClock clock;
  {
    ProgressBar bar("train", 1000, out.file(), /*tty=*/false, clock.fn());
    for (uint64_t done = 1; done <= 1000; ++done) {
      clock.now += 0.01;  // 100 units per second
      bar.Update(done, "loss 0.5");
    }
    bar.Finish("loss 0.4");
  }
  std::vector<std::string> lines = out.lines();
  ASSERT_EQ(lines.size(), 10u);  // 10%..90% and the final summary
  EXPECT_EQ(lines[0].rfind("train: 100/1000  10.0% 100/s elapsed 0:01 ETA 0:09 loss 0.5", 0), 0u)
      << lines[0];
  EXPECT_NE(lines[4].find("500/1000  50.0%"), std::string::npos) << lines[4];
  EXPECT_EQ(lines[9], "train: done 1000/1000 100.0% 100/s in 0:10 loss 0.4");
  EXPECT_EQ(out.text().find('\r'), std::string::npos);  // no control characters in logs
}

TEST(ProgressBarTest, NonTtyLargeJumpsPrintOnce) {
  Capture out;
  FakeClock clock;
  ProgressBar bar("bench", 100, out.file(), false, clock.fn());
  bar.Update(55);  // crosses 10..50% at once
  bar.Update(56);
  bar.Finish();
  ASSERT_EQ(out.lines().size(), 2u);
  EXPECT_NE(out.lines()[0].find("55/100"), std::string::npos);
}

TEST(ProgressBarTest, TtyRedrawsInPlaceThrottledToTenHertz) {
  Capture out;
  FakeClock clock;
  ProgressBar bar("eval", 200, out.file(), /*tty=*/true, clock.fn());
  for (uint64_t done = 1; done <= 200; ++done) {
    clock.now += 0.01;  // 2 seconds in total: ~20 redraws allowed
    bar.Update(done);
  }
  const std::string drawn = out.text();
  const size_t redraws = Count(drawn, "\r");
  EXPECT_GE(redraws, 18u);
  EXPECT_LE(redraws, 21u);
  EXPECT_EQ(drawn.find('\n'), std::string::npos);  // still on one line
  EXPECT_NE(drawn.find("\x1b[K"), std::string::npos);
  bar.Finish("acc 0.91");
  const std::string finished = out.text();
  EXPECT_EQ(finished.back(), '\n');
  EXPECT_NE(finished.find("[==============================] 200/200 100.0%"), std::string::npos)
      << finished;
  EXPECT_NE(finished.find("acc 0.91"), std::string::npos);
}

TEST(ProgressBarTest, FinishIsIdempotentAndDestructorFinishes) {
  Capture out;
  FakeClock clock;
  {
    ProgressBar bar("x", 10, out.file(), true, clock.fn());
    bar.Update(3);
  }
  EXPECT_EQ(Count(out.text(), "\n"), 1u);  // destructor terminated the line
  {
    ProgressBar bar("y", 10, out.file(), false, clock.fn());
    bar.Finish();
    bar.Finish();
    bar.Update(5);  // ignored after Finish
  }
  EXPECT_EQ(Count(out.text(), "\n"), 2u);
}

TEST(ProgressBarTest, UnknownTotalShowsCountAndRateOnly) {
  Capture out;
  FakeClock clock;
  ProgressBar bar("stream", 0, out.file(), false, clock.fn());
  for (int i = 1; i <= 240; ++i) {
    clock.now += 0.125;  // exact in binary; 30 s in total: a line every 10 s
    bar.Update(i);
  }
  bar.Finish();
  std::vector<std::string> lines = out.lines();
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0], "stream: 80 8.0/s elapsed 0:10");
  EXPECT_EQ(lines[3], "stream: done 240 8.0/s in 0:30");
}

TEST(ProgressBarTest, NoRateYetShowsUnknownEta) {
  Capture out;
  FakeClock clock;
  ProgressBar bar("t", 10, out.file(), true, clock.fn());
  bar.Update(0);
  EXPECT_NE(out.text().find("ETA --:--"), std::string::npos) << out.text();
}

TEST(ProgressBarTest, DoneBeyondTotalDoesNotBreakTheBar) {
  Capture out;
  FakeClock clock;
  ProgressBar bar("t", 10, out.file(), true, clock.fn());
  clock.now += 1;
  bar.Update(15);
  EXPECT_NE(out.text().find("15/10"), std::string::npos);
  EXPECT_NE(out.text().find("ETA 0:00"), std::string::npos);
}

TEST(ProgressBarTest, Formatting) {
  EXPECT_EQ(ProgressBar::FormatDuration(0), "0:00");
  EXPECT_EQ(ProgressBar::FormatDuration(7.4), "0:07");
  EXPECT_EQ(ProgressBar::FormatDuration(65), "1:05");
  EXPECT_EQ(ProgressBar::FormatDuration(3723), "1:02:03");
  EXPECT_EQ(ProgressBar::FormatDuration(-1), "--:--");
  EXPECT_EQ(ProgressBar::FormatDuration(1.0 / 0.0), "--:--");
  EXPECT_EQ(ProgressBar::FormatRate(2.5), "2.5/s");
  EXPECT_EQ(ProgressBar::FormatRate(950), "950/s");
  EXPECT_EQ(ProgressBar::FormatRate(12345), "12.3k/s");
  EXPECT_EQ(ProgressBar::FormatRate(4.56e6), "4.56M/s");
  EXPECT_EQ(ProgressBar::FormatRate(-1), "?/s");
}

}  // namespace
}  // namespace cleave
