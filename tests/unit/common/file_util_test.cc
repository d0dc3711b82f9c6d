#include "common/file_util.h"

#include <sys/stat.h>

#include <filesystem>
#include <random>
#include <set>

#include <gtest/gtest.h>

namespace cleave {
namespace {

namespace fs = std::filesystem;

class FileUtilTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_file_util_" + UniqueSuffix());
    ASSERT_TRUE(fs::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename());
    return names;
  }
  fs::path dir_;
};

TEST_F(FileUtilTest, Sha256KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // Embedded NUL bytes are part of the input (string_view, not C string).
  EXPECT_NE(Sha256Hex(std::string("a\0b", 3)), Sha256Hex("a"));
}

TEST_F(FileUtilTest, WriteAtomicThenReadRoundTrip) {
  const fs::path path = dir_ / "data.bin";
  std::string bytes(200000, '\0');
  std::mt19937 rng(7);
  for (char& c : bytes) c = static_cast<char>(rng());
  ASSERT_TRUE(WriteFileAtomic(path, bytes).ok());
  Result<std::string> read = ReadFileToString(path);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(*read, bytes);
  // No temporary file is left behind.
  EXPECT_EQ(Entries(), std::vector<std::string>{"data.bin"});
}

TEST_F(FileUtilTest, WriteAtomicReplacesExistingFile) {
  const fs::path path = dir_ / "config.toml";
  ASSERT_TRUE(WriteFileAtomic(path, "old contents that are longer").ok());
  ASSERT_TRUE(WriteFileAtomic(path, "new").ok());
  EXPECT_EQ(ReadFileToString(path).value_or(""), "new");
  EXPECT_EQ(Entries().size(), 1u);
}

TEST_F(FileUtilTest, WriteAtomicEmptyFile) {
  ASSERT_TRUE(WriteFileAtomic(dir_ / "empty", "").ok());
  Result<std::string> read = ReadFileToString(dir_ / "empty");
  ASSERT_TRUE(read.ok());
  EXPECT_TRUE(read->empty());
}

TEST_F(FileUtilTest, WriteAtomicIntoMissingDirectoryIsNotFound) {
  Status s = WriteFileAtomic(dir_ / "no" / "such" / "file", "x");
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
  EXPECT_NE(s.message().find("no"), std::string::npos);
}

TEST_F(FileUtilTest, WriteAtomicRejectsDirectoryPath) {
  Status s = WriteFileAtomic(dir_ / "", "x");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
}

TEST_F(FileUtilTest, WriteAtomicOverDirectoryFailsAndCleansUp) {
  ASSERT_TRUE(fs::create_directory(dir_ / "sub"));
  Status s = WriteFileAtomic(dir_ / "sub", "x");
  EXPECT_EQ(s.code(), StatusCode::kIoError) << s.ToString();
  EXPECT_EQ(Entries(), std::vector<std::string>{"sub"});  // temp file removed
}

TEST_F(FileUtilTest, ReadMissingFileIsNotFoundNamingPath) {
  Result<std::string> r = ReadFileToString(dir_ / "absent.txt");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("absent.txt"), std::string::npos);
  EXPECT_NE(r.status().message().find("No such file"), std::string::npos);
}

TEST_F(FileUtilTest, ReadDirectoryIsIoError) {
  Result<std::string> r = ReadFileToString(dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kIoError);
  EXPECT_NE(r.status().message().find(dir_.string()), std::string::npos);
}

TEST_F(FileUtilTest, ReadUnreadableFileIsIoError) {
  if (::geteuid() == 0)
    GTEST_SKIP() << "cannot run as root: root reads a file whatever its permissions, so "
                    "no unreadable file can be made (run as another user)";
  const fs::path path = dir_ / "secret";
  ASSERT_TRUE(WriteFileAtomic(path, "x").ok());
  ASSERT_EQ(::chmod(path.c_str(), 0), 0);
  Result<std::string> r = ReadFileToString(path);
  EXPECT_EQ(r.status().code(), StatusCode::kIoError);
}

TEST_F(FileUtilTest, BoundedReadRefusesLargerFilesNamingThePath) {
  const fs::path path = dir_ / "small";
  ASSERT_TRUE(WriteFileAtomic(path, std::string(1000, 'x')).ok());
  EXPECT_EQ(ReadFileToStringBounded(path, 1000).value_or("").size(), 1000u);
  Result<std::string> r = ReadFileToStringBounded(path, 999);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
  EXPECT_NE(r.status().message().find(path.string() + "' is larger than the limit of 999 bytes"),
            std::string::npos)
      << r.status().message();
  EXPECT_EQ(ReadFileToStringBounded(dir_ / "absent", 10).status().code(), StatusCode::kNotFound);
  // A file with no size to check up front (a character device here) is cut off at the limit.
  Result<std::string> endless = ReadFileToStringBounded("/dev/zero", 200000);
  EXPECT_EQ(endless.status().code(), StatusCode::kInvalidArgument) << endless.status().ToString();
}

TEST_F(FileUtilTest, Sha256FileMatchesInMemoryHashAcrossChunks) {
  std::string bytes(3 * 65536 + 17, 'q');
  bytes[70000] = 'z';
  ASSERT_TRUE(WriteFileAtomic(dir_ / "big", bytes).ok());
  Result<std::string> hex = Sha256File(dir_ / "big");
  ASSERT_TRUE(hex.ok());
  EXPECT_EQ(*hex, Sha256Hex(bytes));
  Result<FileDigest> digest = DigestFile(dir_ / "big");
  ASSERT_TRUE(digest.ok());
  EXPECT_EQ(digest->sha256, *hex);
  EXPECT_EQ(digest->bytes, bytes.size());
}

TEST_F(FileUtilTest, Sha256FileErrors) {
  EXPECT_EQ(Sha256File(dir_ / "absent").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Sha256File(dir_).status().code(), StatusCode::kIoError);
  EXPECT_EQ(DigestFile(dir_ / "absent").status().code(), StatusCode::kNotFound);
}

TEST_F(FileUtilTest, WriteDurableTruncatesAndFsyncs) {
  const fs::path path = dir_ / "f";
  ASSERT_TRUE(WriteFileDurable(path, "long contents").ok());
  ASSERT_TRUE(WriteFileDurable(path, "short").ok());
  EXPECT_EQ(ReadFileToString(path).value_or(""), "short");
  EXPECT_TRUE(FsyncFile(path).ok());
  EXPECT_EQ(WriteFileDurable(dir_ / "x" / "f", "").code(), StatusCode::kNotFound);
}

TEST_F(FileUtilTest, FsyncErrors) {
  EXPECT_TRUE(FsyncDirectory(dir_).ok());
  EXPECT_EQ(FsyncDirectory(dir_ / "absent").code(), StatusCode::kNotFound);
  EXPECT_EQ(FsyncFile(dir_ / "absent").code(), StatusCode::kNotFound);
  ASSERT_TRUE(WriteFileAtomic(dir_ / "file", "x").ok());
  Status not_dir = FsyncDirectory(dir_ / "file");
  EXPECT_EQ(not_dir.code(), StatusCode::kIoError) << not_dir.ToString();
}

TEST_F(FileUtilTest, UniqueSuffixDoesNotRepeat) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(seen.insert(UniqueSuffix()).second);
}

}  // namespace
}  // namespace cleave
