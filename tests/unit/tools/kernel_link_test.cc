// The kernel-shaped link of the benchmarks (tools/kernel_link.h, tools/shaped_cloud.h): it
// makes a namespace with a tbf qdisc at the asked rate, changes the rate, follows a trace's
// steps, and removes everything when it goes. Where the machine does not allow it (not root,
// no iproute2) the tests that need it are skipped, naming why.
#include "tools/kernel_link.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tools/shaped_cloud.h"

namespace cleave::tools {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

#define SKIP_WITHOUT_KERNEL_LINK()                                           \
  do {                                                                       \
    const Status probe = KernelLink::Probe();                                \
    if (!probe.ok()) GTEST_SKIP() << "no kernel link: " << probe.ToString(); \
  } while (0)

TEST(KernelLinkTest, ShapesTheUplinkAndChangesTheRate) {
  SKIP_WITHOUT_KERNEL_LINK();
  auto link = KernelLink::Create(2e6);
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  auto shown = (*link)->Describe();
  ASSERT_TRUE(shown.ok()) << shown.status().ToString();
  EXPECT_THAT(*shown, HasSubstr("tbf"));
  EXPECT_THAT(*shown, HasSubstr("rate 2Mbit"));
  ASSERT_TRUE((*link)->SetBandwidth(200e3).ok());
  EXPECT_THAT((*link)->Describe().value_or(""), HasSubstr("rate 200Kbit"));
  EXPECT_FALSE((*link)->SetBandwidth(0).ok());
  EXPECT_THAT((*link)->Wrap({"true"}), ::testing::ElementsAre(::testing::EndsWith("/ip"), "netns",
                                                              "exec", (*link)->ns(), "true"));
  // A command run in the namespace sees its own address.
  auto addr = RunCommand((*link)->Wrap({"ip", "-4", "addr", "show"}));
  ASSERT_TRUE(addr.ok()) << addr.status().ToString();
  EXPECT_THAT(*addr, HasSubstr((*link)->inner_address()));
}

TEST(KernelLinkTest, FollowsATraceStepByStep) {
  SKIP_WITHOUT_KERNEL_LINK();
  auto link = KernelLink::Create(10e6);
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  auto trace = LinkTrace::Parse("0:10mbit:5ms,0.3:300kbit:5ms");
  ASSERT_TRUE(trace.ok());
  (*link)->Follow(*trace, SystemClock(), SystemClock().NowMicros());
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_THAT((*link)->Describe().value_or(""), HasSubstr("rate 10Mbit"));
  std::string shown;
  for (int i = 0; i < 100; ++i) {  // the step is at 0.3 s; allow a slow machine 2 s
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    shown = (*link)->Describe().value_or("");
    if (shown.find("rate 300Kbit") != std::string::npos) break;
  }
  EXPECT_THAT(shown, HasSubstr("rate 300Kbit"));
  EXPECT_TRUE((*link)->follow_status().ok());
}

TEST(KernelLinkTest, RemovesItsNamespaceWhenDestroyed) {
  SKIP_WITHOUT_KERNEL_LINK();
  std::string ns;
  {
    auto link = KernelLink::Create(1e6);
    ASSERT_TRUE(link.ok()) << link.status().ToString();
    ns = (*link)->ns();
    EXPECT_THAT(RunCommand({"ip", "netns", "list"}).value_or(""), HasSubstr(ns));
  }
  EXPECT_THAT(RunCommand({"ip", "netns", "list"}).value_or(""), Not(HasSubstr(ns)));
}

TEST(RunCommandTest, NamesTheCommandAndItsExitCodeWhenItFails) {
  auto ok = RunCommand({"sh", "-c", "echo hello"});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, "hello");
  auto failed = RunCommand({"sh", "-c", "echo broken >&2; exit 3"});
  ASSERT_FALSE(failed.ok());
  EXPECT_THAT(failed.status().message(), HasSubstr("sh -c"));
  EXPECT_THAT(failed.status().message(), HasSubstr("exit 3"));
  EXPECT_THAT(failed.status().message(), HasSubstr("broken"));
  EXPECT_FALSE(RunCommand({"/nonexistent/binary"}).ok());
}

TEST(LinkModeTest, ParsesTheThreeModesAndRefusesOthers) {
  EXPECT_EQ(ParseLinkMode("auto").value(), LinkMode::kAuto);
  EXPECT_EQ(ParseLinkMode("kernel").value(), LinkMode::kKernel);
  EXPECT_EQ(ParseLinkMode("relay").value(), LinkMode::kRelay);
  auto bad = ParseLinkMode("netem");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("auto, kernel or relay"));
}

}  // namespace
}  // namespace cleave::tools
