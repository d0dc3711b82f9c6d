#include "common/fl_wire.h"

#include <capnp/message.h>

#include <iterator>

#include "common/capnp_io.h"
#include "common/federated.capnp.h"
#include "common/fl_wire_internal.h"

namespace cleave::wire::fl {
namespace {

using capnp_io::WritePacked;
using internal::BodyWords;
using internal::Check;
using internal::FlMessage;
using internal::ReadBody;
using internal::WithPackedReader;
using internal::WriteBody;

template <typename Body, typename Reader>
Result<Message> Wrap(uint16_t version, Reader in) {
  Message out;
  out.protocol_version = version;
  if constexpr (std::is_same_v<decltype(ReadBody(in)), Body>) {
    out.body = ReadBody(in);
  } else {
    CLEAVE_ASSIGN_OR_RETURN(Body body, ReadBody(in));
    out.body = std::move(body);
  }
  return out;
}

Result<Message> ReadMessage(FlMessage::Reader in) {
  const uint16_t version = in.getProtocolVersion();
  CLEAVE_RETURN_IF_ERROR(
      capnp_io::CheckVersion(version, kProtocolVersion, "federated message", "version"));
  const auto body = in.getBody();
  const auto kind = body.which();
  Result<Message> out = Status::Internal("unset");
  switch (kind) {
    case FlMessage::Body::REGISTER: out = Wrap<Register>(version, body.getRegister()); break;
    case FlMessage::Body::REGISTER_REPLY:
      out = Wrap<RegisterReply>(version, body.getRegisterReply());
      break;
    case FlMessage::Body::ROUND_CONFIG:
      out = Wrap<RoundConfig>(version, body.getRoundConfig());
      break;
    case FlMessage::Body::UPDATE: out = Wrap<Update>(version, body.getUpdate()); break;
    case FlMessage::Body::UPDATE_ACK: out = Wrap<UpdateAck>(version, body.getUpdateAck()); break;
    case FlMessage::Body::HEARTBEAT: out = Wrap<Heartbeat>(version, body.getHeartbeat()); break;
    case FlMessage::Body::WAIT: out = Wrap<Wait>(version, body.getWait()); break;
    case FlMessage::Body::BYE: out = Wrap<Bye>(version, body.getBye()); break;
    case FlMessage::Body::SEC_AGG_KEYS:
      out = Wrap<SecAggKeys>(version, body.getSecAggKeys());
      break;
    case FlMessage::Body::SEC_AGG_KEY_DIRECTORY:
      out = Wrap<SecAggKeyDirectory>(version, body.getSecAggKeyDirectory());
      break;
    case FlMessage::Body::SEC_AGG_SHARE_KEYS:
      out = Wrap<SecAggShareKeys>(version, body.getSecAggShareKeys());
      break;
    case FlMessage::Body::SEC_AGG_FORWARDED_SHARES:
      out = Wrap<SecAggForwardedShares>(version, body.getSecAggForwardedShares());
      break;
    case FlMessage::Body::SEC_AGG_MASKED_INPUT:
      out = Wrap<SecAggMaskedInput>(version, body.getSecAggMaskedInput());
      break;
    case FlMessage::Body::SEC_AGG_UNMASK_REQUEST:
      out = Wrap<SecAggUnmaskRequest>(version, body.getSecAggUnmaskRequest());
      break;
    case FlMessage::Body::SEC_AGG_UNMASK_SHARES:
      out = Wrap<SecAggUnmaskShares>(version, body.getSecAggUnmaskShares());
      break;
    default:
      return Status::InvalidArgument("unknown federated message kind " +
                                     std::to_string(static_cast<uint16_t>(kind)));
  }
  if (!out.ok()) return out;
  CLEAVE_RETURN_IF_ERROR(ValidateMessage(*out));
  return out;
}

}  // namespace

const char* MessageKindName(const MessageBody& body) {
  static constexpr const char* kNames[] = {"register",
                                           "register_reply",
                                           "round_config",
                                           "update",
                                           "update_ack",
                                           "heartbeat",
                                           "wait",
                                           "bye",
                                           "secagg_keys",
                                           "secagg_key_directory",
                                           "secagg_share_keys",
                                           "secagg_forwarded_shares",
                                           "secagg_masked_input",
                                           "secagg_unmask_request",
                                           "secagg_unmask_shares"};
  static_assert(std::size(kNames) == std::variant_size_v<MessageBody>);
  return body.valueless_by_exception() ? "invalid" : kNames[body.index()];
}

Status ValidateMessage(const Message& message) {
  CLEAVE_RETURN_IF_ERROR(capnp_io::CheckVersion(message.protocol_version, kProtocolVersion,
                                                "federated message", "version"));
  if (message.body.valueless_by_exception()) {
    return Status::InvalidArgument("federated message has no body");
  }
  return std::visit([](const auto& body) { return Check(body); }, message.body);
}

std::string EncodeMessage(const Message& message) {
  const size_t words =
      8 + std::visit([](const auto& body) { return BodyWords(body); }, message.body);
  capnp::MallocMessageBuilder builder(static_cast<unsigned>(words));
  auto root = builder.initRoot<FlMessage>();
  root.setProtocolVersion(message.protocol_version);
  auto body = root.initBody();
  std::visit([&body](const auto& b) { WriteBody(b, body); }, message.body);
  return WritePacked(builder);
}

Result<Message> DecodeMessage(std::string_view bytes) {
  return WithPackedReader<Message>(
      bytes, "federated message", kMaxMessageBytes,
      [](capnp::MessageReader& message) { return ReadMessage(message.getRoot<FlMessage>()); });
}

}  // namespace cleave::wire::fl
