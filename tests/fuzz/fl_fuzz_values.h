// Shared by the federated fuzz targets (fl_wire_fuzz.cc, checkpoint_format_fuzz.cc): a reader
// over the fuzzer's bytes and builders of structured field values that are mostly valid,
// sometimes just over a limit, sometimes anything.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/fl_protocol.h"
#include "common/status.h"
#include "common/tensor_codec.h"

namespace cleave::fuzz {

using wire::DType;
using wire::EncodedTensor;
using wire::PackedByteSize;
using wire::fl::kMaxClientIdBytes;
using wire::fl::kMaxNameBytes;
using wire::fl::kMaxNumExamples;
using wire::fl::kMaxTextBytes;

inline void Require(bool condition) {
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
  uint64_t U64() { return uint64_t{U32()} | (uint64_t{U32()} << 32); }
  float F32() {
    const uint32_t bits = U32();
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
  }
  double F64() {
    const uint64_t bits = U64();
    double value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
  }
  std::string Bytes(size_t n) {
    std::string out;
    for (size_t i = 0; i < n; ++i) out.push_back(static_cast<char>(Byte()));
    return out;
  }
  size_t remaining() const { return size_ - pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// ---- Structured values: mostly valid, sometimes just over a limit, sometimes anything ----

inline std::string Id(Reader& in) {
  switch (in.Byte() % 8) {
    case 0: return "";
    case 1: return "a b";
    case 2: return std::string(kMaxClientIdBytes, 'c');
    case 3: return std::string(kMaxClientIdBytes + 1, 'c');
    case 4: return in.Bytes(in.Byte() % 12);
    default: return "edge-" + std::to_string(in.Byte());
  }
}

inline std::string Name(Reader& in) {
  switch (in.Byte() % 6) {
    case 0: return "";
    case 1: return std::string(kMaxNameBytes + (in.Byte() & 1), 'n');
    case 2: return in.Bytes(in.Byte() % 12);
    default: return "model-" + std::to_string(in.Byte() % 4);
  }
}

inline std::string Sha(Reader& in) {
  switch (in.Byte() % 4) {
    case 0: return in.Bytes(in.Byte() % 70);
    default: return std::string(64, "0123456789abcdef"[in.Byte() % 16]);
  }
}

inline std::string Text(Reader& in) {
  switch (in.Byte() % 4) {
    case 0: return std::string(kMaxTextBytes + (in.Byte() & 1), 't');
    default: return in.Bytes(in.Byte() % 16);
  }
}

inline uint32_t U32(Reader& in) {
  switch (in.Byte() % 6) {
    case 0: return 0;
    case 1: return std::numeric_limits<uint32_t>::max();
    case 2: return in.U32();
    default: return 1 + in.Byte();
  }
}

inline uint64_t U64(Reader& in) {
  switch (in.Byte() % 5) {
    case 0: return 0;
    case 1: return kMaxNumExamples + (in.Byte() & 1);
    case 2: return in.U64();
    default: return 1 + in.Byte();
  }
}

inline double F64(Reader& in) {
  switch (in.Byte() % 8) {
    case 0: return 0;
    case 1: return 1;
    case 2: return -0.5;
    case 3: return std::nan("");
    case 4: return INFINITY;
    case 5: return in.F64();
    default: return 0.001 * (1 + in.Byte());
  }
}

inline EncodedTensor Tensor(Reader& in) {
  EncodedTensor tensor;
  tensor.dtype = static_cast<DType>(in.Byte() % 5);  // includes an unknown value
  const size_t rank = in.Byte() % 10;                // includes a rank over the limit
  uint64_t count = 1;
  for (size_t i = 0; i < rank; ++i) {
    tensor.shape.push_back(in.Byte() % 5);
    count *= tensor.shape.back();
  }
  tensor.channel_axis = in.Byte() % (rank + 2);
  const uint32_t channels =
      tensor.channel_axis < rank ? tensor.shape[tensor.channel_axis] : in.Byte() % 3;
  const bool quantized = tensor.dtype == DType::kUInt8 || tensor.dtype == DType::kUInt4;
  if (quantized || in.Byte() % 16 == 0) {
    for (uint32_t c = 0; c < channels; ++c) {
      tensor.quant.scale.push_back(in.Byte() % 8 ? 0.01f * (1 + in.Byte()) : in.F32());
      tensor.quant.zero_point.push_back(in.Byte() % 20);
    }
  }
  const uint64_t bytes = PackedByteSize(tensor.dtype, count) + (in.Byte() % 16 == 0);
  for (uint64_t i = 0; i < bytes && i < 4096; ++i) {
    // Small positive f32/f16 values unless the fuzzer insists.
    tensor.data.push_back(static_cast<char>(in.Byte() % 8 ? (i % 4 == 3 ? 0x3c : 0) : in.Byte()));
  }
  if (tensor.dtype == DType::kUInt4 && count % 2 == 1 && !tensor.data.empty()) {
    tensor.data.back() = static_cast<char>(tensor.data.back() & (in.Byte() % 8 ? 0x0F : 0xFF));
  }
  return tensor;
}

inline std::vector<EncodedTensor> Tensors(Reader& in) {
  std::vector<EncodedTensor> out(in.Byte() % 5);
  for (EncodedTensor& tensor : out) tensor = Tensor(in);
  return out;
}

// Flips up to four fuzz-chosen bytes of `encoded`.
inline std::string Mutate(Reader& in, std::string encoded) {
  const size_t flips = in.Byte() % 5;
  for (size_t i = 0; i < flips && !encoded.empty(); ++i) {
    const size_t pos = in.U32() % encoded.size();
    encoded[pos] = static_cast<char>(encoded[pos] ^ in.Byte());
  }
  return encoded;
}

// The structured half of a target: `value` (built from fuzz input) is encoded and decoded; the
// decoder must agree with the validator, and what decodes must pass `check` and re-encode to
// the same bytes. Then the encoding is mutated (Mutate) and whatever still decodes must pass
// `check` too.
template <typename T, typename Encode, typename Validate, typename Decode, typename Check>
void FuzzEncodeDecode(Reader& in, const T& value, Encode encode, Validate validate, Decode decode,
                      Check check) {
  const std::string encoded = encode(value);
  const Status validated = validate(value);
  auto decoded = decode(encoded);
  Require(decoded.ok() == validated.ok());
  Require(decoded.status().code() == validated.code());
  if (decoded.ok()) {
    check(*decoded);
    Require(encode(*decoded) == encoded);
  }
  auto mutated = decode(Mutate(in, encoded));
  if (mutated.ok()) check(*mutated);
}

}  // namespace cleave::fuzz
