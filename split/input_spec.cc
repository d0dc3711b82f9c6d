#include "split/input_spec.h"

#include <cstring>

#include "common/image_convert.h"
#include "common/image_data.h"
#include "split/vision_model.h"

namespace cleave::split {
namespace {

using nlohmann::json;

constexpr int kMaxInputSide = 4096;
constexpr size_t kMaxClassNames = 100000;
constexpr size_t kMaxClassNameBytes = 256;

std::string ShapeText(int channels, int height, int width) {
  return std::to_string(channels) + "x" + std::to_string(height) + "x" + std::to_string(width);
}

}  // namespace

json InputSpec::ToJson() const {
  json resize = nullptr;
  if (resize_height > 0) resize = {resize_height, resize_width};
  return {{"channels", channels}, {"height", height},           {"width", width},
          {"resize", resize},     {"class_names", class_names}, {"data", data}};
}

Result<InputSpec> InputSpec::FromJson(const json& j) {
  InputSpec s;
  try {
    if (!j.is_object()) return Status::InvalidArgument("\"input\" must be an object");
    s.channels = j.at("channels").get<int>();
    s.height = j.at("height").get<int>();
    s.width = j.at("width").get<int>();
    const json& resize = j.at("resize");
    if (!resize.is_null()) {
      if (!resize.is_array() || resize.size() != 2) {
        return Status::InvalidArgument("input.resize must be null or [height, width]");
      }
      s.resize_height = resize[0].get<int>();
      s.resize_width = resize[1].get<int>();
    }
    s.class_names = j.at("class_names").get<std::vector<std::string>>();
    s.data = j.value("data", std::string());
  } catch (const json::exception& e) {
    return Status::InvalidArgument(std::string("malformed \"input\": ") + e.what());
  }
  CLEAVE_RETURN_IF_ERROR(s.Validate());
  return s;
}

Status InputSpec::Validate() const {
  if (channels != 1 && channels != 3) {
    return Status::InvalidArgument("input.channels must be 1 (gray) or 3 (RGB), not " +
                                   std::to_string(channels));
  }
  for (int side : {height, width}) {
    if (side < 1 || side > kMaxInputSide) {
      return Status::InvalidArgument("input height and width must be in [1, 4096], got " +
                                     std::to_string(height) + "x" + std::to_string(width));
    }
  }
  if (resize_height != 0 || resize_width != 0) {
    if (resize_height < height || resize_width < width || resize_height > kMaxInputSide ||
        resize_width > kMaxInputSide) {
      return Status::InvalidArgument(
          "input.resize " + std::to_string(resize_height) + "x" + std::to_string(resize_width) +
          " must be at least the network's " + std::to_string(height) + "x" +
          std::to_string(width) + " (it is center-cropped to that) and at most 4096");
    }
  }
  if (class_names.size() < 2 || class_names.size() > kMaxClassNames) {
    return Status::InvalidArgument("input.class_names must list 2 to 100000 classes, got " +
                                   std::to_string(class_names.size()));
  }
  for (size_t i = 0; i < class_names.size(); ++i) {
    if (class_names[i].empty() || class_names[i].size() > kMaxClassNameBytes) {
      return Status::InvalidArgument("input.class_names[" + std::to_string(i) +
                                     "] must be 1 to 256 bytes");
    }
  }
  return Status::Ok();
}

Status InputSpec::CheckMatches(const VisionModelSpec& spec) const {
  if (channels != spec.input_channels || height != spec.image_size || width != spec.image_size ||
      static_cast<int>(class_names.size()) != spec.num_classes) {
    return Status::InvalidArgument(
        "input " + ShapeText(channels, height, width) + " with " +
        std::to_string(class_names.size()) + " classes does not match the network (" +
        ShapeText(spec.input_channels, spec.image_size, spec.image_size) + ", " +
        std::to_string(spec.num_classes) + " classes)");
  }
  return Status::Ok();
}

InputSpec InputSpec::Legacy(const VisionModelSpec& spec) {
  InputSpec s;
  s.channels = spec.input_channels;
  s.height = s.width = spec.image_size;
  if (spec.input_channels == 1 && spec.image_size == 28 && spec.num_classes == 10) {
    s.class_names = FashionMnistClassNames();
    s.data = "fashion-mnist";
  } else {
    for (int i = 0; i < spec.num_classes; ++i) s.class_names.push_back(std::to_string(i));
  }
  return s;
}

Status InputSpec::Prepare(const PixelImage& image, uint8_t* out) const {
  if (image.channels != 1 && image.channels != 3) {
    return Status::InvalidArgument("image has " + std::to_string(image.channels) +
                                   " channels; 1 (gray) or 3 (RGB) can be converted");
  }
  if (image.width == 0 || image.height == 0 ||
      image.pixels.size() != size_t{image.width} * image.height * image.channels) {
    return Status::InvalidArgument("image is empty or its pixel count does not match " +
                                   std::to_string(image.width) + "x" +
                                   std::to_string(image.height));
  }
  const PixelImage* current = &image;
  PixelImage converted;
  if (static_cast<int>(current->channels) != channels) {
    CLEAVE_ASSIGN_OR_RETURN(converted, ConvertChannels(*current, channels));
    current = &converted;
  }
  PixelImage sized;
  if (resize_height > 0) {
    CLEAVE_ASSIGN_OR_RETURN(sized, ResizeBilinear(*current, resize_height, resize_width));
    CLEAVE_ASSIGN_OR_RETURN(sized, CenterCrop(sized, height, width));
    current = &sized;
  } else if (static_cast<int>(current->height) != height ||
             static_cast<int>(current->width) != width) {
    CLEAVE_ASSIGN_OR_RETURN(sized, ResizeBilinear(*current, height, width));
    current = &sized;
  }
  return PixelsHwcToChw(*current, out);
}

Status InputSpec::PrepareChw(const uint8_t* chw, int in_channels, int in_height, int in_width,
                             uint8_t* out) const {
  if (in_channels == channels && in_height == height && in_width == width && resize_height == 0) {
    std::memcpy(out, chw, static_cast<size_t>(bytes()));
    return Status::Ok();
  }
  if (in_channels < 1 || in_height < 1 || in_width < 1) {
    return Status::InvalidArgument("image shape " + ShapeText(in_channels, in_height, in_width) +
                                   " is empty");
  }
  CLEAVE_ASSIGN_OR_RETURN(const PixelImage image,
                          PixelsChwToHwc(chw, in_channels, in_height, in_width));
  return Prepare(image, out);
}

}  // namespace cleave::split
