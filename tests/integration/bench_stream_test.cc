// `cleave bench stream` as a user runs it, shortened: a real cleave-cloud, the link-shaping
// relay and a real cleave-edge per rate, frames PUSHed into the edge's streaming input. The
// report carries every key of the issue, accounts for every frame, and the faster source is
// held to the link by drops rather than a growing backlog.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/child_process.h"
#include "common/file_util.h"
#include "testing/bin_dir.h"
#include "testing/tiny_bundle.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;

class BenchStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = cleave::testing::TempPath("bench_stream");
    fs::create_directories(dir_);
    ASSERT_TRUE(cleave::testing::WriteTinyBundle(dir_ / "bundle").ok());
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  int Run(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {(kBin / "cleave").string(), "bench", "stream", "--bundle",
                                     (dir_ / "bundle").string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto child = ChildProcess::Spawn(argv, (dir_ / "log").string());
    EXPECT_TRUE(child.ok());
    if (!child.ok()) return -1;
    Result<int> code = (*child)->Wait(300000);
    return code.ok() ? *code : -1;
  }
  std::string Log() { return ReadFileToString(dir_ / "log").value_or(""); }
  fs::path dir_;
};

TEST_F(BenchStreamTest, ShortRunReportsEveryRateAndAccountsForEveryFrame) {
  const fs::path json_path = dir_ / "report.json";
  const fs::path md_path = dir_ / "report.md";
  // A slow link (200 kbit/s, 60 ms): with the tiny bundle's exit most frames go to the cloud,
  // so 300 frames/s cannot all be answered and the latest-frame-wins policy must drop some.
  ASSERT_EQ(Run({"--rates", "20,300", "--seconds", "2", "--pool", "40", "--link", "0:200kbit:60ms",
                 "--json", json_path.string(), "--markdown", md_path.string()}),
            0)
      << Log();
  auto text = ReadFileToString(json_path);
  ASSERT_TRUE(text.ok()) << Log();
  const nlohmann::json report = nlohmann::json::parse(*text);
  ASSERT_TRUE(report.contains("rates"));
  for (const char* rate : {"20", "300"}) {
    ASSERT_TRUE(report["rates"].contains(rate)) << rate;
    const nlohmann::json& r = report["rates"][rate];
    for (const char* key : {"achieved_fps", "staleness_p99_ms", "dropped", "peak_rss_bytes",
                            "offered_fps", "answered", "received", "accuracy"}) {
      EXPECT_TRUE(r.contains(key)) << rate << " " << key;
    }
    EXPECT_TRUE(r["all_accounted"].get<bool>()) << rate;
    EXPECT_EQ(r["received"].get<uint64_t>(), r["frames_sent"].get<uint64_t>()) << rate;
    EXPECT_EQ(r["received"].get<uint64_t>(),
              r["answered"].get<uint64_t>() + r["dropped"].get<uint64_t>())
        << rate;
    EXPECT_GT(r["answered"].get<uint64_t>(), 0u) << rate;
    EXPECT_GT(r["peak_rss_bytes"].get<int64_t>(), 0) << rate;
    EXPECT_GE(r["staleness_p99_ms"].get<double>(), r["staleness_p50_ms"].get<double>()) << rate;
    EXPECT_GE(r["accuracy"].get<double>(), 0.0);
    EXPECT_LE(r["accuracy"].get<double>(), 1.0);
  }
  // 300 frames/s over 200 kbit/s with 60 ms round trips: the stream window turns over far
  // slower than frames arrive, so frames are replaced and the answer rate stays below the offer.
  const nlohmann::json& fast = report["rates"]["300"];
  EXPECT_GT(fast["dropped_by_reason"].value("replaced", 0), 0) << fast.dump();
  EXPECT_LT(fast["achieved_fps"].get<double>(), fast["offered_fps"].get<double>());
  EXPECT_TRUE(report["targets"]["every_frame_answered_or_dropped_with_reason"].get<bool>());
  auto md = ReadFileToString(md_path);
  ASSERT_TRUE(md.ok());
  EXPECT_NE(md->find("achieved fps"), std::string::npos);
}

TEST_F(BenchStreamTest, RefusesBadOptionsNamingThem) {
  EXPECT_NE(Run({"--rates", "0"}), 0);
  EXPECT_NE(Log().find("every rate must be > 0"), std::string::npos) << Log();
  EXPECT_NE(Run({"--link", "0:fast:5ms"}), 0);
  EXPECT_NE(Log().find("link"), std::string::npos) << Log();
  EXPECT_NE(Run({"--seconds", "0"}), 0);
  EXPECT_NE(Log().find("--seconds must be > 0"), std::string::npos) << Log();
}

}  // namespace
}  // namespace cleave
