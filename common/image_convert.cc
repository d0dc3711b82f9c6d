#include "common/image_convert.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace cleave {
namespace {

// InvalidArgument unless 1 <= height, width <= kMaxImageDimension; `what` names the request.
Status CheckRequestedSides(int height, int width, const char* what) {
  const int max = static_cast<int>(kMaxImageDimension);
  if (height < 1 || width < 1 || height > max || width > max) {
    return Status::InvalidArgument(std::string(what) + " " + std::to_string(height) + "x" +
                                   std::to_string(width) + " (height x width) is out of range; " +
                                   "each side must be 1.." + std::to_string(max));
  }
  return Status::Ok();
}

// One output coordinate of a bilinear resize: the two source samples and their weights.
struct BilinearTap {
  size_t lower = 0, upper = 0;
  float lower_weight = 1.0f, upper_weight = 0.0f;
};

// The taps of resizing `in` samples to `out` along one axis, computed as torch's CPU kernel
// does (ATen/native/UpSample.h: area_pixel_compute_scale in float, then
// compute_source_index_and_lambda, which takes the source index in double, its CPU
// accumulate type, with align_corners=false), so the weights are bit-identical to torch's.
std::vector<BilinearTap> BilinearTaps(uint32_t in, uint32_t out) {
  std::vector<BilinearTap> taps(out);
  if (in == out) {  // torch copies: weights exactly 1 and 0
    for (uint32_t dst = 0; dst < out; ++dst) taps[dst].lower = taps[dst].upper = dst;
    return taps;
  }
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (uint32_t dst = 0; dst < out; ++dst) {
    double src = static_cast<double>(scale) * (static_cast<double>(dst) + 0.5) - 0.5;
    if (src < 0.0) src = 0.0;
    const auto lower = static_cast<uint32_t>(src);  // floor: src >= 0
    BilinearTap& tap = taps[dst];
    tap.lower = lower;
    tap.upper = lower + (lower + 1 < in ? 1 : 0);
    tap.upper_weight = static_cast<float>(src - lower);
    tap.lower_weight = 1.0f - tap.upper_weight;
  }
  return taps;
}

// torch's .round() (half to even, the default rounding mode) then .clamp(0, 255).
uint8_t RoundToPixel(float value) {
  const float rounded = std::nearbyint(value);
  return static_cast<uint8_t>(std::min(std::max(rounded, 0.0f), 255.0f));
}

// torchvision's int(round(difference / 2.0)): Python rounds half to even.
uint32_t CenterCropOffset(uint32_t difference) {
  uint32_t half = difference / 2;
  if (difference % 2 == 1 && half % 2 == 1) ++half;  // x.5 goes to the even neighbour
  return half;
}

}  // namespace

Status CheckPixelImage(const PixelImage& image) {
  if (image.width == 0 || image.height == 0 || image.width > kMaxImageDimension ||
      image.height > kMaxImageDimension) {
    return Status::InvalidArgument("image is " + std::to_string(image.width) + "x" +
                                   std::to_string(image.height) + "; each side must be 1.." +
                                   std::to_string(kMaxImageDimension));
  }
  if (image.channels != 1 && image.channels != 3) {
    return Status::InvalidArgument("image has " + std::to_string(image.channels) +
                                   " channels; expected 1 (gray) or 3 (RGB)");
  }
  const size_t needed = size_t{image.width} * image.height * image.channels;
  if (image.pixels.size() != needed) {
    return Status::InvalidArgument(
        "image has " + std::to_string(image.pixels.size()) + " pixel bytes but " +
        std::to_string(image.width) + "x" + std::to_string(image.height) + "x" +
        std::to_string(image.channels) + " needs " + std::to_string(needed));
  }
  return Status::Ok();
}

Result<PixelImage> ConvertChannels(const PixelImage& image, int channels) {
  CLEAVE_RETURN_IF_ERROR(CheckPixelImage(image));
  if (channels != 1 && channels != 3) {
    return Status::InvalidArgument("cannot convert an image to " + std::to_string(channels) +
                                   " channels; use 1 (gray) or 3 (RGB)");
  }
  if (static_cast<uint32_t>(channels) == image.channels) return image;
  const size_t count = size_t{image.width} * image.height;
  PixelImage out{image.width, image.height, static_cast<uint32_t>(channels), {}};
  out.pixels.resize(count * out.channels);
  const uint8_t* in = image.pixels.data();
  if (channels == 3) {
    for (size_t i = 0; i < count; ++i) std::memset(&out.pixels[3 * i], in[i], 3);
  } else {
    for (size_t i = 0; i < count; ++i) {
      const uint32_t r = in[3 * i], g = in[3 * i + 1], b = in[3 * i + 2];
      out.pixels[i] = static_cast<uint8_t>((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
    }
  }
  return out;
}

Result<PixelImage> ResizeBilinear(const PixelImage& image, int height, int width) {
  CLEAVE_RETURN_IF_ERROR(CheckPixelImage(image));
  CLEAVE_RETURN_IF_ERROR(CheckRequestedSides(height, width, "resize to"));
  const auto out_height = static_cast<uint32_t>(height);
  const auto out_width = static_cast<uint32_t>(width);
  if (out_height == image.height && out_width == image.width) return image;

  const std::vector<BilinearTap> rows = BilinearTaps(image.height, out_height);
  const std::vector<BilinearTap> cols = BilinearTaps(image.width, out_width);
  const size_t channels = image.channels;
  const size_t in_row_bytes = size_t{image.width} * channels;
  PixelImage out{out_width, out_height, image.channels, {}};
  out.pixels.resize(size_t{out_width} * out_height * channels);
  uint8_t* dst = out.pixels.data();
  for (const BilinearTap& row : rows) {
    const uint8_t* top = image.pixels.data() + row.lower * in_row_bytes;
    const uint8_t* bottom = image.pixels.data() + row.upper * in_row_bytes;
    for (const BilinearTap& col : cols) {
      const size_t left = col.lower * channels, right = col.upper * channels;
      for (size_t c = 0; c < channels; ++c) {
        // torch's order: along the width within each source row, then along the height.
        const float t0 = static_cast<float>(top[left + c]) * col.lower_weight +
                         static_cast<float>(top[right + c]) * col.upper_weight;
        const float t1 = static_cast<float>(bottom[left + c]) * col.lower_weight +
                         static_cast<float>(bottom[right + c]) * col.upper_weight;
        *dst++ = RoundToPixel(t0 * row.lower_weight + t1 * row.upper_weight);
      }
    }
  }
  return out;
}

Result<PixelImage> CenterCrop(const PixelImage& image, int height, int width) {
  CLEAVE_RETURN_IF_ERROR(CheckPixelImage(image));
  CLEAVE_RETURN_IF_ERROR(CheckRequestedSides(height, width, "center crop"));
  const auto crop_height = static_cast<uint32_t>(height);
  const auto crop_width = static_cast<uint32_t>(width);
  if (crop_height > image.height || crop_width > image.width) {
    return Status::InvalidArgument("center crop " + std::to_string(height) + "x" +
                                   std::to_string(width) + " (height x width) is larger than the " +
                                   std::to_string(image.height) + "x" +
                                   std::to_string(image.width) + " image");
  }
  const uint32_t top = CenterCropOffset(image.height - crop_height);
  const uint32_t left = CenterCropOffset(image.width - crop_width);
  const size_t channels = image.channels;
  const size_t in_row_bytes = size_t{image.width} * channels;
  const size_t out_row_bytes = size_t{crop_width} * channels;
  PixelImage out{crop_width, crop_height, image.channels, {}};
  out.pixels.resize(out_row_bytes * crop_height);
  for (uint32_t y = 0; y < crop_height; ++y) {
    std::memcpy(out.pixels.data() + y * out_row_bytes,
                image.pixels.data() + (top + y) * in_row_bytes + left * channels, out_row_bytes);
  }
  return out;
}

Status PixelsHwcToChw(const PixelImage& image, uint8_t* out) {
  CLEAVE_RETURN_IF_ERROR(CheckPixelImage(image));
  if (out == nullptr) return Status::InvalidArgument("no output buffer for the CHW pixels");
  const size_t plane = size_t{image.width} * image.height;
  const size_t channels = image.channels;
  for (size_t c = 0; c < channels; ++c) {
    for (size_t i = 0; i < plane; ++i) out[c * plane + i] = image.pixels[i * channels + c];
  }
  return Status::Ok();
}

Result<PixelImage> PixelsChwToHwc(const uint8_t* planar, int channels, int height, int width) {
  if (planar == nullptr) return Status::InvalidArgument("no CHW pixels to convert");
  if (channels != 1 && channels != 3) {
    return Status::InvalidArgument("CHW pixels have " + std::to_string(channels) +
                                   " channels; expected 1 (gray) or 3 (RGB)");
  }
  CLEAVE_RETURN_IF_ERROR(CheckRequestedSides(height, width, "CHW image"));
  PixelImage image{static_cast<uint32_t>(width),
                   static_cast<uint32_t>(height),
                   static_cast<uint32_t>(channels),
                   {}};
  const size_t plane = size_t{image.width} * image.height;
  const size_t count = static_cast<size_t>(channels);
  image.pixels.resize(plane * count);
  for (size_t c = 0; c < count; ++c) {
    for (size_t i = 0; i < plane; ++i) image.pixels[i * count + c] = planar[c * plane + i];
  }
  return image;
}

}  // namespace cleave
