// Hard-token routing wire messages: plain C++ mirrors of common/lm.capnp and their Cap'n
// Proto *packed* encoding. The same rules as common/inference_wire.h: decoders treat every
// byte as hostile (limits, version check, enum values, tensors validated) and never throw; nothing
// outside common/lm_wire.cc touches Cap'n Proto types. Pure and thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/inference_wire.h"
#include "common/status.h"
#include "common/tensor_codec.h"

namespace cleave::lm_wire {

inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr size_t kMaxMessageBytes = size_t{16} << 20;
inline constexpr size_t kMaxSessionBytes = 128;
inline constexpr uint32_t kMaxStatesPerRequest = 65536;
inline constexpr uint32_t kMaxStateWidth = 65536;
inline constexpr uint32_t kMaxVocab = 65536;

// Edge -> cloud.
struct LmRequest {
  uint16_t protocol_version = kProtocolVersion;
  uint64_t request_id = 0;
  std::string model;    // as wire::InferRequest::model
  std::string session;  // 1..kMaxSessionBytes printable bytes
  uint64_t start = 0;
  wire::EncodedTensor states;  // [tokens, width], 0 <= tokens <= kMaxStatesPerRequest
  // Raw token bytes (the cloud-only configuration), at most kMaxStatesPerRequest; when
  // non-empty, `states` has no rows (after decoding: no shape at all).
  std::string tokens;
  bool predict = false;  // needs at least one state or token
  bool end_session = false;
  uint32_t deadline_ms = 0;
  bool reset_session = false;  // the states begin a fresh context at `start`
};

enum class LmStatus : uint8_t { kOk, kError, kOverloaded, kDeadlineExceeded, kResync };
const char* LmStatusName(LmStatus status);  // "ok", ..., "resync"

// Cloud -> edge.
struct LmReply {
  uint16_t protocol_version = kProtocolVersion;
  uint64_t request_id = 0;
  LmStatus status = LmStatus::kOk;
  std::string error;
  uint64_t position = 0;
  std::vector<float> log_probs;  // [vocab] when the request predicted and status is ok
  uint64_t compute_us = 0;
  uint64_t macs = 0;  // multiply-accumulates the cloud computed
};

std::string EncodeLmRequest(const LmRequest& request);
std::string EncodeLmReply(const LmReply& reply);
// InvalidArgument for malformed, oversized or inconsistent input (naming the field),
// VersionMismatch for another protocol version. A request's states passed ValidateTensor
// and are 2-D, or are absent/empty beside tokens; a reply's log_probs are finite, at most 0, and at
// most kMaxVocab of them.
Result<LmRequest> DecodeLmRequest(std::string_view bytes);
Result<LmReply> DecodeLmReply(std::string_view bytes);

}  // namespace cleave::lm_wire
