// Local application API of cleave-edge (schema: common/edge_api.capnp).
//
// Applications on the gateway send a ClassifyRequest over ZeroMQ (DEALER -> the daemon's
// ROUTER) and get exactly one ClassifyReply per request. These plain structs keep Cap'n
// Proto builders out of the rest of the code; Decode* treat every byte as hostile.
// All functions are pure and thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cleave::edge_api {

inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr size_t kMaxMessageBytes = 8u << 20;
inline constexpr uint32_t kMaxImageSide = 4096;

enum class ImageKind : uint8_t { kPng, kGray8, kJpeg, kRgb8 };
enum class AnswerSource : uint8_t { kEdgeExit, kCloud, kDegraded, kError };

// "edge_exit", "cloud", "degraded", "error".
const char* AnswerSourceName(AnswerSource source);

struct ClassifyRequest {
  uint16_t protocol_version = kProtocolVersion;
  uint64_t request_id = 0;
  uint32_t deadline_ms = 0;      // 0: the daemon's default deadline
  float exit_threshold = -1.0f;  // < 0: the bundle's calibrated threshold
  ImageKind kind = ImageKind::kGray8;
  std::string png;                 // kPng
  std::string jpeg;                // kJpeg
  uint32_t width = 0, height = 0;  // kGray8, kRgb8
  std::string pixels;              // kGray8: width*height bytes; kRgb8: width*height*3 (RGB)
};

struct ClassifyReply {
  uint16_t protocol_version = kProtocolVersion;
  uint64_t request_id = 0;
  AnswerSource source = AnswerSource::kError;
  std::string error;
  int32_t predicted_class = -1;
  float confidence = 0.0f;
  std::vector<float> scores;
  int32_t exit_index = -1;
  uint64_t wire_bytes = 0;
  uint64_t edge_micros = 0;
  uint64_t total_micros = 0;
  std::string class_name;  // the bundle's name of predicted_class; "" on error
  // The offload option that served it: split point (-1: local only), exit threshold (< 0: the
  // bundle's calibrated exit policy), and whether it was the policy's probe.
  int32_t split = -1;
  float exit_threshold = -1.0f;
  bool probe = false;
};

// Cap'n Proto packed encodings.
std::string EncodeClassifyRequest(const ClassifyRequest& request);
std::string EncodeClassifyReply(const ClassifyReply& reply);

// InvalidArgument for malformed bytes or fields (size limits, gray8/rgb8 pixel count mismatch,
// empty png/jpeg,
// threshold > 1 or NaN), VersionMismatch for another protocol version.
Result<ClassifyRequest> DecodeClassifyRequest(std::string_view bytes);
Result<ClassifyReply> DecodeClassifyReply(std::string_view bytes);

// Best effort request id of an undecodable request, v1 or v2 (0 when unreadable).
uint64_t PeekClassifyRequestId(std::string_view bytes);

// ---- Protocol version 2 (LocalRequest / LocalReply envelopes, edge_api.capnp) ----
inline constexpr uint16_t kEnvelopeProtocolVersion = 2;

struct FeedbackRequest {
  uint64_t request_id = 0;  // of an earlier ClassifyRequest on the same connection
  int32_t true_class = -1;  // the daemon checks it against its bundle's classes
};
struct FeedbackReply {
  uint64_t request_id = 0;
  bool accepted = false;
  std::string error;  // why not, when !accepted
};

// What an application sent: a v1 ClassifyRequest, or a v2 envelope holding a classification
// or feedback. `enveloped` tells the daemon to answer with a v2 LocalReply.
struct LocalRequest {
  enum class Kind : uint8_t { kClassify, kFeedback } kind = Kind::kClassify;
  bool enveloped = false;
  ClassifyRequest classify;  // kClassify
  FeedbackRequest feedback;  // kFeedback
};
struct LocalReply {
  LocalRequest::Kind kind = LocalRequest::Kind::kClassify;
  ClassifyReply classify;
  FeedbackReply feedback;
};

// v2 envelopes.
std::string EncodeEnvelopedClassifyRequest(const ClassifyRequest& request);
std::string EncodeFeedbackRequest(const FeedbackRequest& request);
std::string EncodeLocalReply(const LocalReply& reply);
// A v1 ClassifyRequest or a v2 envelope (errors as DecodeClassifyRequest; VersionMismatch for
// any other protocol version).
Result<LocalRequest> DecodeLocalRequest(std::string_view bytes);
// Best effort protocol version of a message (0 when unreadable): how to answer one that
// does not decode.
uint16_t PeekProtocolVersion(std::string_view bytes);
// A v2 LocalReply (VersionMismatch for another version).
Result<LocalReply> DecodeLocalReply(std::string_view bytes);

}  // namespace cleave::edge_api
