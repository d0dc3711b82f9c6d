// libFuzzer target for the image decoders behind DecodeImagePixels (common/image_codec.h:
// PNG through libpng, JPEG through libjpeg-turbo) and the pixel operations applied to what
// they return (common/image_convert.h). The first byte % 4 is the channel count asked for
// (0, 1, 3, or the invalid 2); the rest is the file's bytes. Decoding must never crash and
// must refuse channel count 2; an image that decodes must be well formed with the channel
// count asked for, convert to the other count, resize and center-crop to small sizes derived
// from the input, and (when small) re-encode as PNG losslessly and as a JPEG of the same size.
// tests/fuzz/seed_corpus_main.cc writes seed inputs in this layout.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "common/image_codec.h"
#include "common/image_convert.h"
#include "common/jpeg_image.h"
#include "common/png_image.h"

namespace {

using namespace cleave;

void Require(bool condition) {
  if (!condition) std::abort();
}

bool HasShape(const Result<PixelImage>& image, uint32_t height, uint32_t width, uint32_t channels) {
  return image.ok() && CheckPixelImage(*image).ok() && image->height == height &&
         image->width == width && image->channels == channels;
}

void CheckDecodedImage(const PixelImage& image, int channels, uint8_t seed) {
  Require(CheckPixelImage(image).ok());
  Require(channels == 0 || image.channels == static_cast<uint32_t>(channels));

  const int other = image.channels == 1 ? 3 : 1;
  Require(HasShape(ConvertChannels(image, other), image.height, image.width, other));
  const int height = 1 + seed % 9, width = 1 + (seed / 9) % 9;
  Require(HasShape(ResizeBilinear(image, height, width), height, width, image.channels));
  const int crop_height = static_cast<int>((image.height + 1) / 2);
  const int crop_width = static_cast<int>((image.width + 1) / 2);
  Require(HasShape(CenterCrop(image, crop_height, crop_width), crop_height, crop_width,
                   image.channels));

  if (image.pixels.size() > (64u << 10)) return;  // keep each run fast
  auto png = EncodePngPixels(image);
  Require(png.ok());
  auto png_again = DecodeImagePixels(*png, 0);
  Require(png_again.ok() && png_again->pixels == image.pixels);
  auto jpeg = EncodeJpegPixels(image, 1 + seed % 100);
  Require(jpeg.ok());
  Require(HasShape(DecodeImagePixels(*jpeg, 0), image.height, image.width, image.channels));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int channels = data[0] % 4;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  auto image = DecodeImagePixels(bytes, channels);
  if (channels == 2) Require(!image.ok());
  if (!image.ok()) {
    Require(image.status().code() == StatusCode::kInvalidArgument ||
            image.status().code() == StatusCode::kResourceExhausted);
    return 0;
  }
  CheckDecodedImage(*image, channels, static_cast<uint8_t>(size));
  return 0;
}
