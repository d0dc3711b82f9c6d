// The CIFAR-10/100 binary source of OpenImageData ("cifar10:DIR", "cifar100:DIR", "cifar:DIR").
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/image_data.h"
#include "unit/common/image_data_test_util.h"

namespace cleave {
namespace {

using image_data_testing::ExpectConcurrentReadsMatchSerial;
using image_data_testing::ExpectReadLabelMatchesRead;
using image_data_testing::ExpectStatus;
using image_data_testing::ImageDataFixture;
using image_data_testing::ReadImageOrFail;
using image_data_testing::SamplePixel;

constexpr int64_t kCifarTestPixels = 3 * 32 * 32;

// CIFAR records for images first..first+count-1: `prefix` label bytes (the last one is
// labels[i]; a CIFAR-100 coarse byte before it is 99), then SamplePixel(image, k).
std::string MakeCifarRecords(int first, const std::vector<uint8_t>& labels, bool cifar100) {
  std::string out;
  for (size_t j = 0; j < labels.size(); ++j) {
    if (cifar100) out.push_back(static_cast<char>(99));
    out.push_back(static_cast<char>(labels[j]));
    for (int64_t k = 0; k < kCifarTestPixels; ++k) {
      out.push_back(static_cast<char>(SamplePixel(first + static_cast<int>(j), k)));
    }
  }
  return out;
}

std::string CifarNamesText(int count) {
  std::string out;
  for (int i = 0; i < count; ++i) out += "class_" + std::to_string(i) + "\n";
  return out;
}

class CifarImageDataTest : public ImageDataFixture {
 protected:
  // Train batches of 1, 2, 0, 1, 1 records (images 0..4), test batch of 2 records.
  void WriteCifar10() {
    WriteBytes("data_batch_1.bin", MakeCifarRecords(0, {3}, false));
    WriteBytes("data_batch_2.bin", MakeCifarRecords(1, {9, 0}, false));
    WriteBytes("data_batch_3.bin", "");
    WriteBytes("data_batch_4.bin", MakeCifarRecords(3, {1}, false));
    WriteBytes("data_batch_5.bin", MakeCifarRecords(4, {5}, false));
    WriteBytes("test_batch.bin", MakeCifarRecords(0, {7, 2}, false));
  }
  void WriteCifar100() {
    WriteBytes("train.bin", MakeCifarRecords(0, {42, 0, 99}, true));
    WriteBytes("test.bin", MakeCifarRecords(0, {17}, true));
  }
  static void ExpectImages(const ImageDataSource& source, const std::vector<int32_t>& labels) {
    ASSERT_EQ(source.size(), static_cast<int64_t>(labels.size()));
    EXPECT_EQ(source.shape().channels, 3);
    EXPECT_EQ(source.shape().height, 32);
    EXPECT_EQ(source.shape().width, 32);
    for (int64_t i = 0; i < source.size(); ++i) {
      int32_t label = -1;
      const std::vector<uint8_t> pixels = ReadImageOrFail(source, i, &label);
      EXPECT_EQ(label, labels[i]) << i;
      for (int64_t k = 0; k < kCifarTestPixels; ++k) {
        ASSERT_EQ(pixels[k], SamplePixel(i, k)) << i << "," << k;
      }
    }
  }
  Status OpenError(const std::string& kind, DatasetSplit split = DatasetSplit::kTrain) {
    Result<std::unique_ptr<ImageDataSource>> source = Open(kind, split);
    EXPECT_FALSE(source.ok());
    return source.status();
  }
};

TEST_F(CifarImageDataTest, Cifar10ReadsBackAcrossBatches) {
  WriteCifar10();
  for (const char* kind : {"cifar10", "cifar"}) {
    SCOPED_TRACE(kind);
    Result<std::unique_ptr<ImageDataSource>> train = Open(kind, DatasetSplit::kTrain);
    ASSERT_TRUE(train.ok()) << train.status().ToString();
    ExpectImages(**train, {3, 9, 0, 1, 5});
    EXPECT_EQ((*train)->class_names().size(), 10u);
    EXPECT_EQ((*train)->class_names()[9], "9");
    Result<std::unique_ptr<ImageDataSource>> test = Open(kind, DatasetSplit::kTest);
    ASSERT_TRUE(test.ok()) << test.status().ToString();
    ExpectImages(**test, {7, 2});
  }
}

TEST_F(CifarImageDataTest, AFileThatShrinksWhileOpenIsDataLossNotACrash) {
  WriteCifar10();
  Result<std::unique_ptr<ImageDataSource>> test = Open("cifar10", DatasetSplit::kTest);
  ASSERT_TRUE(test.ok()) << test.status().ToString();
  std::filesystem::resize_file(dir_ / "test_batch.bin", 0);
  std::vector<uint8_t> pixels(3 * 32 * 32);
  ExpectStatus((*test)->Read(1, pixels.data(), nullptr), StatusCode::kDataLoss, "test_batch.bin");
}

TEST_F(CifarImageDataTest, Cifar100UsesTheFineLabel) {
  WriteCifar100();
  for (const char* kind : {"cifar100", "cifar"}) {
    SCOPED_TRACE(kind);
    Result<std::unique_ptr<ImageDataSource>> train = Open(kind, DatasetSplit::kTrain);
    ASSERT_TRUE(train.ok()) << train.status().ToString();
    ExpectImages(**train, {42, 0, 99});
    EXPECT_EQ((*train)->class_names().size(), 100u);
    Result<std::unique_ptr<ImageDataSource>> test = Open(kind, DatasetSplit::kTest);
    ASSERT_TRUE(test.ok()) << test.status().ToString();
    ExpectImages(**test, {17});
  }
}

TEST_F(CifarImageDataTest, ClassNamesComeFromTheMetaFiles) {
  WriteCifar10();
  WriteBytes("batches.meta.txt",
             "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n");
  Result<std::unique_ptr<ImageDataSource>> ten = Open("cifar10", DatasetSplit::kTest);
  ASSERT_TRUE(ten.ok()) << ten.status().ToString();
  EXPECT_EQ((*ten)->class_names().front(), "airplane");
  EXPECT_EQ((*ten)->class_names().back(), "truck");

  WriteCifar100();
  WriteBytes("fine_label_names.txt", CifarNamesText(100));
  Result<std::unique_ptr<ImageDataSource>> hundred = Open("cifar100", DatasetSplit::kTrain);
  ASSERT_TRUE(hundred.ok()) << hundred.status().ToString();
  EXPECT_EQ((*hundred)->class_names()[42], "class_42");

  WriteBytes("batches.meta.txt", CifarNamesText(9));
  ExpectStatus(OpenError("cifar10"), StatusCode::kInvalidArgument,
               "holds 9 names; CIFAR-10 has 10");
  WriteBytes("fine_label_names.txt", CifarNamesText(101));
  ExpectStatus(OpenError("cifar100"), StatusCode::kInvalidArgument, "holds 101 names");
}

TEST_F(CifarImageDataTest, PartialRecordIsDataLossNamingTheFile) {
  WriteCifar10();
  const std::string path =
      WriteBytes("data_batch_4.bin", MakeCifarRecords(3, {1, 2}, false).substr(0, 3073 + 100));
  ExpectStatus(OpenError("cifar10"), StatusCode::kDataLoss,
               "'" + path + "' is 3173 bytes, not a whole number of 3073-byte CIFAR-10 records");
  WriteCifar100();
  WriteBytes("test.bin", MakeCifarRecords(0, {1}, true) + "z");
  ExpectStatus(OpenError("cifar100", DatasetSplit::kTest), StatusCode::kDataLoss,
               "3074-byte CIFAR-100 records");
}

TEST_F(CifarImageDataTest, MissingBatchIsNotFoundNamingIt) {
  WriteCifar10();
  std::filesystem::remove(dir_ / "data_batch_3.bin");
  ExpectStatus(OpenError("cifar10"), StatusCode::kNotFound, "data_batch_3.bin");
  std::filesystem::remove(dir_ / "test_batch.bin");
  ExpectStatus(OpenError("cifar10", DatasetSplit::kTest), StatusCode::kNotFound, "test_batch.bin");
  ExpectStatus(OpenError("cifar100"), StatusCode::kNotFound, "train.bin");
  std::filesystem::remove_all(dir_);
  std::filesystem::create_directories(dir_);
  ExpectStatus(OpenError("cifar"), StatusCode::kNotFound, "no CIFAR files in");
}

TEST_F(CifarImageDataTest, EmptySplitIsInvalidArgument) {
  WriteBytes("train.bin", "");
  ExpectStatus(OpenError("cifar100"), StatusCode::kInvalidArgument, "hold no images");
}

TEST_F(CifarImageDataTest, LabelBeyondTheClassesIsDataLossAtRead) {
  WriteBytes("test_batch.bin", MakeCifarRecords(0, {4, 10}, false));
  Result<std::unique_ptr<ImageDataSource>> source = Open("cifar10", DatasetSplit::kTest);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  std::vector<uint8_t> pixels(kCifarTestPixels);
  EXPECT_TRUE((*source)->Read(0, pixels.data(), nullptr).ok());
  ExpectStatus((*source)->Read(1, pixels.data(), nullptr), StatusCode::kDataLoss,
               "has label 10 in record 1; CIFAR-10 has 10 classes");
}

TEST_F(CifarImageDataTest, BadReadArgumentsAreInvalidArgument) {
  WriteCifar100();
  Result<std::unique_ptr<ImageDataSource>> source = Open("cifar100", DatasetSplit::kTrain);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  std::vector<uint8_t> pixels(kCifarTestPixels);
  ExpectStatus((*source)->Read(3, pixels.data(), nullptr), StatusCode::kInvalidArgument,
               "index 3 is outside the dataset's [0, 3)");
  ExpectStatus((*source)->Read(-5, pixels.data(), nullptr), StatusCode::kInvalidArgument,
               "index -5");
  ExpectStatus((*source)->Read(0, nullptr, nullptr), StatusCode::kInvalidArgument,
               "no pixel buffer");
}

TEST_F(CifarImageDataTest, ConcurrentReadsGiveTheSameBytes) {
  WriteCifar10();
  Result<std::unique_ptr<ImageDataSource>> source = Open("cifar10", DatasetSplit::kTrain);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  ExpectConcurrentReadsMatchSerial(**source);
  ExpectReadLabelMatchesRead(**source);
}

}  // namespace
}  // namespace cleave
