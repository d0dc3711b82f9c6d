// The image-folder source of OpenImageData ("folder:DIR", torchvision's ImageFolder layout).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include "common/image_data.h"
#include "common/jpeg_image.h"
#include "common/png_image.h"
#include "unit/common/image_data_test_util.h"

namespace cleave {
namespace {

using image_data_testing::ExpectConcurrentReadsMatchSerial;
using image_data_testing::ExpectReadLabelMatchesRead;
using image_data_testing::ExpectStatus;
using image_data_testing::ImageDataFixture;
using image_data_testing::ReadImageOrFail;
using image_data_testing::SamplePixel;
using ::testing::ElementsAre;

// A PNG of `channels` (1 or 3) whose CHW byte k is SamplePixel(seed, k).
std::string MakeFolderTestPng(int seed, uint32_t width, uint32_t height, uint32_t channels) {
  PixelImage image{width, height, channels, {}};
  image.pixels.resize(size_t{width} * height * channels);
  const size_t plane = size_t{width} * height;
  for (size_t c = 0; c < channels; ++c) {
    for (size_t i = 0; i < plane; ++i) {
      image.pixels[i * channels + c] = SamplePixel(seed, static_cast<int64_t>(c * plane + i));
    }
  }
  Result<std::string> png = EncodePngPixels(image);
  EXPECT_TRUE(png.ok()) << png.status().ToString();
  return png.ok() ? *png : std::string();
}

// A quality-100 JPEG of `channels` (1 or 3) whose every sample is `value`: flat images come
// back from JPEG exactly or within a level, so reads can be checked by value.
std::string MakeFolderTestJpeg(uint8_t value, uint32_t width, uint32_t height, uint32_t channels) {
  const PixelImage image{width, height, channels,
                         std::vector<uint8_t>(size_t{width} * height * channels, value)};
  Result<std::string> jpeg = EncodeJpegPixels(image, 100);
  EXPECT_TRUE(jpeg.ok()) << jpeg.status().ToString();
  return jpeg.ok() ? *jpeg : std::string();
}

// The largest distance of any byte of `pixels` from `value`.
int MaxDistanceFromFlat(const std::vector<uint8_t>& pixels, uint8_t value) {
  int worst = 0;
  for (uint8_t p : pixels) worst = std::max(worst, std::abs(int{p} - int{value}));
  return worst;
}

class FolderImageDataTest : public ImageDataFixture {
 protected:
  // train/ant/{a,b}.png, train/bee/c.png, test/ant/d.png, test/bee/e.png with seeds 0..4, plus
  // files the reader must pass over: a GIF, a text file, a hidden PNG and a hidden folder.
  void WriteFolder(uint32_t channels, uint32_t width = 3, uint32_t height = 2) {
    const char* names[] = {"train/ant/a.png", "train/ant/b.png", "train/bee/c.png",
                           "test/ant/d.png", "test/bee/e.png"};
    for (int seed = 0; seed < 5; ++seed) {
      WriteBytes(names[seed], MakeFolderTestPng(seed, width, height, channels));
    }
    WriteBytes("train/bee/photo.gif", "GIF89a not an image this reader decodes");
    WriteBytes("train/bee/notes.txt", "ignored");
    WriteBytes("train/bee/.hidden.png", "ignored");
    WriteBytes("train/.cache/x.png", "ignored");
  }
  Status OpenError(DatasetSplit split = DatasetSplit::kTrain) {
    Result<std::unique_ptr<ImageDataSource>> source = Open("folder", split);
    EXPECT_FALSE(source.ok());
    return source.status();
  }
  // Reads image `index` expecting `label` and the CHW bytes of `seed`.
  static void ExpectFolderImage(const ImageDataSource& source, int64_t index, int32_t label,
                                int seed) {
    int32_t got_label = -1;
    const std::vector<uint8_t> pixels = ReadImageOrFail(source, index, &got_label);
    EXPECT_EQ(got_label, label) << index;
    for (size_t k = 0; k < pixels.size(); ++k) {
      ASSERT_EQ(pixels[k], SamplePixel(seed, static_cast<int64_t>(k))) << index << "," << k;
    }
  }
};

TEST_F(FolderImageDataTest, GrayFolderReadsBackWithFolderClassNames) {
  WriteFolder(1);
  Result<std::unique_ptr<ImageDataSource>> train = Open("folder", DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  EXPECT_THAT((*train)->class_names(), ElementsAre("ant", "bee"));
  EXPECT_EQ((*train)->size(), 3);
  EXPECT_EQ((*train)->shape().channels, 1);
  EXPECT_EQ((*train)->shape().height, 2);
  EXPECT_EQ((*train)->shape().width, 3);
  ExpectFolderImage(**train, 0, 0, 0);
  ExpectFolderImage(**train, 1, 0, 1);
  ExpectFolderImage(**train, 2, 1, 2);
  Result<std::unique_ptr<ImageDataSource>> test = Open("folder", DatasetSplit::kTest);
  ASSERT_TRUE(test.ok()) << test.status().ToString();
  EXPECT_THAT((*test)->class_names(), ElementsAre("ant", "bee"));
  ExpectFolderImage(**test, 0, 0, 3);
  ExpectFolderImage(**test, 1, 1, 4);
}

TEST_F(FolderImageDataTest, RgbFolderReadsBackAsPlanarChw) {
  WriteFolder(3, 4, 5);
  Result<std::unique_ptr<ImageDataSource>> train = Open("folder", DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  EXPECT_EQ((*train)->shape().channels, 3);
  EXPECT_EQ((*train)->shape().height, 5);
  EXPECT_EQ((*train)->shape().width, 4);
  for (int i = 0; i < 3; ++i) ExpectFolderImage(**train, i, i < 2 ? 0 : 1, i);
}

TEST_F(FolderImageDataTest, GrayImageInAnRgbDatasetIsReplicated) {
  WriteFolder(3);
  WriteBytes("train/bee/c.png", MakeFolderTestPng(2, 3, 2, 1));
  Result<std::unique_ptr<ImageDataSource>> train = Open("folder", DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  const std::vector<uint8_t> pixels = ReadImageOrFail(**train, 2, nullptr);
  for (int64_t k = 0; k < 6; ++k) {
    EXPECT_EQ(pixels[k], SamplePixel(2, k));
    EXPECT_EQ(pixels[6 + k], SamplePixel(2, k));
    EXPECT_EQ(pixels[12 + k], SamplePixel(2, k));
  }
}

TEST_F(FolderImageDataTest, EmptyClassFolderIsInvalidArgument) {
  WriteFolder(1);
  std::filesystem::create_directories(dir_ / "train" / "cow");
  ExpectStatus(
      OpenError(), StatusCode::kInvalidArgument,
      "class folder '" + (dir_ / "train" / "cow").string() + "' holds no PNG or JPEG images");
  WriteBytes("train/cow/moo.gif", "GIF89a");  // other extensions still do not count
  ExpectStatus(OpenError(), StatusCode::kInvalidArgument, "holds no PNG or JPEG images");
}

TEST_F(FolderImageDataTest, EmptySplitIsInvalidArgument) {
  WriteFolder(1);
  std::filesystem::remove_all(dir_ / "test");
  std::filesystem::create_directories(dir_ / "test");
  ExpectStatus(OpenError(DatasetSplit::kTest), StatusCode::kInvalidArgument,
               "holds no class folders with images");
  std::filesystem::remove_all(dir_ / "train");
  std::filesystem::create_directories(dir_ / "train");
  ExpectStatus(OpenError(), StatusCode::kInvalidArgument, "holds no class folders");
}

TEST_F(FolderImageDataTest, MissingSplitFolderIsNotFound) {
  WriteFolder(1);
  std::filesystem::remove_all(dir_ / "test");
  ExpectStatus(OpenError(DatasetSplit::kTest), StatusCode::kNotFound,
               "image folder '" + (dir_ / "test").string() + "' not found");
  std::filesystem::remove_all(dir_ / "train");
  ExpectStatus(OpenError(), StatusCode::kNotFound, "train' not found");
}

TEST_F(FolderImageDataTest, TestClassNotInTrainIsInvalidArgument) {
  WriteFolder(1);
  WriteBytes("test/cow/f.png", MakeFolderTestPng(5, 3, 2, 1));
  ExpectStatus(OpenError(DatasetSplit::kTest), StatusCode::kInvalidArgument,
               "'" + (dir_ / "test" / "cow").string() + "' is not a class of");
}

TEST_F(FolderImageDataTest, UndecodablePngIsInvalidArgumentNamingIt) {
  WriteFolder(1);
  const std::string broken = WriteBytes("train/bee/c.png", "\x89PNG\r\n\x1a\n truncated");
  Result<std::unique_ptr<ImageDataSource>> train = Open("folder", DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  std::vector<uint8_t> pixels(6);
  ExpectStatus((*train)->Read(2, pixels.data(), nullptr), StatusCode::kInvalidArgument, broken);
  const std::string not_png = WriteBytes("train/bee/c.png", "GIF89a");
  ExpectStatus((*train)->Read(2, pixels.data(), nullptr), StatusCode::kInvalidArgument, not_png);
  // The first train image is decoded at open for the shape, so there it fails the open.
  const std::string first = WriteBytes("train/ant/a.png", "garbage");
  ExpectStatus(OpenError(), StatusCode::kInvalidArgument, first);
}

TEST_F(FolderImageDataTest, MixedPngAndJpegFolderReadsBack) {
  WriteFolder(1);
  // A JPEG per spelling of the extension; the gray dataset converts the RGB one to gray.
  WriteBytes("train/ant/b2.jpg", MakeFolderTestJpeg(90, 3, 2, 1));
  WriteBytes("train/bee/d.JPEG", MakeFolderTestJpeg(140, 3, 2, 3));
  WriteBytes("train/bee/e.Jpg", MakeFolderTestJpeg(200, 3, 2, 1));
  Result<std::unique_ptr<ImageDataSource>> train = Open("folder", DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  ASSERT_EQ((*train)->size(), 6);  // a.png b.png b2.jpg | c.png d.JPEG e.Jpg
  EXPECT_EQ((*train)->shape().channels, 1);
  ExpectFolderImage(**train, 0, 0, 0);
  ExpectFolderImage(**train, 1, 0, 1);
  ExpectFolderImage(**train, 3, 1, 2);
  const uint8_t flat_values[] = {90, 140, 200};
  const int64_t jpeg_indices[] = {2, 4, 5};
  const int32_t jpeg_labels[] = {0, 1, 1};
  for (int j = 0; j < 3; ++j) {
    int32_t label = -1;
    const std::vector<uint8_t> pixels = ReadImageOrFail(**train, jpeg_indices[j], &label);
    EXPECT_EQ(label, jpeg_labels[j]);
    EXPECT_LE(MaxDistanceFromFlat(pixels, flat_values[j]), 1) << jpeg_indices[j];
  }
  ExpectConcurrentReadsMatchSerial(**train);
  ExpectReadLabelMatchesRead(**train);
}

TEST_F(FolderImageDataTest, JpegFirstImageSetsTheShape) {
  WriteBytes("train/ant/a.jpg", MakeFolderTestJpeg(60, 5, 4, 3));
  WriteBytes("train/bee/b.png", MakeFolderTestPng(1, 5, 4, 1));  // gray PNG, replicated
  WriteBytes("test/bee/c.jpeg", MakeFolderTestJpeg(30, 5, 4, 1));
  Result<std::unique_ptr<ImageDataSource>> train = Open("folder", DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  EXPECT_EQ((*train)->shape().channels, 3);
  EXPECT_EQ((*train)->shape().height, 4);
  EXPECT_EQ((*train)->shape().width, 5);
  EXPECT_LE(MaxDistanceFromFlat(ReadImageOrFail(**train, 0, nullptr), 60), 1);
  const std::vector<uint8_t> planar = ReadImageOrFail(**train, 1, nullptr);
  for (int64_t k = 0; k < 20; ++k) {
    EXPECT_EQ(planar[k], SamplePixel(1, k));
    EXPECT_EQ(planar[20 + k], SamplePixel(1, k));
    EXPECT_EQ(planar[40 + k], SamplePixel(1, k));
  }
  Result<std::unique_ptr<ImageDataSource>> test = Open("folder", DatasetSplit::kTest);
  ASSERT_TRUE(test.ok()) << test.status().ToString();
  EXPECT_LE(MaxDistanceFromFlat(ReadImageOrFail(**test, 0, nullptr), 30), 1);
}

TEST_F(FolderImageDataTest, CorruptJpegIsInvalidArgumentNamingIt) {
  WriteFolder(1);
  const std::string jpeg = MakeFolderTestJpeg(90, 3, 2, 1);
  const std::string truncated = WriteBytes("train/bee/d.jpg", jpeg.substr(0, jpeg.size() / 2));
  Result<std::unique_ptr<ImageDataSource>> train = Open("folder", DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  std::vector<uint8_t> pixels(6);
  ExpectStatus((*train)->Read(3, pixels.data(), nullptr), StatusCode::kInvalidArgument,
               truncated + ": invalid JPEG");
  const std::string garbage = WriteBytes("train/bee/d.jpg", "ÿØÿ garbage");
  ExpectStatus((*train)->Read(3, pixels.data(), nullptr), StatusCode::kInvalidArgument, garbage);
  // A JPEG of the wrong size is refused like a PNG of the wrong size.
  const std::string odd = WriteBytes("train/bee/d.jpg", MakeFolderTestJpeg(90, 2, 3, 1));
  ExpectStatus((*train)->Read(3, pixels.data(), nullptr), StatusCode::kInvalidArgument,
               "'" + odd + "' is 2x3 but the dataset's images are 3x2");
  EXPECT_TRUE((*train)->Read(2, pixels.data(), nullptr).ok());
  // The first train image is decoded at open, so a corrupt first JPEG fails the open.
  std::filesystem::remove(dir_ / "train" / "ant" / "a.png");
  const std::string first = WriteBytes("train/ant/a.jpg", jpeg.substr(0, 40));
  ExpectStatus(OpenError(), StatusCode::kInvalidArgument, first);
}

TEST_F(FolderImageDataTest, VanishedFileIsNotFoundNamingIt) {
  WriteFolder(1);
  Result<std::unique_ptr<ImageDataSource>> train = Open("folder", DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  std::filesystem::remove(dir_ / "train" / "ant" / "b.png");
  std::vector<uint8_t> pixels(6);
  ExpectStatus((*train)->Read(1, pixels.data(), nullptr), StatusCode::kNotFound, "b.png");
}

TEST_F(FolderImageDataTest, MismatchedSizeIsInvalidArgumentAtRead) {
  WriteFolder(1);
  const std::string odd = WriteBytes("train/bee/c.png", MakeFolderTestPng(2, 2, 3, 1));
  Result<std::unique_ptr<ImageDataSource>> train = Open("folder", DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  std::vector<uint8_t> pixels(6);
  ExpectStatus((*train)->Read(2, pixels.data(), nullptr), StatusCode::kInvalidArgument,
               "'" + odd + "' is 2x3 but the dataset's images are 3x2");
  EXPECT_TRUE((*train)->Read(1, pixels.data(), nullptr).ok());
}

TEST_F(FolderImageDataTest, BadReadArgumentsAreInvalidArgument) {
  WriteFolder(1);
  Result<std::unique_ptr<ImageDataSource>> train = Open("folder", DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  std::vector<uint8_t> pixels(6);
  ExpectStatus((*train)->Read(3, pixels.data(), nullptr), StatusCode::kInvalidArgument,
               "index 3 is outside the dataset's [0, 3)");
  ExpectStatus((*train)->Read(-1, pixels.data(), nullptr), StatusCode::kInvalidArgument,
               "index -1");
  ExpectStatus((*train)->Read(0, nullptr, nullptr), StatusCode::kInvalidArgument,
               "no pixel buffer");
}

TEST_F(FolderImageDataTest, ConcurrentReadsGiveTheSameBytes) {
  WriteFolder(3);
  Result<std::unique_ptr<ImageDataSource>> train = Open("folder", DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  ExpectConcurrentReadsMatchSerial(**train);
  ExpectReadLabelMatchesRead(**train);
}

}  // namespace
}  // namespace cleave
