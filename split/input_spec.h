// What a vision network takes as input, and how any image becomes that input.
//
// A bundle declares it (manifest "input"), training builds its tensors with it and the edge
// daemon converts every request with it, through the one function Prepare, so the edge feeds
// the network exactly what training fed it. The steps, in order:
//   1. channels: gray -> RGB replicates the gray plane; RGB -> gray is ITU-R BT.601 luma
//      (PIL's convert("L")): common/image_convert.h;
//   2. size: with `resize` set, resize (bilinear, half-pixel centers) to resize_height x
//      resize_width, then center-crop to height x width (torchvision's Resize + CenterCrop);
//      without it, an image of another size is resized straight to height x width;
//   3. layout: interleaved HWC bytes -> planar CHW bytes. Pixels stay uint8 here; the
//      network divides by 255 and normalizes per channel (VisionModelSpec input_mean/std).
//
// manifest "input" = {"channels": C, "height": H, "width": W, "resize": [h, w] | null,
//                     "class_names": [...], "data": "<dataset spec it was trained on>"}
// Bundles written before this existed have no "input": Legacy() describes them (28x28 gray
// Fashion-MNIST with its class names when the spec has 10 classes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/png_image.h"
#include "common/status.h"

namespace cleave::split {

struct VisionModelSpec;

struct InputSpec {
  int channels = 1;  // 1 (gray) or 3 (RGB)
  int height = 28;
  int width = 28;
  int resize_height = 0;  // 0 (both): no explicit resize (see the file comment)
  int resize_width = 0;
  std::vector<std::string> class_names;  // one per class, label order
  std::string data;                      // dataset spec the model was trained on; informational

  nlohmann::json ToJson() const;
  // Validates (InvalidArgument naming the field): channels 1 or 3, sizes in [1, 4096], a
  // resize at least the crop in both sides, 2..100000 class names, each 1..256 bytes.
  static Result<InputSpec> FromJson(const nlohmann::json& json);
  Status Validate() const;
  // OK when the spec's network takes this input (channels, square size, class count).
  Status CheckMatches(const VisionModelSpec& spec) const;

  // The description of bundles that predate "input": the spec's channels and size, no
  // resize, Fashion-MNIST's class names for 1-channel 10-class 28x28 models, else "0".."K-1".
  static InputSpec Legacy(const VisionModelSpec& spec);

  // Bytes of one prepared image (channels * height * width).
  int64_t bytes() const { return int64_t{channels} * height * width; }

  // Steps 1-3 above on one decoded image (1 or 3 channels, HWC): writes bytes() CHW bytes
  // to `out`. InvalidArgument for another channel count, an empty or oversized image, or
  // a resize that cannot be done (the message says what the model expects).
  Status Prepare(const PixelImage& image, uint8_t* out) const;
  // Same for an image already planar (CHW bytes of `channels` x `height` x `width`), as
  // dataset sources hand them out. A matching shape is a plain copy.
  Status PrepareChw(const uint8_t* chw, int channels, int height, int width, uint8_t* out) const;
};

}  // namespace cleave::split
