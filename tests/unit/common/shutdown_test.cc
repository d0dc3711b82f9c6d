#include "common/shutdown.h"

#include <poll.h>
#include <signal.h>
#include <stdlib.h>

#include <thread>

#include <gtest/gtest.h>

namespace cleave {
namespace {

// The request is process-wide; every test starts and ends with it cleared so other tests
// in the same binary are unaffected.
class ShutdownTest : public ::testing::Test {
 protected:
  void SetUp() override { ResetShutdownForTesting(); }
  void TearDown() override { ResetShutdownForTesting(); }
};

bool WakeFdReadable() {
  pollfd item{ShutdownWakeFd(), POLLIN, 0};
  return poll(&item, 1, 0) == 1;
}

TEST_F(ShutdownTest, NotRequestedAtStart) {
  EXPECT_FALSE(ShutdownRequested());
  EXPECT_FALSE(WaitForShutdown(0));
  EXPECT_FALSE(WaitForShutdown(10));
  EXPECT_GE(ShutdownWakeFd(), 0);
  EXPECT_FALSE(WakeFdReadable());
}

TEST_F(ShutdownTest, RequestIsStickyAndWakesPollers) {
  RequestShutdown();
  EXPECT_TRUE(ShutdownRequested());
  EXPECT_TRUE(WaitForShutdown(0));
  EXPECT_TRUE(WaitForShutdown(-1));
  // Stays readable for every poll loop, however many look.
  EXPECT_TRUE(WakeFdReadable());
  EXPECT_TRUE(WakeFdReadable());
}

TEST_F(ShutdownTest, RequestFromAnotherThreadWakesWaiters) {
  bool first = false;
  bool second = false;
  std::thread waiter_a([&first] { first = WaitForShutdown(-1); });
  std::thread waiter_b([&second] { second = WaitForShutdown(60000); });
  std::thread requester([] { RequestShutdown(); });
  requester.join();
  waiter_a.join();
  waiter_b.join();
  EXPECT_TRUE(first);
  EXPECT_TRUE(second);
}

TEST_F(ShutdownTest, ResetClearsRequestAndWakeFd) {
  RequestShutdown();
  RequestShutdown();
  ResetShutdownForTesting();
  EXPECT_FALSE(ShutdownRequested());
  EXPECT_FALSE(WakeFdReadable());
  EXPECT_FALSE(WaitForShutdown(0));
}

// Signal dispositions are process-wide, so signal tests run in a fresh process.
class ShutdownDeathTest : public ShutdownTest {
 protected:
  void SetUp() override {
    ShutdownTest::SetUp();
    GTEST_FLAG_SET(death_test_style, "threadsafe");
  }
};

TEST_F(ShutdownDeathTest, SigtermRequestsShutdownInsteadOfKilling) {
  EXPECT_EXIT(
      {
        InstallShutdownHandlers();
        raise(SIGTERM);
        _exit(ShutdownRequested() && WaitForShutdown(0) ? 42 : 1);
      },
      ::testing::ExitedWithCode(42), "");
}

TEST_F(ShutdownDeathTest, SigintRequestsShutdown) {
  EXPECT_EXIT(
      {
        InstallShutdownHandlers();
        InstallShutdownHandlers();  // idempotent
        raise(SIGINT);
        _exit(ShutdownRequested() ? 42 : 1);
      },
      ::testing::ExitedWithCode(42), "");
}

TEST_F(ShutdownDeathTest, SigpipeIsIgnored) {
  EXPECT_EXIT(
      {
        InstallShutdownHandlers();
        raise(SIGPIPE);
        _exit(ShutdownRequested() ? 1 : 42);  // ignored, and not a shutdown request
      },
      ::testing::ExitedWithCode(42), "");
}

TEST_F(ShutdownDeathTest, WithoutHandlersSigtermKills) {
  // The control: proves the tests above observe the handlers, not a default.
  EXPECT_EXIT(
      {
        raise(SIGTERM);
        _exit(0);
      },
      ::testing::KilledBySignal(SIGTERM), "");
}

}  // namespace
}  // namespace cleave
