// libFuzzer target for the federated wire (common/fl_wire.h): DecodeMessage, DecodeCheckpoint
// and ParseCheckpointFile.
//
// Every input is used twice:
//   raw:        the bytes go to DecodeMessage and DecodeCheckpoint as a peer or a disk could
//               hand them over, and to ParseCheckpointFile wrapped in a correct header (the
//               fuzzer cannot forge a SHA-256, so this is how it reaches the payload decoder
//               through the file path; the header checks are fuzzed on the raw bytes too).
//   structured: the bytes choose a Message or CheckpointData field by field from mostly-valid
//               values, which is encoded, decoded (the decoder must agree with
//               ValidateMessage / ValidateCheckpoint), then mutated at a few fuzz-chosen
//               byte positions and decoded again.
// Whatever decodes must validate and re-encode to a canonical form that decodes to itself.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "common/file_util.h"
#include "common/fl_wire.h"

namespace {

using namespace cleave::wire;
using namespace cleave::wire::fl;

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

std::string Id(Reader& in) {
  switch (in.Byte() % 8) {
    case 0: return "";
    case 1: return "a b";
    case 2: return std::string(kMaxClientIdBytes, 'c');
    case 3: return std::string(kMaxClientIdBytes + 1, 'c');
    case 4: return in.Bytes(in.Byte() % 12);
    default: return "edge-" + std::to_string(in.Byte());
  }
}

std::string Name(Reader& in) {
  switch (in.Byte() % 6) {
    case 0: return "";
    case 1: return std::string(kMaxNameBytes + (in.Byte() & 1), 'n');
    case 2: return in.Bytes(in.Byte() % 12);
    default: return "model-" + std::to_string(in.Byte() % 4);
  }
}

std::string Sha(Reader& in) {
  switch (in.Byte() % 4) {
    case 0: return in.Bytes(in.Byte() % 70);
    default: return std::string(64, "0123456789abcdef"[in.Byte() % 16]);
  }
}

std::string Text(Reader& in) {
  switch (in.Byte() % 4) {
    case 0: return std::string(kMaxTextBytes + (in.Byte() & 1), 't');
    default: return in.Bytes(in.Byte() % 16);
  }
}

uint32_t U32(Reader& in) {
  switch (in.Byte() % 6) {
    case 0: return 0;
    case 1: return std::numeric_limits<uint32_t>::max();
    case 2: return in.U32();
    default: return 1 + in.Byte();
  }
}

uint64_t U64(Reader& in) {
  switch (in.Byte() % 5) {
    case 0: return 0;
    case 1: return kMaxNumExamples + (in.Byte() & 1);
    case 2: return in.U64();
    default: return 1 + in.Byte();
  }
}

double F64(Reader& in) {
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

EncodedTensor Tensor(Reader& in) {
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

std::vector<EncodedTensor> Tensors(Reader& in) {
  std::vector<EncodedTensor> out(in.Byte() % 5);
  for (EncodedTensor& tensor : out) tensor = Tensor(in);
  return out;
}

Message BuildMessage(Reader& in) {
  Message message;
  if (in.Byte() % 32 == 0) message.protocol_version = static_cast<uint16_t>(in.U32());
  switch (in.Byte() % 8) {
    case 0: {
      Register m;
      m.client_id = Id(in);
      m.num_examples = U64(in);
      m.capabilities = {(in.Byte() & 1) != 0, (in.Byte() & 1) != 0, U64(in), (in.Byte() & 1) != 0};
      m.model_name = Name(in);
      m.layout_sha256 = Sha(in);
      message.body = std::move(m);
      break;
    }
    case 1: message.body = RegisterReply{(in.Byte() & 1) != 0, Text(in), U32(in), U32(in)}; break;
    case 2: {
      RoundConfig m;
      m.round = U32(in);
      m.model_name = Name(in);
      m.layout_sha256 = Sha(in);
      m.weights = Tensors(in);
      m.is_delta = (in.Byte() & 1) != 0;
      m.base_round = U32(in);
      m.trainable_set = static_cast<TrainableSet>(in.Byte() % 4);
      const size_t bits = m.weights.size() + (in.Byte() % 8 == 0);
      for (size_t i = 0; i < bits; ++i) m.trainable.push_back(in.Byte() % 4 != 0);
      m.local_epochs = U32(in);
      m.batch_size = U32(in);
      m.learning_rate = F64(in);
      m.momentum = F64(in);
      m.weight_decay = F64(in);
      m.proximal_mu = F64(in);
      m.max_steps = U64(in);
      m.deadline_ms = U32(in);
      m.time_budget_ms = U32(in);
      m.seed = in.U64();
      message.body = std::move(m);
      break;
    }
    case 3: {
      Update m;
      m.round = U32(in);
      m.client_id = Id(in);
      m.num_examples = U64(in);
      m.train_loss = F64(in);
      m.tensors = Tensors(in);
      m.is_delta = (in.Byte() & 1) != 0;
      m.train_seconds = F64(in);
      m.steps = U64(in);
      message.body = std::move(m);
      break;
    }
    case 4: {
      const auto reason = static_cast<AckReason>(in.Byte() % 13);
      const bool accepted = in.Byte() % 8 ? reason == AckReason::kOk : reason != AckReason::kOk;
      message.body = UpdateAck{U32(in), accepted, reason, Text(in)};
      break;
    }
    case 5: message.body = Heartbeat{Id(in), U32(in), (in.Byte() & 1) != 0, U32(in)}; break;
    case 6: message.body = Wait{U32(in), U32(in), Text(in)}; break;
    default: message.body = Bye{Id(in), static_cast<ByeReason>(in.Byte() % 4), Text(in)}; break;
  }
  return message;
}

CheckpointData BuildCheckpoint(Reader& in) {
  CheckpointData c;
  if (in.Byte() % 32 == 0) c.format_version = static_cast<uint16_t>(in.U32());
  c.round = U32(in);
  c.model_name = Name(in);
  c.strategy_name = Name(in);
  const size_t entries = in.Byte() % 5;
  for (size_t i = 0; i < entries; ++i) {
    EncodedTensor weight = Tensor(in);
    if (in.Byte() % 4) weight.dtype = DType::kFloat32;
    LayoutEntry entry{in.Byte() % 8 ? "w" + std::to_string(i) : Name(in), weight.shape};
    if (in.Byte() % 16 == 0) entry.shape.push_back(1);
    c.layout.push_back(std::move(entry));
    if (in.Byte() % 16) c.weights.push_back(std::move(weight));
  }
  const size_t state = in.Byte() % 4;
  for (size_t i = 0; i < state; ++i) {
    c.strategy_state.push_back({in.Byte() % 8 ? "s" + std::to_string(i) : Name(in), Tensor(in)});
  }
  c.engine_state = Text(in);
  return c;
}

// ---- Invariants ----

// `message` decoded from something: it validates and its encoding is a fixed point.
void CheckDecodedMessage(const Message& message) {
  Require(ValidateMessage(message).ok());
  const std::string canonical = EncodeMessage(message);
  auto again = DecodeMessage(canonical);
  Require(again.ok());
  Require(EncodeMessage(*again) == canonical);
}

void CheckDecodedCheckpoint(const CheckpointData& checkpoint) {
  Require(ValidateCheckpoint(checkpoint).ok());
  const std::string canonical = EncodeCheckpoint(checkpoint);
  auto again = DecodeCheckpoint(canonical);
  Require(again.ok());
  Require(EncodeCheckpoint(*again) == canonical);
  auto file = ParseCheckpointFile(SerializeCheckpointFile(checkpoint), "fuzz");
  Require(file.ok());
}

std::string WithHeader(std::string_view payload) {
  std::string file(kCheckpointMagic);
  const uint32_t version = kCheckpointFormatVersion;
  const uint64_t length = payload.size();
  file.append(reinterpret_cast<const char*>(&version), sizeof(version));
  file.append(reinterpret_cast<const char*>(&length), sizeof(length));
  file += cleave::Sha256Hex(payload);
  file.append(payload);
  return file;
}

void FuzzRaw(std::string_view bytes) {
  auto message = DecodeMessage(bytes);
  if (message.ok()) CheckDecodedMessage(*message);
  auto checkpoint = DecodeCheckpoint(bytes);
  if (checkpoint.ok()) CheckDecodedCheckpoint(*checkpoint);
  auto file = ParseCheckpointFile(WithHeader(bytes), "fuzz");
  Require(file.ok() == checkpoint.ok());
  (void)ParseCheckpointFile(bytes, "fuzz");
}

// Flips up to four fuzz-chosen bytes of `encoded`.
std::string Mutate(Reader& in, std::string encoded) {
  const size_t flips = in.Byte() % 5;
  for (size_t i = 0; i < flips && !encoded.empty(); ++i) {
    const size_t pos = in.U32() % encoded.size();
    encoded[pos] = static_cast<char>(encoded[pos] ^ in.Byte());
  }
  return encoded;
}

void FuzzStructured(Reader& in) {
  if (in.Byte() % 4 != 0) {
    const Message message = BuildMessage(in);
    const std::string encoded = EncodeMessage(message);
    const cleave::Status validated = ValidateMessage(message);
    auto decoded = DecodeMessage(encoded);
    Require(decoded.ok() == validated.ok());
    Require(decoded.status().code() == validated.code());
    if (decoded.ok()) {
      CheckDecodedMessage(*decoded);
      Require(EncodeMessage(*decoded) == encoded);
    }
    auto mutated = DecodeMessage(Mutate(in, encoded));
    if (mutated.ok()) CheckDecodedMessage(*mutated);
  } else {
    const CheckpointData checkpoint = BuildCheckpoint(in);
    const std::string encoded = EncodeCheckpoint(checkpoint);
    const cleave::Status validated = ValidateCheckpoint(checkpoint);
    auto decoded = DecodeCheckpoint(encoded);
    Require(decoded.ok() == validated.ok());
    Require(decoded.status().code() == validated.code());
    if (decoded.ok()) {
      CheckDecodedCheckpoint(*decoded);
      Require(EncodeCheckpoint(*decoded) == encoded);
    }
    auto mutated = DecodeCheckpoint(Mutate(in, encoded));
    if (mutated.ok()) CheckDecodedCheckpoint(*mutated);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzRaw(std::string_view(reinterpret_cast<const char*>(data), size));
  Reader in(data, size);
  FuzzStructured(in);
  return 0;
}
