#include "federated/checkpoint_format.h"

#include <capnp/message.h>

#include <cstring>
#include <unordered_set>

#include "common/capnp_io.h"
#include "common/federated.capnp.h"
#include "common/file_util.h"
#include "common/fl_wire_internal.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the checkpoint header is written with memcpy; add byte swapping for big-endian");

namespace cleave::federated {
namespace {

namespace fs = std::filesystem;
using wire::DType;
using wire::ElementCount;
using wire::EncodedTensor;
using wire::kMaxTensorRank;
using wire::ValidateTensor;
using wire::capnp_io::AsText;
using wire::capnp_io::CopyList;
using wire::capnp_io::TensorWords;
using wire::capnp_io::ToString;
using wire::capnp_io::WordsFor;
using wire::capnp_io::WritePacked;
using wire::capnp_io::WriteTensor;
using wire::fl::kMaxLayoutEntries;
using wire::fl::internal::CheckListLength;
using wire::fl::internal::CheckName;
using wire::fl::internal::Indexed;
using wire::fl::internal::ReadTensor;
using wire::fl::internal::ReadTensors;
using wire::fl::internal::TensorsWords;
using wire::fl::internal::TextWords;
using wire::fl::internal::TooLong;
using wire::fl::internal::WithPackedReader;
using wire::fl::internal::WriteTensors;

Result<CheckpointData> ReadCheckpoint(schema::Checkpoint::Reader in) {
  CheckpointData out;
  out.format_version = in.getFormatVersion();
  CLEAVE_RETURN_IF_ERROR(wire::capnp_io::CheckVersion(out.format_version, kCheckpointFormatVersion,
                                                      "checkpoint payload", "version"));
  out.round = in.getRound();
  out.model_name = ToString(in.getModelName());
  const auto layout = in.getLayout();
  CLEAVE_RETURN_IF_ERROR(
      CheckListLength(layout.size(), kMaxLayoutEntries, "checkpoint layout", "entries"));
  out.layout.reserve(layout.size());
  for (unsigned i = 0; i < layout.size(); ++i) {
    const auto entry = layout[i];
    LayoutEntry item;
    item.name = ToString(entry.getName());
    const auto shape = entry.getShape();
    CLEAVE_RETURN_IF_ERROR(CheckListLength(shape.size(), kMaxTensorRank,
                                           Indexed("checkpoint layout", i) + " shape", "dims"));
    CopyList(shape, &item.shape);
    out.layout.push_back(std::move(item));
  }
  CLEAVE_ASSIGN_OR_RETURN(out.weights, ReadTensors(in.getWeights(), "checkpoint weights"));
  out.strategy_name = ToString(in.getStrategyName());
  const auto state = in.getStrategyState();
  CLEAVE_RETURN_IF_ERROR(CheckListLength(state.size(), kMaxStrategyStateEntries,
                                         "checkpoint strategy_state", "entries"));
  out.strategy_state.reserve(state.size());
  for (unsigned i = 0; i < state.size(); ++i) {
    const auto entry = state[i];
    NamedTensor item;
    item.name = ToString(entry.getName());
    CLEAVE_ASSIGN_OR_RETURN(item.tensor,
                            ReadTensor(entry.getTensor(), Indexed("checkpoint strategy_state", i)));
    out.strategy_state.push_back(std::move(item));
  }
  const auto engine_state = in.getEngineState();
  CLEAVE_RETURN_IF_ERROR(CheckListLength(engine_state.size(), kMaxEngineStateBytes,
                                         "checkpoint engine_state", "bytes"));
  out.engine_state = ToString(engine_state);
  CLEAVE_RETURN_IF_ERROR(ValidateCheckpoint(out));
  return out;
}

std::string ShapeString(const std::vector<uint32_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

template <typename T>
void PutLittleEndian(std::string* out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out->append(bytes, sizeof(T));
}

template <typename T>
T GetLittleEndian(std::string_view bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

constexpr size_t kVersionOffset = 8;
constexpr size_t kLengthOffset = 12;
constexpr size_t kDigestOffset = 20;
static_assert(kDigestOffset + 64 == kCheckpointHeaderBytes);
static_assert(kCheckpointMagic.size() == kVersionOffset);

}  // namespace

Status ValidateCheckpoint(const CheckpointData& c) {
  CLEAVE_RETURN_IF_ERROR(wire::capnp_io::CheckVersion(c.format_version, kCheckpointFormatVersion,
                                                      "checkpoint payload", "version"));
  CLEAVE_RETURN_IF_ERROR(CheckName(c.model_name, "checkpoint model_name"));
  CLEAVE_RETURN_IF_ERROR(CheckName(c.strategy_name, "checkpoint strategy_name"));
  if (c.layout.empty()) return Status::InvalidArgument("checkpoint layout is empty");
  if (c.layout.size() > kMaxLayoutEntries) {
    return TooLong("checkpoint layout", c.layout.size(), kMaxLayoutEntries, "entries");
  }
  if (c.weights.size() != c.layout.size()) {
    return Status::InvalidArgument("checkpoint has " + std::to_string(c.weights.size()) +
                                   " weight tensors for " + std::to_string(c.layout.size()) +
                                   " layout entries");
  }
  if (c.strategy_state.size() > kMaxStrategyStateEntries) {
    return TooLong("checkpoint strategy_state", c.strategy_state.size(), kMaxStrategyStateEntries,
                   "entries");
  }
  if (c.engine_state.size() > kMaxEngineStateBytes) {
    return TooLong("checkpoint engine_state", c.engine_state.size(), kMaxEngineStateBytes, "bytes");
  }
  std::unordered_set<std::string_view> names;
  for (size_t i = 0; i < c.layout.size(); ++i) {
    const LayoutEntry& entry = c.layout[i];
    const std::string field = Indexed("checkpoint layout", i);
    CLEAVE_RETURN_IF_ERROR(CheckName(entry.name, field + " name"));
    if (!names.insert(entry.name).second) {
      return Status::InvalidArgument(field + " repeats the name '" + entry.name + "'");
    }
    CLEAVE_RETURN_IF_ERROR(ElementCount(entry.shape).status().WithContext(field + " shape"));
    const EncodedTensor& weight = c.weights[i];
    if (weight.dtype != DType::kFloat32) {
      return Status::InvalidArgument(Indexed("checkpoint weights", i) + " ('" + entry.name +
                                     "') must be f32");
    }
    if (weight.shape != entry.shape) {
      return Status::InvalidArgument(Indexed("checkpoint weights", i) + " ('" + entry.name +
                                     "') has shape " + ShapeString(weight.shape) +
                                     " but the layout says " + ShapeString(entry.shape));
    }
    CLEAVE_RETURN_IF_ERROR(ValidateTensor(weight).WithContext(Indexed("checkpoint weights", i) +
                                                              " ('" + entry.name + "')"));
  }
  names.clear();
  for (size_t i = 0; i < c.strategy_state.size(); ++i) {
    const NamedTensor& entry = c.strategy_state[i];
    const std::string field = Indexed("checkpoint strategy_state", i);
    CLEAVE_RETURN_IF_ERROR(CheckName(entry.name, field + " name"));
    if (!names.insert(entry.name).second) {
      return Status::InvalidArgument(field + " repeats the name '" + entry.name + "'");
    }
    CLEAVE_RETURN_IF_ERROR(
        ValidateTensor(entry.tensor).WithContext(field + " ('" + entry.name + "')"));
  }
  return Status::Ok();
}

std::string EncodeCheckpoint(const CheckpointData& c) {
  size_t words = 16 + TextWords(c.model_name) + TextWords(c.strategy_name) +
                 TextWords(c.engine_state) + TensorsWords(c.weights);
  for (const LayoutEntry& entry : c.layout) {
    words += 4 + TextWords(entry.name) + WordsFor(entry.shape.size() * 4);
  }
  for (const NamedTensor& entry : c.strategy_state) {
    words += 4 + TextWords(entry.name) + TensorWords(entry.tensor);
  }
  capnp::MallocMessageBuilder builder(static_cast<unsigned>(words));
  auto root = builder.initRoot<schema::Checkpoint>();
  root.setFormatVersion(c.format_version);
  root.setRound(c.round);
  root.setModelName(AsText(c.model_name));
  auto layout = root.initLayout(static_cast<unsigned>(c.layout.size()));
  for (unsigned i = 0; i < layout.size(); ++i) {
    layout[i].setName(AsText(c.layout[i].name));
    auto shape = layout[i].initShape(static_cast<unsigned>(c.layout[i].shape.size()));
    for (unsigned d = 0; d < shape.size(); ++d) shape.set(d, c.layout[i].shape[d]);
  }
  WriteTensors(c.weights, root.initWeights(static_cast<unsigned>(c.weights.size())));
  root.setStrategyName(AsText(c.strategy_name));
  auto state = root.initStrategyState(static_cast<unsigned>(c.strategy_state.size()));
  for (unsigned i = 0; i < state.size(); ++i) {
    state[i].setName(AsText(c.strategy_state[i].name));
    WriteTensor(c.strategy_state[i].tensor, state[i].initTensor());
  }
  root.setEngineState(AsText(c.engine_state));
  return WritePacked(builder);
}

Result<CheckpointData> DecodeCheckpoint(std::string_view payload) {
  return WithPackedReader<CheckpointData>(
      payload, "checkpoint payload", kMaxCheckpointBytes, [](capnp::MessageReader& message) {
        return ReadCheckpoint(message.getRoot<schema::Checkpoint>());
      });
}

std::string SerializeCheckpointFile(const CheckpointData& checkpoint) {
  const std::string payload = EncodeCheckpoint(checkpoint);
  std::string out;
  out.reserve(kCheckpointHeaderBytes + payload.size());
  out.append(kCheckpointMagic);
  PutLittleEndian<uint32_t>(&out, checkpoint.format_version);
  PutLittleEndian<uint64_t>(&out, payload.size());
  out.append(Sha256Hex(payload));
  out.append(payload);
  return out;
}

Result<CheckpointData> ParseCheckpointFile(std::string_view bytes, const std::string& name) {
  const std::string what = "checkpoint '" + name + "'";
  if (bytes.size() < kCheckpointHeaderBytes) {
    return Status::DataLoss(what + " is truncated: " + std::to_string(bytes.size()) +
                            " bytes, shorter than the " + std::to_string(kCheckpointHeaderBytes) +
                            "-byte header");
  }
  if (bytes.substr(0, kCheckpointMagic.size()) != kCheckpointMagic) {
    return Status::DataLoss(what + " is not a cleave checkpoint (bad magic)");
  }
  const uint32_t version = GetLittleEndian<uint32_t>(bytes, kVersionOffset);
  if (version != kCheckpointFormatVersion) {
    return Status::VersionMismatch(what + " has format version " + std::to_string(version) +
                                   " but this build reads version " +
                                   std::to_string(kCheckpointFormatVersion));
  }
  const uint64_t length = GetLittleEndian<uint64_t>(bytes, kLengthOffset);
  const std::string_view payload = bytes.substr(kCheckpointHeaderBytes);
  if (length != payload.size()) {
    return Status::DataLoss(what +
                            (length > payload.size() ? " is truncated" : " has trailing bytes") +
                            ": the header promises a " + std::to_string(length) +
                            "-byte payload, the file holds " + std::to_string(payload.size()));
  }
  const std::string_view expected = bytes.substr(kDigestOffset, 64);
  const std::string actual = Sha256Hex(payload);
  if (actual.empty()) return Status::Internal("SHA-256 failed while reading " + what);
  if (expected != actual) {
    return Status::DataLoss(what + " is corrupt: the payload's SHA-256 is " + actual +
                            " but the header records " + std::string(expected));
  }
  Result<CheckpointData> checkpoint = DecodeCheckpoint(payload);
  if (!checkpoint.ok()) return checkpoint.status().WithContext(what);
  return checkpoint;
}

Status WriteCheckpointFile(const fs::path& path, const CheckpointData& checkpoint) {
  const std::string what = "checkpoint '" + path.string() + "'";
  CLEAVE_RETURN_IF_ERROR(ValidateCheckpoint(checkpoint).WithContext("refusing to write " + what));
  const std::string file = SerializeCheckpointFile(checkpoint);
  if (file.size() - kCheckpointHeaderBytes > kMaxCheckpointBytes) {
    return Status::InvalidArgument("refusing to write " + what + ": its payload is " +
                                   std::to_string(file.size() - kCheckpointHeaderBytes) +
                                   " bytes, more than the limit of " +
                                   std::to_string(kMaxCheckpointBytes));
  }
  return WriteFileAtomic(path, file);
}

Result<CheckpointData> ReadCheckpointFile(const fs::path& path) {
  // Refuse absurd sizes before reading the whole file into memory.
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (!ec && size > kCheckpointHeaderBytes + kMaxCheckpointBytes) {
    return Status::InvalidArgument("checkpoint '" + path.string() + "' is " + std::to_string(size) +
                                   " bytes, more than the limit of " +
                                   std::to_string(kCheckpointHeaderBytes + kMaxCheckpointBytes));
  }
  CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, ReadFileToString(path));
  return ParseCheckpointFile(bytes, path.string());
}

}  // namespace cleave::federated
