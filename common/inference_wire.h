// Split-inference wire messages: plain C++ mirrors of common/inference.capnp and their
// Cap'n Proto *packed* encoding.
//
// Nothing outside common/inference_wire.cc touches Cap'n Proto builders or readers: callers
// fill these structs and get bytes, or hand over bytes and get validated structs. Decoders treat
// every byte as hostile (explicit traversal/nesting limits, size limits, version check, enum values
// checked, tensors validated with ValidateTensor) and never throw or abort; they accept input
// at any alignment. All functions are pure and thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor_codec.h"

namespace cleave::wire {

// Bumped on any incompatible change to inference.capnp or tensor.capnp. Decoders reject
// every version but these two with kVersionMismatch.
// Version 1: InferRequest, with the model name and a self-describing tensor.
inline constexpr uint16_t kProtocolVersion = 1;
// Version 2 (issue 19): InferRequestV2, only what the cloud does not know from the bundle.
inline constexpr uint16_t kCompactProtocolVersion = 2;

// Limits applied by the decoders (and documented preconditions of the encoders).
inline constexpr size_t kMaxMessageBytes = size_t{64} << 20;  // packed and unpacked
inline constexpr size_t kMaxModelNameBytes = 256;
inline constexpr size_t kMaxPngBytes = size_t{4} << 20;
inline constexpr size_t kMaxCodedFeatureBytes = size_t{16} << 20;
inline constexpr uint32_t kMaxNumClasses = 100000;
inline constexpr int kMaxNestingDepth = 16;

// kFeatures: a self-describing tensor (version 1 only); kCodedFeatures: bytes coded as the
// bundle's split point says, kPackedFeatures: the codec's packed bytes of that split point's
// quantized features (version 2 only); kPng: an encoded image (both).
enum class InputKind : uint8_t { kFeatures, kPng, kCodedFeatures, kPackedFeatures };

// Edge -> cloud: finish the computation for one input. `protocol_version` picks the
// encoding: kProtocolVersion (InferRequest) or kCompactProtocolVersion (InferRequestV2).
struct InferRequest {
  uint16_t protocol_version = kProtocolVersion;
  uint64_t request_id = 0;   // version 2: < 2^32 (the encoder keeps the low 32 bits)
  std::string model;         // version 1: bundle name, <= kMaxModelNameBytes, no control bytes
  uint32_t deadline_ms = 0;  // remaining budget the edge allows; 0 = none
  InputKind input = InputKind::kFeatures;
  EncodedTensor features;  // used when input == kFeatures
  std::string png;         // used when input == kPng (a PNG or JPEG), <= kMaxPngBytes
  // Version 2 only.
  uint8_t split = 0;        // the bundle's split point that produced the features
  uint16_t layout_tag = 0;  // split::WireLayoutTag of that split point's feature layout
  std::string coded;        // kCodedFeatures / kPackedFeatures, 1..kMaxCodedFeatureBytes
};

enum class ReplyStatus : uint8_t { kOk, kError, kOverloaded, kDeadlineExceeded };

// "ok", "error", "overloaded", "deadline_exceeded" ("unknown" for other values).
const char* ReplyStatusName(ReplyStatus status);

// Cloud -> edge: the answer to the InferRequest with the same request_id. Always version 1
// (kProtocolVersion), whatever the request's version: its format did not change.
struct InferReply {
  uint16_t protocol_version = kProtocolVersion;
  uint64_t request_id = 0;
  ReplyStatus status = ReplyStatus::kOk;
  std::string error;          // cause when status != kOk
  std::vector<float> scores;  // row-major [rows, num_classes]; empty unless kOk
  uint32_t num_classes = 0;   // 1..kMaxNumClasses when scores are present
  uint32_t batch_size = 0;    // how many requests the cloud computed together
  uint64_t queue_us = 0;      // time spent waiting in the cloud queue
  uint64_t compute_us = 0;    // compute time of the batch
};

// Cap'n Proto packed encoding, always a single segment (we count every byte on the wire).
// The encoders do not validate: a request that breaks the limits above encodes fine and is
// rejected by the peer's decoder. Size precondition: every field far below 512 MiB.
std::string EncodeInferRequest(const InferRequest& request);
std::string EncodeInferReply(const InferReply& reply);
// The same bytes into `out` (replaced), building in this thread's scratch words: no
// allocation once `out` has the capacity. For threads that encode many (the cloud's workers,
// a load generator).
void EncodeInferRequest(const InferRequest& request, std::string* out);
void EncodeInferReply(const InferReply& reply, std::string* out);

// Decode and validate. InvalidArgument for malformed, oversized or inconsistent input
// (message says which field), VersionMismatch for a version other than the two above.
// A kFeatures request has a tensor that passed ValidateTensor; a kOk reply has
// scores.size() == rows * num_classes with rows >= 1 and finite scores.
Result<InferRequest> DecodeInferRequest(std::string_view bytes);
Result<InferReply> DecodeInferReply(std::string_view bytes);

// What admission needs of a request (the cloud's socket thread): its fixed fields, read
// without copying or validating the payload.
struct InferRequestHeader {
  uint16_t protocol_version = kProtocolVersion;
  uint64_t request_id = 0;
  uint32_t deadline_ms = 0;
  InputKind input = InputKind::kFeatures;
  uint8_t split = 0;        // version 2 (0 for version 1)
  uint16_t layout_tag = 0;  // version 2
};

// Reads the header of a request of either version. InvalidArgument for bytes that are not one
// Cap'n Proto message within the limits above, or an unknown input kind; VersionMismatch as
// DecodeInferRequest. The payload (version 1 model name and tensor, version 2 coded bytes or
// image) is neither read nor validated: DecodeInferRequest of the same bytes does that, and
// whatever it refuses, this may have accepted.
Result<InferRequestHeader> PeekInferRequest(std::string_view bytes);

// Best effort: the request id of a request or reply that failed to decode (for example a
// version mismatch), so an error reply can still be routed; 0 if unreadable. Reads version 2
// requests' 32-bit id where a version 2 request keeps it.
uint64_t PeekRequestId(std::string_view bytes);

}  // namespace cleave::wire
