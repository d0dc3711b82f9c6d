// 8-bit grayscale images: in-memory PNG encode/decode (libpng) and image file reading.
//
// Used for the "send the raw image" baseline and for loading test inputs. Decoders treat
// their input as hostile: corrupt, truncated or oversized data gives InvalidArgument (never
// an abort; libpng's error longjmp never skips a C++ destructor). All functions are thread-safe;
// each call owns its own libpng state.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cleave {

// Largest width or height any decoder here accepts.
inline constexpr uint32_t kMaxImageDimension = 4096;

// Row-major 8-bit gray pixels; pixels.size() == width * height.
struct GrayImage {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> pixels;
};

// Encodes as an 8-bit grayscale PNG with libpng's default compression and filters and no
// ancillary chunks, so the size is what a plain "send the image as PNG" client would send.
// InvalidArgument if a dimension is 0 or above kMaxImageDimension or pixels.size() is wrong.
Result<std::string> EncodePngGray8(const GrayImage& image);

// Decodes a PNG of any standard type (gray, gray+alpha, RGB, RGBA, palette; 1-16 bits;
// interlaced or not) to 8-bit gray. Color uses libpng's default rgb_to_gray weights, alpha
// is dropped (not composited), 16-bit samples are scaled to 8 bits.
Result<GrayImage> DecodePng(std::string_view bytes);

// Reads a PNG or binary PGM ("P5", maxval 1..65535, scaled to 0..255) file, chosen by its
// magic bytes. NotFound/IoError for file problems, InvalidArgument for bad content.
Result<GrayImage> ReadImageFile(const std::string& path);

}  // namespace cleave
