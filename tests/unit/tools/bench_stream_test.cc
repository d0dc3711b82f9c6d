// The arithmetic of `cleave bench stream`: result lines of the streaming feeder are tallied per
// stream (answers, drops by reason, who answered, accuracy against the frames' labels by seq),
// and malformed lines are refused naming the line. The run itself is tested with real processes
// in tests/integration/bench_stream_test.cc.
#include "tools/bench_stream.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "common/process_stats.h"

namespace cleave::tools {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(TallyStreamLinesTest, CountsAnswersDropsAndAccuracyOfOneStream) {
  const std::string lines =
      R"({"stream":"bench","seq":1,"answered_by":"exit","class":3,"class_name":"Dress","confidence":0.9,"latency_ms":1.5,"staleness_ms":2.0})"
      "\n"
      R"({"stream":"bench","seq":2,"dropped":"replaced","time":1.0})"
      "\n"
      R"({"stream":"warmup","seq":1,"answered_by":"cloud","class":0,"latency_ms":50,"staleness_ms":50})"
      "\n"
      R"({"stream":"bench","seq":3,"answered_by":"cloud","class":1,"latency_ms":20.0,"staleness_ms":30.0})"
      "\n"
      R"({"stream":"bench","seq":4,"answered_by":"degraded","class":2,"latency_ms":100,"staleness_ms":120,"error":"deadline"})"
      "\n"
      R"({"stream":"bench","seq":5,"dropped":"replaced"})"
      "\n"
      R"({"stream":"bench","seq":6,"dropped":"no_reply"})"
      "\n";
  // Frame 3's label is 0, so the cloud's answer 1 is wrong; frames 1 and 4 are right.
  auto tally = TallyStreamLines(lines, "bench", {3, 7, 0, 2, 5, 5});
  ASSERT_TRUE(tally.ok()) << tally.status().ToString();
  EXPECT_EQ(tally->received, 6u);
  EXPECT_EQ(tally->answered, 3u);
  EXPECT_EQ(tally->dropped, 3u);
  EXPECT_EQ(tally->correct, 2u);
  EXPECT_EQ(tally->dropped_by_reason["replaced"], 2);
  EXPECT_EQ(tally->dropped_by_reason["no_reply"], 1);
  EXPECT_EQ(tally->answered_by["exit"], 1);
  EXPECT_EQ(tally->answered_by["cloud"], 1);
  EXPECT_EQ(tally->answered_by["degraded"], 1);
  EXPECT_THAT(tally->latency_ms, ElementsAre(1.5, 20.0, 100.0));
  EXPECT_THAT(tally->staleness_ms, ElementsAre(2.0, 30.0, 120.0));
}

TEST(TallyStreamLinesTest, FramesBeyondTheLabelsAreAnsweredButNeverCorrect) {
  const std::string lines =
      R"({"stream":"s","seq":2,"answered_by":"exit","class":4,"latency_ms":1,"staleness_ms":1})";
  auto tally = TallyStreamLines(lines, "s", {4});
  ASSERT_TRUE(tally.ok());
  EXPECT_EQ(tally->answered, 1u);
  EXPECT_EQ(tally->correct, 0u);
}

TEST(TallyStreamLinesTest, AnotherStreamOrNoLinesCountNothing) {
  auto none = TallyStreamLines("", "bench", {});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->received, 0u);
  auto other = TallyStreamLines(R"({"stream":"cam","seq":1,"dropped":"replaced"})", "bench", {});
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->received, 0u);
}

TEST(TallyStreamLinesTest, RefusesMalformedLinesNamingTheLine) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"not json", "line 1 is not JSON"},
      {"[1,2]", "line 1 is not JSON"},
      {R"({"seq":1,"dropped":"replaced"})", "line 1 names no stream"},
      {R"({"stream":"b","dropped":"replaced"})", "line 1 has no seq"},
      {R"({"stream":"b","seq":-1,"dropped":"replaced"})", "line 1 has no seq"},
      {R"({"stream":"b","seq":1,"dropped":3})", "dropped is not a reason"},
      {R"({"stream":"b","seq":1,"answered_by":"exit","latency_ms":1,"staleness_ms":1})",
       "neither a drop nor an answer"},
      {"\n"
       R"({"stream":"b","seq":1,"answered_by":"exit","class":1,"staleness_ms":1})",
       "line 2 is neither"},
  };
  for (const auto& [line, message] : bad) {
    auto tally = TallyStreamLines(line, "b", {1});
    ASSERT_FALSE(tally.ok()) << line;
    EXPECT_EQ(tally.status().code(), StatusCode::kInvalidArgument) << line;
    EXPECT_THAT(tally.status().message(), HasSubstr(message)) << line;
  }
}

TEST(ProcessRssBytesTest, ReadsAnotherProcessStatusAndZeroWhenUnavailable) {
  // Our own pid through /proc/<pid>: the same figures as /proc/self.
  const int64_t rss = ProcessRssBytes(::getpid(), "VmRSS");
  EXPECT_GT(rss, 0);
  EXPECT_GE(ProcessRssBytes(::getpid(), "VmHWM"), rss);
  EXPECT_EQ(ProcessRssBytes(::getpid(), "NoSuchField"), 0);
  EXPECT_EQ(ProcessRssBytes(-1, "VmRSS"), 0);
}

}  // namespace
}  // namespace cleave::tools
