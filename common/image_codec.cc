#include "common/image_codec.h"

#include <cstring>

#include "common/file_util.h"
#include "common/jpeg_image.h"

namespace cleave {
namespace {

bool HasPngSignatureBytes(std::string_view bytes) {
  static constexpr char kPngMagicBytes[8] = {'\x89', 'P', 'N', 'G', '\r', '\n', '\x1a', '\n'};
  return bytes.size() >= sizeof(kPngMagicBytes) &&
         std::memcmp(bytes.data(), kPngMagicBytes, sizeof(kPngMagicBytes)) == 0;
}

}  // namespace

Result<PixelImage> DecodeImagePixels(std::string_view bytes, int channels) {
  if (channels != 0 && channels != 1 && channels != 3) {
    return Status::InvalidArgument("cannot decode an image to " + std::to_string(channels) +
                                   " channels; use 0 (its own), 1 (gray) or 3 (RGB)");
  }
  if (HasPngSignatureBytes(bytes)) return DecodePngPixels(bytes, channels);
  if (HasJpegSignature(bytes)) return DecodeJpegPixels(bytes, channels);
  return Status::InvalidArgument(bytes.empty()
                                     ? std::string("not a PNG or JPEG: no data")
                                     : "not a PNG or JPEG: the data starts with neither signature "
                                       "(89 50 4E 47 0D 0A 1A 0A or FF D8 FF)");
}

Result<PixelImage> ReadImagePixelsFile(const std::string& path, int channels) {
  // ReadFileToStringBounded's messages name the path already.
  CLEAVE_ASSIGN_OR_RETURN(const std::string bytes,
                          ReadFileToStringBounded(path, kMaxImagePixelsFileBytes));
  Result<PixelImage> image = DecodeImagePixels(bytes, channels);
  if (!image.ok()) return image.status().WithContext(path);
  return image;
}

}  // namespace cleave
