// Pixel operations on PixelImage (8-bit, interleaved HWC, 1 or 3 channels) that match the
// torchvision/PIL preprocessing a model was trained with: channel conversion, bilinear resize,
// center crop, and the HWC <-> CHW (planar) layout change datasets and tensors use.
//
// All functions are pure and thread-safe. Arguments are checked, never trusted: a malformed
// image or a size out of range gives InvalidArgument, never a crash.
#pragma once

#include <cstdint>

#include "common/png_image.h"  // PixelImage, kMaxImageDimension
#include "common/status.h"

namespace cleave {

// OK if `image` is well formed: each side 1..kMaxImageDimension, 1 or 3 channels and
// pixels.size() == height * width * channels. Otherwise InvalidArgument saying which.
Status CheckPixelImage(const PixelImage& image);

// Converts to `channels` (1 or 3). 1 -> 3 replicates the gray value; 3 -> 1 is PIL's
// Image.convert("L") bit for bit: L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, its
// 16-bit fixed-point form of ITU-R BT.601 luma (R*299 + G*587 + B*114) / 1000. The same
// count returns a copy.
Result<PixelImage> ConvertChannels(const PixelImage& image, int channels);

// Resizes to height x width (each 1..kMaxImageDimension) by bilinear interpolation with
// half-pixel centers and no antialiasing, as torch.nn.functional.interpolate(mode="bilinear",
// align_corners=False) on the image as float, then rounded half to even and clamped to 0..255
// (torch's .round().clamp(0, 255)). The source positions and weights are torch's to the bit;
// the sums are plain float, so an output can differ from torch's by one level where torch's
// own CPU kernel rounds differently (it fuses multiply-adds on AVX2): checked against torch
// 1.13, at most one level apart and equal on over 99.9% of samples. Downscaling by more than
// 2 skips pixels, like torch without antialias. The same size returns a copy.
Result<PixelImage> ResizeBilinear(const PixelImage& image, int height, int width);

// Cuts the centered height x width window, with torchvision's CenterCrop offsets:
// top = round((image.height - height) / 2), left likewise, Python's round (half to even, so a
// difference of 1 or 5 gives an offset of 0 or 2, a difference of 3 gives 2). InvalidArgument
// for a crop side of 0 or larger than the image's (torchvision would pad; this refuses).
Result<PixelImage> CenterCrop(const PixelImage& image, int height, int width);

// Writes the image as planar CHW (channel 0's height*width bytes, then channel 1's ...) to
// `out`, which must hold pixels.size() bytes. InvalidArgument for a malformed image or a null
// `out` (nothing is written then).
Status PixelsHwcToChw(const PixelImage& image, uint8_t* out);

// The inverse: a PixelImage from `planar`, channels * height * width bytes in CHW order.
// InvalidArgument for a null `planar`, channels other than 1 or 3, or a side outside
// 1..kMaxImageDimension.
Result<PixelImage> PixelsChwToHwc(const uint8_t* planar, int channels, int height, int width);

}  // namespace cleave
