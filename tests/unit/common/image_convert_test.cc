#include "common/image_convert.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

namespace cleave {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

void ExpectConvertInvalid(const Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_THAT(status.message(), HasSubstr(fragment));
}

// A gray image of `height` rows given row by row.
PixelImage GrayRows(uint32_t height, uint32_t width, std::vector<uint8_t> pixels) {
  return PixelImage{width, height, 1, std::move(pixels)};
}

// An image whose byte k is k % 251 (distinct within small images).
PixelImage ConvertTestImage(uint32_t height, uint32_t width, uint32_t channels) {
  PixelImage image{width, height, channels, {}};
  for (uint32_t k = 0; k < width * height * channels; ++k) {
    image.pixels.push_back(static_cast<uint8_t>(k % 251));
  }
  return image;
}

TEST(ImageConvertTest, CheckPixelImageNamesTheProblem) {
  EXPECT_TRUE(CheckPixelImage(ConvertTestImage(2, 3, 3)).ok());
  ExpectConvertInvalid(CheckPixelImage(PixelImage{0, 1, 1, {}}), "image is 0x1");
  ExpectConvertInvalid(CheckPixelImage(PixelImage{1, 4097, 1, std::vector<uint8_t>(4097)}),
                       "each side must be 1..4096");
  ExpectConvertInvalid(CheckPixelImage(PixelImage{1, 1, 2, {0, 0}}), "2 channels");
  ExpectConvertInvalid(CheckPixelImage(PixelImage{2, 1, 3, {0, 0}}), "2 pixel bytes but 2x1x3");
}

TEST(ImageConvertTest, GrayToRgbReplicates) {
  Result<PixelImage> rgb = ConvertChannels(GrayRows(1, 2, {7, 200}), 3);
  ASSERT_TRUE(rgb.ok()) << rgb.status().ToString();
  EXPECT_EQ(rgb->channels, 3u);
  EXPECT_THAT(rgb->pixels, ElementsAre(7, 7, 7, 200, 200, 200));
}

TEST(ImageConvertTest, RgbToGrayIsPilLuma) {
  // Expected values are PIL's Image.convert("L") of each triple. (0, 0, 250) is one where
  // PIL's fixed-point form differs from the rounded (R*299 + G*587 + B*114 + 500) / 1000 = 29.
  const std::vector<uint8_t> triples = {255, 0, 0, 0,  255, 0,  0, 0, 255, 255, 255, 255,
                                        0,   0, 0, 10, 20,  30, 0, 0, 250, 128, 64,  200};
  PixelImage rgb{8, 1, 3, triples};
  Result<PixelImage> gray = ConvertChannels(rgb, 1);
  ASSERT_TRUE(gray.ok()) << gray.status().ToString();
  EXPECT_EQ(gray->channels, 1u);
  EXPECT_THAT(gray->pixels, ElementsAre(76, 150, 29, 255, 0, 18, 28, 99));
}

TEST(ImageConvertTest, SameChannelCountIsACopy) {
  const PixelImage image = ConvertTestImage(3, 2, 3);
  Result<PixelImage> copy = ConvertChannels(image, 3);
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(copy->pixels, image.pixels);
  EXPECT_EQ(copy->width, 2u);
}

TEST(ImageConvertTest, ConvertChannelsRejectsBadArguments) {
  ExpectConvertInvalid(ConvertChannels(ConvertTestImage(1, 1, 1), 2).status(),
                       "cannot convert an image to 2 channels");
  ExpectConvertInvalid(ConvertChannels(ConvertTestImage(1, 1, 1), 0).status(), "0 channels");
  ExpectConvertInvalid(ConvertChannels(PixelImage{2, 2, 3, std::vector<uint8_t>(5)}, 1).status(),
                       "5 pixel bytes");
}

// Expected values in the resize tests are torch.nn.functional.interpolate(x.float(),
// size=..., mode="bilinear", align_corners=False).round().clamp(0, 255) (torch 1.13).
TEST(ImageConvertTest, ResizeBilinearUpscalesLikeTorch) {
  Result<PixelImage> up = ResizeBilinear(GrayRows(2, 2, {0, 255, 255, 0}), 4, 4);
  ASSERT_TRUE(up.ok()) << up.status().ToString();
  EXPECT_EQ(up->width, 4u);
  EXPECT_EQ(up->height, 4u);
  EXPECT_THAT(up->pixels, ElementsAreArray({0, 64, 191, 255,   //
                                            64, 96, 159, 191,  //
                                            191, 159, 96, 64,  //
                                            255, 191, 64, 0}));
  Result<PixelImage> odd = ResizeBilinear(GrayRows(2, 2, {0, 100, 200, 50}), 3, 3);
  ASSERT_TRUE(odd.ok());
  EXPECT_THAT(odd->pixels, ElementsAreArray({0, 50, 100, 100, 88, 75, 200, 125, 50}));
}

TEST(ImageConvertTest, ResizeBilinearDownscalesLikeTorch) {
  std::vector<uint8_t> ramp;
  for (int k = 0; k < 16; ++k) ramp.push_back(static_cast<uint8_t>(16 * k));
  Result<PixelImage> down = ResizeBilinear(GrayRows(4, 4, ramp), 2, 2);
  ASSERT_TRUE(down.ok()) << down.status().ToString();
  EXPECT_THAT(down->pixels, ElementsAre(40, 72, 168, 200));  // the mean of each 2x2 block
  Result<PixelImage> three =
      ResizeBilinear(GrayRows(3, 3, {0, 10, 20, 30, 40, 50, 60, 70, 80}), 2, 2);
  ASSERT_TRUE(three.ok());
  EXPECT_THAT(three->pixels, ElementsAre(10, 25, 55, 70));
  // Exact halves round to even, as torch's round(): 0.5 -> 0, 2.5 -> 2, 1.5 -> 2, 3.5 -> 4.
  EXPECT_THAT(ResizeBilinear(GrayRows(1, 4, {0, 1, 2, 3}), 1, 2)->pixels, ElementsAre(0, 2));
  EXPECT_THAT(ResizeBilinear(GrayRows(1, 4, {1, 2, 3, 4}), 1, 2)->pixels, ElementsAre(2, 4));
}

TEST(ImageConvertTest, ResizeBilinearKeepsChannelsApart) {
  Result<PixelImage> up = ResizeBilinear(PixelImage{1, 1, 3, {10, 20, 30}}, 2, 3);
  ASSERT_TRUE(up.ok()) << up.status().ToString();
  EXPECT_EQ(up->channels, 3u);
  EXPECT_EQ(up->width, 3u);
  EXPECT_EQ(up->height, 2u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_THAT(std::vector<uint8_t>(up->pixels.begin() + 3 * i, up->pixels.begin() + 3 * i + 3),
                ElementsAre(10, 20, 30));
  }
}

TEST(ImageConvertTest, ResizeBilinearToTheSameSizeIsACopy) {
  const PixelImage image = ConvertTestImage(5, 7, 3);
  Result<PixelImage> same = ResizeBilinear(image, 5, 7);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->pixels, image.pixels);
  // Only one axis resized: the other is copied through untouched.
  Result<PixelImage> wider = ResizeBilinear(GrayRows(2, 1, {3, 250}), 2, 3);
  ASSERT_TRUE(wider.ok());
  EXPECT_THAT(wider->pixels, ElementsAre(3, 3, 3, 250, 250, 250));
}

TEST(ImageConvertTest, ResizeBilinearRejectsBadArguments) {
  const PixelImage image = ConvertTestImage(2, 2, 1);
  ExpectConvertInvalid(ResizeBilinear(image, 0, 4).status(), "resize to 0x4");
  ExpectConvertInvalid(ResizeBilinear(image, 4, -1).status(), "resize to 4x-1");
  ExpectConvertInvalid(ResizeBilinear(image, 4097, 4).status(), "each side must be 1..4096");
  ExpectConvertInvalid(ResizeBilinear(PixelImage{2, 2, 1, {1}}, 4, 4).status(), "1 pixel bytes");
}

// Rows and columns of the crop of a ConvertTestImage-like image whose byte is y * width + x.
std::vector<uint8_t> ExpectedCropWindow(uint32_t width, uint32_t top, uint32_t left,
                                        uint32_t height, uint32_t crop_width) {
  std::vector<uint8_t> window;
  for (uint32_t y = top; y < top + height; ++y) {
    for (uint32_t x = left; x < left + crop_width; ++x) {
      window.push_back(static_cast<uint8_t>(y * width + x));
    }
  }
  return window;
}

TEST(ImageConvertTest, CenterCropUsesTorchvisionOffsets) {
  // torchvision: top = int(round((H - h) / 2.0)) with Python's half-to-even round, so a
  // difference of 1 gives 0, 2 gives 1, 3 gives 2, 5 gives 2, 7 gives 4.
  struct CropCase {
    uint32_t image_side, crop_side, offset;
  };
  for (const CropCase& c : {CropCase{5, 4, 0}, CropCase{6, 4, 1}, CropCase{7, 4, 2},
                            CropCase{9, 4, 2}, CropCase{11, 4, 4}, CropCase{4, 4, 0}}) {
    const PixelImage image = ConvertTestImage(c.image_side, c.image_side, 1);
    Result<PixelImage> crop =
        CenterCrop(image, static_cast<int>(c.crop_side), static_cast<int>(c.crop_side));
    ASSERT_TRUE(crop.ok()) << crop.status().ToString();
    EXPECT_EQ(crop->width, c.crop_side);
    EXPECT_EQ(crop->height, c.crop_side);
    EXPECT_EQ(crop->pixels,
              ExpectedCropWindow(c.image_side, c.offset, c.offset, c.crop_side, c.crop_side))
        << c.image_side << " -> " << c.crop_side;
  }
}

TEST(ImageConvertTest, CenterCropHandlesRectanglesAndChannels) {
  // 4 rows x 7 columns, crop 1 x 2: top = round(1.5) = 2, left = round(2.5) = 2.
  const PixelImage gray = ConvertTestImage(4, 7, 1);
  Result<PixelImage> crop = CenterCrop(gray, 1, 2);
  ASSERT_TRUE(crop.ok()) << crop.status().ToString();
  EXPECT_EQ(crop->pixels, ExpectedCropWindow(7, 2, 2, 1, 2));
  // RGB: whole pixels move together. 3x3 -> 1x1 keeps the middle pixel (bytes 12..14).
  Result<PixelImage> middle = CenterCrop(ConvertTestImage(3, 3, 3), 1, 1);
  ASSERT_TRUE(middle.ok());
  EXPECT_THAT(middle->pixels, ElementsAre(12, 13, 14));
}

TEST(ImageConvertTest, CenterCropRejectsBadArguments) {
  const PixelImage image = ConvertTestImage(4, 6, 3);
  ExpectConvertInvalid(CenterCrop(image, 5, 2).status(),
                       "center crop 5x2 (height x width) is larger than the 4x6 image");
  ExpectConvertInvalid(CenterCrop(image, 2, 7).status(), "larger than the 4x6 image");
  ExpectConvertInvalid(CenterCrop(image, 0, 2).status(), "center crop 0x2");
  ExpectConvertInvalid(CenterCrop(PixelImage{1, 1, 4, {0, 0, 0, 0}}, 1, 1).status(), "4 channels");
}

TEST(ImageConvertTest, HwcChwRoundTrip) {
  const PixelImage image{2, 1, 3, {1, 2, 3, 4, 5, 6}};  // two RGB pixels
  std::vector<uint8_t> planar(6);
  ASSERT_TRUE(PixelsHwcToChw(image, planar.data()).ok());
  EXPECT_THAT(planar, ElementsAre(1, 4, 2, 5, 3, 6));
  Result<PixelImage> back = PixelsChwToHwc(planar.data(), 3, 1, 2);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->pixels, image.pixels);
  EXPECT_EQ(back->width, 2u);
  EXPECT_EQ(back->height, 1u);
  EXPECT_EQ(back->channels, 3u);
  // One channel: the layouts agree.
  const PixelImage gray = ConvertTestImage(3, 2, 1);
  std::vector<uint8_t> gray_planar(6);
  ASSERT_TRUE(PixelsHwcToChw(gray, gray_planar.data()).ok());
  EXPECT_EQ(gray_planar, gray.pixels);
}

TEST(ImageConvertTest, HwcChwRejectBadArguments) {
  std::vector<uint8_t> buffer(12, 0xAB);
  ExpectConvertInvalid(PixelsHwcToChw(ConvertTestImage(2, 2, 3), nullptr), "no output buffer");
  ExpectConvertInvalid(PixelsHwcToChw(PixelImage{2, 2, 3, {1, 2}}, buffer.data()), "2 pixel bytes");
  EXPECT_EQ(buffer, std::vector<uint8_t>(12, 0xAB));  // nothing written on error
  ExpectConvertInvalid(PixelsChwToHwc(nullptr, 3, 2, 2).status(), "no CHW pixels");
  ExpectConvertInvalid(PixelsChwToHwc(buffer.data(), 2, 2, 3).status(), "2 channels");
  ExpectConvertInvalid(PixelsChwToHwc(buffer.data(), 1, 0, 3).status(), "CHW image 0x3");
}

}  // namespace
}  // namespace cleave
