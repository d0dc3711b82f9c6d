// split::ImageRows: a streamed set gives exactly what the in-memory one holds (images,
// labels, subsets, the held-out split), OpenRows picks by the memory budget, and bad
// requests are refused.
#include "split/image_rows.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/png_image.h"
#include "testing/idx_writer.h"

namespace cleave::split {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// Raw (uncompressed) IDX files of `count` 6x6 images with labels i % 3.
void WriteRowsIdx(const fs::path& dir, const std::string& prefix, int count) {
  ASSERT_TRUE(cleave::testing::WriteIdxPair(
                  dir, prefix, count, 6,
                  [](int i, int p) { return static_cast<uint8_t>((i * 37 + p * 11) % 256); },
                  [](int i) { return static_cast<uint8_t>(i % 3); })
                  .ok());
}

class ImageRowsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_image_rows_" + UniqueSuffix());
    fs::create_directories(dir_ / "idx");
    WriteRowsIdx(dir_ / "idx", "train", 40);
    WriteRowsIdx(dir_ / "idx", "t10k", 10);
    // An RGB folder: 2 classes x 5 images of 5x5, converted to gray 4x4 by the input.
    for (const char* split : {"train", "test"}) {
      for (int c = 0; c < 2; ++c) {
        const fs::path folder = dir_ / "folder" / split / ("class" + std::to_string(c));
        fs::create_directories(folder);
        for (int i = 0; i < 5; ++i) {
          PixelImage image;
          image.width = image.height = 5;
          image.channels = 3;
          for (int p = 0; p < 75; ++p) {
            image.pixels.push_back(static_cast<uint8_t>((p * 13 + i * 29 + c * 101) % 256));
          }
          ASSERT_TRUE(
              WriteFileAtomic(folder / (std::to_string(i) + ".png"), *EncodePngPixels(image)).ok());
        }
      }
    }
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  static InputSpec Input(int channels, int side, int classes) {
    InputSpec input;
    input.channels = channels;
    input.height = input.width = side;
    for (int c = 0; c < classes; ++c) input.class_names.push_back(std::to_string(c));
    return input;
  }
  // The same split both ways: budget 0 streams, a large one loads.
  std::pair<ImageRows, ImageRows> Both(const std::string& spec, const InputSpec& input) {
    Result<ImageRows> streamed = OpenRows(spec, DatasetSplit::kTrain, input, 0, 0, 2);
    Result<ImageRows> memory = OpenRows(spec, DatasetSplit::kTrain, input, 0, int64_t{1} << 30, 2);
    EXPECT_TRUE(streamed.ok()) << streamed.status().ToString();
    EXPECT_TRUE(memory.ok()) << memory.status().ToString();
    return {streamed.ok() ? *streamed : ImageRows(), memory.ok() ? *memory : ImageRows()};
  }
  fs::path dir_;
};

void ExpectSameRows(const ImageRows& streamed, const ImageRows& memory) {
  ASSERT_EQ(streamed.size(), memory.size());
  EXPECT_TRUE(torch::equal(streamed.labels(), memory.labels()));
  const torch::Tensor index = torch::tensor({3, 0, 7, 7, 1}, torch::kLong) % memory.size();
  Result<torch::Tensor> a = streamed.Images(index);
  Result<torch::Tensor> b = memory.Images(index);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_TRUE(torch::equal(*a, *b));
  Result<torch::Tensor> sa = streamed.Slice(2, 5);
  Result<torch::Tensor> sb = memory.Slice(2, 5);
  ASSERT_TRUE(sa.ok() && sb.ok());
  EXPECT_TRUE(torch::equal(*sa, *sb));
  Result<LabeledImages> la = streamed.Load();
  Result<LabeledImages> lb = memory.Load();
  ASSERT_TRUE(la.ok() && lb.ok());
  EXPECT_TRUE(torch::equal(la->images, lb->images));
}

TEST_F(ImageRowsTest, StreamedIdxRowsEqualTheLoadedOnes) {
  auto [streamed, memory] = Both("idx:" + (dir_ / "idx").string(), Input(1, 6, 3));
  EXPECT_TRUE(streamed.streamed());
  EXPECT_FALSE(memory.streamed());
  ExpectSameRows(streamed, memory);
}

TEST_F(ImageRowsTest, StreamedFolderRowsAreConvertedLikeTheLoadedOnes) {
  // RGB 5x5 PNGs into a gray 4x4 input: the conversion runs per batch, row for row the same.
  auto [streamed, memory] = Both("folder:" + (dir_ / "folder").string(), Input(1, 4, 2));
  EXPECT_TRUE(streamed.streamed());
  ExpectSameRows(streamed, memory);
}

TEST_F(ImageRowsTest, SubsetsAndTheHeldOutSplitMatchTheInMemoryOnes) {
  auto [streamed, memory] = Both("idx:" + (dir_ / "idx").string(), Input(1, 6, 3));
  auto hs = HoldOut(streamed, 8, 5);
  auto hm = HoldOut(memory, 8, 5);
  ASSERT_TRUE(hs.ok() && hm.ok());
  EXPECT_TRUE(hs->first.streamed());
  ExpectSameRows(hs->first, hm->first);
  ExpectSameRows(hs->second, hm->second);
  // The split of HoldOut(LabeledImages) with the same seed.
  Result<LabeledImages> all = memory.Load();
  ASSERT_TRUE(all.ok());
  auto classic = HoldOut(*all, 8, 5);
  ASSERT_TRUE(classic.ok());
  EXPECT_TRUE(torch::equal(classic->second.labels, hs->second.labels()));
  Result<LabeledImages> held = hs->second.Load();
  ASSERT_TRUE(held.ok());
  EXPECT_TRUE(torch::equal(classic->second.images, held->images));
}

TEST_F(ImageRowsTest, RefusesBadRowsAndMismatchedData) {
  auto [streamed, memory] = Both("idx:" + (dir_ / "idx").string(), Input(1, 6, 3));
  for (const ImageRows* rows : {&streamed, &memory}) {
    EXPECT_EQ(rows->Images(torch::tensor({0, 40}, torch::kLong)).status().code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(rows->Images(torch::tensor({-1}, torch::kLong)).status().code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(rows->Images(torch::tensor({0.5})).status().code(), StatusCode::kInvalidArgument);
  }
  // Slices are clamped to the set.
  Result<torch::Tensor> tail = streamed.Slice(38, 10);
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(tail->size(0), 2);
  // A model with another class count.
  Result<ImageRows> classes =
      OpenRows("idx:" + (dir_ / "idx").string(), DatasetSplit::kTrain, Input(1, 6, 5), 0, 0);
  EXPECT_EQ(classes.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(classes.status().message(), HasSubstr("classes"));
  // Labels beyond what the input declares, found when the labels are read up front.
  Result<DataSpec> spec = ParseDataSpec("idx:" + (dir_ / "idx").string());
  ASSERT_TRUE(spec.ok());
  Result<std::unique_ptr<ImageDataSource>> opened = OpenImageData(*spec, DatasetSplit::kTrain);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::shared_ptr<const ImageDataSource> source = std::move(opened).value();
  Result<ImageRows> labels = ImageRows::Streamed(source, Input(1, 6, 2), 0);
  EXPECT_EQ(labels.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(labels.status().message(), HasSubstr("outside the 2 classes"));
  // No dataset.
  EXPECT_EQ(ImageRows::Streamed(nullptr, Input(1, 6, 3), 0).status().code(),
            StatusCode::kInvalidArgument);
  // A missing dataset names the spec.
  Result<ImageRows> missing =
      OpenRows("idx:" + (dir_ / "absent").string(), DatasetSplit::kTrain, Input(1, 6, 3), 0, 0);
  EXPECT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("absent"));
}

}  // namespace
}  // namespace cleave::split
