// libFuzzer target for the edge daemon's local application API (common/edge_api.h):
// DecodeClassifyRequest, DecodeClassifyReply, PeekClassifyRequestId and the protocol
// version 2 envelopes (DecodeLocalRequest, DecodeLocalReply), the decoders behind
// cleave-edge's ROUTER socket and its clients. Whatever decodes must satisfy the documented
// invariants and survive an encode/decode round trip unchanged.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "common/edge_api.h"

namespace {

using namespace cleave::edge_api;

void Require(bool condition) {
  if (!condition) std::abort();
}

bool SameBits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

void CheckRequest(std::string_view bytes) {
  auto request = DecodeClassifyRequest(bytes);
  if (!request.ok()) return;
  Require(PeekClassifyRequestId(bytes) == request->request_id);
  // Documented invariants of an accepted request.
  Require(!std::isnan(request->exit_threshold) && request->exit_threshold <= 1.0f);
  if (request->kind == ImageKind::kGray8) {
    Require(request->width >= 1 && request->height >= 1 && request->width <= kMaxImageSide &&
            request->height <= kMaxImageSide);
    Require(request->pixels.size() ==
            static_cast<size_t>(request->width) * static_cast<size_t>(request->height));
  }
  auto again = DecodeClassifyRequest(EncodeClassifyRequest(*request));
  Require(again.ok());
  Require(again->request_id == request->request_id && again->deadline_ms == request->deadline_ms &&
          SameBits(again->exit_threshold, request->exit_threshold) &&
          again->kind == request->kind && again->png == request->png &&
          again->width == request->width && again->height == request->height &&
          again->pixels == request->pixels);
}

void CheckReply(std::string_view bytes) {
  auto reply = DecodeClassifyReply(bytes);
  if (!reply.ok()) return;
  auto again = DecodeClassifyReply(EncodeClassifyReply(*reply));
  Require(again.ok());
  Require(again->request_id == reply->request_id && again->source == reply->source &&
          again->error == reply->error && again->predicted_class == reply->predicted_class &&
          SameBits(again->confidence, reply->confidence) &&
          again->scores.size() == reply->scores.size() && again->exit_index == reply->exit_index &&
          again->wire_bytes == reply->wire_bytes && again->edge_micros == reply->edge_micros &&
          again->total_micros == reply->total_micros);
  for (size_t i = 0; i < reply->scores.size(); ++i) {
    Require(SameBits(again->scores[i], reply->scores[i]));
  }
}

// Protocol version 2: envelopes carrying a classification or feedback.
void CheckLocal(std::string_view bytes) {
  auto request = DecodeLocalRequest(bytes);
  if (request.ok()) {
    if (request->kind == LocalRequest::Kind::kFeedback) {
      Require(request->enveloped);
      auto again = DecodeLocalRequest(EncodeFeedbackRequest(request->feedback));
      Require(again.ok() && again->kind == LocalRequest::Kind::kFeedback &&
              again->feedback.request_id == request->feedback.request_id &&
              again->feedback.true_class == request->feedback.true_class);
    } else {
      Require(!std::isnan(request->classify.exit_threshold) &&
              request->classify.exit_threshold <= 1.0f);
    }
  }
  auto reply = DecodeLocalReply(bytes);
  if (reply.ok() && reply->kind == LocalRequest::Kind::kFeedback) {
    auto again = DecodeLocalReply(EncodeLocalReply(*reply));
    Require(again.ok() && again->feedback.request_id == reply->feedback.request_id &&
            again->feedback.accepted == reply->feedback.accepted &&
            again->feedback.error == reply->feedback.error);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  CheckRequest(bytes);
  CheckReply(bytes);
  CheckLocal(bytes);
  (void)PeekClassifyRequestId(bytes);
  (void)PeekProtocolVersion(bytes);
  return 0;
}
