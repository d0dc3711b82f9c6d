// libFuzzer target for the tensor codec. The first byte picks a mode:
//   even: the rest describes an EncodedTensor as a peer could send it: dtype, rank, dims (a
//         byte each, or a byte >= 240 then a u32), channel axis, channel count, the scales
//         (f32), one more zero point than channels when the next byte is odd, the zero
//         points, then the data; ValidateTensor/DecodeTensor must never crash, and a tensor
//         that validates must decode to finite values.
//   odd:  dtype, channel count - 1, whether fixed quantization parameters are used, a scale
//         (f32) and zero point per channel, then fp32 input for EncodeTensor; whatever
//         encodes must decode within the documented error (exact for f32, scale/2 per
//         channel for u8/u4).
// Little-endian throughout; missing bytes read as 0. tests/fuzz/seed_corpus_main.cc writes
// seed inputs in this layout.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/tensor_codec.h"

namespace {

using namespace cleave::wire;

void Require(bool condition) {
  if (!condition) std::abort();
}

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint32_t U32() {
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) value |= uint32_t{Byte()} << (8 * i);
    return value;
  }
  float F32() {
    const uint32_t bits = U32();
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
  }
  size_t remaining() const { return size_ - pos_; }
  const uint8_t* here() const { return data_ + pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

void FuzzPeerTensor(Reader& in) {
  EncodedTensor tensor;
  tensor.dtype = static_cast<DType>(in.Byte() % 6);  // includes unknown values
  const size_t rank = in.Byte() % 11;                // includes ranks above the limit
  for (size_t i = 0; i < rank; ++i) {
    // Mostly small dimensions, sometimes anything.
    const uint8_t kind = in.Byte();
    tensor.shape.push_back(kind < 240 ? kind % 9 : in.U32());
  }
  tensor.channel_axis = in.Byte() % 10;
  const size_t channels = in.Byte() % 9;
  for (size_t c = 0; c < channels; ++c) tensor.quant.scale.push_back(in.F32());
  const size_t zero_points = channels + in.Byte() % 2;  // sometimes one too many
  for (size_t c = 0; c < zero_points; ++c) tensor.quant.zero_point.push_back(in.Byte());
  tensor.data.assign(reinterpret_cast<const char*>(in.here()), in.remaining());

  const bool valid = ValidateTensor(tensor).ok();
  auto values = DecodeTensor(tensor);
  Require(values.ok() == valid);
  if (!values.ok()) return;
  for (float v : *values) Require(std::isfinite(v));
}

void FuzzEncode(Reader& in) {
  const DType dtype = static_cast<DType>(in.Byte() % 4);
  const uint32_t channels = 1 + in.Byte() % 4;
  const bool fixed = in.Byte() & 1;
  QuantParams params;
  for (uint32_t c = 0; c < channels; ++c) {
    params.scale.push_back(in.F32());
    params.zero_point.push_back(in.Byte());
  }
  std::vector<float> values(in.remaining() / sizeof(float) / channels * channels);
  if (!values.empty()) std::memcpy(values.data(), in.here(), values.size() * sizeof(float));
  const std::vector<uint32_t> shape = {channels, static_cast<uint32_t>(values.size() / channels)};

  auto tensor = EncodeTensor(values.data(), shape, dtype, 0, fixed ? &params : nullptr);
  if (!tensor.ok()) return;
  Require(ValidateTensor(*tensor).ok());
  auto decoded = DecodeTensor(*tensor);
  Require(decoded.ok() && decoded->size() == values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const float got = (*decoded)[i];
    switch (dtype) {
      case DType::kFloat32: Require(got == values[i]); break;
      case DType::kFloat16:
        Require(std::abs(got - values[i]) <= std::abs(values[i]) * 0x1p-11f + 0x1p-25f);
        break;
      default:
        if (!fixed) {
          const float scale = tensor->quant.scale[i / shape[1]];
          Require(std::abs(got - values[i]) <= scale * 0.5f * 1.001f + 1e-30f);
        }
        break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  if (in.Byte() % 2 == 0) {
    FuzzPeerTensor(in);
  } else {
    FuzzEncode(in);
  }
  return 0;
}
