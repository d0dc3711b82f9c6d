// Format-agnostic image decoding: PNG or JPEG, chosen by the data's magic bytes (never by a
// file name, so a mislabelled file still decodes and a file of another kind is refused).
//
// Thin dispatch over common/png_image.h and common/jpeg_image.h; the same hostile-input
// guarantees hold (InvalidArgument, never an abort, dimensions capped by kMaxImageDimension
// before pixels are allocated). Thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/png_image.h"  // PixelImage
#include "common/status.h"

namespace cleave {

// Largest image file ReadImagePixelsFile reads (a 4096x4096 RGB image is 48 MiB raw).
inline constexpr uint64_t kMaxImagePixelsFileBytes = 64ull << 20;

// Decodes a PNG (DecodePngPixels) or a JPEG (DecodeJpegPixels) to `channels`: 0 for the
// image's own kind (1 for gray images, 3 for color), 1 (gray) or 3 (RGB). InvalidArgument
// for `channels` other than 0, 1, 3, for data that is neither ("not a PNG or JPEG"), or for
// a PNG or JPEG that does not decode; ResourceExhausted if memory runs out.
Result<PixelImage> DecodeImagePixels(std::string_view bytes, int channels);

// Reads a PNG or JPEG file and decodes it as DecodeImagePixels does. NotFound / IoError for
// file problems; InvalidArgument for a file over kMaxImagePixelsFileBytes, not a PNG or JPEG,
// or undecodable. Every error message names the path.
Result<PixelImage> ReadImagePixelsFile(const std::string& path, int channels);

}  // namespace cleave
