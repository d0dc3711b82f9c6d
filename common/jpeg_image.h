// 8-bit gray and RGB JPEG encode/decode in memory, on libjpeg-turbo's TurboJPEG API.
//
// TurboJPEG reports errors by return value (its setjmp/longjmp stays inside the library), so
// no C++ frame is ever skipped. Decoders treat their input as hostile: corrupt, truncated or
// oversized data, and JPEG kinds not supported here (CMYK/YCCK, 12-bit), give InvalidArgument
// with libjpeg-turbo's reason; never an abort. The dimensions in the header are checked
// against kMaxImageDimension before any pixel buffer is allocated, and progressive JPEGs with
// an unreasonable number of scans are refused (TJFLAG_LIMITSCANS). All functions are
// thread-safe; each call owns its own TurboJPEG handle.
#pragma once

#include <string>
#include <string_view>

#include "common/png_image.h"  // PixelImage, kMaxImageDimension
#include "common/status.h"

namespace cleave {

// Encodes a baseline JPEG at `quality` (1..100, libjpeg's scale) with the accurate integer
// DCT: RGB (3 channels) as YCbCr with 4:2:0 chroma subsampling, gray (1 channel) as a
// one-component grayscale JPEG. InvalidArgument for a dimension of 0 or above
// kMaxImageDimension, another channel count, a pixels.size() that does not match, or a
// quality outside 1..100; ResourceExhausted if memory runs out.
Result<std::string> EncodeJpegPixels(const PixelImage& image, int quality);

// Decodes a baseline or progressive 8-bit JPEG to `channels`: 1 (gray; for a color JPEG its
// luma plane), 3 (RGB; gray replicated), or 0 for the image's own kind (1 for grayscale
// JPEGs, 3 for YCbCr and RGB ones). Decoding is libjpeg-turbo's default (accurate IDCT,
// fancy upsampling), as PIL's. Any libjpeg warning (premature end of data, corrupt entropy
// data, extraneous bytes) fails the decode: a damaged image is refused, not half-decoded.
// InvalidArgument for data that is not a JPEG, corrupt or truncated, a side of 0 or above
// kMaxImageDimension, a CMYK/YCCK JPEG, or a `channels` other than 0, 1, 3;
// ResourceExhausted if memory runs out.
Result<PixelImage> DecodeJpegPixels(std::string_view bytes, int channels);

// True if `bytes` starts like a JPEG file: the SOI marker and the start of a next marker
// (FF D8 FF). Says nothing about whether the rest decodes.
bool HasJpegSignature(std::string_view bytes);

}  // namespace cleave
