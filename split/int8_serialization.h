// Byte format of a quantized Int8Head (internal to int8_head.cc; see split/int8_head.h).
//
// Version 1: one Cap'n Proto message (standard framing) whose root is a List(Data):
//   [0]  UTF-8 JSON header: {"format": "cleave-int8-head", "version": 1, "end_block": k,
//        "layout": <the spec fields the head depends on>, "input_mean": m, "input_std": s
//        (numbers, or arrays of per-channel values),
//        "crc32": <zlib CRC-32 of entries 1.. concatenated>}
//   then for every conv in canonical order (blocks in order, a Fused-MBConv's expansion
//   before its projection, a res block's conv1, conv2 and then its 1x1 projection shortcut
//   when it has one, then the exits): int8 weights [out, in, k, k], float32
//   per-channel weight scales [out], float32 biases [out];
//   then for every linear (the classifier if the head includes it, then the exits): int8
//   weights [out, in], float32 scales [out], float32 biases [out];
//   then float32 activation scales [P] and uint8 activation zero points [P], P points in
//   BuildSkeleton's order (int8_ops.h): the input, then per block its conv outputs in the
//   canonical conv order and its residual sum, each block followed by its exits' convs.
// Numbers are little-endian, tensors row-major. Readers derive every shape from the
// caller's spec, so an entry of the wrong size is rejected before any byte is interpreted.
// Compatibility: a reader refuses other versions (VersionMismatch); new fields go into the
// JSON header, new tensors after the existing entries with a version bump. A new block type
// (res) adds no version: its entries follow the same rules, heads without it are unchanged,
// and an older reader refuses its spec ("unknown block type") before reading any entry.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "split/int8_ops.h"
#include "split/vision_model.h"

namespace cleave::split::int8 {

inline constexpr int kHeadFormatVersion = 1;

// The spec fields a head quantized for blocks [0, end_block) depends on, as one string.
std::string LayoutString(const VisionModelSpec& spec, int end_block);

Result<std::string> SerializeHead(const Int8HeadState& state);

// Errors: DataLoss (not this format, truncated, corrupt, checksum mismatch, invalid
// scales or zero points), VersionMismatch, InvalidArgument (valid bytes for another spec).
// The returned state has dequantized weights and the "reference" engine.
Result<std::unique_ptr<Int8HeadState>> DeserializeHead(const std::string& bytes,
                                                       const VisionModelSpec& spec);

}  // namespace cleave::split::int8
