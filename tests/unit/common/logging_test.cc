#include "common/logging.h"

#include <stdlib.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

namespace cleave {
namespace {

// Logging is process-wide; each test leaves it at the default (info, stderr only).
class LoggingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = (std::filesystem::temp_directory_path() / "logging-XXXXXX").string();
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
  }
  void TearDown() override {
    EXPECT_TRUE(InitLogging("info").ok());
    std::filesystem::remove_all(dir_);
  }

  std::string LogFile() const { return (dir_ / "test.log").string(); }
  std::string ReadLog() const {
    std::ifstream in(LogFile());
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
  }

  std::filesystem::path dir_;
};

// "[YYYY-MM-DD HH:MM:SS.mmm] " - checked by hand: <regex> trips GCC 12 warnings under ASan.
bool StartsWithTimestamp(const std::string& line) {
  const std::string shape = "[dddd-dd-dd dd:dd:dd.ddd] ";
  if (line.size() < shape.size()) return false;
  for (size_t i = 0; i < shape.size(); ++i) {
    const bool ok = shape[i] == 'd' ? std::isdigit(static_cast<unsigned char>(line[i])) != 0
                                    : line[i] == shape[i];
    if (!ok) return false;
  }
  return true;
}

TEST_F(LoggingTest, LinesHaveTimeLevelComponentAndMessage) {
  ASSERT_TRUE(InitLogging("info", LogFile()).ok());
  GetLogger("edge")->info("hello {}", 42);
  const std::string text = ReadLog();
  EXPECT_TRUE(StartsWithTimestamp(text)) << text;
  const std::string rest = "[info] [edge] hello 42\n";
  ASSERT_GE(text.size(), rest.size());
  EXPECT_EQ(text.substr(text.size() - rest.size()), rest) << text;
  EXPECT_EQ(text.size(), 26 + rest.size()) << text;
}

TEST_F(LoggingTest, LevelFiltersLowerSeverities) {
  ASSERT_TRUE(InitLogging("warn", LogFile()).ok());
  auto logger = GetLogger("cloud");
  logger->info("hidden-info");
  logger->debug("hidden-debug");
  logger->warn("shown-warn");
  logger->error("shown-error");
  const std::string text = ReadLog();
  EXPECT_EQ(text.find("hidden"), std::string::npos) << text;
  EXPECT_NE(text.find("[warning] [cloud] shown-warn"), std::string::npos) << text;
  EXPECT_NE(text.find("[error] [cloud] shown-error"), std::string::npos) << text;
}

TEST_F(LoggingTest, OffSilencesEverything) {
  ASSERT_TRUE(InitLogging("OFF", LogFile()).ok());
  GetLogger("edge")->error("nothing");
  EXPECT_EQ(ReadLog(), "");
}

TEST_F(LoggingTest, LoggersCreatedEarlierFollowLaterInit) {
  auto early = GetLogger("early-component");
  ASSERT_TRUE(InitLogging("debug", LogFile()).ok());
  early->debug("after init");
  EXPECT_NE(ReadLog().find("[debug] [early-component] after init"), std::string::npos);
}

TEST_F(LoggingTest, DefaultSpdlogLoggerSharesTheSinks) {
  ASSERT_TRUE(InitLogging("info", LogFile()).ok());
  spdlog::info("via default");
  EXPECT_NE(ReadLog().find("[info] [cleave] via default"), std::string::npos) << ReadLog();
}

TEST_F(LoggingTest, FileIsAppendedNotTruncated) {
  { std::ofstream(LogFile()) << "previous run\n"; }
  ASSERT_TRUE(InitLogging("info", LogFile()).ok());
  GetLogger("edge")->info("this run");
  const std::string text = ReadLog();
  EXPECT_EQ(text.rfind("previous run\n", 0), 0u) << text;
  EXPECT_NE(text.find("this run"), std::string::npos);
}

TEST_F(LoggingTest, UnknownLevelIsRejectedAndChangesNothing) {
  ASSERT_TRUE(InitLogging("error", LogFile()).ok());
  const Status status = InitLogging("verbose");
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("'verbose'"), std::string::npos);
  EXPECT_EQ(InitLogging("").code(), StatusCode::kInvalidArgument);
  // Still at error level, still writing to the file.
  GetLogger("edge")->warn("filtered");
  GetLogger("edge")->error("kept");
  const std::string text = ReadLog();
  EXPECT_EQ(text.find("filtered"), std::string::npos);
  EXPECT_NE(text.find("kept"), std::string::npos);
}

TEST_F(LoggingTest, UnopenableFileIsIoError) {
  // spdlog creates missing parent directories, so use a path under a regular file.
  { std::ofstream(dir_ / "regular-file") << "x"; }
  const std::string under_file = (dir_ / "regular-file" / "x.log").string();
  const Status status = InitLogging("info", under_file);
  EXPECT_EQ(status.code(), StatusCode::kIoError) << status.ToString();
  EXPECT_NE(status.message().find(under_file), std::string::npos);
}

TEST_F(LoggingTest, GetLoggerReturnsOneLoggerPerComponentAcrossThreads) {
  std::vector<std::shared_ptr<spdlog::logger>> seen(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < seen.size(); ++i) {
    threads.emplace_back([&seen, i] { seen[i] = GetLogger("shared-component"); });
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_NE(seen[0], nullptr);
  for (const auto& logger : seen) EXPECT_EQ(logger, seen[0]);
  EXPECT_EQ(seen[0]->name(), "shared-component");
  EXPECT_NE(GetLogger("other-component"), seen[0]);
}

}  // namespace
}  // namespace cleave
