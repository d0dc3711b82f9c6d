// libFuzzer target for the federated wire (common/fl_wire.h): DecodeMessage, for round and
// secure-aggregation stage messages alike. The checkpoint file format has its own target
// (checkpoint_format_fuzz.cc).
//
// Every input is used twice:
//   raw:        the bytes go to DecodeMessage as a peer could hand them over.
//   structured: the bytes choose a Message field by field from mostly-valid values, which is
//               encoded, decoded (the decoder must agree with ValidateMessage), then mutated
//               at a few fuzz-chosen byte positions and decoded again.
// Whatever decodes must validate and re-encode to a canonical form that decodes to itself.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/fl_wire.h"
#include "fl_fuzz_values.h"

namespace {

using namespace cleave::fuzz;
using namespace cleave::wire;
using namespace cleave::wire::fl;

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

// ---- Invariants ----

// `message` decoded from something: it validates and its encoding is a fixed point.
void CheckDecodedMessage(const Message& message) {
  Require(ValidateMessage(message).ok());
  const std::string canonical = EncodeMessage(message);
  auto again = DecodeMessage(canonical);
  Require(again.ok());
  Require(EncodeMessage(*again) == canonical);
}

void FuzzRaw(std::string_view bytes) {
  auto message = DecodeMessage(bytes);
  if (message.ok()) CheckDecodedMessage(*message);
}

void FuzzStructured(Reader& in) {
  FuzzEncodeDecode(in, BuildMessage(in), EncodeMessage, ValidateMessage, DecodeMessage,
                   CheckDecodedMessage);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzRaw(std::string_view(reinterpret_cast<const char*>(data), size));
  Reader in(data, size);
  FuzzStructured(in);
  return 0;
}
