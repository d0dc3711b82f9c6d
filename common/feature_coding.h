// Coding the features of one split point for a version 2 request (common/inference.capnp,
// InferRequestV2): both ends hold the same FeatureLayout, taken from the bundle, so only the
// coded bytes travel.
//
// Coding: quantize with the layout's per-channel parameters exactly as the tensor codec does
// (common/tensor_codec.h), then either entropy-code the symbols with the layout's model
// (common/entropy_coder.h) or, without one, send the codec's packed bytes (u4 two a byte; f32
// and f16 their little-endian bytes). Decoding reverses it and dequantizes.
//
// The layout tag. A version 2 request names no model and carries no shape, so a cloud serving
// another bundle version (hot reload on one side only) would decode garbage. Both ends hash
// the layout - model name, split index, dtype, shape, quantization parameters and the entropy
// model's fingerprint - to 16 bits, the edge sends its tag, and the cloud refuses features
// whose tag differs from its own (a false match has probability 2^-16 per bundle pair).
//
// Pure and thread-safe; libtorch-free, so it is fuzzed with the wire decoders.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/entropy_model.h"
#include "common/inference_wire.h"
#include "common/status.h"
#include "common/tensor_codec.h"

namespace cleave::wire {

struct FeatureLayout {
  DType dtype = DType::kUInt4;
  std::vector<uint32_t> shape;  // per image [C, H, W]; channel axis 0 here (1 in the tensor)
  QuantParams quant;            // one per channel for u8/u4, empty for f32/f16
  // Entropy model over the quantized symbols (u8/u4 only), or null: packed bytes.
  std::shared_ptr<const EntropyModel> entropy;

  // Elements per image (the product of `shape`).
  uint64_t elements() const;
  // InvalidArgument naming the problem: a shape that is not [C, H, W] within the codec's
  // limits, quantization parameters the codec refuses, or an entropy model whose alphabet,
  // element count or channel count does not match.
  Status Validate() const;
};

// The 16-bit tag of `layout` at split point `split` of model `model_name` (see above).
uint16_t WireLayoutTag(const FeatureLayout& layout, const std::string& model_name, int split);

// Codes the features of one image (`values`, layout.elements() floats, [C, H, W] row-major).
// InvalidArgument for non-finite values (from the codec) or a model that cannot code the
// symbols. Precondition: layout.Validate() is OK.
Result<std::string> CodeFeatures(const FeatureLayout& layout, const float* values);

// Codes them both ways and returns the shorter: (bytes, true) when packed (the layout without
// its entropy model) is no longer than the entropy coding, which happens for rare atypical
// inputs. Without an entropy model always packed.
Result<std::pair<std::string, bool>> CodeFeaturesShortest(const FeatureLayout& layout,
                                                          const float* values);

// The layout without its entropy model: how kPackedFeatures requests are decoded.
FeatureLayout PackedLayout(FeatureLayout layout);

// Decodes `coded` (hostile) into layout.elements() floats. InvalidArgument when the bytes are
// not exactly a coding of one image in this layout (wrong length for packed bytes, or what
// EntropyDecode refuses). Work is O(elements) whatever `coded` holds.
Result<std::vector<float>> DecodeFeatures(const FeatureLayout& layout, std::string_view coded);

// The features of a decoded request, as the cloud computes them: a version 1 tensor
// (DecodeTensor), or version 2 bytes in `layout` (the layout of the request's split point;
// packed bytes with its entropy model dropped). InvalidArgument for an image request or
// bytes that do not decode.
Result<std::vector<float>> DecodeRequestFeatures(const InferRequest& request,
                                                 const FeatureLayout& layout);

}  // namespace cleave::wire
