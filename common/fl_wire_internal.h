// Internal to the federated codecs: the round messages (common/fl_round_messages.cc), the
// secure-aggregation stage messages (common/fl_secagg_messages.cc), their envelope
// (common/fl_wire.cc) and the checkpoint format (federated/checkpoint_format.cc); nothing else
// includes it. It holds the Cap'n Proto plumbing they share, the field rules behind
// ValidateMessage and ValidateCheckpoint, and the per-body codecs the envelope dispatches to.
// Everything here is thread-safe.
#pragma once

#include <capnp/message.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/capnp_io.h"
#include "common/federated.capnp.h"
#include "common/fl_wire.h"
#include "common/status.h"
#include "common/tensor.capnp.h"
#include "common/tensor_codec.h"

// The plain enums are cast to and from the schema enums, so their values must agree.
#define CLEAVE_SAME_ENUM(a, b) \
  static_assert(static_cast<uint16_t>(a) == static_cast<uint16_t>(b), #a " != " #b)

namespace cleave::wire::fl::internal {

using schema::FlMessage;

// ---- Cap'n Proto plumbing (the same habits as common/inference_wire.cc) ----

using capnp_io::AsData;
using capnp_io::AsText;
using capnp_io::CopyList;
using capnp_io::TensorWords;
using capnp_io::ToString;
using capnp_io::WordsFor;
using capnp_io::WritePacked;
using capnp_io::WriteTensor;

// Words a text or tensor needs, generously, so the message stays in one segment.
size_t TextWords(const std::string& text);
size_t TensorsWords(const std::vector<EncodedTensor>& tensors);

// Writes tensors[i] into out[i] for every element of `out` (sized by the caller).
void WriteTensors(const std::vector<EncodedTensor>& tensors,
                  capnp::List<schema::Tensor>::Builder out);

// capnp_io::WithPackedReader with the federated nesting limit (kMaxNestingDepth).
template <typename T, typename ReadFn>
Result<T> WithPackedReader(std::string_view bytes, const char* what, size_t max_bytes,
                           ReadFn&& read) {
  return capnp_io::WithPackedReader<T>(bytes, what, max_bytes, kMaxNestingDepth,
                                       std::forward<ReadFn>(read));
}

// ---- Field rules (shared by ValidateMessage, ValidateCheckpoint and the decoders). Each
// returns InvalidArgument naming `field` when the rule is broken. ----

// "field[i]".
std::string Indexed(const std::string& field, size_t i);

// The error for `field` holding `size` `unit`, more than `limit`.
Status TooLong(const std::string& field, size_t size, size_t limit, const char* unit);

// Names: non-empty, at most kMaxNameBytes, no control bytes (they end up in logs and file
// names).
Status CheckName(std::string_view value, const std::string& field);

// Free text (errors, reasons): any bytes, at most kMaxTextBytes.
Status CheckText(std::string_view value, const std::string& field);

// Exactly 64 lowercase hex digits.
Status CheckSha256Hex(std::string_view value, const std::string& field);

// `value` finite and within [min, max] (max exclusive when `max_exclusive`); `min_exclusive`
// likewise.
Status CheckDouble(double value, const std::string& field, double min, bool min_exclusive,
                   double max = INFINITY, bool max_exclusive = false);

// min <= value <= max.
Status CheckUint(uint64_t value, const std::string& field, uint64_t min, uint64_t max);

// 1..kMaxLayoutEntries tensors, each passing ValidateTensor.
Status CheckTensors(const std::vector<EncodedTensor>& tensors, const std::string& field);

// ---- Reading: structure only. Lengths are checked before anything is copied (a packed
// message of zeros can claim long lists cheaply); the rules above run afterwards. ----

// At most `limit` `unit` in a list of `size`.
Status CheckListLength(size_t size, size_t limit, const std::string& field, const char* unit);

// Unknown dtype values are kept; ValidateTensor rejects them with the value in the message.
Result<EncodedTensor> ReadTensor(schema::Tensor::Reader in, const std::string& field);

// At most kMaxLayoutEntries tensors, read with ReadTensor (errors name `field`[i]).
Result<std::vector<EncodedTensor>> ReadTensors(capnp::List<schema::Tensor>::Reader in,
                                               const std::string& field);

// A key of exactly kSecAggKeyBytes bytes.
Result<crypto::Key256> ReadKey(capnp::Data::Reader in, const std::string& field);

// ---- Per-body codecs, dispatched by the envelope (common/fl_wire.cc). Check: the body's
// field rules (ValidateMessage). ReadBody: structure only; the envelope validates afterwards.
// BodyWords: builder words the body needs, generously, so a message stays in one segment.
// WriteBody: sets the body's member of the FlMessage union. ----

// Round messages (common/fl_round_messages.cc).
Status Check(const Register& m);
Status Check(const RegisterReply& m);
Status Check(const RoundConfig& m);
Status Check(const Update& m);
Status Check(const UpdateAck& m);
Status Check(const Heartbeat& m);
Status Check(const Wait& m);
Status Check(const Bye& m);
Register ReadBody(schema::Register::Reader in);
RegisterReply ReadBody(schema::RegisterReply::Reader in);
Result<RoundConfig> ReadBody(schema::RoundConfig::Reader in);
Result<Update> ReadBody(schema::Update::Reader in);
UpdateAck ReadBody(schema::UpdateAck::Reader in);
Heartbeat ReadBody(schema::Heartbeat::Reader in);
Wait ReadBody(schema::Wait::Reader in);
Bye ReadBody(schema::Bye::Reader in);
size_t BodyWords(const Register& m);
size_t BodyWords(const RegisterReply& m);
size_t BodyWords(const RoundConfig& m);
size_t BodyWords(const Update& m);
size_t BodyWords(const UpdateAck& m);
size_t BodyWords(const Heartbeat& m);
size_t BodyWords(const Wait& m);
size_t BodyWords(const Bye& m);
void WriteBody(const Register& m, FlMessage::Body::Builder body);
void WriteBody(const RegisterReply& m, FlMessage::Body::Builder body);
void WriteBody(const RoundConfig& m, FlMessage::Body::Builder body);
void WriteBody(const Update& m, FlMessage::Body::Builder body);
void WriteBody(const UpdateAck& m, FlMessage::Body::Builder body);
void WriteBody(const Heartbeat& m, FlMessage::Body::Builder body);
void WriteBody(const Wait& m, FlMessage::Body::Builder body);
void WriteBody(const Bye& m, FlMessage::Body::Builder body);

// Secure-aggregation stage messages (common/fl_secagg_messages.cc).
Status Check(const SecAggKeys& m);
Status Check(const SecAggKeyDirectory& m);
Status Check(const SecAggShareKeys& m);
Status Check(const SecAggForwardedShares& m);
Status Check(const SecAggMaskedInput& m);
Status Check(const SecAggUnmaskRequest& m);
Status Check(const SecAggUnmaskShares& m);
Result<SecAggKeys> ReadBody(schema::SecAggKeys::Reader in);
Result<SecAggKeyDirectory> ReadBody(schema::SecAggKeyDirectory::Reader in);
Result<SecAggShareKeys> ReadBody(schema::SecAggShareKeys::Reader in);
Result<SecAggForwardedShares> ReadBody(schema::SecAggForwardedShares::Reader in);
Result<SecAggMaskedInput> ReadBody(schema::SecAggMaskedInput::Reader in);
Result<SecAggUnmaskRequest> ReadBody(schema::SecAggUnmaskRequest::Reader in);
Result<SecAggUnmaskShares> ReadBody(schema::SecAggUnmaskShares::Reader in);
size_t BodyWords(const SecAggKeys& m);
size_t BodyWords(const SecAggKeyDirectory& m);
size_t BodyWords(const SecAggShareKeys& m);
size_t BodyWords(const SecAggForwardedShares& m);
size_t BodyWords(const SecAggMaskedInput& m);
size_t BodyWords(const SecAggUnmaskRequest& m);
size_t BodyWords(const SecAggUnmaskShares& m);
void WriteBody(const SecAggKeys& m, FlMessage::Body::Builder body);
void WriteBody(const SecAggKeyDirectory& m, FlMessage::Body::Builder body);
void WriteBody(const SecAggShareKeys& m, FlMessage::Body::Builder body);
void WriteBody(const SecAggForwardedShares& m, FlMessage::Body::Builder body);
void WriteBody(const SecAggMaskedInput& m, FlMessage::Body::Builder body);
void WriteBody(const SecAggUnmaskRequest& m, FlMessage::Body::Builder body);
void WriteBody(const SecAggUnmaskShares& m, FlMessage::Body::Builder body);

}  // namespace cleave::wire::fl::internal
