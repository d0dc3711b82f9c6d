#include "common/jpeg_image.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cstdlib>

namespace cleave {
namespace {

using ::testing::HasSubstr;

void ExpectJpegInvalid(const Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_THAT(status.message(), HasSubstr(fragment));
}

// A smooth image (JPEG's good case): each channel a diagonal ramp, no wrap-around for
// images up to 40x30.
PixelImage JpegTestGradient(uint32_t width, uint32_t height, uint32_t channels) {
  PixelImage image{width, height, channels, {}};
  for (uint32_t y = 0; y < height; ++y) {
    for (uint32_t x = 0; x < width; ++x) {
      for (uint32_t c = 0; c < channels; ++c) {
        image.pixels.push_back(static_cast<uint8_t>(20 + 2 * x + 2 * y + 40 * c));
      }
    }
  }
  return image;
}

// A busy image (many high frequencies), so the quality setting changes the size a lot.
PixelImage JpegTestTexture(uint32_t width, uint32_t height, uint32_t channels) {
  PixelImage image{width, height, channels, {}};
  for (uint32_t i = 0; i < width * height * channels; ++i) {
    image.pixels.push_back(static_cast<uint8_t>((i * 2654435761u) >> 24));
  }
  return image;
}

int MaxAbsPixelDifference(const PixelImage& a, const PixelImage& b) {
  EXPECT_EQ(a.pixels.size(), b.pixels.size());
  int worst = 0;
  for (size_t i = 0; i < std::min(a.pixels.size(), b.pixels.size()); ++i) {
    worst = std::max(worst, std::abs(int{a.pixels[i]} - int{b.pixels[i]}));
  }
  return worst;
}

std::string EncodeJpegOrFail(const PixelImage& image, int quality) {
  Result<std::string> jpeg = EncodeJpegPixels(image, quality);
  EXPECT_TRUE(jpeg.ok()) << jpeg.status().ToString();
  return jpeg.ok() ? *jpeg : std::string();
}

// Rewrites the height and width in the baseline frame header (SOF0) of `jpeg`.
std::string PatchJpegFrameSize(std::string jpeg, uint16_t height, uint16_t width) {
  const size_t sof = jpeg.find("\xFF\xC0", 2);
  EXPECT_NE(sof, std::string::npos);
  if (sof == std::string::npos || sof + 9 > jpeg.size()) return jpeg;
  // FF C0, length (2), precision (1), height (2), width (2); big-endian.
  jpeg[sof + 5] = static_cast<char>(height >> 8);
  jpeg[sof + 6] = static_cast<char>(height & 0xFF);
  jpeg[sof + 7] = static_cast<char>(width >> 8);
  jpeg[sof + 8] = static_cast<char>(width & 0xFF);
  return jpeg;
}

// A JPEG this library never writes, made with TurboJPEG directly: CMYK input (stored as YCCK),
// or progressive when `progressive_rgb`.
std::string EncodeJpegWithTurboJpeg(bool progressive_rgb) {
  const int width = 16, height = 8, pixel_size = progressive_rgb ? 3 : 4;
  std::vector<unsigned char> pixels(width * height * pixel_size);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<unsigned char>(i * 7);
  tjhandle handle = tjInitCompress();
  unsigned char* out = nullptr;
  unsigned long size = 0;
  const int rc = tjCompress2(handle, pixels.data(), width, width * pixel_size, height,
                             progressive_rgb ? TJPF_RGB : TJPF_CMYK, &out, &size, TJSAMP_420, 90,
                             progressive_rgb ? TJFLAG_PROGRESSIVE : 0);
  EXPECT_EQ(rc, 0) << tjGetErrorStr2(handle);
  std::string jpeg = rc == 0 ? std::string(reinterpret_cast<char*>(out), size) : "";
  tjFree(out);
  tjDestroy(handle);
  return jpeg;
}

TEST(JpegImageTest, GrayRoundTripIsCloseAtQuality95) {
  const PixelImage image = JpegTestGradient(37, 21, 1);  // not a multiple of the 8x8 blocks
  const std::string jpeg = EncodeJpegOrFail(image, 95);
  EXPECT_TRUE(HasJpegSignature(jpeg));
  Result<PixelImage> decoded = DecodeJpegPixels(jpeg, 0);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->width, 37u);
  EXPECT_EQ(decoded->height, 21u);
  EXPECT_EQ(decoded->channels, 1u);  // a gray JPEG decodes as its own kind: gray
  EXPECT_LE(MaxAbsPixelDifference(*decoded, image), 2);  // measured: 1
}

TEST(JpegImageTest, RgbRoundTripIsCloseAtQuality95) {
  const PixelImage image = JpegTestGradient(40, 30, 3);
  const std::string jpeg = EncodeJpegOrFail(image, 95);
  Result<PixelImage> decoded = DecodeJpegPixels(jpeg, 0);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->width, 40u);
  EXPECT_EQ(decoded->height, 30u);
  EXPECT_EQ(decoded->channels, 3u);
  EXPECT_LE(MaxAbsPixelDifference(*decoded, image), 3);  // measured: 1 (smooth chroma)
  Result<PixelImage> explicit_rgb = DecodeJpegPixels(jpeg, 3);
  ASSERT_TRUE(explicit_rgb.ok());
  EXPECT_EQ(explicit_rgb->pixels, decoded->pixels);
}

TEST(JpegImageTest, DecodesToTheRequestedChannelCount) {
  const std::string gray_jpeg = EncodeJpegOrFail(JpegTestGradient(16, 16, 1), 90);
  Result<PixelImage> gray_as_rgb = DecodeJpegPixels(gray_jpeg, 3);
  ASSERT_TRUE(gray_as_rgb.ok()) << gray_as_rgb.status().ToString();
  Result<PixelImage> gray = DecodeJpegPixels(gray_jpeg, 1);
  ASSERT_TRUE(gray.ok());
  ASSERT_EQ(gray_as_rgb->pixels.size(), 3 * gray->pixels.size());
  for (size_t i = 0; i < gray->pixels.size(); ++i) {
    ASSERT_EQ(gray_as_rgb->pixels[3 * i], gray->pixels[i]) << i;
    ASSERT_EQ(gray_as_rgb->pixels[3 * i + 1], gray->pixels[i]) << i;
    ASSERT_EQ(gray_as_rgb->pixels[3 * i + 2], gray->pixels[i]) << i;
  }
  // A color JPEG asked for 1 channel gives its luma: a neutral gray stays that gray.
  PixelImage neutral{8, 8, 3, std::vector<uint8_t>(8 * 8 * 3, 90)};
  Result<PixelImage> luma = DecodeJpegPixels(EncodeJpegOrFail(neutral, 95), 1);
  ASSERT_TRUE(luma.ok()) << luma.status().ToString();
  EXPECT_EQ(luma->channels, 1u);
  EXPECT_EQ(luma->pixels, std::vector<uint8_t>(64, 90));
}

TEST(JpegImageTest, LowerQualityGivesSmallerFiles) {
  const PixelImage image = JpegTestTexture(64, 64, 3);
  const size_t q10 = EncodeJpegOrFail(image, 10).size();
  const size_t q50 = EncodeJpegOrFail(image, 50).size();
  const size_t q95 = EncodeJpegOrFail(image, 95).size();
  EXPECT_LT(q10, q50);
  EXPECT_LT(q50, q95);
  EXPECT_TRUE(EncodeJpegPixels(image, 1).ok());
  EXPECT_TRUE(EncodeJpegPixels(image, 100).ok());
}

TEST(JpegImageTest, DecodesProgressiveJpeg) {
  const std::string jpeg = EncodeJpegWithTurboJpeg(/*progressive_rgb=*/true);
  Result<PixelImage> decoded = DecodeJpegPixels(jpeg, 0);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->width, 16u);
  EXPECT_EQ(decoded->height, 8u);
  EXPECT_EQ(decoded->channels, 3u);
}

TEST(JpegImageTest, EncodeRejectsBadArguments) {
  const PixelImage image = JpegTestGradient(4, 4, 3);
  ExpectJpegInvalid(EncodeJpegPixels(image, 0).status(), "JPEG quality must be 1..100, got 0");
  ExpectJpegInvalid(EncodeJpegPixels(image, 101).status(), "got 101");
  ExpectJpegInvalid(EncodeJpegPixels(PixelImage{0, 4, 3, {}}, 90).status(), "image is 0x4");
  ExpectJpegInvalid(
      EncodeJpegPixels(PixelImage{4097, 1, 1, std::vector<uint8_t>(4097)}, 90).status(),
      "image is 4097x1; each side must be 1..4096");
  ExpectJpegInvalid(EncodeJpegPixels(PixelImage{2, 2, 4, std::vector<uint8_t>(16)}, 90).status(),
                    "4 channels; JPEG encoding takes 1 (gray) or 3 (RGB)");
  ExpectJpegInvalid(EncodeJpegPixels(PixelImage{2, 2, 3, std::vector<uint8_t>(11)}, 90).status(),
                    "11 pixel bytes but 2x2x3 needs 12");
}

TEST(JpegImageTest, DecodeRejectsBadArgumentsAndNonJpegData) {
  const std::string jpeg = EncodeJpegOrFail(JpegTestGradient(8, 8, 1), 90);
  ExpectJpegInvalid(DecodeJpegPixels(jpeg, 2).status(), "cannot decode a JPEG to 2 channels");
  ExpectJpegInvalid(DecodeJpegPixels("", 0).status(), "not a JPEG");
  ExpectJpegInvalid(DecodeJpegPixels("\x89PNG\r\n\x1a\n", 0).status(), "not a JPEG");
  ExpectJpegInvalid(
      DecodeJpegPixels(std::string("\xFF\xD8\xFF garbage after the marker"), 0).status(),
      "invalid JPEG header");
  EXPECT_FALSE(HasJpegSignature("\xFF\xD8"));
  EXPECT_TRUE(HasJpegSignature("\xFF\xD8\xFF"));
}

TEST(JpegImageTest, TruncatedJpegIsInvalidArgumentAtEveryLength) {
  const std::string jpeg = EncodeJpegOrFail(JpegTestGradient(24, 16, 3), 90);
  ASSERT_GT(jpeg.size(), 100u);
  for (size_t length = 0; length < jpeg.size(); ++length) {
    Result<PixelImage> decoded = DecodeJpegPixels(std::string_view(jpeg).substr(0, length), 0);
    ASSERT_EQ(decoded.status().code(), StatusCode::kInvalidArgument)
        << "length " << length << ": " << decoded.status().ToString();
  }
  // Cut before the frame header: no size to trust.
  ExpectJpegInvalid(DecodeJpegPixels(std::string_view(jpeg).substr(0, 100), 0).status(),
                    "invalid JPEG: no frame header");
  // Cut inside the entropy-coded data: libjpeg's "premature end" warning is an error here.
  ExpectJpegInvalid(
      DecodeJpegPixels(std::string_view(jpeg).substr(0, jpeg.size() - 20), 0).status(),
      "invalid JPEG: ");
}

TEST(JpegImageTest, CorruptBytesNeverCrash) {
  const std::string jpeg = EncodeJpegOrFail(JpegTestTexture(32, 16, 3), 75);
  int refused = 0;
  for (size_t i = 2; i < jpeg.size(); i += 3) {
    std::string corrupt = jpeg;
    corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5A);
    Result<PixelImage> decoded = DecodeJpegPixels(corrupt, 0);
    if (decoded.ok()) {
      EXPECT_EQ(decoded->pixels.size(), size_t{decoded->width} * decoded->height * 3);
    } else {
      EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument) << i;
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
}

TEST(JpegImageTest, OversizedHeaderIsRefusedBeforeDecoding) {
  const std::string jpeg = EncodeJpegOrFail(JpegTestGradient(8, 8, 3), 90);
  ExpectJpegInvalid(DecodeJpegPixels(PatchJpegFrameSize(jpeg, 60000, 60000), 0).status(),
                    "JPEG image is 60000x60000; each side must be 1..4096");
  ExpectJpegInvalid(DecodeJpegPixels(PatchJpegFrameSize(jpeg, 8, 4097), 3).status(),
                    "JPEG image is 4097x8");
  // A header whose size is allowed but does not match the data: refused, not half-decoded.
  EXPECT_EQ(DecodeJpegPixels(PatchJpegFrameSize(jpeg, 4000, 4000), 0).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(JpegImageTest, CmykJpegIsInvalidArgument) {
  const std::string cmyk = EncodeJpegWithTurboJpeg(/*progressive_rgb=*/false);
  ASSERT_FALSE(cmyk.empty());
  ExpectJpegInvalid(DecodeJpegPixels(cmyk, 0).status(), "CMYK");
  ExpectJpegInvalid(DecodeJpegPixels(cmyk, 3).status(), "CMYK");
}

}  // namespace
}  // namespace cleave
