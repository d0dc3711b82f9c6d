#include "common/text_corpus.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace cleave {
namespace {

class TextCorpusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("cleave-fortunes-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
  }
  std::filesystem::path dir_;
};

TEST(FortuneEntriesTest, SplitsOnPercentLinesAndDropsEmptyEntries) {
  const auto entries = SplitFortuneEntries("one\nline\n%\n%\n  \n%\ntwo\r\n%\nthree");
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[0], "one\nline\n");
  EXPECT_EQ(entries[1], "two\n");  // CRLF normalized
  EXPECT_EQ(entries[2], "three\n");
  EXPECT_TRUE(SplitFortuneEntries("").empty());
  EXPECT_TRUE(SplitFortuneEntries("%\n%\n").empty());
  // A "%" inside a line is text, not a separator.
  EXPECT_EQ(SplitFortuneEntries("100% sure\n%\n").size(), 1u);
}

TEST_F(TextCorpusTest, FixedHeldOutSplitInNameOrderSkippingIndexesAndLinks) {
  std::string b, a;
  for (int i = 0; i < 6; ++i) a += "a" + std::to_string(i) + "\n%\n";
  for (int i = 0; i < 6; ++i) b += "b" + std::to_string(i) + "\n%\n";
  Write("bravo", b);
  Write("alpha", a);
  Write("alpha.dat", "binary index");
  std::filesystem::create_symlink(dir_ / "alpha", dir_ / "alpha.u8");
  std::filesystem::create_directories(dir_ / "off");
  auto corpus = LoadFortunes(dir_.string(), 4);
  ASSERT_TRUE(corpus.ok()) << corpus.status().ToString();
  EXPECT_EQ(corpus->files, (std::vector<std::string>{"alpha", "bravo"}));
  // Entries a0..a5 b0..b5 are 0..11: indexes 3, 7, 11 are held out.
  EXPECT_EQ(corpus->held_out, "a3\n\nb1\n\nb5\n\n");
  EXPECT_EQ(corpus->held_out_entries, 3);
  EXPECT_EQ(corpus->train_entries, 9);
  EXPECT_EQ(corpus->train.find("a3"), std::string::npos);
  EXPECT_NE(corpus->train.find("a0\n\na1\n\na2\n\na4\n\n"), std::string::npos);
  // The same directory always gives the same split.
  auto again = LoadFortunes(dir_.string(), 4);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->train, corpus->train);
  EXPECT_EQ(again->held_out, corpus->held_out);
}

TEST_F(TextCorpusTest, RejectsMissingEmptyAndBadArguments) {
  EXPECT_EQ(LoadFortunes((dir_ / "nope").string()).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(LoadFortunes(dir_.string()).status().code(), StatusCode::kNotFound);  // no files
  Write("few", "only\n%\ntwo\n");
  EXPECT_EQ(LoadFortunes(dir_.string(), 10).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(LoadFortunes(dir_.string(), 1).status().code(), StatusCode::kInvalidArgument);
}

TEST(FortunesPackageTest, TheInstalledPackageHasEnoughText) {
  auto corpus = LoadFortunes();
  ASSERT_TRUE(corpus.ok()) << corpus.status().ToString();
  EXPECT_GT(corpus->train.size(), 1'000'000u);
  EXPECT_GT(corpus->held_out.size(), 100'000u);
  EXPECT_GT(corpus->train_entries, 9 * corpus->held_out_entries - 10);
}

}  // namespace
}  // namespace cleave
