#include "common/child_process.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

namespace cleave {
namespace {

// Generous: only reached when something is broken; nothing here measures time.
constexpr int kWaitMs = 10000;

class ChildProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (std::filesystem::temp_directory_path() / "child-process-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  static std::string Slurp(const std::string& path) {
    std::ifstream in(path);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
  }

  std::filesystem::path dir_;
};

// True if `pid` is no longer our child (reaped, so no zombie left behind).
bool Reaped(pid_t pid) {
  int status = 0;
  return waitpid(pid, &status, WNOHANG) == -1 && errno == ECHILD;
}

TEST_F(ChildProcessTest, ExitCodeIsReported) {
  auto child = ChildProcess::Spawn({"/bin/sh", "-c", "exit 3"}, "");
  ASSERT_TRUE(child.ok()) << child.status().ToString();
  EXPECT_GT((*child)->pid(), 0);
  auto code = (*child)->Wait(kWaitMs);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, 3);
  EXPECT_FALSE((*child)->Running());
  EXPECT_TRUE(Reaped((*child)->pid()));
  // Waiting again returns the same code rather than an error.
  auto again = (*child)->Wait(0);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 3);
}

TEST_F(ChildProcessTest, BareNameIsSearchedInPath) {
  auto child = ChildProcess::Spawn({"true"}, "");
  ASSERT_TRUE(child.ok()) << child.status().ToString();
  auto code = (*child)->Wait(kWaitMs);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
}

TEST_F(ChildProcessTest, SignalledChildReports128PlusSignal) {
  auto child = ChildProcess::Spawn({"/bin/sleep", "30"}, "");
  ASSERT_TRUE(child.ok());
  EXPECT_TRUE((*child)->Running());
  ASSERT_TRUE((*child)->Signal(SIGTERM).ok());
  auto code = (*child)->Wait(kWaitMs);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, 128 + SIGTERM);

  const Status late = (*child)->Signal(SIGTERM);
  EXPECT_EQ(late.code(), StatusCode::kFailedPrecondition) << late.ToString();
}

TEST_F(ChildProcessTest, WaitTimesOutOnRunningChild) {
  auto child = ChildProcess::Spawn({"/bin/sleep", "30"}, "");
  ASSERT_TRUE(child.ok());
  auto code = (*child)->Wait(10);
  ASSERT_FALSE(code.ok());
  EXPECT_EQ(code.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE((*child)->Running());
}

TEST_F(ChildProcessTest, StopEscalatesToSigkillWhenSigtermIsIgnored) {
  // `exec` keeps the ignored disposition, so sleep itself ignores SIGTERM. The ready file
  // says the trap is in place before we signal.
  const std::string ready = Path("trapped");
  auto child = ChildProcess::Spawn(
      {"/bin/sh", "-c", "trap '' TERM; echo trapped > \"$0\"; exec sleep 30", ready}, "");
  ASSERT_TRUE(child.ok());
  ASSERT_TRUE(WaitForFile(ready, kWaitMs, child->get()).ok());
  auto code = (*child)->Stop(/*grace_ms=*/50);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, 128 + SIGKILL);
  EXPECT_TRUE(Reaped((*child)->pid()));
}

TEST_F(ChildProcessTest, DestructorStopsAndReapsRunningChild) {
  pid_t pid = 0;
  {
    auto child = ChildProcess::Spawn({"/bin/sleep", "30"}, "");
    ASSERT_TRUE(child.ok());
    pid = (*child)->pid();
  }
  EXPECT_TRUE(Reaped(pid));
  EXPECT_EQ(kill(pid, 0), -1);
}

TEST_F(ChildProcessTest, ChildDoesNotInheritIgnoredSigpipe) {
  struct sigaction ignore = {}, previous = {};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &ignore, &previous);
  auto child = ChildProcess::Spawn({"/bin/sh", "-c", "kill -PIPE $$; exit 0"}, "");
  sigaction(SIGPIPE, &previous, nullptr);
  ASSERT_TRUE(child.ok());
  auto code = (*child)->Wait(kWaitMs);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 128 + SIGPIPE);
}

TEST_F(ChildProcessTest, OutputIsAppendedToLogAndStdinIsEmpty) {
  const std::string log = Path("child.log");
  { std::ofstream(log) << "earlier\n"; }
  auto child = ChildProcess::Spawn(
      {"/bin/sh", "-c",
       "echo to-stdout; echo to-stderr >&2; cat; echo \"fds:$(ls /proc/self/fd | wc -l)\""},
      log);
  ASSERT_TRUE(child.ok());
  auto code = (*child)->Wait(kWaitMs);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
  const std::string text = Slurp(log);
  EXPECT_EQ(text.rfind("earlier\n", 0), 0u) << text;
  EXPECT_NE(text.find("to-stdout\n"), std::string::npos) << text;
  EXPECT_NE(text.find("to-stderr\n"), std::string::npos) << text;
  // ls in the command substitution sees 0, 1 (the pipe), 2 and its own directory fd:
  // nothing else leaked from this process.
  EXPECT_NE(text.find("fds:4\n"), std::string::npos) << text;
}

TEST_F(ChildProcessTest, MissingBinaryIsNotFound) {
  auto child = ChildProcess::Spawn({"/nonexistent/cleave-daemon", "--flag"}, "");
  ASSERT_FALSE(child.ok());
  EXPECT_EQ(child.status().code(), StatusCode::kNotFound);
  EXPECT_NE(child.status().message().find("/nonexistent/cleave-daemon"), std::string::npos);
  EXPECT_NE(child.status().message().find("No such file or directory"), std::string::npos);

  auto bare = ChildProcess::Spawn({"cleave-no-such-program-anywhere"}, "");
  ASSERT_FALSE(bare.ok());
  EXPECT_EQ(bare.status().code(), StatusCode::kNotFound);
}

TEST_F(ChildProcessTest, EmptyArgvAndUnwritableLogAreRejected) {
  EXPECT_EQ(ChildProcess::Spawn({}, "").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ChildProcess::Spawn({""}, "").status().code(), StatusCode::kInvalidArgument);
  auto child = ChildProcess::Spawn({"true"}, Path("no-such-dir/child.log"));
  ASSERT_FALSE(child.ok());
  EXPECT_EQ(child.status().code(), StatusCode::kIoError);
  EXPECT_NE(child.status().message().find("no-such-dir/child.log"), std::string::npos);
}

TEST_F(ChildProcessTest, NonExecutableFileIsIoError) {
  const std::string script = Path("not-executable.sh");
  { std::ofstream(script) << "#!/bin/sh\nexit 0\n"; }
  auto child = ChildProcess::Spawn({script}, "");
  ASSERT_FALSE(child.ok());
  EXPECT_EQ(child.status().code(), StatusCode::kIoError);
  EXPECT_NE(child.status().message().find("Permission denied"), std::string::npos);
}

TEST_F(ChildProcessTest, WaitForFileReturnsContentsOnceWritten) {
  const std::string ready = Path("ready");
  auto child = ChildProcess::Spawn(
      {"/bin/sh", "-c", "printf 'port=1234' > \"$0.tmp\" && mv \"$0.tmp\" \"$0\"; exec sleep 30",
       ready},
      "");
  ASSERT_TRUE(child.ok());
  auto contents = WaitForFile(ready, kWaitMs, child->get());
  ASSERT_TRUE(contents.ok()) << contents.status().ToString();
  EXPECT_EQ(*contents, "port=1234");
}

TEST_F(ChildProcessTest, WaitForFileTimesOut) {
  auto contents = WaitForFile(Path("never"), 20);
  ASSERT_FALSE(contents.ok());
  EXPECT_EQ(contents.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(contents.status().message().find("never"), std::string::npos);
}

TEST_F(ChildProcessTest, WaitForFileIgnoresEmptyFile) {
  const std::string empty = Path("empty");
  { std::ofstream touch(empty); }
  auto contents = WaitForFile(empty, 20);
  EXPECT_EQ(contents.status().code(), StatusCode::kDeadlineExceeded);
}

TEST_F(ChildProcessTest, WaitForFileFailsFastWhenWatchedChildDies) {
  auto child = ChildProcess::Spawn({"/bin/sh", "-c", "exit 7"}, "");
  ASSERT_TRUE(child.ok());
  // The timeout is far longer than any test: the child's exit must end the wait.
  auto contents = WaitForFile(Path("never"), 600000, child->get());
  ASSERT_FALSE(contents.ok());
  EXPECT_EQ(contents.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(contents.status().message().find("exited with code 7"), std::string::npos)
      << contents.status().message();
}

}  // namespace
}  // namespace cleave
