// VersionDirectory chooses which numbered version to try (highest, newer than current, not
// remembered as bad with an unchanged directory); PeriodicReload ticks on its interval and on
// a reload request (SIGHUP).
#include "common/version_directory.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/shutdown.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;

class VersionDirectoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("cleave-versions-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  fs::path MakeVersion(const std::string& name, const std::string& content = "weights") {
    const fs::path dir = root_ / name;
    fs::create_directories(dir);
    std::ofstream(dir / "model.bin") << content;
    return dir;
  }

  fs::path root_;
};

TEST_F(VersionDirectoryTest, ParsesOnlyPlainDecimalNames) {
  EXPECT_EQ(VersionDirectory::ParseVersion("17"), 17u);
  EXPECT_EQ(VersionDirectory::ParseVersion("007"), 7u);
  for (const char* junk :
       {"", "0", "-1", "+2", "3.partial", ".tmp-3", "v4", "1e3", " 5", "12345678901234567890"}) {
    EXPECT_EQ(VersionDirectory::ParseVersion(junk), 0u) << junk;
  }
}

TEST_F(VersionDirectoryTest, ListsNumericDirectoriesAndIgnoresTheRest) {
  MakeVersion("3");
  MakeVersion("10");
  MakeVersion(".tmp-11");
  MakeVersion("12.partial");
  std::ofstream(root_ / "13") << "a file, not a version";
  VersionDirectory versions(root_);
  auto listed = versions.ListVersions();
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  EXPECT_EQ(*listed, (std::vector<uint64_t>{3, 10}));
}

TEST_F(VersionDirectoryTest, MissingRootIsNotFound) {
  VersionDirectory versions(root_ / "absent");
  EXPECT_EQ(versions.ListVersions().status().code(), StatusCode::kNotFound);
  EXPECT_EQ(versions.Next().status().code(), StatusCode::kNotFound);
}

TEST_F(VersionDirectoryTest, OffersTheHighestNewerVersionOnly) {
  VersionDirectory versions(root_);
  auto none = versions.Next();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value()) << "an empty repository offers nothing";
  MakeVersion("1");
  MakeVersion("2");
  auto next = versions.Next();
  ASSERT_TRUE(next.ok() && next->has_value());
  EXPECT_EQ((*next)->version, 2u);
  EXPECT_EQ((*next)->dir, root_ / "2");
  versions.MarkCurrent(**next);
  EXPECT_EQ(versions.current(), 2u);
  auto again = versions.Next();
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->has_value()) << "the current version is not offered again";
  fs::remove_all(root_ / "2");
  auto downgrade = versions.Next();
  ASSERT_TRUE(downgrade.ok());
  EXPECT_FALSE(downgrade->has_value()) << "no automatic downgrade to version 1";
}

TEST_F(VersionDirectoryTest, BadVersionWaitsUntilItsDirectoryChanges) {
  const fs::path dir = MakeVersion("4", "broken");
  VersionDirectory versions(root_);
  auto next = versions.Next();
  ASSERT_TRUE(next.ok() && next->has_value());
  versions.MarkBad(**next);
  EXPECT_TRUE(versions.IsBad(4));
  auto skipped = versions.Next();
  ASSERT_TRUE(skipped.ok());
  EXPECT_FALSE(skipped->has_value()) << "a refused version is not retried unchanged";
  // Rewriting a file (new size) changes the fingerprint: offered again.
  std::ofstream(dir / "model.bin") << "repaired and longer";
  auto retried = versions.Next();
  ASSERT_TRUE(retried.ok() && retried->has_value());
  EXPECT_EQ((*retried)->version, 4u);
  versions.MarkCurrent(**retried);
  EXPECT_FALSE(versions.IsBad(4));
  EXPECT_EQ(versions.current(), 4u);
}

TEST_F(VersionDirectoryTest, FingerprintSeesAddedAndRemovedEntries) {
  const fs::path dir = MakeVersion("5");
  const std::string before = VersionDirectory::Fingerprint(dir);
  EXPECT_EQ(VersionDirectory::Fingerprint(dir), before) << "stable when nothing changes";
  std::ofstream(dir / "extra") << "x";
  const std::string added = VersionDirectory::Fingerprint(dir);
  EXPECT_NE(added, before);
  fs::remove(dir / "extra");
  fs::remove(dir / "model.bin");
  EXPECT_NE(VersionDirectory::Fingerprint(dir), added);
}

TEST(PeriodicReloadTest, TicksOnItsIntervalAndOnReloadRequests) {
  std::atomic<int> ticks{0};
  {
    PeriodicReload reload(20, [&] { ++ticks; });
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (ticks.load() < 3 && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_GE(ticks.load(), 3);
  }
  const int after_stop = ticks.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  EXPECT_EQ(ticks.load(), after_stop) << "no tick after destruction";

  // A long interval: only the reload request can make it tick soon.
  std::atomic<int> hup_ticks{0};
  PeriodicReload reload(3'600'000, [&] { ++hup_ticks; });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_EQ(hup_ticks.load(), 0);
  RequestReload();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (hup_ticks.load() == 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(hup_ticks.load(), 1);
}

}  // namespace
}  // namespace cleave
