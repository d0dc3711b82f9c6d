// The aggregator's checkpoint file: what a round engine needs to resume (the global model,
// the strategy's server state, the engine's own JSON) as a libtorch-free struct, its Cap'n
// Proto payload (Checkpoint in common/federated.capnp) and the file around it (magic, format
// version, payload length, SHA-256). federated/checkpoint.h turns a RoundEngine into a
// CheckpointData and back.
//
// Decoders treat every byte as hostile, as the federated wire does (common/fl_wire.h):
// explicit traversal/nesting limits, size limits checked before copying, version check, every
// tensor validated with ValidateTensor, and the rules of ValidateCheckpoint below. They never
// throw or abort and accept input at any alignment. All functions are thread-safe; the file
// helpers have the concurrency rules of common/file_util.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/fl_protocol.h"
#include "common/status.h"
#include "common/tensor_codec.h"

namespace cleave::federated {

inline constexpr uint16_t kCheckpointFormatVersion = 1;
// "CLVCKPT\n", then the version, payload length and payload SHA-256 (see federated.capnp).
inline constexpr std::string_view kCheckpointMagic = "CLVCKPT\n";
inline constexpr size_t kCheckpointHeaderBytes = 84;
inline constexpr size_t kMaxCheckpointBytes = size_t{1} << 30;  // payload, packed and unpacked
inline constexpr size_t kMaxStrategyStateEntries = 4 * wire::fl::kMaxLayoutEntries;
inline constexpr size_t kMaxEngineStateBytes = size_t{64} << 20;

struct LayoutEntry {
  std::string name;  // non-empty, <= kMaxNameBytes, no control bytes, unique in the layout
  std::vector<uint32_t> shape;  // rank <= kMaxTensorRank, <= kMaxTensorElements elements
};

struct NamedTensor {
  std::string name;  // as LayoutEntry::name, unique in strategy_state
  wire::EncodedTensor tensor;
};

// What the aggregator needs to resume: the global model after `round` completed rounds, the
// strategy's server state and the engine's own JSON.
struct CheckpointData {
  uint16_t format_version = kCheckpointFormatVersion;
  uint32_t round = 0;
  std::string model_name;           // non-empty, <= kMaxNameBytes
  std::vector<LayoutEntry> layout;  // 1..kMaxLayoutEntries
  // Float32, one per layout entry in order, each of its entry's shape.
  std::vector<wire::EncodedTensor> weights;
  std::string strategy_name;                // non-empty, <= kMaxNameBytes
  std::vector<NamedTensor> strategy_state;  // <= kMaxStrategyStateEntries, any valid dtype
  std::string engine_state;                 // JSON, opaque here; <= kMaxEngineStateBytes
};

// The rules above; VersionMismatch when format_version != kCheckpointFormatVersion.
Status ValidateCheckpoint(const CheckpointData& checkpoint);

// The packed Cap'n Proto payload alone (no header). Does not validate.
std::string EncodeCheckpoint(const CheckpointData& checkpoint);
// Decodes and validates a payload, with the hostile-input rules of DecodeMessage
// (kMaxCheckpointBytes instead of kMaxMessageBytes).
Result<CheckpointData> DecodeCheckpoint(std::string_view payload);

// The whole file: header (magic, version, length, SHA-256) + EncodeCheckpoint. Does not
// validate.
std::string SerializeCheckpointFile(const CheckpointData& checkpoint);
// Parses file bytes; `name` (usually the path) appears in every error message. DataLoss for a
// wrong magic, truncation, trailing bytes or a digest mismatch; VersionMismatch for another
// format version; then DecodeCheckpoint's errors.
Result<CheckpointData> ParseCheckpointFile(std::string_view bytes, const std::string& name);

// Validates, then writes the file atomically (WriteFileAtomic: readers see the old or the
// new checkpoint, never a mix). InvalidArgument (nothing written) when the checkpoint breaks
// the rules or its payload exceeds kMaxCheckpointBytes; file errors as WriteFileAtomic.
Status WriteCheckpointFile(const std::filesystem::path& path, const CheckpointData& checkpoint);
// Reads and verifies a checkpoint file: NotFound when it does not exist, IoError when the OS
// refuses, otherwise ParseCheckpointFile's errors (all naming the path).
Result<CheckpointData> ReadCheckpointFile(const std::filesystem::path& path);

}  // namespace cleave::federated
