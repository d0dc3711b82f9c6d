// 8-bit gray and RGB images: in-memory PNG encode/decode (libpng) and image file reading.
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

// 8-bit pixels of 1 (gray) or 3 (RGB) channels, interleaved row-major (HWC):
// pixels.size() == height * width * channels.
struct PixelImage {
  uint32_t width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;
};

// Encodes as an 8-bit gray (1 channel) or RGB (3 channels) PNG with libpng's defaults and no
// ancillary chunks. InvalidArgument for a dimension of 0 or above kMaxImageDimension, another
// channel count, or a pixels.size() that does not match.
Result<std::string> EncodePngPixels(const PixelImage& image);

// Decodes a PNG of any standard type (as DecodePng) to 8-bit `channels`: 1 (color converted
// with libpng's default rgb_to_gray weights), 3 (gray replicated), or 0 for the image's own
// kind (1 for gray PNGs, 3 for RGB and palette ones). Alpha is dropped, 16-bit samples are
// scaled to 8 bits. InvalidArgument for a corrupt, truncated or oversized PNG or a
// `channels` other than 0, 1, 3; ResourceExhausted if memory runs out.
Result<PixelImage> DecodePngPixels(std::string_view bytes, int channels);

// Reads and decodes a PNG file as DecodePngPixels does. NotFound / IoError for file
// problems; InvalidArgument for a file over 64 MiB, not a PNG or undecodable; messages name
// the path.
Result<PixelImage> ReadPngFile(const std::string& path, int channels);

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
