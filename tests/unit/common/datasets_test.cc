#include "common/datasets.h"

#include <zlib.h>

#include <filesystem>

#include <gtest/gtest.h>

#include "common/file_util.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;

void PutU32(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}

std::string ImagesIdx(uint32_t count, uint32_t rows, uint32_t cols, uint32_t magic = 0x803) {
  std::string out;
  PutU32(&out, magic);
  PutU32(&out, count);
  PutU32(&out, rows);
  PutU32(&out, cols);
  for (uint32_t i = 0; i < count * rows * cols; ++i) out.push_back(static_cast<char>(i % 251));
  return out;
}

std::string LabelsIdx(uint32_t count, uint32_t magic = 0x801) {
  std::string out;
  PutU32(&out, magic);
  PutU32(&out, count);
  for (uint32_t i = 0; i < count; ++i) out.push_back(static_cast<char>(i % 10));
  return out;
}

class DatasetsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_datasets_" + UniqueSuffix());
    ASSERT_TRUE(fs::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string WriteRaw(const std::string& name, const std::string& bytes) {
    EXPECT_TRUE(WriteFileAtomic(dir_ / name, bytes).ok());
    return (dir_ / name).string();
  }
  std::string WriteGz(const std::string& name, const std::string& bytes) {
    const std::string path = (dir_ / name).string();
    gzFile f = gzopen(path.c_str(), "wb");
    EXPECT_NE(f, nullptr);
    EXPECT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    EXPECT_EQ(gzclose(f), Z_OK);
    return path;
  }
  fs::path dir_;
};

void ExpectError(const Result<ImageDataset>& r, StatusCode code, const std::string& needle) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), code) << r.status().ToString();
  EXPECT_NE(r.status().message().find(needle), std::string::npos)
      << "'" << needle << "' not in " << r.status().ToString();
}

TEST_F(DatasetsTest, LoadsRawAndGzipPairs) {
  const std::string images_raw = WriteRaw("img", ImagesIdx(5, 3, 4));
  const std::string labels_raw = WriteRaw("lbl", LabelsIdx(5));
  const std::string images_gz = WriteGz("img.gz", ImagesIdx(5, 3, 4));
  const std::string labels_gz = WriteGz("lbl.gz", LabelsIdx(5));
  for (const auto& [images, labels] :
       {std::pair{images_raw, labels_raw}, std::pair{images_gz, labels_gz},
        std::pair{images_gz, labels_raw}}) {
    Result<ImageDataset> d = LoadIdxPair(images, labels);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    EXPECT_EQ(d->rows, 3u);
    EXPECT_EQ(d->cols, 4u);
    EXPECT_EQ(d->size(), 5u);
    EXPECT_EQ(d->image_bytes(), 12u);
    ASSERT_EQ(d->images.size(), 60u);
    EXPECT_EQ(d->images[13], 13);  // second image, second pixel
    EXPECT_EQ(d->labels, (std::vector<uint8_t>{0, 1, 2, 3, 4}));
  }
}

TEST_F(DatasetsTest, ImagesOnlyLeavesLabelsEmpty) {
  Result<ImageDataset> d = LoadIdxImagesOnly(WriteGz("img.gz", ImagesIdx(2, 28, 28)));
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->size(), 2u);
  EXPECT_TRUE(d->labels.empty());
}

TEST_F(DatasetsTest, ZeroImagesIsAnEmptyDataset) {
  Result<ImageDataset> d =
      LoadIdxPair(WriteRaw("img", ImagesIdx(0, 2, 2)), WriteRaw("lbl", LabelsIdx(0)));
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->size(), 0u);
}

TEST_F(DatasetsTest, CorruptMagicIsRejected) {
  const std::string labels = WriteRaw("lbl", LabelsIdx(5));
  ExpectError(LoadIdxPair(WriteRaw("img", ImagesIdx(5, 3, 4, 0x804)), labels),
              StatusCode::kInvalidArgument, "magic 0x00000804, expected 0x00000803");
  // Swapped arguments: a label file where images are expected, and vice versa.
  ExpectError(LoadIdxPair(labels, labels), StatusCode::kInvalidArgument, "not an IDX image");
  const std::string images = WriteRaw("img2", ImagesIdx(5, 3, 4));
  ExpectError(LoadIdxPair(images, images), StatusCode::kInvalidArgument, "not an IDX label");
}

TEST_F(DatasetsTest, TruncatedDataIsDataLoss) {
  std::string images = ImagesIdx(5, 3, 4);
  const std::string labels = WriteRaw("lbl", LabelsIdx(5));
  ExpectError(LoadIdxPair(WriteRaw("img", images.substr(0, images.size() - 1)), labels),
              StatusCode::kDataLoss, "truncated");
  ExpectError(LoadIdxPair(WriteGz("img.gz", images.substr(0, 20)), labels), StatusCode::kDataLoss,
              "only 4 bytes follow");
  ExpectError(LoadIdxImagesOnly(WriteRaw("hdr", images.substr(0, 10))), StatusCode::kDataLoss,
              "header ends before the row count");
  std::string label_bytes = LabelsIdx(5);
  ExpectError(LoadIdxPair(WriteRaw("img3", images), WriteRaw("l2", label_bytes.substr(0, 10))),
              StatusCode::kDataLoss, "truncated");
  ExpectError(LoadIdxImagesOnly(WriteRaw("empty", "")), StatusCode::kDataLoss, "truncated");
}

TEST_F(DatasetsTest, CorruptGzipStreamIsDataLoss) {
  const std::string path = WriteGz("img.gz", ImagesIdx(50, 10, 10));
  std::string compressed = ReadFileToString(path).value_or("");
  ASSERT_GT(compressed.size(), 40u);
  // Cut the compressed stream in half: zlib reports an unexpected end of file.
  ExpectError(LoadIdxImagesOnly(WriteRaw("cut.gz", compressed.substr(0, compressed.size() / 2))),
              StatusCode::kDataLoss, "");
  // Flip a byte of the CRC trailer: the data decodes but the check fails.
  compressed[compressed.size() - 6] ^= 0x5a;
  ExpectError(LoadIdxImagesOnly(WriteRaw("crc.gz", compressed)), StatusCode::kDataLoss, "corrupt");
}

TEST_F(DatasetsTest, TrailingBytesAreDataLoss) {
  ExpectError(LoadIdxImagesOnly(WriteRaw("img", ImagesIdx(2, 2, 2) + "extra")),
              StatusCode::kDataLoss, "unexpected bytes");
}

TEST_F(DatasetsTest, CountMismatchIsRejected) {
  ExpectError(LoadIdxPair(WriteRaw("img", ImagesIdx(5, 3, 4)), WriteRaw("lbl", LabelsIdx(4))),
              StatusCode::kInvalidArgument, "holds 5 images but");
}

TEST_F(DatasetsTest, BadDimensionsAreRejectedBeforeAllocating) {
  ExpectError(LoadIdxImagesOnly(WriteRaw("zero", ImagesIdx(1, 0, 4))), StatusCode::kInvalidArgument,
              "0x4");
  // Header claims 2^32-1 images of 4096x4096: refused without reading or allocating.
  std::string huge;
  PutU32(&huge, 0x803);
  PutU32(&huge, 0xffffffffu);
  PutU32(&huge, 4096);
  PutU32(&huge, 4096);
  ExpectError(LoadIdxImagesOnly(WriteRaw("huge", huge)), StatusCode::kInvalidArgument, "limit");
  // A plausible total that the file does not back: fails as truncated, not with bad_alloc.
  std::string lying;
  PutU32(&lying, 0x803);
  PutU32(&lying, 1000000);
  PutU32(&lying, 64);
  PutU32(&lying, 64);
  ExpectError(LoadIdxImagesOnly(WriteRaw("lying", lying)), StatusCode::kDataLoss, "truncated");
}

TEST_F(DatasetsTest, MissingFilesAreNotFound) {
  ExpectError(LoadIdxImagesOnly((dir_ / "absent.gz").string()), StatusCode::kNotFound, "absent.gz");
  ExpectError(LoadIdxPair(WriteRaw("img", ImagesIdx(1, 1, 1)), (dir_ / "nolabels").string()),
              StatusCode::kNotFound, "nolabels");
  ExpectError(LoadIdxImagesOnly(dir_.string()), StatusCode::kIoError, "");
}

TEST_F(DatasetsTest, FashionMnistMissingNamesDebianPackage) {
  Result<ImageDataset> d = LoadFashionMnist(DatasetSplit::kTest, (dir_ / "none").string());
  ExpectError(d, StatusCode::kNotFound, "apt-get install dataset-fashion-mnist");
  ExpectError(d, StatusCode::kNotFound, "t10k-images-idx3-ubyte");
}

TEST_F(DatasetsTest, FashionMnistChecksShapeAndLabels) {
  WriteGz("t10k-images-idx3-ubyte.gz", ImagesIdx(3, 27, 28));
  WriteRaw("t10k-labels-idx1-ubyte", LabelsIdx(3));  // plain file fallback
  ExpectError(LoadFashionMnist(DatasetSplit::kTest, dir_.string()), StatusCode::kDataLoss,
              "Fashion-MNIST is 28x28");

  WriteGz("train-images-idx3-ubyte.gz", ImagesIdx(3, 28, 28));
  std::string labels = LabelsIdx(3);
  labels.back() = 10;
  WriteGz("train-labels-idx1-ubyte.gz", labels);
  ExpectError(LoadFashionMnist(DatasetSplit::kTrain, dir_.string()), StatusCode::kDataLoss,
              "label 10 at index 2");
}

TEST_F(DatasetsTest, RealFashionMnistTrainSet) {
  if (!fs::exists(fs::path(kFashionMnistDir) / "train-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "Fashion-MNIST is missing: install the Debian package "
                    "dataset-fashion-mnist (scripts/packages.txt; scripts/test installs it)";
  }
  Result<ImageDataset> train = LoadFashionMnist(DatasetSplit::kTrain);
  ASSERT_TRUE(train.ok()) << train.status().ToString();
  EXPECT_EQ(train->size(), 60000u);
  EXPECT_EQ(train->rows, 28u);
  EXPECT_EQ(train->cols, 28u);
  ASSERT_EQ(train->labels.size(), 60000u);
  std::vector<int> per_class(10, 0);
  for (uint8_t label : train->labels) {
    ASSERT_LT(label, 10);
    ++per_class[label];
  }
  for (int count : per_class) EXPECT_EQ(count, 6000);  // Fashion-MNIST is balanced

  Result<ImageDataset> test = LoadFashionMnist(DatasetSplit::kTest);
  ASSERT_TRUE(test.ok()) << test.status().ToString();
  EXPECT_EQ(test->size(), 10000u);
}

}  // namespace
}  // namespace cleave
