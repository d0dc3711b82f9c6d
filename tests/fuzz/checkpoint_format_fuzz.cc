// libFuzzer target for the aggregator's checkpoint format (federated/checkpoint_format.h):
// DecodeCheckpoint and ParseCheckpointFile.
//
// Every input is used twice:
//   raw:        the bytes go to DecodeCheckpoint as a disk could hand them over, and to
//               ParseCheckpointFile wrapped in a correct header (the fuzzer cannot forge a
//               SHA-256, so this is how it reaches the payload decoder through the file path;
//               the header checks are fuzzed on the raw bytes too).
//   structured: the bytes choose a CheckpointData field by field from mostly-valid values,
//               which is encoded, decoded (the decoder must agree with ValidateCheckpoint),
//               then mutated at a few fuzz-chosen byte positions and decoded again.
// Whatever decodes must validate and re-encode to a canonical form that decodes to itself.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/file_util.h"
#include "federated/checkpoint_format.h"
#include "fl_fuzz_values.h"

namespace {

using namespace cleave::federated;
using namespace cleave::fuzz;
using cleave::wire::DType;
using cleave::wire::EncodedTensor;

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
  auto checkpoint = DecodeCheckpoint(bytes);
  if (checkpoint.ok()) CheckDecodedCheckpoint(*checkpoint);
  auto file = ParseCheckpointFile(WithHeader(bytes), "fuzz");
  Require(file.ok() == checkpoint.ok());
  (void)ParseCheckpointFile(bytes, "fuzz");
}

void FuzzStructured(Reader& in) {
  FuzzEncodeDecode(in, BuildCheckpoint(in), EncodeCheckpoint, ValidateCheckpoint, DecodeCheckpoint,
                   CheckDecodedCheckpoint);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzRaw(std::string_view(reinterpret_cast<const char*>(data), size));
  Reader in(data, size);
  FuzzStructured(in);
  return 0;
}
