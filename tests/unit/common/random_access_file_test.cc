#include "common/random_access_file.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "common/file_util.h"

namespace cleave {
namespace {

class RandomAccessFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // One folder per test: ctest runs the tests of this file as parallel processes.
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("cleave_random_access_file_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "data.bin").string();
    ASSERT_TRUE(WriteFileAtomic(path_, "0123456789").ok());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path dir_;
  std::string path_;
};

TEST_F(RandomAccessFileTest, ReadsAnyRangeWithinTheFile) {
  Result<RandomAccessFile> file = RandomAccessFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_TRUE(file->is_open());
  EXPECT_EQ(file->size(), 10u);
  std::vector<uint8_t> out(4);
  ASSERT_TRUE(file->ReadAt(3, 4, out.data()).ok());
  EXPECT_EQ(std::string(out.begin(), out.end()), "3456");
  ASSERT_TRUE(file->ReadAt(6, 4, out.data()).ok());  // up to the last byte
  EXPECT_EQ(std::string(out.begin(), out.end()), "6789");
  EXPECT_TRUE(file->ReadAt(10, 0, out.data()).ok());  // empty range at the end
}

TEST_F(RandomAccessFileTest, RangesPastTheEndAreInvalidArgument) {
  Result<RandomAccessFile> file = RandomAccessFile::Open(path_);
  ASSERT_TRUE(file.ok());
  std::vector<uint8_t> out(16);
  EXPECT_EQ(file->ReadAt(7, 4, out.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(file->ReadAt(11, 0, out.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(file->ReadAt(~uint64_t{0}, 2, out.data()).code(), StatusCode::kInvalidArgument);
}

TEST_F(RandomAccessFileTest, OpenErrorsNameThePath) {
  Result<RandomAccessFile> missing = RandomAccessFile::Open((dir_ / "nope.bin").string());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().ToString().find("nope.bin"), std::string::npos);
  Result<RandomAccessFile> folder = RandomAccessFile::Open(dir_.string());
  EXPECT_EQ(folder.status().code(), StatusCode::kIoError);
  EXPECT_NE(folder.status().ToString().find("not a regular file"), std::string::npos);
}

TEST_F(RandomAccessFileTest, AFileThatShrinksWhileOpenIsDataLoss) {
  Result<RandomAccessFile> file = RandomAccessFile::Open(path_);
  ASSERT_TRUE(file.ok());
  std::filesystem::resize_file(path_, 5);
  std::vector<uint8_t> out(4);
  EXPECT_TRUE(file->ReadAt(0, 4, out.data()).ok());  // still there
  const Status shrunk = file->ReadAt(4, 4, out.data());
  EXPECT_EQ(shrunk.code(), StatusCode::kDataLoss) << shrunk.ToString();
  EXPECT_NE(shrunk.ToString().find("data.bin"), std::string::npos);
}

TEST_F(RandomAccessFileTest, AMovedFromOrDefaultFileRefusesReads) {
  Result<RandomAccessFile> file = RandomAccessFile::Open(path_);
  ASSERT_TRUE(file.ok());
  RandomAccessFile moved = std::move(file).value();
  std::vector<uint8_t> out(2);
  EXPECT_TRUE(moved.ReadAt(0, 2, out.data()).ok());
  RandomAccessFile none;
  EXPECT_FALSE(none.is_open());
  EXPECT_EQ(none.ReadAt(0, 0, out.data()).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave
