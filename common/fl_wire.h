// The federated-learning wire: the envelope (Message) that carries one round message
// (common/fl_round_messages.h) or secure-aggregation stage message
// (common/fl_secagg_messages.h) per frame, and its Cap'n Proto *packed* encoding
// (common/federated.capnp). Limits and the protocol version: common/fl_protocol.h.
//
// Nothing outside the federated codecs (common/fl_*.cc, federated/checkpoint_format.cc)
// touches Cap'n Proto builders or readers. As in common/inference_wire.h, decoders treat every byte
// as hostile: explicit traversal/nesting limits, size limits checked before copying, version check,
// enum values checked, every tensor validated with ValidateTensor, and the rules of ValidateMessage
// below. They never throw or abort and accept input at any alignment. libtorch-free (converting to
// torch tensors is federated/'s job). All functions are thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "common/fl_protocol.h"
#include "common/fl_round_messages.h"
#include "common/fl_secagg_messages.h"
#include "common/status.h"

namespace cleave::wire::fl {

using MessageBody =
    std::variant<Register, RegisterReply, RoundConfig, Update, UpdateAck, Heartbeat, Wait, Bye,
                 SecAggKeys, SecAggKeyDirectory, SecAggShareKeys, SecAggForwardedShares,
                 SecAggMaskedInput, SecAggUnmaskRequest, SecAggUnmaskShares>;

// The envelope: one per frame on the federated socket.
struct Message {
  uint16_t protocol_version = kProtocolVersion;
  MessageBody body;

  Message() = default;
  // Wraps any body type at the current protocol version: EncodeMessage(Heartbeat{...}).
  template <typename T, typename = std::enable_if_t<std::is_constructible_v<MessageBody, T&&> &&
                                                    !std::is_same_v<std::decay_t<T>, Message>>>
  Message(T&& b) : body(std::forward<T>(b)) {}  // NOLINT: implicit by design
};

// "register", "register_reply", "round_config", "update", "update_ack", "heartbeat", "wait",
// "bye", "secagg_keys", "secagg_key_directory", "secagg_share_keys", "secagg_forwarded_shares",
// "secagg_masked_input", "secagg_unmask_request", "secagg_unmask_shares": the body's kind, for
// logs and metric labels.
const char* MessageKindName(const MessageBody& body);

// Every rule the decoder enforces, for a message built locally (encoders do not validate, so
// a sender can check before sending). InvalidArgument naming the field; VersionMismatch when
// protocol_version != kProtocolVersion.
Status ValidateMessage(const Message& message);

// Cap'n Proto packed encoding, a single segment. Does not validate: a message that breaks the
// rules encodes fine and is rejected by the peer's decoder. Size precondition: every tensor
// and text well below 512 MiB.
std::string EncodeMessage(const Message& message);

// Decodes and validates (ValidateMessage). InvalidArgument for malformed, oversized or
// inconsistent input (message names the field), VersionMismatch for another protocol
// version (checked before the body is read), ResourceExhausted if memory runs out.
// Memory use is bounded by a small multiple of kMaxMessageBytes whatever the input.
Result<Message> DecodeMessage(std::string_view bytes);

}  // namespace cleave::wire::fl
