// Byte format of an Int8GraphHead (internal to head_int8_graph.cc; see split/head_int8_graph.h).
//
// Version 1: one Cap'n Proto message (standard framing) whose root is a List(Data):
//   [0]  UTF-8 JSON header: {"format": "cleave-int8-graph-head", "version": 1,
//        "input_shape": [C, H, W], "layout": <the plan as text>, "fp32_crc32": <CRC-32 of
//        the fp32 head's constants the plan reads>, "ops": [{"kind", "int8", "macs"}...],
//        "crc32": <see below>}
//   then for every int8 conv and linear, in plan order: int8 weights (the fp32 weight's
//   shape), float32 per-output-channel weight scales [out], float32 biases [out];
//   then float32 activation scales [P] and uint8 activation zero points [P].
// "crc32" is the zlib CRC-32 of the header's JSON text without the "crc32" key (as
// nlohmann::json::dump writes it: keys sorted, no spaces) followed by entries 1.., so a
// changed byte anywhere is DataLoss. Numbers are little-endian, tensors row-major.
//
// The bytes do not describe the plan: the reader rebuilds it from the fp32 head it is given
// (split/head_int8_plan.h) and refuses bytes whose layout or fp32 fingerprint differ
// (InvalidArgument); every entry's size follows from that plan, so an entry of the wrong size
// is rejected before any byte is interpreted.
// Compatibility: a reader refuses other versions (VersionMismatch, checked before the CRC,
// whose definition belongs to the version); new fields go into the JSON header, new tensors
// after the existing entries with a version bump.
#pragma once

#include <string>

#include "common/status.h"
#include "split/head_int8_plan.h"

namespace cleave::split::int8_graph {

inline constexpr int kGraphHeadFormatVersion = 1;

// `state` must be calibrated (or deserialized): weights quantized, ranges set.
Result<std::string> SerializeGraphHead(const Int8GraphState& state);

// Reads `bytes` into `state`, a plan just built from the fp32 head by BuildPlan: fills the
// int8 weights (and their dequantized fp32 copies), activation ranges, input shape and the
// report's MACs. Errors as Int8GraphHead::Deserialize.
Status DeserializeGraphHead(const std::string& bytes, Int8GraphState& state);

}  // namespace cleave::split::int8_graph
