#include "common/feature_coding.h"

#include <cstring>

#include "common/entropy_coder.h"
#include "common/file_util.h"

namespace cleave::wire {
namespace {

bool Quantized(DType dtype) { return dtype == DType::kUInt8 || dtype == DType::kUInt4; }

std::vector<uint32_t> BatchShape(const FeatureLayout& layout) {
  std::vector<uint32_t> shape = {1};
  shape.insert(shape.end(), layout.shape.begin(), layout.shape.end());
  return shape;
}

}  // namespace

uint64_t FeatureLayout::elements() const {
  uint64_t n = shape.empty() ? 0 : 1;
  for (uint32_t d : shape) n *= d;
  return n;
}

Status FeatureLayout::Validate() const {
  if (shape.size() != 3) return Status::InvalidArgument("feature layout: shape must be [C, H, W]");
  // The codec's own validator on a zero tensor: limits, parameter counts and ranges.
  EncodedTensor probe;
  probe.dtype = dtype;
  probe.shape = BatchShape(*this);
  probe.channel_axis = 1;
  probe.quant = quant;
  CLEAVE_ASSIGN_OR_RETURN(const uint64_t count, ElementCount(probe.shape));
  if (count == 0) return Status::InvalidArgument("feature layout: no elements");
  probe.data.assign(PackedByteSize(dtype, count), '\0');
  CLEAVE_RETURN_IF_ERROR(ValidateTensor(probe).WithContext("feature layout"));
  if (entropy) {
    if (!Quantized(dtype)) {
      return Status::InvalidArgument("feature layout: an entropy model needs a u8 or u4 wire");
    }
    if (entropy->alphabet() != SymbolAlphabet(dtype) || entropy->elements() != count ||
        entropy->channels() != shape[0]) {
      return Status::InvalidArgument(
          "feature layout: the entropy model codes " + std::to_string(entropy->elements()) +
          " symbols of " + std::to_string(entropy->alphabet()) + " values in " +
          std::to_string(entropy->channels()) + " channels, the features are " +
          std::to_string(count) + " of " + std::to_string(SymbolAlphabet(dtype)) + " in " +
          std::to_string(shape[0]));
    }
  }
  return Status::Ok();
}

uint16_t WireLayoutTag(const FeatureLayout& layout, const std::string& model_name, int split) {
  std::string text = model_name + '\0' + std::to_string(split) + '\0' + DTypeName(layout.dtype);
  for (uint32_t d : layout.shape) text += '\0' + std::to_string(d);
  for (float s : layout.quant.scale) {
    char bytes[sizeof(float)];
    std::memcpy(bytes, &s, sizeof(float));
    text.append(bytes, sizeof(float));
  }
  text.append(layout.quant.zero_point.begin(), layout.quant.zero_point.end());
  text += '\0' + (layout.entropy ? layout.entropy->FingerprintHex() : std::string("raw"));
  const std::string hex = Sha256Hex(text);
  return static_cast<uint16_t>(std::stoul(hex.substr(0, 4), nullptr, 16));
}

Result<std::string> CodeFeatures(const FeatureLayout& layout, const float* values) {
  CLEAVE_ASSIGN_OR_RETURN(EncodedTensor tensor,
                          EncodeTensor(values, BatchShape(layout), layout.dtype, 1,
                                       Quantized(layout.dtype) ? &layout.quant : nullptr));
  if (!layout.entropy) return std::move(tensor.data);
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<uint8_t> symbols,
                          UnpackSymbols(layout.dtype, tensor.data, layout.elements()));
  return EntropyEncode(*layout.entropy, symbols);
}

Result<std::pair<std::string, bool>> CodeFeaturesShortest(const FeatureLayout& layout,
                                                          const float* values) {
  CLEAVE_ASSIGN_OR_RETURN(EncodedTensor tensor,
                          EncodeTensor(values, BatchShape(layout), layout.dtype, 1,
                                       Quantized(layout.dtype) ? &layout.quant : nullptr));
  if (!layout.entropy) return std::make_pair(std::move(tensor.data), true);
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<uint8_t> symbols,
                          UnpackSymbols(layout.dtype, tensor.data, layout.elements()));
  CLEAVE_ASSIGN_OR_RETURN(std::string coded, EntropyEncode(*layout.entropy, symbols));
  if (tensor.data.size() <= coded.size()) return std::make_pair(std::move(tensor.data), true);
  return std::make_pair(std::move(coded), false);
}

FeatureLayout PackedLayout(FeatureLayout layout) {
  layout.entropy.reset();
  return layout;
}

Result<std::vector<float>> DecodeFeatures(const FeatureLayout& layout, std::string_view coded) {
  EncodedTensor tensor;
  tensor.dtype = layout.dtype;
  tensor.shape = BatchShape(layout);
  tensor.channel_axis = 1;
  if (Quantized(layout.dtype)) tensor.quant = layout.quant;
  const uint64_t count = layout.elements();
  if (layout.entropy) {
    auto symbols = EntropyDecode(*layout.entropy, coded, count);
    if (!symbols.ok()) return symbols.status().WithContext("coded features");
    CLEAVE_ASSIGN_OR_RETURN(tensor.data, PackSymbols(layout.dtype, *symbols));
  } else {
    const uint64_t want = PackedByteSize(layout.dtype, count);
    if (coded.size() != want) {
      return Status::InvalidArgument("coded features are " + std::to_string(coded.size()) +
                                     " bytes but the layout packs " + std::to_string(want));
    }
    tensor.data.assign(coded.data(), coded.size());
  }
  return DecodeTensor(tensor);
}

Result<std::vector<float>> DecodeRequestFeatures(const InferRequest& request,
                                                 const FeatureLayout& layout) {
  switch (request.input) {
    case InputKind::kFeatures: return DecodeTensor(request.features);
    case InputKind::kCodedFeatures: return DecodeFeatures(layout, request.coded);
    case InputKind::kPackedFeatures: return DecodeFeatures(PackedLayout(layout), request.coded);
    default: return Status::InvalidArgument("the request carries an image, not features");
  }
}

}  // namespace cleave::wire
