// libFuzzer target for the hard-token routing wire (common/lm_wire.h): DecodeLmRequest and
// DecodeLmReply on raw bytes, as a peer could send them. Whatever decodes must re-encode to
// a message that decodes to the same fields (the decoders' checks hold for their output).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "common/lm_wire.h"

namespace {

void Require(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace cleave::lm_wire;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (auto request = DecodeLmRequest(bytes); request.ok()) {
    // States are 2-D; beside raw tokens (the cloud-only configuration) they are absent or
    // have no rows.
    const auto& shape = request->states.shape;
    const bool by_tokens = !request->tokens.empty();
    Require(by_tokens ? shape.empty() || (shape.size() == 2 && shape[0] == 0) : shape.size() == 2);
    Require(request->tokens.size() <= kMaxStatesPerRequest);
    Require(!request->session.empty() && request->session.size() <= kMaxSessionBytes);
    Require(!request->predict || by_tokens || shape[0] >= 1);
    auto again = DecodeLmRequest(EncodeLmRequest(*request));
    Require(again.ok());
    Require(again->session == request->session && again->start == request->start);
    Require(again->tokens == request->tokens);
    Require(again->states.data == request->states.data);
    Require(again->states.shape == request->states.shape);
  }
  if (auto reply = DecodeLmReply(bytes); reply.ok()) {
    Require(reply->log_probs.size() <= kMaxVocab);
    for (float v : reply->log_probs) Require(v <= 1e-4f);
    auto again = DecodeLmReply(EncodeLmReply(*reply));
    Require(again.ok());
    Require(again->log_probs == reply->log_probs && again->position == reply->position);
  }
  return 0;
}
