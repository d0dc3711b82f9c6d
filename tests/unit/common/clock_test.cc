#include "common/clock.h"

#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace cleave {
namespace {

TEST(ClockTest, SystemClockIsSingletonAndNeverGoesBack) {
  Clock& clock = SystemClock();
  EXPECT_EQ(&clock, &SystemClock());
  int64_t previous = clock.NowMicros();
  for (int i = 0; i < 1000; ++i) {
    const int64_t now = clock.NowMicros();
    ASSERT_GE(now, previous);
    previous = now;
  }
}

TEST(ClockTest, FakeClockMovesOnlyWhenTold) {
  FakeClock clock(1000);
  EXPECT_EQ(clock.NowMicros(), 1000);
  EXPECT_EQ(clock.NowMicros(), 1000);
  clock.Advance(250);
  EXPECT_EQ(clock.NowMicros(), 1250);
  clock.Set(5000);
  EXPECT_EQ(clock.NowMicros(), 5000);
  clock.Set(5000);
  EXPECT_EQ(clock.NowMicros(), 5000);
}

TEST(ClockTest, FakeClockStartsAtZeroByDefault) {
  FakeClock clock;
  EXPECT_EQ(clock.NowMicros(), 0);
}

TEST(ClockTest, FakeClockRefusesToGoBackwards) {
  FakeClock clock(1000);
  clock.Advance(-500);
  EXPECT_EQ(clock.NowMicros(), 1000);
  clock.Set(10);
  EXPECT_EQ(clock.NowMicros(), 1000);
}

TEST(ClockTest, FakeClockIsUsableThroughTheInterface) {
  FakeClock fake(7);
  const Clock& clock = fake;
  fake.Advance(3);
  EXPECT_EQ(clock.NowMicros(), 10);
}

TEST(ClockTest, ConcurrentAdvancesAreNotLost) {
  FakeClock clock;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&clock] {
      for (int i = 0; i < 10000; ++i) clock.Advance(1);
    });
  }
  // A concurrent Set into the past must not undo anything.
  threads.emplace_back([&clock] {
    for (int i = 0; i < 1000; ++i) clock.Set(i);
  });
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(clock.NowMicros(), 40000);
}

}  // namespace
}  // namespace cleave
