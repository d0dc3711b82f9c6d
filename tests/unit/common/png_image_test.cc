#include "common/png_image.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <png.h>

#include <cstdio>
#include <fstream>

namespace cleave {
namespace {

using ::testing::HasSubstr;

void ExpectInvalid(const Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_THAT(status.message(), HasSubstr(fragment));
}

GrayImage Gradient(uint32_t width, uint32_t height) {
  GrayImage image;
  image.width = width;
  image.height = height;
  for (uint32_t y = 0; y < height; ++y) {
    for (uint32_t x = 0; x < width; ++x) image.pixels.push_back(static_cast<uint8_t>(x * 9 + y));
  }
  return image;
}

void AppendPng(png_structp png, png_bytep data, png_size_t length) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<char*>(data), length);
}

// Writes an arbitrary PNG type with libpng directly (test-only: errors abort the test).
// `rows` holds raw packed sample bytes per row in PNG order.
std::string WritePng(uint32_t width, uint32_t height, int bit_depth, int color_type,
                     const std::vector<std::string>& rows, bool interlace = false,
                     const std::vector<png_color>& palette = {}) {
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    ADD_FAILURE() << "test PNG writer failed";
    png_destroy_write_struct(&png, &info);
    return "";
  }
  png_set_write_fn(png, &out, AppendPng, nullptr);
  png_set_IHDR(png, info, width, height, bit_depth, color_type,
               interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!palette.empty()) {
    png_set_PLTE(png, info, palette.data(), static_cast<int>(palette.size()));
  }
  png_write_info(png, info);
  std::vector<png_bytep> row_pointers;
  for (const std::string& row : rows) {
    row_pointers.push_back(reinterpret_cast<png_bytep>(const_cast<char*>(row.data())));
  }
  png_write_image(png, row_pointers.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

std::string TempPath(const std::string& name) { return ::testing::TempDir() + "/" + name; }

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

TEST(PngImageTest, Gray8RoundTrip) {
  const GrayImage image = Gradient(28, 28);
  auto png = EncodePngGray8(image);
  ASSERT_TRUE(png.ok()) << png.status().ToString();
  EXPECT_EQ(png->compare(0, 8, "\x89PNG\r\n\x1a\n"), 0);
  EXPECT_LT(png->size(), 28u * 28u);  // a smooth gradient compresses
  auto decoded = DecodePng(*png);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->width, 28u);
  EXPECT_EQ(decoded->height, 28u);
  EXPECT_EQ(decoded->pixels, image.pixels);
}

TEST(PngImageTest, EncodeRejectsBadImages) {
  GrayImage image = Gradient(3, 2);
  image.pixels.pop_back();
  ExpectInvalid(EncodePngGray8(image).status(), "image has 5 pixels but 3x2 needs 6");
  ExpectInvalid(EncodePngGray8(GrayImage{}).status(), "image is 0x0; each side must be 1..4096");
  GrayImage wide;
  wide.width = kMaxImageDimension + 1;
  wide.height = 1;
  wide.pixels.resize(wide.width);
  ExpectInvalid(EncodePngGray8(wide).status(), "image is 4097x1");
}

TEST(PngImageTest, DecodesOtherColorTypesToGray) {
  // Two pixels per image: mid gray 100 and white 255 (r = g = b, so weights do not matter).
  struct Case {
    const char* name;
    int bit_depth;
    int color_type;
    std::string row;
  };
  const std::vector<Case> cases = {
      {"rgb8", 8, PNG_COLOR_TYPE_RGB, std::string("\x64\x64\x64\xff\xff\xff", 6)},
      {"rgba8", 8, PNG_COLOR_TYPE_RGBA, std::string("\x64\x64\x64\x00\xff\xff\xff\xff", 8)},
      {"gray_alpha8", 8, PNG_COLOR_TYPE_GRAY_ALPHA, std::string("\x64\x10\xff\xff", 4)},
      {"gray16", 16, PNG_COLOR_TYPE_GRAY, std::string("\x64\x64\xff\xff", 4)},
      {"rgb16", 16, PNG_COLOR_TYPE_RGB,
       std::string("\x64\x64\x64\x64\x64\x64\xff\xff\xff\xff\xff\xff", 12)},
  };
  for (const Case& c : cases) {
    const std::string png = WritePng(2, 1, c.bit_depth, c.color_type, {c.row});
    auto decoded = DecodePng(png);
    ASSERT_TRUE(decoded.ok()) << c.name << ": " << decoded.status().ToString();
    EXPECT_EQ(decoded->pixels, (std::vector<uint8_t>{100, 255})) << c.name;
  }
}

TEST(PngImageTest, DecodesPaletteLowBitDepthAndInterlaced) {
  const std::vector<png_color> palette = {{0, 0, 0}, {100, 100, 100}, {255, 255, 255}};
  const std::string indexed =
      WritePng(3, 1, 8, PNG_COLOR_TYPE_PALETTE, {std::string("\x02\x01\x00", 3)}, false, palette);
  auto decoded = DecodePng(indexed);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->pixels, (std::vector<uint8_t>{255, 100, 0}));

  const std::string one_bit = WritePng(8, 1, 1, PNG_COLOR_TYPE_GRAY, {std::string("\xa0", 1)});
  decoded = DecodePng(one_bit);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->pixels, (std::vector<uint8_t>{255, 0, 255, 0, 0, 0, 0, 0}));

  const GrayImage image = Gradient(13, 11);
  std::vector<std::string> rows;
  for (uint32_t y = 0; y < 11; ++y) {
    rows.emplace_back(reinterpret_cast<const char*>(image.pixels.data() + y * 13), 13);
  }
  decoded = DecodePng(WritePng(13, 11, 8, PNG_COLOR_TYPE_GRAY, rows, /*interlace=*/true));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->pixels, image.pixels);
}

TEST(PngImageTest, RejectsImagesAboveTheDimensionLimit) {
  const std::string row(kMaxImageDimension + 1, '\x7f');
  ExpectInvalid(
      DecodePng(WritePng(kMaxImageDimension + 1, 1, 8, PNG_COLOR_TYPE_GRAY, {row})).status(),
      "invalid PNG: image is 4097x1; each side must be 1..4096");
}

TEST(PngImageTest, RejectsNonPng) {
  ExpectInvalid(DecodePng("").status(), "missing the 8-byte PNG signature");
  ExpectInvalid(DecodePng("GIF89a..........").status(), "missing the 8-byte PNG signature");
}

TEST(PngImageTest, RejectsCorruptData) {
  const std::string png = *EncodePngGray8(Gradient(16, 16));
  // Flip a byte in every position after the signature: CRCs, lengths, zlib data all fail.
  int accepted = 0;
  for (size_t i = 8; i < png.size(); ++i) {
    std::string corrupt = png;
    corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5A);
    auto decoded = DecodePng(corrupt);
    if (decoded.ok()) {
      ++accepted;
      continue;
    }
    EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(decoded.status().message(), HasSubstr("invalid PNG: "));
  }
  // Every byte after the signature is a length, a chunk type, CRC-covered data or a CRC.
  EXPECT_EQ(accepted, 0);
}

TEST(PngImageTest, RejectsEveryTruncation) {
  const std::string png = *EncodePngGray8(Gradient(16, 16));
  for (size_t length = 8; length < png.size(); ++length) {
    auto decoded = DecodePng(png.substr(0, length));
    ASSERT_FALSE(decoded.ok()) << "length " << length;
    EXPECT_EQ(decoded.status().code(), StatusCode::kInvalidArgument);
  }
  ExpectInvalid(DecodePng(png.substr(0, png.size() - 12)).status(), "truncated");
}

TEST(ReadImageFileTest, ReadsPngAndPgm) {
  const GrayImage image = Gradient(5, 3);
  const std::string png_path = TempPath("cleave_image.png");
  WriteFile(png_path, *EncodePngGray8(image));
  auto from_png = ReadImageFile(png_path);
  ASSERT_TRUE(from_png.ok()) << from_png.status().ToString();
  EXPECT_EQ(from_png->pixels, image.pixels);

  const std::string pgm_path = TempPath("cleave_image.pgm");
  WriteFile(pgm_path, "P5\n# written by a test\n5 3\n255\n" +
                          std::string(image.pixels.begin(), image.pixels.end()));
  auto from_pgm = ReadImageFile(pgm_path);
  ASSERT_TRUE(from_pgm.ok()) << from_pgm.status().ToString();
  EXPECT_EQ(from_pgm->width, 5u);
  EXPECT_EQ(from_pgm->height, 3u);
  EXPECT_EQ(from_pgm->pixels, image.pixels);
}

TEST(ReadImageFileTest, ScalesPgmMaxval) {
  const std::string path = TempPath("cleave_image16.pgm");
  WriteFile(path, std::string("P5 2 1 65535\n\x00\x00\xff\xff", 17));
  auto wide = ReadImageFile(path);
  ASSERT_TRUE(wide.ok()) << wide.status().ToString();
  EXPECT_EQ(wide->pixels, (std::vector<uint8_t>{0, 255}));
  WriteFile(path, std::string("P5 3 1 15\n\x00\x0f\x07", 13));
  auto narrow = ReadImageFile(path);
  ASSERT_TRUE(narrow.ok()) << narrow.status().ToString();
  EXPECT_EQ(narrow->pixels, (std::vector<uint8_t>{0, 255, 119}));
}

TEST(ReadImageFileTest, RejectsBadFiles) {
  EXPECT_EQ(ReadImageFile(TempPath("does_not_exist.png")).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ReadImageFile(::testing::TempDir()).status().code(), StatusCode::kIoError);
  const std::string path = TempPath("cleave_bad_image");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"P5\n4 4\n255\n" + std::string(15, 'x'), "PGM data is truncated: 15 pixel bytes"},
      {"P5\n4\n", "height is missing or not a number"},
      {"P54 4 255\n", "expected whitespace before width"},
      {"P5 0 4 255\n", "PGM image is 0x4"},
      {"P5 5000 4 255\n", "width exceeds 4096"},
      {"P5 4 4 70000\n", "maxval exceeds 65535"},
      {"P5 1 1 0\nx", "maxval must be 1..65535"},
      {"P5 1 1 255x", "expected one whitespace byte after maxval"},
      {"P2 1 1 255\n7", "unsupported image format"},
      {std::string("\x89PNG\r\n\x1a\nxxxx", 12), "invalid PNG"},
  };
  for (const auto& [contents, fragment] : cases) {
    WriteFile(path, contents);
    auto result = ReadImageFile(path);
    ExpectInvalid(result.status(), fragment);
    EXPECT_THAT(result.status().message(), HasSubstr(path));
  }
}

TEST(PngPixelsTest, RgbRoundTripAndChannelConversion) {
  PixelImage rgb{3, 2, 3, {}};
  for (int i = 0; i < 18; ++i) rgb.pixels.push_back(static_cast<uint8_t>(i * 13 + 5));
  auto png = EncodePngPixels(rgb);
  ASSERT_TRUE(png.ok()) << png.status().ToString();
  for (int channels : {0, 3}) {
    auto decoded = DecodePngPixels(*png, channels);
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    EXPECT_EQ(decoded->channels, 3u);
    EXPECT_EQ(decoded->width, 3u);
    EXPECT_EQ(decoded->height, 2u);
    EXPECT_EQ(decoded->pixels, rgb.pixels);
  }
  // To gray: the same conversion DecodePng applies.
  auto gray = DecodePngPixels(*png, 1);
  ASSERT_TRUE(gray.ok()) << gray.status().ToString();
  EXPECT_EQ(gray->channels, 1u);
  EXPECT_EQ(gray->pixels, DecodePng(*png)->pixels);

  // A gray PNG keeps one channel by default and is replicated for 3.
  const std::string gray_png = *EncodePngGray8(Gradient(3, 2));
  auto own = DecodePngPixels(gray_png, 0);
  ASSERT_TRUE(own.ok()) << own.status().ToString();
  EXPECT_EQ(own->channels, 1u);
  EXPECT_EQ(own->pixels, Gradient(3, 2).pixels);
  auto replicated = DecodePngPixels(gray_png, 3);
  ASSERT_TRUE(replicated.ok()) << replicated.status().ToString();
  ASSERT_EQ(replicated->pixels.size(), 18u);
  for (size_t i = 0; i < 6; ++i) {
    for (size_t c = 0; c < 3; ++c) EXPECT_EQ(replicated->pixels[i * 3 + c], own->pixels[i]);
  }
}

TEST(PngPixelsTest, DropsAlphaAndPaletteTransparency) {
  const std::string rgba =
      WritePng(2, 1, 8, PNG_COLOR_TYPE_RGBA, {std::string("\x01\x02\x03\x00\x04\x05\x06\xff", 8)});
  auto decoded = DecodePngPixels(rgba, 0);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->pixels, (std::vector<uint8_t>{1, 2, 3, 4, 5, 6}));

  // A palette image with a tRNS chunk expands to RGBA inside libpng; alpha is still dropped.
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  ASSERT_EQ(setjmp(png_jmpbuf(png)), 0);
  png_set_write_fn(png, &out, AppendPng, nullptr);
  png_set_IHDR(png, info, 2, 1, 8, PNG_COLOR_TYPE_PALETTE, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  const png_color palette[] = {{10, 20, 30}, {40, 50, 60}};
  png_set_PLTE(png, info, palette, 2);
  png_byte alpha[] = {0, 255};
  png_set_tRNS(png, info, alpha, 2, nullptr);
  png_write_info(png, info);
  png_byte row[] = {1, 0};
  png_bytep rows[] = {row};
  png_write_image(png, rows);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  decoded = DecodePngPixels(out, 0);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->pixels, (std::vector<uint8_t>{40, 50, 60, 10, 20, 30}));
}

TEST(PngPixelsTest, RejectsBadArguments) {
  const std::string png = *EncodePngGray8(Gradient(3, 2));
  ExpectInvalid(DecodePngPixels(png, 2).status(), "cannot decode a PNG to 2 channels");
  ExpectInvalid(DecodePngPixels("GIF89a..", 3).status(), "missing the 8-byte PNG signature");
  ExpectInvalid(EncodePngPixels(PixelImage{2, 2, 4, std::vector<uint8_t>(16)}).status(),
                "4 channels; PNG encoding takes 1 (gray) or 3 (RGB)");
  ExpectInvalid(EncodePngPixels(PixelImage{2, 2, 3, std::vector<uint8_t>(11)}).status(),
                "11 pixel bytes but 2x2x3 needs 12");
  ExpectInvalid(EncodePngPixels(PixelImage{0, 2, 3, {}}).status(), "image is 0x2");
}

TEST(PngPixelsTest, ReadPngFileNamesThePath) {
  const std::string path = TempPath("cleave_pixels.png");
  WriteFile(path, *EncodePngPixels(PixelImage{1, 1, 3, {7, 8, 9}}));
  auto image = ReadPngFile(path, 0);
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ(image->pixels, (std::vector<uint8_t>{7, 8, 9}));
  WriteFile(path, "P5 1 1 255\n7");
  ExpectInvalid(ReadPngFile(path, 0).status(), path + ": not a PNG");
  auto missing = ReadPngFile(TempPath("no_such_pixels.png"), 1);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("no_such_pixels.png"));
}

}  // namespace
}  // namespace cleave
