// Helpers shared by the image dataset tests (tests/unit/common/image_data*_test.cc): a
// fixture owning a temporary directory, writers of tiny raw and gzip files, and checks.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "common/image_data.h"

namespace cleave::image_data_testing {

// A deterministic sample value for byte `k` of image `i`.
inline uint8_t SamplePixel(int64_t i, int64_t k) {
  return static_cast<uint8_t>((i * 31 + k * 7 + 3) % 256);
}

// Reads image `index` of `source`; fails the test on error.
inline std::vector<uint8_t> ReadImageOrFail(const ImageDataSource& source, int64_t index,
                                            int32_t* label) {
  std::vector<uint8_t> pixels(static_cast<size_t>(source.shape().bytes()));
  const Status status = source.Read(index, pixels.data(), label);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return pixels;
}

inline void ExpectStatus(const Status& status, StatusCode code, const std::string& fragment) {
  EXPECT_EQ(status.code(), code) << status.ToString();
  EXPECT_THAT(status.message(), ::testing::HasSubstr(fragment));
}

// Reads every image of `source` from four threads at once, each in a different order, and
// expects exactly the bytes and labels of a serial pass.
inline void ExpectConcurrentReadsMatchSerial(const ImageDataSource& source) {
  const int64_t n = source.size();
  std::vector<std::vector<uint8_t>> serial(static_cast<size_t>(n));
  std::vector<int32_t> serial_labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) serial[i] = ReadImageOrFail(source, i, &serial_labels[i]);
  constexpr int kThreads = 4;
  std::vector<int> mismatches(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> pixels(static_cast<size_t>(source.shape().bytes()));
      for (int round = 0; round < 20; ++round) {
        for (int64_t step = 0; step < n; ++step) {
          const int64_t i = (step * (2 * t + 1) + round) % n;
          int32_t label = -1;
          if (!source.Read(i, pixels.data(), &label).ok() || pixels != serial[i] ||
              label != serial_labels[i]) {
            ++mismatches[t];
          }
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

// ReadLabel answers what Read says for every image, and refuses an index outside the set
// or a null output.
inline void ExpectReadLabelMatchesRead(const ImageDataSource& source) {
  for (int64_t i = 0; i < source.size(); ++i) {
    int32_t from_read = -1, alone = -2;
    ReadImageOrFail(source, i, &from_read);
    ASSERT_TRUE(source.ReadLabel(i, &alone).ok()) << i;
    EXPECT_EQ(alone, from_read) << "image " << i;
  }
  int32_t label = 0;
  EXPECT_EQ(source.ReadLabel(-1, &label).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(source.ReadLabel(source.size(), &label).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(source.ReadLabel(0, nullptr).code(), StatusCode::kInvalidArgument);
}

class ImageDataFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("cleave_test_image_data_" + UniqueSuffix());
    ASSERT_TRUE(std::filesystem::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  // Writes `bytes` to dir_/name (parent folders created) and returns the path.
  std::string WriteBytes(const std::string& name, const std::string& bytes) {
    const std::filesystem::path path = dir_ / name;
    std::filesystem::create_directories(path.parent_path());
    EXPECT_TRUE(WriteFileAtomic(path, bytes).ok());
    return path.string();
  }
  std::string WriteGzip(const std::string& name, const std::string& bytes) {
    const std::string path = (dir_ / name).string();
    gzFile f = gzopen(path.c_str(), "wb");
    EXPECT_NE(f, nullptr);
    EXPECT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    EXPECT_EQ(gzclose(f), Z_OK);
    return path;
  }
  Result<std::unique_ptr<ImageDataSource>> Open(const std::string& kind, DatasetSplit split) {
    return OpenImageData(DataSpec{kind, dir_.string()}, split);
  }
  std::filesystem::path dir_;
};

}  // namespace cleave::image_data_testing
