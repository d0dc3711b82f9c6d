// Tensor codec: fp32 values <-> compact wire tensors (fp32, fp16, u8, packed u4).
//
// u8/u4 are asymmetric affine per-channel: q = clamp(round(x / scale) + zero_point),
// x' = (q - zero_point) * scale (saturating at +-FLT_MAX), with one (scale, zero_point) per
// index of `channel_axis`.
// u4 packs two values per byte, low nibble first; an odd element count leaves the last
// high nibble zero. This header is libtorch-free so that the wire layer builds fast and
// can be fuzzed on its own. All functions are pure and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace cleave::wire {

enum class DType : uint8_t { kFloat32 = 0, kFloat16 = 1, kUInt8 = 2, kUInt4 = 3 };

// "f32", "f16", "u8", "u4".
const char* DTypeName(DType dtype);
// Parses the names above; InvalidArgument otherwise.
Result<DType> ParseDType(const std::string& name);

// Hard limits applied to anything decoded (hostile input by default).
inline constexpr size_t kMaxTensorRank = 8;
inline constexpr uint64_t kMaxTensorElements = uint64_t{1} << 26;  // 64 Mi elements

// Per-channel affine quantization parameters (u8: zero_point in [0,255]; u4: [0,15]).
struct QuantParams {
  std::vector<float> scale;
  std::vector<uint8_t> zero_point;
};

// A tensor as it travels: dtype, shape, quantization parameters and packed bytes.
struct EncodedTensor {
  DType dtype = DType::kFloat32;
  std::vector<uint32_t> shape;
  uint32_t channel_axis = 1;  // meaningful for u8/u4 only
  QuantParams quant;          // empty for f32/f16
  std::string data;           // little-endian element bytes (u4: packed)
};

// Number of elements of `shape`; InvalidArgument on rank > kMaxTensorRank, overflow or
// more than kMaxTensorElements. A zero dimension does not exempt the others: the product of
// the non-zero dimensions must also be within the limit ([0, 4000000000] is rejected).
Result<uint64_t> ElementCount(const std::vector<uint32_t>& shape);

// Bytes `count` elements of `dtype` occupy in EncodedTensor::data.
uint64_t PackedByteSize(DType dtype, uint64_t count);

// Computes per-channel min/max quantization parameters of `values` for u8/u4. Each range is
// widened to include 0 (zero_point must stay in [0, qmax]); scales are at least FLT_EPSILON,
// so constant channels work.
Result<QuantParams> ComputeQuantParams(const float* values, const std::vector<uint32_t>& shape,
                                       DType dtype, uint32_t channel_axis);

// Encodes `values` (row-major, `shape`) as `dtype`. For u8/u4 uses `fixed` parameters when
// given (values outside the range clamp), otherwise per-channel min/max of `values`.
// Rejects non-finite inputs and malformed shapes with InvalidArgument.
Result<EncodedTensor> EncodeTensor(const float* values, const std::vector<uint32_t>& shape,
                                   DType dtype, uint32_t channel_axis = 1,
                                   const QuantParams* fixed = nullptr);

// Checks everything a peer could get wrong: dtype, rank/element limits, data size versus
// shape (exactly PackedByteSize), channel axis in range, one scale and zero point per
// channel, finite positive scales, zero points within the dtype's range, finite f32/f16.
Status ValidateTensor(const EncodedTensor& tensor);

// Validates, then decodes to fp32 row-major values.
Result<std::vector<float>> DecodeTensor(const EncodedTensor& tensor);

// IEEE 754 binary16 conversions (round to nearest even; inf/nan preserved).
uint16_t FloatToHalf(float value);
float HalfToFloat(uint16_t bits);

}  // namespace cleave::wire
