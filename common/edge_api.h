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
};

// Cap'n Proto packed encodings.
std::string EncodeClassifyRequest(const ClassifyRequest& request);
std::string EncodeClassifyReply(const ClassifyReply& reply);

// InvalidArgument for malformed bytes or fields (size limits, gray8/rgb8 pixel count mismatch,
// empty png/jpeg,
// threshold > 1 or NaN), VersionMismatch for another protocol version.
Result<ClassifyRequest> DecodeClassifyRequest(std::string_view bytes);
Result<ClassifyReply> DecodeClassifyReply(std::string_view bytes);

// Best effort request id of an undecodable request (0 when unreadable).
uint64_t PeekClassifyRequestId(std::string_view bytes);

}  // namespace cleave::edge_api
