#include "common/tensor_codec.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "tensor data is little-endian on the wire; add byte swapping for big-endian hosts");

namespace cleave::wire {
namespace {

// Smallest scale ComputeQuantParams emits (PyTorch's observers use the same floor). It keeps
// constant and all-zero channels valid without producing scales whose inverse overflows.
constexpr double kMinScale = FLT_EPSILON;
constexpr float kMinScaleFloat = FLT_EPSILON;

bool IsQuantized(DType dtype) { return dtype == DType::kUInt8 || dtype == DType::kUInt4; }

bool IsKnownDType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
    case DType::kFloat16:
    case DType::kUInt8:
    case DType::kUInt4: return true;
    default: return false;
  }
}

uint32_t QuantMax(DType dtype) { return dtype == DType::kUInt4 ? 15 : 255; }

std::string ShapeString(const std::vector<uint32_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

std::string FloatString(float value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value < 0 ? "-inf" : "inf";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(value));
  return buf;
}

std::string DTypeLabel(DType dtype) {
  return IsKnownDType(dtype) ? DTypeName(dtype)
                             : "dtype " + std::to_string(static_cast<unsigned>(dtype));
}

// The row-major view of a tensor around its channel axis: [outer, channels, inner].
struct ChannelLayout {
  uint64_t outer = 1;
  uint64_t channels = 1;
  uint64_t inner = 1;
};

// Precondition: ElementCount(shape) succeeded (so every product of dimensions is at most
// kMaxTensorElements, zero dimensions aside) and channel_axis < shape.size(). Callers skip
// zero-element tensors rather than loop over the other dimensions for nothing.
ChannelLayout LayoutAround(const std::vector<uint32_t>& shape, uint32_t channel_axis) {
  ChannelLayout layout;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < channel_axis) layout.outer *= shape[i];
    if (i > channel_axis) layout.inner *= shape[i];
  }
  layout.channels = shape[channel_axis];
  return layout;
}

Status ValidateChannelAxis(DType dtype, const std::vector<uint32_t>& shape, uint32_t channel_axis) {
  if (shape.empty()) {
    return Status::InvalidArgument(std::string(DTypeName(dtype)) +
                                   " tensor needs rank >= 1 for its channel axis, got a scalar");
  }
  if (channel_axis >= shape.size()) {
    return Status::InvalidArgument("channel axis " + std::to_string(channel_axis) +
                                   " is out of range for rank-" + std::to_string(shape.size()) +
                                   " shape " + ShapeString(shape));
  }
  return Status::Ok();
}

// Checks `quant` against a quantized dtype and a validated shape/axis.
Status ValidateQuantParams(DType dtype, const std::vector<uint32_t>& shape, uint32_t channel_axis,
                           const QuantParams& quant) {
  const uint64_t channels = shape[channel_axis];
  if (quant.scale.size() != channels || quant.zero_point.size() != channels) {
    return Status::InvalidArgument(
        std::string(DTypeName(dtype)) + " tensor with " + std::to_string(channels) +
        " channels (axis " + std::to_string(channel_axis) + " of shape " + ShapeString(shape) +
        ") needs " + std::to_string(channels) + " scales and zero points, got " +
        std::to_string(quant.scale.size()) + " scales and " +
        std::to_string(quant.zero_point.size()) + " zero points");
  }
  for (size_t c = 0; c < channels; ++c) {
    const float scale = quant.scale[c];
    if (!std::isfinite(scale) || !(scale > 0.0f)) {
      return Status::InvalidArgument("scale[" + std::to_string(c) + "] = " + FloatString(scale) +
                                     " is not a finite positive number");
    }
    if (quant.zero_point[c] > QuantMax(dtype)) {
      return Status::InvalidArgument("zero_point[" + std::to_string(c) +
                                     "] = " + std::to_string(quant.zero_point[c]) +
                                     " is out of range for " + DTypeName(dtype) + " (max " +
                                     std::to_string(QuantMax(dtype)) + ")");
    }
  }
  return Status::Ok();
}

Status CheckFinite(const float* values, uint64_t count) {
  for (uint64_t i = 0; i < count; ++i) {
    if (!std::isfinite(values[i])) {
      return Status::InvalidArgument("input element " + std::to_string(i) + " is not finite (" +
                                     FloatString(values[i]) + ")");
    }
  }
  return Status::Ok();
}

uint8_t QuantizeOne(float value, double scale, uint32_t zero_point, uint32_t qmax) {
  double q = std::nearbyint(static_cast<double>(value) / scale) + zero_point;
  q = std::min(std::max(q, 0.0), static_cast<double>(qmax));
  return static_cast<uint8_t>(q);
}

void Quantize(const float* values, const std::vector<uint32_t>& shape, uint32_t channel_axis,
              DType dtype, const QuantParams& quant, uint64_t count, std::string* data) {
  data->assign(PackedByteSize(dtype, count), '\0');
  if (count == 0) return;
  const ChannelLayout layout = LayoutAround(shape, channel_axis);
  const uint32_t qmax = QuantMax(dtype);
  uint64_t index = 0;
  for (uint64_t o = 0; o < layout.outer; ++o) {
    for (uint64_t c = 0; c < layout.channels; ++c) {
      const double scale = quant.scale[c];
      const uint32_t zero_point = quant.zero_point[c];
      for (uint64_t i = 0; i < layout.inner; ++i, ++index) {
        const uint8_t q = QuantizeOne(values[index], scale, zero_point, qmax);
        if (dtype == DType::kUInt8) {
          (*data)[index] = static_cast<char>(q);
        } else {
          const int shift = (index & 1) ? 4 : 0;  // low nibble first
          (*data)[index / 2] = static_cast<char>(static_cast<uint8_t>((*data)[index / 2]) |
                                                 static_cast<uint8_t>(q << shift));
        }
      }
    }
  }
}

void Dequantize(const EncodedTensor& tensor, uint64_t count, std::vector<float>* out) {
  out->resize(count);
  if (count == 0) return;
  const ChannelLayout layout = LayoutAround(tensor.shape, tensor.channel_axis);
  const auto* bytes = reinterpret_cast<const uint8_t*>(tensor.data.data());
  uint64_t index = 0;
  for (uint64_t o = 0; o < layout.outer; ++o) {
    for (uint64_t c = 0; c < layout.channels; ++c) {
      const float scale = tensor.quant.scale[c];
      const int zero_point = tensor.quant.zero_point[c];
      for (uint64_t i = 0; i < layout.inner; ++i, ++index) {
        int q = tensor.dtype == DType::kUInt8 ? bytes[index]
                                              : (bytes[index / 2] >> ((index & 1) ? 4 : 0)) & 0xF;
        const float value = static_cast<float>(q - zero_point) * scale;
        // Huge scales (a min/max range near +-FLT_MAX, or a peer's choice) can overflow;
        // saturate so decoded tensors are always finite.
        (*out)[index] = std::isinf(value) ? std::copysign(FLT_MAX, value) : value;
      }
    }
  }
}

}  // namespace

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "f32";
    case DType::kFloat16: return "f16";
    case DType::kUInt8: return "u8";
    case DType::kUInt4: return "u4";
    default: return "unknown";
  }
}

Result<DType> ParseDType(const std::string& name) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kUInt8, DType::kUInt4}) {
    if (name == DTypeName(dtype)) return dtype;
  }
  return Status::InvalidArgument("unknown dtype '" + name + "' (expected f32, f16, u8 or u4)");
}

Result<uint64_t> ElementCount(const std::vector<uint32_t>& shape) {
  if (shape.size() > kMaxTensorRank) {
    return Status::InvalidArgument("tensor rank " + std::to_string(shape.size()) +
                                   " exceeds the limit of " + std::to_string(kMaxTensorRank));
  }
  // `span` ignores zero dimensions: [0, 4000000000] holds no elements, but loops over its
  // other dimensions (and per-channel parameters) would still be huge, so it is rejected too.
  uint64_t count = 1;
  uint64_t span = 1;
  for (uint32_t dim : shape) {
    if (__builtin_mul_overflow(span, uint64_t{std::max(dim, 1u)}, &span)) {
      return Status::InvalidArgument("element count of shape " + ShapeString(shape) +
                                     " overflows 64 bits");
    }
    count *= dim;  // count <= span
  }
  if (span > kMaxTensorElements) {
    const std::string size =
        count == span ? " has " + std::to_string(count) + " elements"
                      : " spans " + std::to_string(span) + " elements ignoring zero dimensions";
    return Status::InvalidArgument("shape " + ShapeString(shape) + size +
                                   ", more than the limit of " +
                                   std::to_string(kMaxTensorElements));
  }
  return count;
}

uint64_t PackedByteSize(DType dtype, uint64_t count) {
  switch (dtype) {
    case DType::kFloat32: return count * 4;
    case DType::kFloat16: return count * 2;
    case DType::kUInt8: return count;
    case DType::kUInt4: return count / 2 + count % 2;
    default: return 0;
  }
}

Result<QuantParams> ComputeQuantParams(const float* values, const std::vector<uint32_t>& shape,
                                       DType dtype, uint32_t channel_axis) {
  if (!IsQuantized(dtype)) {
    return Status::InvalidArgument("quantization parameters exist only for u8/u4, not " +
                                   DTypeLabel(dtype));
  }
  CLEAVE_ASSIGN_OR_RETURN(const uint64_t count, ElementCount(shape));
  CLEAVE_RETURN_IF_ERROR(ValidateChannelAxis(dtype, shape, channel_axis));
  if (values == nullptr && count > 0) {
    return Status::InvalidArgument("values is null for a tensor of " + std::to_string(count) +
                                   " elements");
  }
  CLEAVE_RETURN_IF_ERROR(CheckFinite(values, count));

  const ChannelLayout layout = LayoutAround(shape, channel_axis);
  QuantParams params;
  params.scale.assign(layout.channels, kMinScaleFloat);
  params.zero_point.assign(layout.channels, 0);
  if (count == 0) return params;  // see LayoutAround
  // The affine range [(0 - zp) * scale, (qmax - zp) * scale] always contains 0, so each
  // channel's range is widened to include 0; otherwise zero_point would have to leave [0, qmax].
  std::vector<float> lo(layout.channels, 0.0f), hi(layout.channels, 0.0f);
  uint64_t index = 0;
  for (uint64_t o = 0; o < layout.outer; ++o) {
    for (uint64_t c = 0; c < layout.channels; ++c) {
      for (uint64_t i = 0; i < layout.inner; ++i, ++index) {
        lo[c] = std::min(lo[c], values[index]);
        hi[c] = std::max(hi[c], values[index]);
      }
    }
  }

  const double qmax = QuantMax(dtype);
  for (uint64_t c = 0; c < layout.channels; ++c) {
    const double range = static_cast<double>(hi[c]) - static_cast<double>(lo[c]);
    float scale = static_cast<float>(std::max(range / qmax, kMinScale));
    // Rounding to float must not shrink the range below [lo, hi].
    if (static_cast<double>(scale) * qmax < range) {
      scale = std::nextafter(scale, std::numeric_limits<float>::infinity());
    }
    const double zero_point = std::nearbyint(-static_cast<double>(lo[c]) / scale);
    params.scale[c] = scale;
    params.zero_point[c] = static_cast<uint8_t>(std::min(std::max(zero_point, 0.0), qmax));
  }
  return params;
}

Result<EncodedTensor> EncodeTensor(const float* values, const std::vector<uint32_t>& shape,
                                   DType dtype, uint32_t channel_axis, const QuantParams* fixed) {
  if (!IsKnownDType(dtype)) {
    return Status::InvalidArgument("cannot encode to unknown " + DTypeLabel(dtype));
  }
  CLEAVE_ASSIGN_OR_RETURN(const uint64_t count, ElementCount(shape));
  if (values == nullptr && count > 0) {
    return Status::InvalidArgument("values is null for a tensor of " + std::to_string(count) +
                                   " elements");
  }
  CLEAVE_RETURN_IF_ERROR(CheckFinite(values, count));

  EncodedTensor tensor;
  tensor.dtype = dtype;
  tensor.shape = shape;
  tensor.channel_axis = channel_axis;
  if (dtype == DType::kFloat32) {
    tensor.data.assign(reinterpret_cast<const char*>(values), count * sizeof(float));
    return tensor;
  }
  if (dtype == DType::kFloat16) {
    tensor.data.resize(count * 2);
    for (uint64_t i = 0; i < count; ++i) {
      const uint16_t half = FloatToHalf(values[i]);
      if ((half & 0x7C00) == 0x7C00) {
        return Status::InvalidArgument("input element " + std::to_string(i) + " = " +
                                       FloatString(values[i]) +
                                       " is outside the f16 range (+-65504)");
      }
      std::memcpy(&tensor.data[i * 2], &half, sizeof(half));
    }
    return tensor;
  }

  CLEAVE_RETURN_IF_ERROR(ValidateChannelAxis(dtype, shape, channel_axis));
  if (fixed != nullptr) {
    CLEAVE_RETURN_IF_ERROR(ValidateQuantParams(dtype, shape, channel_axis, *fixed)
                               .WithContext("fixed quantization parameters"));
    tensor.quant = *fixed;
  } else {
    CLEAVE_ASSIGN_OR_RETURN(tensor.quant, ComputeQuantParams(values, shape, dtype, channel_axis));
  }
  Quantize(values, shape, channel_axis, dtype, tensor.quant, count, &tensor.data);
  return tensor;
}

Status ValidateTensor(const EncodedTensor& tensor) {
  if (!IsKnownDType(tensor.dtype)) {
    return Status::InvalidArgument("unknown dtype value " +
                                   std::to_string(static_cast<unsigned>(tensor.dtype)));
  }
  CLEAVE_ASSIGN_OR_RETURN(const uint64_t count, ElementCount(tensor.shape));
  const uint64_t needed = PackedByteSize(tensor.dtype, count);
  if (tensor.data.size() != needed) {
    return Status::InvalidArgument("tensor data is " + std::to_string(tensor.data.size()) +
                                   " bytes but shape " + ShapeString(tensor.shape) + " of " +
                                   DTypeName(tensor.dtype) + " needs " + std::to_string(needed));
  }
  const auto* bytes = reinterpret_cast<const uint8_t*>(tensor.data.data());
  switch (tensor.dtype) {
    case DType::kFloat32:
    case DType::kFloat16: {
      if (!tensor.quant.scale.empty() || !tensor.quant.zero_point.empty()) {
        return Status::InvalidArgument(std::string(DTypeName(tensor.dtype)) +
                                       " tensor must not carry quantization parameters (got " +
                                       std::to_string(tensor.quant.scale.size()) + " scales and " +
                                       std::to_string(tensor.quant.zero_point.size()) +
                                       " zero points)");
      }
      for (uint64_t i = 0; i < count; ++i) {
        float value;
        if (tensor.dtype == DType::kFloat32) {
          std::memcpy(&value, bytes + i * 4, sizeof(value));
        } else {
          uint16_t half;
          std::memcpy(&half, bytes + i * 2, sizeof(half));
          value = HalfToFloat(half);
        }
        if (!std::isfinite(value)) {
          return Status::InvalidArgument(std::string(DTypeName(tensor.dtype)) + " element " +
                                         std::to_string(i) + " is not finite (" +
                                         FloatString(value) + ")");
        }
      }
      return Status::Ok();
    }
    case DType::kUInt8:
    case DType::kUInt4: {
      CLEAVE_RETURN_IF_ERROR(ValidateChannelAxis(tensor.dtype, tensor.shape, tensor.channel_axis));
      CLEAVE_RETURN_IF_ERROR(
          ValidateQuantParams(tensor.dtype, tensor.shape, tensor.channel_axis, tensor.quant));
      if (tensor.dtype == DType::kUInt4 && count % 2 == 1 && (bytes[count / 2] & 0xF0) != 0) {
        return Status::InvalidArgument(
            "u4 padding nibble (high half of the last byte) must be zero, got " +
            std::to_string(bytes[count / 2] >> 4));
      }
      return Status::Ok();
    }
    default: break;
  }
  return Status::Internal("unhandled dtype in ValidateTensor");
}

Result<std::vector<float>> DecodeTensor(const EncodedTensor& tensor) {
  CLEAVE_RETURN_IF_ERROR(ValidateTensor(tensor));
  CLEAVE_ASSIGN_OR_RETURN(const uint64_t count, ElementCount(tensor.shape));
  std::vector<float> out;
  switch (tensor.dtype) {
    case DType::kFloat32:
      out.resize(count);
      if (count > 0) std::memcpy(out.data(), tensor.data.data(), count * sizeof(float));
      return out;
    case DType::kFloat16:
      out.resize(count);
      for (uint64_t i = 0; i < count; ++i) {
        uint16_t half;
        std::memcpy(&half, tensor.data.data() + i * 2, sizeof(half));
        out[i] = HalfToFloat(half);
      }
      return out;
    case DType::kUInt8:
    case DType::kUInt4: Dequantize(tensor, count, &out); return out;
    default: break;
  }
  return Status::Internal("unhandled dtype in DecodeTensor");
}

uint16_t FloatToHalf(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t exponent = (bits >> 23) & 0xFFu;
  uint32_t mantissa = bits & 0x7FFFFFu;
  if (exponent == 0xFF) {  // inf or nan; nan stays a quiet nan with the top payload bits
    return static_cast<uint16_t>(sign | 0x7C00u | (mantissa ? 0x200u | (mantissa >> 13) : 0u));
  }
  const int half_exponent = static_cast<int>(exponent) - 127 + 15;
  if (half_exponent >= 31) return static_cast<uint16_t>(sign | 0x7C00u);  // overflow -> inf
  if (half_exponent <= 0) {                                               // subnormal or zero
    if (half_exponent < -10) return static_cast<uint16_t>(sign);
    mantissa |= 0x800000u;
    const int shift = 14 - half_exponent;
    uint32_t half_mantissa = mantissa >> shift;
    const uint32_t remainder = mantissa & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (remainder > halfway || (remainder == halfway && (half_mantissa & 1))) ++half_mantissa;
    return static_cast<uint16_t>(sign | half_mantissa);
  }
  uint32_t half = sign | (static_cast<uint32_t>(half_exponent) << 10) | (mantissa >> 13);
  const uint32_t remainder = mantissa & 0x1FFFu;
  // A carry out of the mantissa correctly bumps the exponent (up to inf).
  if (remainder > 0x1000u || (remainder == 0x1000u && (half & 1))) ++half;
  return static_cast<uint16_t>(half);
}

float HalfToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1Fu;
  const uint32_t mantissa = bits & 0x3FFu;
  uint32_t out;
  if (exponent == 0) {
    if (mantissa == 0) {
      out = sign;
    } else {  // subnormal: mantissa * 2^-24
      const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
      return sign ? -magnitude : magnitude;
    }
  } else if (exponent == 31) {
    out = sign | 0x7F800000u | (mantissa << 13);
  } else {
    out = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float value;
  std::memcpy(&value, &out, sizeof(value));
  return value;
}

}  // namespace cleave::wire
