// ParseDataSpec, OpenImageData's dispatch and the IDX source (tests/unit/common/
// image_data_cifar_test.cc and image_data_folder_test.cc cover the other formats).
#include "common/image_data.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

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

TEST(ParseDataSpecTest, AcceptsEveryForm) {
  const std::vector<std::pair<std::string, DataSpec>> cases = {
      {"fashion-mnist", {"fashion-mnist", kFashionMnistDir}},
      {"fashion-mnist:/d", {"fashion-mnist", "/d"}},
      {"idx:/data/mnist", {"idx", "/data/mnist"}},
      {"cifar10:rel/c10", {"cifar10", "rel/c10"}},
      {"cifar100:/c100", {"cifar100", "/c100"}},
      {"cifar:/c", {"cifar", "/c"}},
      {"folder:/imgs:with:colons", {"folder", "/imgs:with:colons"}},
  };
  for (const auto& [text, expected] : cases) {
    Result<DataSpec> spec = ParseDataSpec(text);
    ASSERT_TRUE(spec.ok()) << text << ": " << spec.status().ToString();
    EXPECT_EQ(spec->kind, expected.kind) << text;
    EXPECT_EQ(spec->path, expected.path) << text;
  }
}

TEST(ParseDataSpecTest, RejectsOtherFormsNamingTheAcceptedOnes) {
  for (const char* text : {"", "mnist", "mnist:/d", "IDX:/d", ":/d", "jpeg-folder:/d", "idx",
                           "idx:", "cifar10", "cifar100:", "folder", "folder:"}) {
    Result<DataSpec> spec = ParseDataSpec(text);
    ASSERT_FALSE(spec.ok()) << text;
    ExpectStatus(spec.status(), StatusCode::kInvalidArgument, "accepted: fashion-mnist");
  }
}

TEST(OpenImageDataTest, UnknownKindIsInvalidArgument) {
  Result<std::unique_ptr<ImageDataSource>> source =
      OpenImageData(DataSpec{"webdataset", "/tmp"}, DatasetSplit::kTrain);
  ASSERT_FALSE(source.ok());
  ExpectStatus(source.status(), StatusCode::kInvalidArgument, "unknown dataset kind 'webdataset'");
}

void AppendBigEndian32(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}

// An IDX image file of `count` rows x cols images whose bytes are SamplePixel(i, k).
std::string MakeIdxImages(uint32_t count, uint32_t rows, uint32_t cols,
                          uint32_t magic = kIdxImagesMagic) {
  std::string out;
  AppendBigEndian32(&out, magic);
  AppendBigEndian32(&out, count);
  AppendBigEndian32(&out, rows);
  AppendBigEndian32(&out, cols);
  for (uint32_t i = 0; i < count; ++i) {
    for (uint32_t k = 0; k < rows * cols; ++k) out.push_back(static_cast<char>(SamplePixel(i, k)));
  }
  return out;
}

std::string MakeIdxLabels(const std::vector<uint8_t>& labels, uint32_t magic = kIdxLabelsMagic) {
  std::string out;
  AppendBigEndian32(&out, magic);
  AppendBigEndian32(&out, static_cast<uint32_t>(labels.size()));
  out.append(labels.begin(), labels.end());
  return out;
}

class IdxImageDataTest : public ImageDataFixture {
 protected:
  // Train: 4 images of 5 rows x 7 columns, labels {2,0,1,2}; test: 2 images, labels {0,0}.
  void WriteSmallIdx(bool gzip) {
    auto write = [&](const std::string& name, const std::string& bytes) {
      if (gzip) {
        WriteGzip(name + ".gz", bytes);
      } else {
        WriteBytes(name, bytes);
      }
    };
    write("train-images-idx3-ubyte", MakeIdxImages(4, 5, 7));
    write("train-labels-idx1-ubyte", MakeIdxLabels({2, 0, 1, 2}));
    write("t10k-images-idx3-ubyte", MakeIdxImages(2, 5, 7));
    write("t10k-labels-idx1-ubyte", MakeIdxLabels({0, 0}));
  }
  Status OpenError(DatasetSplit split = DatasetSplit::kTrain) {
    Result<std::unique_ptr<ImageDataSource>> source = Open("idx", split);
    EXPECT_FALSE(source.ok());
    return source.status();
  }
};

TEST_F(IdxImageDataTest, RawAndGzipOfAnySizeReadBackExactly) {
  for (const bool gzip : {false, true}) {
    SCOPED_TRACE(gzip ? "gzip" : "raw");
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    WriteSmallIdx(gzip);
    Result<std::unique_ptr<ImageDataSource>> train = Open("idx", DatasetSplit::kTrain);
    ASSERT_TRUE(train.ok()) << train.status().ToString();
    const ImageDataSource& source = **train;
    EXPECT_EQ(source.size(), 4);
    EXPECT_EQ(source.shape().channels, 1);
    EXPECT_EQ(source.shape().height, 5);
    EXPECT_EQ(source.shape().width, 7);
    EXPECT_THAT(source.class_names(), ElementsAre("0", "1", "2"));
    const std::vector<int32_t> expected_labels = {2, 0, 1, 2};
    for (int64_t i = 0; i < source.size(); ++i) {
      int32_t label = -1;
      const std::vector<uint8_t> pixels = ReadImageOrFail(source, i, &label);
      EXPECT_EQ(label, expected_labels[i]);
      for (int64_t k = 0; k < 35; ++k) ASSERT_EQ(pixels[k], SamplePixel(i, k)) << i << "," << k;
    }
    // The test split holds only label 0 but takes its class list from train.
    Result<std::unique_ptr<ImageDataSource>> test = Open("idx", DatasetSplit::kTest);
    ASSERT_TRUE(test.ok()) << test.status().ToString();
    EXPECT_EQ((*test)->size(), 2);
    EXPECT_THAT((*test)->class_names(), ElementsAre("0", "1", "2"));
    int32_t label = -1;
    EXPECT_EQ(ReadImageOrFail(**test, 1, &label)[3], SamplePixel(1, 3));
    EXPECT_EQ(label, 0);
  }
}

TEST_F(IdxImageDataTest, ClassNamesFileNamesTheClasses) {
  WriteSmallIdx(false);
  WriteBytes("classes.txt", "cat\r\ndog\nbird\n\n");
  Result<std::unique_ptr<ImageDataSource>> source = Open("idx", DatasetSplit::kTest);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  EXPECT_THAT((*source)->class_names(), ElementsAre("cat", "dog", "bird"));

  WriteBytes("classes.txt", "cat\ndog\n");  // label 2 has no name
  ExpectStatus(OpenError(), StatusCode::kDataLoss, "has label 2 at index 0");
  WriteBytes("classes.txt", "cat\n\ndog\nbird\n");
  ExpectStatus(OpenError(), StatusCode::kInvalidArgument, "blank name on line 2");
  WriteBytes("classes.txt", "\n\n");
  ExpectStatus(OpenError(), StatusCode::kInvalidArgument, "holds no names");
}

TEST_F(IdxImageDataTest, FashionMnistSpecUsesItsClassNames) {
  WriteSmallIdx(true);
  Result<std::unique_ptr<ImageDataSource>> source =
      OpenImageData(DataSpec{"fashion-mnist", dir_.string()}, DatasetSplit::kTrain);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  EXPECT_EQ((*source)->class_names(), FashionMnistClassNames());
  EXPECT_EQ((*source)->class_names()[9], "Ankle boot");

  Result<std::unique_ptr<ImageDataSource>> missing =
      OpenImageData(DataSpec{"fashion-mnist", (dir_ / "nowhere").string()}, DatasetSplit::kTest);
  ASSERT_FALSE(missing.ok());
  ExpectStatus(missing.status(), StatusCode::kNotFound, "dataset-fashion-mnist");
}

TEST_F(IdxImageDataTest, MissingFilesAreNotFoundNamingThem) {
  WriteBytes("train-images-idx3-ubyte", MakeIdxImages(4, 5, 7));
  ExpectStatus(OpenError(), StatusCode::kNotFound, "train-labels-idx1-ubyte[.gz]");
  ExpectStatus(OpenError(DatasetSplit::kTest), StatusCode::kNotFound,
               "t10k-images-idx3-ubyte[.gz]");
  // A test split without classes.txt needs the train labels for its class count.
  WriteBytes("t10k-images-idx3-ubyte", MakeIdxImages(2, 5, 7));
  WriteBytes("t10k-labels-idx1-ubyte", MakeIdxLabels({0, 1}));
  ExpectStatus(OpenError(DatasetSplit::kTest), StatusCode::kNotFound, "IDX train labels");
}

TEST_F(IdxImageDataTest, WrongMagicIsInvalidArgument) {
  WriteSmallIdx(false);
  const std::string images = WriteBytes("train-images-idx3-ubyte", MakeIdxImages(4, 5, 7, 0x804));
  ExpectStatus(OpenError(), StatusCode::kInvalidArgument,
               "'" + images + "' is not an IDX image file: magic 0x00000804");
  WriteBytes("train-images-idx3-ubyte", MakeIdxImages(4, 5, 7));
  WriteBytes("train-labels-idx1-ubyte", MakeIdxImages(4, 5, 7));  // images where labels belong
  ExpectStatus(OpenError(), StatusCode::kInvalidArgument, "is not an IDX label file");
}

TEST_F(IdxImageDataTest, BadDimensionsAreInvalidArgument) {
  WriteSmallIdx(false);
  WriteBytes("train-images-idx3-ubyte", MakeIdxImages(4, 0, 7));
  ExpectStatus(OpenError(), StatusCode::kInvalidArgument, "declares 0x7 images");
}

TEST_F(IdxImageDataTest, CountMismatchIsInvalidArgument) {
  WriteSmallIdx(false);
  WriteBytes("train-labels-idx1-ubyte", MakeIdxLabels({0, 1, 2}));
  ExpectStatus(OpenError(), StatusCode::kInvalidArgument, "holds 4 images but");
}

TEST_F(IdxImageDataTest, AFileThatShrinksWhileOpenIsDataLossNotACrash) {
  WriteSmallIdx(/*gzip=*/false);
  Result<std::unique_ptr<ImageDataSource>> train = Open("idx", DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  ReadImageOrFail(**train, 3, nullptr);
  // Another process cuts the file down to its header while the dataset is open.
  std::filesystem::resize_file(dir_ / "train-images-idx3-ubyte", 16);
  std::vector<uint8_t> pixels(35);
  ExpectStatus((*train)->Read(3, pixels.data(), nullptr), StatusCode::kDataLoss,
               "train-images-idx3-ubyte");
}

TEST_F(IdxImageDataTest, TruncatedFilesAreDataLoss) {
  WriteSmallIdx(false);
  const std::string images = MakeIdxImages(4, 5, 7);
  const std::string path =
      WriteBytes("train-images-idx3-ubyte", images.substr(0, images.size() - 1));
  ExpectStatus(OpenError(), StatusCode::kDataLoss, "'" + path + "' is truncated");
  WriteBytes("train-images-idx3-ubyte", images.substr(0, 10));
  ExpectStatus(OpenError(), StatusCode::kDataLoss, "ends inside its 16-byte IDX header");
  WriteBytes("train-images-idx3-ubyte", images);
  WriteBytes("train-labels-idx1-ubyte", MakeIdxLabels({2, 0, 1, 2}).substr(0, 10));
  ExpectStatus(OpenError(), StatusCode::kDataLoss, "truncated");
  // The gzip path (the loaders of common/datasets.h) reports the same.
  std::filesystem::remove(dir_ / "train-labels-idx1-ubyte");
  WriteGzip("train-labels-idx1-ubyte.gz", MakeIdxLabels({2, 0, 1, 2}).substr(0, 10));
  ExpectStatus(OpenError(), StatusCode::kDataLoss, "truncated");
}

TEST_F(IdxImageDataTest, TrailingBytesAreDataLoss) {
  WriteSmallIdx(false);
  WriteBytes("train-images-idx3-ubyte", MakeIdxImages(4, 5, 7) + "x");
  ExpectStatus(OpenError(), StatusCode::kDataLoss, "unexpected bytes after the 4 images");
  WriteBytes("train-images-idx3-ubyte", MakeIdxImages(4, 5, 7));
  WriteBytes("train-labels-idx1-ubyte", MakeIdxLabels({2, 0, 1, 2}) + "xy");
  ExpectStatus(OpenError(), StatusCode::kDataLoss, "unexpected bytes after the 4 labels");
}

TEST_F(IdxImageDataTest, EmptySplitIsInvalidArgument) {
  WriteBytes("train-images-idx3-ubyte", MakeIdxImages(0, 5, 7));
  WriteBytes("train-labels-idx1-ubyte", MakeIdxLabels({}));
  ExpectStatus(OpenError(), StatusCode::kInvalidArgument, "holds no images");
}

TEST_F(IdxImageDataTest, BadReadArgumentsAreInvalidArgument) {
  WriteSmallIdx(false);
  Result<std::unique_ptr<ImageDataSource>> source = Open("idx", DatasetSplit::kTrain);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  std::vector<uint8_t> pixels(35);
  int32_t label = 0;
  ExpectStatus((*source)->Read(-1, pixels.data(), &label), StatusCode::kInvalidArgument,
               "index -1 is outside the dataset's [0, 4)");
  ExpectStatus((*source)->Read(4, pixels.data(), &label), StatusCode::kInvalidArgument,
               "index 4 is outside");
  ExpectStatus((*source)->Read(0, nullptr, &label), StatusCode::kInvalidArgument,
               "no pixel buffer");
  EXPECT_TRUE((*source)->Read(3, pixels.data(), nullptr).ok());  // the label is optional
}

TEST_F(IdxImageDataTest, ConcurrentReadsGiveTheSameBytes) {
  WriteSmallIdx(false);
  Result<std::unique_ptr<ImageDataSource>> source = Open("idx", DatasetSplit::kTrain);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  ExpectConcurrentReadsMatchSerial(**source);
  ExpectReadLabelMatchesRead(**source);
}

TEST(FashionMnistImageDataTest, RealTestSplitMatchesLoadFashionMnist) {
  if (!std::filesystem::exists(std::filesystem::path(kFashionMnistDir) /
                               "t10k-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "Fashion-MNIST is missing: install the Debian package dataset-fashion-mnist";
  }
  Result<DataSpec> spec = ParseDataSpec("fashion-mnist");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  Result<std::unique_ptr<ImageDataSource>> source = OpenImageData(*spec, DatasetSplit::kTest);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  Result<ImageDataset> expected = LoadFashionMnist(DatasetSplit::kTest);
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();
  ASSERT_EQ((*source)->size(), 10000);
  EXPECT_EQ((*source)->shape().bytes(), 784);
  for (int64_t i : {int64_t{0}, int64_t{4321}, int64_t{9999}}) {
    int32_t label = -1;
    const std::vector<uint8_t> pixels = ReadImageOrFail(**source, i, &label);
    EXPECT_EQ(label, expected->labels[i]);
    EXPECT_TRUE(std::equal(pixels.begin(), pixels.end(), expected->images.begin() + i * 784));
  }
}

}  // namespace
}  // namespace cleave
