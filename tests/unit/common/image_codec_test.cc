#include "common/image_codec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "common/file_util.h"
#include "common/jpeg_image.h"

namespace cleave {
namespace {

using ::testing::HasSubstr;

void ExpectCodecStatus(const Status& status, StatusCode code, const std::string& fragment) {
  EXPECT_EQ(status.code(), code) << status.ToString();
  EXPECT_THAT(status.message(), HasSubstr(fragment));
}

PixelImage CodecTestImage(uint32_t channels) {
  PixelImage image{6, 4, channels, {}};
  for (uint32_t i = 0; i < 6 * 4 * channels; ++i) {
    image.pixels.push_back(static_cast<uint8_t>(60 + (5 * i) % 120));
  }
  return image;
}

// Owns a temporary folder unique to the test (ctest runs tests in parallel processes).
class ImageCodecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("cleave_test_image_codec_" + UniqueSuffix());
    ASSERT_TRUE(std::filesystem::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Write(const std::string& name, const std::string& bytes) {
    const std::filesystem::path path = dir_ / name;
    EXPECT_TRUE(WriteFileAtomic(path, bytes).ok());
    return path.string();
  }
  std::filesystem::path dir_;
};

TEST_F(ImageCodecTest, DecodeImagePixelsDispatchesOnContent) {
  const PixelImage rgb = CodecTestImage(3);
  Result<PixelImage> from_png = DecodeImagePixels(*EncodePngPixels(rgb), 0);
  ASSERT_TRUE(from_png.ok()) << from_png.status().ToString();
  EXPECT_EQ(from_png->pixels, rgb.pixels);  // PNG is lossless

  Result<PixelImage> from_jpeg = DecodeImagePixels(*EncodeJpegPixels(rgb, 95), 0);
  ASSERT_TRUE(from_jpeg.ok()) << from_jpeg.status().ToString();
  EXPECT_EQ(from_jpeg->width, 6u);
  EXPECT_EQ(from_jpeg->height, 4u);
  EXPECT_EQ(from_jpeg->channels, 3u);

  Result<PixelImage> jpeg_as_gray = DecodeImagePixels(*EncodeJpegPixels(rgb, 95), 1);
  ASSERT_TRUE(jpeg_as_gray.ok());
  EXPECT_EQ(jpeg_as_gray->channels, 1u);
  Result<PixelImage> png_as_rgb = DecodeImagePixels(*EncodePngPixels(CodecTestImage(1)), 3);
  ASSERT_TRUE(png_as_rgb.ok());
  EXPECT_EQ(png_as_rgb->channels, 3u);
}

TEST_F(ImageCodecTest, DecodeImagePixelsRefusesOtherData) {
  ExpectCodecStatus(DecodeImagePixels("GIF89a......", 0).status(), StatusCode::kInvalidArgument,
                    "not a PNG or JPEG");
  ExpectCodecStatus(DecodeImagePixels("", 0).status(), StatusCode::kInvalidArgument,
                    "not a PNG or JPEG: no data");
  ExpectCodecStatus(DecodeImagePixels("\xFF\xD8", 0).status(), StatusCode::kInvalidArgument,
                    "not a PNG or JPEG");
  ExpectCodecStatus(DecodeImagePixels(*EncodePngPixels(CodecTestImage(1)), 4).status(),
                    StatusCode::kInvalidArgument, "cannot decode an image to 4 channels");
  // A recognized signature with a broken body gets the format's own reason.
  ExpectCodecStatus(DecodeImagePixels("\x89PNG\r\n\x1a\n broken", 0).status(),
                    StatusCode::kInvalidArgument, "invalid PNG");
  ExpectCodecStatus(DecodeImagePixels("\xFF\xD8\xFF broken", 0).status(),
                    StatusCode::kInvalidArgument, "invalid JPEG");
}

TEST_F(ImageCodecTest, ReadImagePixelsFileDecodesByContentNotName) {
  const PixelImage gray = CodecTestImage(1);
  const std::string png_path = Write("a.png", *EncodePngPixels(gray));
  const std::string jpeg_path = Write("b.jpg", *EncodeJpegPixels(gray, 90));
  const std::string mislabelled = Write("c.jpg", *EncodePngPixels(gray));  // a PNG named .jpg
  Result<PixelImage> png = ReadImagePixelsFile(png_path, 0);
  ASSERT_TRUE(png.ok()) << png.status().ToString();
  EXPECT_EQ(png->pixels, gray.pixels);
  Result<PixelImage> jpeg = ReadImagePixelsFile(jpeg_path, 0);
  ASSERT_TRUE(jpeg.ok()) << jpeg.status().ToString();
  EXPECT_EQ(jpeg->channels, 1u);
  Result<PixelImage> by_content = ReadImagePixelsFile(mislabelled, 0);
  ASSERT_TRUE(by_content.ok()) << by_content.status().ToString();
  EXPECT_EQ(by_content->pixels, gray.pixels);
}

TEST_F(ImageCodecTest, ReadImagePixelsFileErrorsNameThePath) {
  const std::string missing = (dir_ / "absent.jpg").string();
  ExpectCodecStatus(ReadImagePixelsFile(missing, 0).status(), StatusCode::kNotFound, missing);
  ExpectCodecStatus(ReadImagePixelsFile(dir_.string(), 0).status(), StatusCode::kIoError,
                    dir_.string());
  const std::string text = Write("notes.png", "just text");
  ExpectCodecStatus(ReadImagePixelsFile(text, 0).status(), StatusCode::kInvalidArgument,
                    text + ": not a PNG or JPEG");
  const std::string truncated =
      Write("cut.jpg", EncodeJpegPixels(CodecTestImage(3), 90)->substr(0, 200));
  ExpectCodecStatus(ReadImagePixelsFile(truncated, 3).status(), StatusCode::kInvalidArgument,
                    truncated + ": invalid JPEG");
  // Over the size limit: refused by its size (a sparse file, so nothing large is written).
  const std::string huge = Write("huge.jpg", "\xFF\xD8\xFF");
  std::filesystem::resize_file(huge, kMaxImagePixelsFileBytes + 1);
  ExpectCodecStatus(ReadImagePixelsFile(huge, 0).status(), StatusCode::kInvalidArgument,
                    huge + "' is larger than the limit");
}

}  // namespace
}  // namespace cleave
