#include "common/fl_wire_internal.h"

#include <cmath>
#include <cstdio>
#include <cstring>

namespace cleave::wire::fl::internal {

CLEAVE_SAME_ENUM(schema::Tensor::DType::FLOAT32, DType::kFloat32);
CLEAVE_SAME_ENUM(schema::Tensor::DType::UINT4, DType::kUInt4);

namespace {

std::string DoubleString(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value < 0 ? "-inf" : "inf";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", value);
  return buf;
}

}  // namespace

size_t TextWords(const std::string& text) { return WordsFor(text.size() + 1); }

size_t TensorsWords(const std::vector<EncodedTensor>& tensors) {
  size_t words = 1;
  for (const EncodedTensor& tensor : tensors) words += TensorWords(tensor);
  return words;
}

void WriteTensors(const std::vector<EncodedTensor>& tensors,
                  capnp::List<schema::Tensor>::Builder out) {
  for (unsigned i = 0; i < out.size(); ++i) WriteTensor(tensors[i], out[i]);
}

std::string Indexed(const std::string& field, size_t i) {
  return field + "[" + std::to_string(i) + "]";
}

Status TooLong(const std::string& field, size_t size, size_t limit, const char* unit) {
  return Status::InvalidArgument(field + " has " + std::to_string(size) + " " + unit +
                                 ", more than the limit of " + std::to_string(limit));
}

// Names: non-empty, bounded, no control bytes (they end up in logs and file names).
Status CheckName(std::string_view value, const std::string& field) {
  if (value.empty()) return Status::InvalidArgument(field + " is empty");
  if (value.size() > kMaxNameBytes) return TooLong(field, value.size(), kMaxNameBytes, "bytes");
  for (size_t i = 0; i < value.size(); ++i) {
    const auto byte = static_cast<uint8_t>(value[i]);
    if (byte < 0x20 || byte == 0x7F) {
      return Status::InvalidArgument(field + " contains control byte " + std::to_string(byte) +
                                     " at offset " + std::to_string(i));
    }
  }
  return Status::Ok();
}

// Free text (errors, reasons): any bytes, bounded.
Status CheckText(std::string_view value, const std::string& field) {
  if (value.size() > kMaxTextBytes) return TooLong(field, value.size(), kMaxTextBytes, "bytes");
  return Status::Ok();
}

Status CheckSha256Hex(std::string_view value, const std::string& field) {
  if (value.size() != 64) {
    return Status::InvalidArgument(field + " must be 64 lowercase hex digits (SHA-256), got " +
                                   std::to_string(value.size()) + " bytes");
  }
  for (size_t i = 0; i < value.size(); ++i) {
    const char c = value[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return Status::InvalidArgument(field + " must be 64 lowercase hex digits (SHA-256), got " +
                                     "byte " + std::to_string(static_cast<uint8_t>(c)) +
                                     " at offset " + std::to_string(i));
    }
  }
  return Status::Ok();
}

// `value` finite and within [min, max] (max exclusive when `max_exclusive`); `min_exclusive`
// likewise.
Status CheckDouble(double value, const std::string& field, double min, bool min_exclusive,
                   double max, bool max_exclusive) {
  if (!std::isfinite(value)) {
    return Status::InvalidArgument(field + " = " + DoubleString(value) + " is not finite");
  }
  const bool low = min_exclusive ? !(value > min) : !(value >= min);
  const bool high = max_exclusive ? !(value < max) : !(value <= max);
  if (low || high) {
    std::string range = (min_exclusive ? "(" : "[") + DoubleString(min) + ", " +
                        (std::isinf(max) ? std::string("inf") : DoubleString(max)) +
                        (max_exclusive || std::isinf(max) ? ")" : "]");
    return Status::InvalidArgument(field + " = " + DoubleString(value) + " is outside " + range);
  }
  return Status::Ok();
}

Status CheckUint(uint64_t value, const std::string& field, uint64_t min, uint64_t max) {
  if (value >= min && value <= max) return Status::Ok();
  return Status::InvalidArgument(field + " = " + std::to_string(value) + " is outside " +
                                 std::to_string(min) + ".." + std::to_string(max));
}

Status CheckTensors(const std::vector<EncodedTensor>& tensors, const std::string& field) {
  if (tensors.empty()) return Status::InvalidArgument(field + " is empty");
  if (tensors.size() > kMaxLayoutEntries) {
    return TooLong(field, tensors.size(), kMaxLayoutEntries, "tensors");
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    CLEAVE_RETURN_IF_ERROR(ValidateTensor(tensors[i]).WithContext(Indexed(field, i)));
  }
  return Status::Ok();
}

Status CheckListLength(size_t size, size_t limit, const std::string& field, const char* unit) {
  return size <= limit ? Status::Ok() : TooLong(field, size, limit, unit);
}

Result<EncodedTensor> ReadTensor(schema::Tensor::Reader in, const std::string& field) {
  return capnp_io::ReadTensorFields(in, field);
}

Result<std::vector<EncodedTensor>> ReadTensors(capnp::List<schema::Tensor>::Reader in,
                                               const std::string& field) {
  CLEAVE_RETURN_IF_ERROR(CheckListLength(in.size(), kMaxLayoutEntries, field, "tensors"));
  std::vector<EncodedTensor> out;
  out.reserve(in.size());
  for (unsigned i = 0; i < in.size(); ++i) {
    CLEAVE_ASSIGN_OR_RETURN(EncodedTensor tensor, ReadTensor(in[i], Indexed(field, i)));
    out.push_back(std::move(tensor));
  }
  return out;
}

Result<crypto::Key256> ReadKey(capnp::Data::Reader in, const std::string& field) {
  if (in.size() != kSecAggKeyBytes) {
    return Status::InvalidArgument(field + " has " + std::to_string(in.size()) +
                                   " bytes; a key has exactly " + std::to_string(kSecAggKeyBytes));
  }
  crypto::Key256 key;
  std::memcpy(key.data(), in.begin(), key.size());
  return key;
}

}  // namespace cleave::wire::fl::internal
