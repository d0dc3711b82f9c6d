#include "common/fl_wire.h"

#include <capnp/message.h>
#include <capnp/serialize-packed.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iterator>
#include <new>
#include <optional>
#include <unordered_set>

#include "common/capnp_io.h"
#include "common/federated.capnp.h"
#include "common/file_util.h"
#include "common/shamir.h"
#include "common/tensor.capnp.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the checkpoint header is written with memcpy; add byte swapping for big-endian");

namespace cleave::wire::fl {
namespace {

namespace fs = std::filesystem;
using schema::FlMessage;

// The plain enums are cast to and from the schema enums, so their values must agree.
#define CLEAVE_SAME_ENUM(a, b) \
  static_assert(static_cast<uint16_t>(a) == static_cast<uint16_t>(b), #a " != " #b)
CLEAVE_SAME_ENUM(schema::TrainableSet::ALL, TrainableSet::kAll);
CLEAVE_SAME_ENUM(schema::TrainableSet::HEAD_AND_EXITS, TrainableSet::kHeadAndExits);
CLEAVE_SAME_ENUM(schema::TrainableSet::CUSTOM, TrainableSet::kCustom);
CLEAVE_SAME_ENUM(schema::UpdateAck::Reason::OK, AckReason::kOk);
CLEAVE_SAME_ENUM(schema::UpdateAck::Reason::STALE_ROUND, AckReason::kStaleRound);
CLEAVE_SAME_ENUM(schema::UpdateAck::Reason::MALFORMED, AckReason::kMalformed);
CLEAVE_SAME_ENUM(schema::UpdateAck::Reason::UNKNOWN_CLIENT, AckReason::kUnknownClient);
CLEAVE_SAME_ENUM(schema::UpdateAck::Reason::WRONG_SHAPE, AckReason::kWrongShape);
CLEAVE_SAME_ENUM(schema::UpdateAck::Reason::NON_FINITE, AckReason::kNonFinite);
CLEAVE_SAME_ENUM(schema::UpdateAck::Reason::LATE, AckReason::kLate);
CLEAVE_SAME_ENUM(schema::UpdateAck::Reason::NOT_SAMPLED, AckReason::kNotSampled);
CLEAVE_SAME_ENUM(schema::UpdateAck::Reason::DUPLICATE, AckReason::kDuplicate);
CLEAVE_SAME_ENUM(schema::UpdateAck::Reason::REJECTED, AckReason::kRejected);
CLEAVE_SAME_ENUM(schema::UpdateAck::Reason::INTERNAL, AckReason::kInternal);
CLEAVE_SAME_ENUM(schema::UpdateAck::Reason::NO_ROUND, AckReason::kNoRound);
CLEAVE_SAME_ENUM(schema::Bye::Reason::LEAVING, ByeReason::kLeaving);
CLEAVE_SAME_ENUM(schema::Bye::Reason::FINISHED, ByeReason::kFinished);
CLEAVE_SAME_ENUM(schema::Bye::Reason::SHUTTING_DOWN, ByeReason::kShuttingDown);
CLEAVE_SAME_ENUM(schema::SecAggGraph::COMPLETE, secagg::GraphKind::kComplete);
CLEAVE_SAME_ENUM(schema::SecAggGraph::HARARY, secagg::GraphKind::kHarary);
CLEAVE_SAME_ENUM(schema::Tensor::DType::FLOAT32, DType::kFloat32);
CLEAVE_SAME_ENUM(schema::Tensor::DType::UINT4, DType::kUInt4);
#undef CLEAVE_SAME_ENUM

// ---- Cap'n Proto plumbing (the same habits as common/wire.cc) ----

using capnp_io::AsData;
using capnp_io::AsText;
using capnp_io::CopyList;
using capnp_io::TensorWords;
using capnp_io::ToString;
using capnp_io::WordsFor;
using capnp_io::WritePacked;
using capnp_io::WriteTensor;

// Words a text or tensor needs, generously, so the message stays in one segment.
size_t TextWords(const std::string& text) { return WordsFor(text.size() + 1); }

size_t TensorsWords(const std::vector<EncodedTensor>& tensors) {
  size_t words = 1;
  for (const EncodedTensor& tensor : tensors) words += TensorWords(tensor);
  return words;
}

void WriteTensors(const std::vector<EncodedTensor>& tensors,
                  capnp::List<schema::Tensor>::Builder out) {
  for (unsigned i = 0; i < out.size(); ++i) WriteTensor(tensors[i], out[i]);
}

template <typename T, typename ReadFn>
Result<T> WithPackedReader(std::string_view bytes, const char* what, size_t max_bytes,
                           ReadFn&& read) {
  return capnp_io::WithPackedReader<T>(bytes, what, max_bytes, kMaxNestingDepth,
                                       std::forward<ReadFn>(read));
}

// ---- Field rules (shared by ValidateMessage, ValidateCheckpoint and the decoders) ----

std::string DoubleString(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value < 0 ? "-inf" : "inf";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", value);
  return buf;
}

std::string Indexed(const std::string& field, size_t i) {
  return field + "[" + std::to_string(i) + "]";
}

Status TooLong(const std::string& field, size_t size, size_t limit, const char* unit) {
  return Status::InvalidArgument(field + " has " + std::to_string(size) + " " + unit +
                                 ", more than the limit of " + std::to_string(limit));
}

// Names: non-empty, bounded, no control bytes (they end up in logs and file names).
Status CheckName(std::string_view value, const std::string& field) {
  if (value.empty()) return Status::InvalidArgument(field + " is empty");
  if (value.size() > kMaxNameBytes) return TooLong(field, value.size(), kMaxNameBytes, "bytes");
  for (size_t i = 0; i < value.size(); ++i) {
    const auto byte = static_cast<uint8_t>(value[i]);
    if (byte < 0x20 || byte == 0x7F) {
      return Status::InvalidArgument(field + " contains control byte " + std::to_string(byte) +
                                     " at offset " + std::to_string(i));
    }
  }
  return Status::Ok();
}

// Free text (errors, reasons): any bytes, bounded.
Status CheckText(std::string_view value, const std::string& field) {
  if (value.size() > kMaxTextBytes) return TooLong(field, value.size(), kMaxTextBytes, "bytes");
  return Status::Ok();
}

Status CheckSha256Hex(std::string_view value, const std::string& field) {
  if (value.size() != 64) {
    return Status::InvalidArgument(field + " must be 64 lowercase hex digits (SHA-256), got " +
                                   std::to_string(value.size()) + " bytes");
  }
  for (size_t i = 0; i < value.size(); ++i) {
    const char c = value[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return Status::InvalidArgument(field + " must be 64 lowercase hex digits (SHA-256), got " +
                                     "byte " + std::to_string(static_cast<uint8_t>(c)) +
                                     " at offset " + std::to_string(i));
    }
  }
  return Status::Ok();
}

// `value` finite and within [min, max] (max exclusive when `max_exclusive`); `min_exclusive`
// likewise.
Status CheckDouble(double value, const std::string& field, double min, bool min_exclusive,
                   double max = INFINITY, bool max_exclusive = false) {
  if (!std::isfinite(value)) {
    return Status::InvalidArgument(field + " = " + DoubleString(value) + " is not finite");
  }
  const bool low = min_exclusive ? !(value > min) : !(value >= min);
  const bool high = max_exclusive ? !(value < max) : !(value <= max);
  if (low || high) {
    std::string range = (min_exclusive ? "(" : "[") + DoubleString(min) + ", " +
                        (std::isinf(max) ? std::string("inf") : DoubleString(max)) +
                        (max_exclusive || std::isinf(max) ? ")" : "]");
    return Status::InvalidArgument(field + " = " + DoubleString(value) + " is outside " + range);
  }
  return Status::Ok();
}

Status CheckUint(uint64_t value, const std::string& field, uint64_t min, uint64_t max) {
  if (value >= min && value <= max) return Status::Ok();
  return Status::InvalidArgument(field + " = " + std::to_string(value) + " is outside " +
                                 std::to_string(min) + ".." + std::to_string(max));
}

Status CheckTensors(const std::vector<EncodedTensor>& tensors, const std::string& field) {
  if (tensors.empty()) return Status::InvalidArgument(field + " is empty");
  if (tensors.size() > kMaxLayoutEntries) {
    return TooLong(field, tensors.size(), kMaxLayoutEntries, "tensors");
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    CLEAVE_RETURN_IF_ERROR(ValidateTensor(tensors[i]).WithContext(Indexed(field, i)));
  }
  return Status::Ok();
}

bool KnownAckReason(AckReason reason) {
  return static_cast<uint8_t>(reason) <= static_cast<uint8_t>(AckReason::kNoRound);
}

bool KnownByeReason(ByeReason reason) {
  return static_cast<uint8_t>(reason) <= static_cast<uint8_t>(ByeReason::kShuttingDown);
}

Status Check(const Register& m) {
  CLEAVE_RETURN_IF_ERROR(ValidateClientId(m.client_id).WithContext("Register.client_id"));
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.num_examples, "Register.num_examples", 0, kMaxNumExamples));
  CLEAVE_RETURN_IF_ERROR(CheckName(m.model_name, "Register.model_name"));
  return CheckSha256Hex(m.layout_sha256, "Register.layout_sha256");
}

Status Check(const RegisterReply& m) {
  CLEAVE_RETURN_IF_ERROR(CheckText(m.error, "RegisterReply.error"));
  return CheckUint(m.poll_interval_ms, "RegisterReply.poll_interval_ms", 0, kMaxRetryAfterMs);
}

Status CheckSecureParams(const SecureParams& p);

Status CheckCompression(const UpdateCompression& c, bool secure) {
  if (static_cast<uint8_t>(c.kind) > static_cast<uint8_t>(CompressionKind::kTopK)) {
    return Status::InvalidArgument("RoundConfig.compression.kind: unknown value " +
                                   std::to_string(static_cast<unsigned>(c.kind)));
  }
  if (c.kind != CompressionKind::kTopK) return Status::Ok();
  CLEAVE_RETURN_IF_ERROR(
      CheckDouble(c.topk_fraction, "RoundConfig.compression.topk_fraction", 0, true, 1, false));
  if (secure) {
    return Status::InvalidArgument(
        "RoundConfig.compression.kind topk cannot be combined with secure aggregation");
  }
  return Status::Ok();
}

Status Check(const RoundConfig& m) {
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.round, "RoundConfig.round", 1, UINT32_MAX));
  CLEAVE_RETURN_IF_ERROR(CheckName(m.model_name, "RoundConfig.model_name"));
  CLEAVE_RETURN_IF_ERROR(CheckSha256Hex(m.layout_sha256, "RoundConfig.layout_sha256"));
  if (m.is_delta && m.base_round >= m.round) {
    return Status::InvalidArgument("RoundConfig is a delta against base_round " +
                                   std::to_string(m.base_round) + ", not before round " +
                                   std::to_string(m.round));
  }
  if (static_cast<uint8_t>(m.trainable_set) > static_cast<uint8_t>(TrainableSet::kCustom)) {
    return Status::InvalidArgument("RoundConfig.trainable_set: unknown value " +
                                   std::to_string(static_cast<unsigned>(m.trainable_set)));
  }
  // Counts first: cheap, and they bound the tensor scan below.
  if (m.weights.size() > kMaxLayoutEntries) {
    return TooLong("RoundConfig.weights", m.weights.size(), kMaxLayoutEntries, "tensors");
  }
  if (m.trainable.size() != m.weights.size()) {
    return Status::InvalidArgument("RoundConfig.trainable has " +
                                   std::to_string(m.trainable.size()) + " bits for " +
                                   std::to_string(m.weights.size()) + " weight tensors");
  }
  bool any_trainable = false;
  for (bool bit : m.trainable) any_trainable = any_trainable || bit;
  if (!m.weights.empty() && !any_trainable) {
    return Status::InvalidArgument("RoundConfig.trainable selects no entry");
  }
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.local_epochs, "RoundConfig.local_epochs", 1, kMaxLocalEpochs));
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.batch_size, "RoundConfig.batch_size", 1, kMaxBatchSize));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(m.learning_rate, "RoundConfig.learning_rate", 0, true));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(m.momentum, "RoundConfig.momentum", 0, false, 1, true));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(m.weight_decay, "RoundConfig.weight_decay", 0, false));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(m.proximal_mu, "RoundConfig.proximal_mu", 0, false));
  if (m.deadline_ms != 0 && m.time_budget_ms > m.deadline_ms) {
    return Status::InvalidArgument("RoundConfig.time_budget_ms " +
                                   std::to_string(m.time_budget_ms) + " exceeds deadline_ms " +
                                   std::to_string(m.deadline_ms));
  }
  if (m.secure) CLEAVE_RETURN_IF_ERROR(CheckSecureParams(*m.secure));
  CLEAVE_RETURN_IF_ERROR(CheckCompression(m.compression, m.secure.has_value()));
  return CheckTensors(m.weights, "RoundConfig.weights");
}

Status Check(const Update& m) {
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.round, "Update.round", 1, UINT32_MAX));
  CLEAVE_RETURN_IF_ERROR(ValidateClientId(m.client_id).WithContext("Update.client_id"));
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.num_examples, "Update.num_examples", 1, kMaxNumExamples));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(m.train_loss, "Update.train_loss", -INFINITY, false));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(m.train_seconds, "Update.train_seconds", 0, false));
  if (!m.compressed.empty()) {
    if (!m.tensors.empty() || m.is_delta) {
      return Status::InvalidArgument(
          "Update.compressed is set: Update.tensors must be empty and is_delta false");
    }
    if (m.compressed.size() > kMaxMessageBytes) {
      return TooLong("Update.compressed", m.compressed.size(), kMaxMessageBytes, "bytes");
    }
    return Status::Ok();
  }
  return CheckTensors(m.tensors, "Update.tensors");
}

Status Check(const UpdateAck& m) {
  if (!KnownAckReason(m.reason)) {
    return Status::InvalidArgument("UpdateAck.reason: unknown value " +
                                   std::to_string(static_cast<unsigned>(m.reason)));
  }
  if (m.accepted != (m.reason == AckReason::kOk)) {
    return Status::InvalidArgument(std::string("UpdateAck.accepted is ") +
                                   (m.accepted ? "true" : "false") + " but reason is " +
                                   AckReasonName(m.reason));
  }
  return CheckText(m.message, "UpdateAck.message");
}

Status Check(const Heartbeat& m) {
  return ValidateClientId(m.client_id).WithContext("Heartbeat.client_id");
}

Status Check(const Wait& m) {
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.retry_after_ms, "Wait.retry_after_ms", 1, kMaxRetryAfterMs));
  return CheckText(m.reason, "Wait.reason");
}

Status Check(const Bye& m) {
  if (!m.client_id.empty()) {
    CLEAVE_RETURN_IF_ERROR(ValidateClientId(m.client_id).WithContext("Bye.client_id"));
  }
  if (!KnownByeReason(m.reason)) {
    return Status::InvalidArgument("Bye.reason: unknown value " +
                                   std::to_string(static_cast<unsigned>(m.reason)));
  }
  return CheckText(m.message, "Bye.message");
}

// ---- Secure aggregation rules ----

// The secret a revealed share belongs to is a 32-byte key or seed.
constexpr size_t kRevealedShareElements = shamir::ElementsFor(crypto::kKeyBytes);

Status CheckIndex(uint32_t index, const std::string& field) {
  return CheckUint(index, field, 0, secagg::kMaxClients - 1);
}

Status CheckCount(size_t size, size_t limit, const std::string& field, const char* unit) {
  return size <= limit ? Status::Ok() : TooLong(field, size, limit, unit);
}

Status CheckSecureParams(const SecureParams& p) {
  const std::string field = "RoundConfig.secure";
  CLEAVE_RETURN_IF_ERROR(secagg::ValidateConfig(p.secagg).WithContext(field));
  CLEAVE_RETURN_IF_ERROR(
      CheckUint(p.secagg.vector_length, field + ".vector_length", 1, kMaxSecAggVectorWords));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(p.clip, field + ".clip", 0, true));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(p.example_scale, field + ".example_scale", 0, true));
  CLEAVE_RETURN_IF_ERROR(
      CheckUint(p.fractional_bits, field + ".fractional_bits", 0, kMaxFractionalBits));
  return CheckUint(p.client_index, field + ".client_index", 0, p.secagg.num_clients - 1);
}

Status CheckSealedShares(const std::vector<secagg::EncryptedShare>& shares,
                         const std::string& field) {
  CLEAVE_RETURN_IF_ERROR(CheckCount(shares.size(), kMaxSecAggEntries, field, "shares"));
  const size_t sealed = secagg::SealedShareBytes();
  for (size_t i = 0; i < shares.size(); ++i) {
    const std::string item = Indexed(field, i);
    CLEAVE_RETURN_IF_ERROR(CheckIndex(shares[i].sender, item + ".sender"));
    CLEAVE_RETURN_IF_ERROR(CheckIndex(shares[i].recipient, item + ".recipient"));
    if (shares[i].ciphertext.size() != sealed) {
      return Status::InvalidArgument(
          item + ".ciphertext has " + std::to_string(shares[i].ciphertext.size()) +
          " bytes; a sealed share has exactly " + std::to_string(sealed));
    }
  }
  return Status::Ok();
}

Status CheckRevealedShares(const std::vector<secagg::RevealedShare>& shares,
                           const std::string& field) {
  CLEAVE_RETURN_IF_ERROR(CheckCount(shares.size(), kMaxSecAggEntries, field, "shares"));
  for (size_t i = 0; i < shares.size(); ++i) {
    const std::string item = Indexed(field, i);
    CLEAVE_RETURN_IF_ERROR(CheckIndex(shares[i].owner, item + ".owner"));
    CLEAVE_RETURN_IF_ERROR(CheckUint(shares[i].share.x, item + ".x", 1, secagg::kMaxClients));
    const std::vector<uint64_t>& y = shares[i].share.y;
    if (y.size() != kRevealedShareElements) {
      return Status::InvalidArgument(item + ".y has " + std::to_string(y.size()) +
                                     " field elements; a share of a 32-byte secret has " +
                                     std::to_string(kRevealedShareElements));
    }
    for (size_t k = 0; k < y.size(); ++k) {
      if (y[k] >= shamir::kPrime) {
        return Status::InvalidArgument(Indexed(item + ".y", k) +
                                       " is not a field element (>= 2^61 - 1)");
      }
    }
  }
  return Status::Ok();
}

Status CheckSecAggClient(uint32_t round, const std::string& client_id, uint32_t sender,
                         const char* what) {
  const std::string name = what;
  CLEAVE_RETURN_IF_ERROR(CheckUint(round, name + ".round", 1, UINT32_MAX));
  CLEAVE_RETURN_IF_ERROR(ValidateClientId(client_id).WithContext(name + ".client_id"));
  return CheckIndex(sender, name + ".sender");
}

Status Check(const SecAggKeys& m) {
  return CheckSecAggClient(m.round, m.client_id, m.keys.sender, "SecAggKeys");
}

Status Check(const SecAggKeyDirectory& m) {
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.round, "SecAggKeyDirectory.round", 1, UINT32_MAX));
  CLEAVE_RETURN_IF_ERROR(CheckIndex(m.directory.recipient, "SecAggKeyDirectory.recipient"));
  const auto& keys = m.directory.keys;
  CLEAVE_RETURN_IF_ERROR(
      CheckCount(keys.size(), kMaxSecAggEntries, "SecAggKeyDirectory.keys", "entries"));
  for (size_t i = 0; i < keys.size(); ++i) {
    CLEAVE_RETURN_IF_ERROR(
        CheckIndex(keys[i].client, Indexed("SecAggKeyDirectory.keys", i) + ".client"));
  }
  return Status::Ok();
}

Status Check(const SecAggShareKeys& m) {
  CLEAVE_RETURN_IF_ERROR(
      CheckSecAggClient(m.round, m.client_id, m.shares.sender, "SecAggShareKeys"));
  return CheckSealedShares(m.shares.shares, "SecAggShareKeys.shares");
}

Status Check(const SecAggForwardedShares& m) {
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.round, "SecAggForwardedShares.round", 1, UINT32_MAX));
  CLEAVE_RETURN_IF_ERROR(CheckIndex(m.forwarded.recipient, "SecAggForwardedShares.recipient"));
  return CheckSealedShares(m.forwarded.shares, "SecAggForwardedShares.shares");
}

Status Check(const SecAggMaskedInput& m) {
  CLEAVE_RETURN_IF_ERROR(
      CheckSecAggClient(m.round, m.client_id, m.input.sender, "SecAggMaskedInput"));
  if (m.input.masked.empty()) return Status::InvalidArgument("SecAggMaskedInput.masked is empty");
  return CheckCount(m.input.masked.size(), kMaxSecAggVectorWords, "SecAggMaskedInput.masked",
                    "words");
}

Status Check(const SecAggUnmaskRequest& m) {
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.round, "SecAggUnmaskRequest.round", 1, UINT32_MAX));
  const auto& survivors = m.request.survivors;
  CLEAVE_RETURN_IF_ERROR(
      CheckCount(survivors.size(), kMaxSecAggEntries, "SecAggUnmaskRequest.survivors", "entries"));
  for (size_t i = 0; i < survivors.size(); ++i) {
    const std::string item = Indexed("SecAggUnmaskRequest.survivors", i);
    CLEAVE_RETURN_IF_ERROR(CheckIndex(survivors[i], item));
    if (i > 0 && survivors[i] <= survivors[i - 1]) {
      return Status::InvalidArgument(item + " = " + std::to_string(survivors[i]) +
                                     " does not increase strictly");
    }
  }
  return Status::Ok();
}

Status Check(const SecAggUnmaskShares& m) {
  CLEAVE_RETURN_IF_ERROR(
      CheckSecAggClient(m.round, m.client_id, m.shares.sender, "SecAggUnmaskShares"));
  CLEAVE_RETURN_IF_ERROR(
      CheckRevealedShares(m.shares.self_mask_shares, "SecAggUnmaskShares.self_mask_shares"));
  return CheckRevealedShares(m.shares.mask_key_shares, "SecAggUnmaskShares.mask_key_shares");
}

// ---- Reading: structure only. Lengths are checked before anything is copied (a packed
// message of zeros can claim long lists cheaply); the rules above run afterwards. ----

Status CheckListLength(size_t size, size_t limit, const std::string& field, const char* unit) {
  return size <= limit ? Status::Ok() : TooLong(field, size, limit, unit);
}

// Unknown dtype values are kept; ValidateTensor rejects them with the value in the message.
Result<EncodedTensor> ReadTensor(schema::Tensor::Reader in, const std::string& field) {
  return capnp_io::ReadTensorFields(in, field);
}

Result<std::vector<EncodedTensor>> ReadTensors(capnp::List<schema::Tensor>::Reader in,
                                               const std::string& field) {
  CLEAVE_RETURN_IF_ERROR(CheckListLength(in.size(), kMaxLayoutEntries, field, "tensors"));
  std::vector<EncodedTensor> out;
  out.reserve(in.size());
  for (unsigned i = 0; i < in.size(); ++i) {
    CLEAVE_ASSIGN_OR_RETURN(EncodedTensor tensor, ReadTensor(in[i], Indexed(field, i)));
    out.push_back(std::move(tensor));
  }
  return out;
}

Register ReadBody(schema::Register::Reader in) {
  Register out;
  out.client_id = ToString(in.getClientId());
  out.num_examples = in.getNumExamples();
  const auto caps = in.getCapabilities();
  out.capabilities.can_train_full = caps.getCanTrainFull();
  out.capabilities.can_train_head = caps.getCanTrainHead();
  out.capabilities.max_steps = caps.getMaxSteps();
  out.capabilities.accepts_delta = caps.getAcceptsDelta();
  out.model_name = ToString(in.getModelName());
  out.layout_sha256 = ToString(in.getLayoutSha256());
  return out;
}

RegisterReply ReadBody(schema::RegisterReply::Reader in) {
  RegisterReply out;
  out.accepted = in.getAccepted();
  out.error = ToString(in.getError());
  out.round = in.getRound();
  out.poll_interval_ms = in.getPollIntervalMs();
  return out;
}

Result<SecureParams> ReadSecureParams(schema::SecureRoundParams::Reader in);

Result<RoundConfig> ReadBody(schema::RoundConfig::Reader in) {
  RoundConfig out;
  out.round = in.getRound();
  out.model_name = ToString(in.getModelName());
  out.layout_sha256 = ToString(in.getLayoutSha256());
  CLEAVE_ASSIGN_OR_RETURN(out.weights, ReadTensors(in.getWeights(), "RoundConfig.weights"));
  out.is_delta = in.getIsDelta();
  out.base_round = in.getBaseRound();
  out.trainable_set = static_cast<TrainableSet>(in.getTrainableSet());
  const auto trainable = in.getTrainable();
  CLEAVE_RETURN_IF_ERROR(
      CheckListLength(trainable.size(), kMaxLayoutEntries, "RoundConfig.trainable", "bits"));
  CopyList(trainable, &out.trainable);
  out.local_epochs = in.getLocalEpochs();
  out.batch_size = in.getBatchSize();
  out.learning_rate = in.getLearningRate();
  out.momentum = in.getMomentum();
  out.weight_decay = in.getWeightDecay();
  out.proximal_mu = in.getProximalMu();
  out.max_steps = in.getMaxSteps();
  out.deadline_ms = in.getDeadlineMs();
  out.time_budget_ms = in.getTimeBudgetMs();
  out.seed = in.getSeed();
  if (in.hasSecure()) {
    CLEAVE_ASSIGN_OR_RETURN(SecureParams secure, ReadSecureParams(in.getSecure()));
    out.secure = std::move(secure);
  }
  if (in.hasCompression()) {
    const auto compression = in.getCompression();
    // Values above 255 must not wrap onto a known kind.
    const auto kind = static_cast<uint16_t>(compression.getKind());
    out.compression.kind = static_cast<CompressionKind>(kind > 255 ? 255 : kind);
    out.compression.topk_fraction = compression.getTopkFraction();
    out.compression.error_feedback = compression.getErrorFeedback();
  }
  return out;
}

Result<Update> ReadBody(schema::Update::Reader in) {
  Update out;
  out.round = in.getRound();
  out.client_id = ToString(in.getClientId());
  out.num_examples = in.getNumExamples();
  out.train_loss = in.getTrainLoss();
  CLEAVE_ASSIGN_OR_RETURN(out.tensors, ReadTensors(in.getTensors(), "Update.tensors"));
  out.is_delta = in.getIsDelta();
  out.train_seconds = in.getTrainSeconds();
  out.steps = in.getSteps();
  if (in.hasCompressed()) {
    const capnp::Data::Reader compressed = in.getCompressed();
    out.compressed.assign(reinterpret_cast<const char*>(compressed.begin()), compressed.size());
  }
  return out;
}

UpdateAck ReadBody(schema::UpdateAck::Reader in) {
  UpdateAck out;
  out.round = in.getRound();
  out.accepted = in.getAccepted();
  // Values above 255 must not wrap onto a known reason.
  const auto reason = static_cast<uint16_t>(in.getReason());
  out.reason = static_cast<AckReason>(reason > 255 ? 255 : reason);
  out.message = ToString(in.getMessage());
  return out;
}

Heartbeat ReadBody(schema::Heartbeat::Reader in) {
  Heartbeat out;
  out.client_id = ToString(in.getClientId());
  out.training_round = in.getTrainingRound();
  out.has_global = in.getHasGlobal();
  out.global_round = in.getGlobalRound();
  return out;
}

Wait ReadBody(schema::Wait::Reader in) {
  Wait out;
  out.round = in.getRound();
  out.retry_after_ms = in.getRetryAfterMs();
  out.reason = ToString(in.getReason());
  return out;
}

Bye ReadBody(schema::Bye::Reader in) {
  Bye out;
  out.client_id = ToString(in.getClientId());
  const auto reason = static_cast<uint16_t>(in.getReason());
  out.reason = static_cast<ByeReason>(reason > 255 ? 255 : reason);
  out.message = ToString(in.getMessage());
  return out;
}

// ---- Reading: secure aggregation ----

Result<crypto::Key256> ReadKey(capnp::Data::Reader in, const std::string& field) {
  if (in.size() != kSecAggKeyBytes) {
    return Status::InvalidArgument(field + " has " + std::to_string(in.size()) +
                                   " bytes; a key has exactly " + std::to_string(kSecAggKeyBytes));
  }
  crypto::Key256 key;
  std::memcpy(key.data(), in.begin(), key.size());
  return key;
}

Result<SecureParams> ReadSecureParams(schema::SecureRoundParams::Reader in) {
  SecureParams out;
  out.secagg.round_id = in.getRoundId();
  out.secagg.num_clients = in.getNumClients();
  out.secagg.threshold = in.getThreshold();
  out.secagg.vector_length = in.getVectorLength();
  const auto graph = static_cast<uint16_t>(in.getGraph());
  if (graph > static_cast<uint16_t>(secagg::GraphKind::kHarary)) {
    return Status::InvalidArgument("RoundConfig.secure.graph: unknown value " +
                                   std::to_string(graph));
  }
  out.secagg.graph = static_cast<secagg::GraphKind>(graph);
  out.secagg.degree = in.getDegree();
  CLEAVE_ASSIGN_OR_RETURN(out.secagg.graph_seed,
                          ReadKey(in.getGraphSeed(), "RoundConfig.secure.graph_seed"));
  out.clip = in.getClip();
  out.fractional_bits = in.getFractionalBits();
  out.example_scale = in.getExampleScale();
  out.client_index = in.getClientIndex();
  return out;
}

Result<std::vector<secagg::EncryptedShare>> ReadSealedShares(
    capnp::List<schema::SecAggEncryptedShare>::Reader in, const std::string& field) {
  CLEAVE_RETURN_IF_ERROR(CheckListLength(in.size(), kMaxSecAggEntries, field, "shares"));
  const size_t sealed = secagg::SealedShareBytes();
  std::vector<secagg::EncryptedShare> out;
  out.reserve(in.size());
  for (unsigned i = 0; i < in.size(); ++i) {
    secagg::EncryptedShare share;
    share.sender = in[i].getSender();
    share.recipient = in[i].getRecipient();
    const auto ciphertext = in[i].getCiphertext();
    if (ciphertext.size() != sealed) {
      return Status::InvalidArgument(
          Indexed(field, i) + ".ciphertext has " + std::to_string(ciphertext.size()) +
          " bytes; a sealed share has exactly " + std::to_string(sealed));
    }
    share.ciphertext.assign(ciphertext.begin(), ciphertext.end());
    out.push_back(std::move(share));
  }
  return out;
}

Result<std::vector<secagg::RevealedShare>> ReadRevealedShares(
    capnp::List<schema::SecAggRevealedShare>::Reader in, const std::string& field) {
  CLEAVE_RETURN_IF_ERROR(CheckListLength(in.size(), kMaxSecAggEntries, field, "shares"));
  std::vector<secagg::RevealedShare> out;
  out.reserve(in.size());
  for (unsigned i = 0; i < in.size(); ++i) {
    secagg::RevealedShare share;
    share.owner = in[i].getOwner();
    share.share.x = in[i].getX();
    const auto y = in[i].getY();
    CLEAVE_RETURN_IF_ERROR(
        CheckListLength(y.size(), kRevealedShareElements, Indexed(field, i) + ".y", "elements"));
    CopyList(y, &share.share.y);
    out.push_back(std::move(share));
  }
  return out;
}

Result<SecAggKeys> ReadBody(schema::SecAggKeys::Reader in) {
  SecAggKeys out;
  out.round = in.getRound();
  out.client_id = ToString(in.getClientId());
  out.keys.round_id = in.getRoundId();
  out.keys.sender = in.getSender();
  CLEAVE_ASSIGN_OR_RETURN(out.keys.cipher_public_key,
                          ReadKey(in.getCipherPublicKey(), "SecAggKeys.cipher_public_key"));
  CLEAVE_ASSIGN_OR_RETURN(out.keys.mask_public_key,
                          ReadKey(in.getMaskPublicKey(), "SecAggKeys.mask_public_key"));
  return out;
}

Result<SecAggKeyDirectory> ReadBody(schema::SecAggKeyDirectory::Reader in) {
  SecAggKeyDirectory out;
  out.round = in.getRound();
  out.directory.round_id = in.getRoundId();
  out.directory.recipient = in.getRecipient();
  const auto keys = in.getKeys();
  CLEAVE_RETURN_IF_ERROR(
      CheckListLength(keys.size(), kMaxSecAggEntries, "SecAggKeyDirectory.keys", "entries"));
  out.directory.keys.reserve(keys.size());
  for (unsigned i = 0; i < keys.size(); ++i) {
    const std::string field = Indexed("SecAggKeyDirectory.keys", i);
    secagg::PublicKeys entry;
    entry.client = keys[i].getClient();
    CLEAVE_ASSIGN_OR_RETURN(entry.cipher_public_key,
                            ReadKey(keys[i].getCipherPublicKey(), field + ".cipher_public_key"));
    CLEAVE_ASSIGN_OR_RETURN(entry.mask_public_key,
                            ReadKey(keys[i].getMaskPublicKey(), field + ".mask_public_key"));
    out.directory.keys.push_back(entry);
  }
  return out;
}

Result<SecAggShareKeys> ReadBody(schema::SecAggShareKeys::Reader in) {
  SecAggShareKeys out;
  out.round = in.getRound();
  out.client_id = ToString(in.getClientId());
  out.shares.round_id = in.getRoundId();
  out.shares.sender = in.getSender();
  CLEAVE_ASSIGN_OR_RETURN(out.shares.shares,
                          ReadSealedShares(in.getShares(), "SecAggShareKeys.shares"));
  return out;
}

Result<SecAggForwardedShares> ReadBody(schema::SecAggForwardedShares::Reader in) {
  SecAggForwardedShares out;
  out.round = in.getRound();
  out.forwarded.round_id = in.getRoundId();
  out.forwarded.recipient = in.getRecipient();
  CLEAVE_ASSIGN_OR_RETURN(out.forwarded.shares,
                          ReadSealedShares(in.getShares(), "SecAggForwardedShares.shares"));
  return out;
}

Result<SecAggMaskedInput> ReadBody(schema::SecAggMaskedInput::Reader in) {
  SecAggMaskedInput out;
  out.round = in.getRound();
  out.client_id = ToString(in.getClientId());
  out.input.round_id = in.getRoundId();
  out.input.sender = in.getSender();
  const auto masked = in.getMasked();
  CLEAVE_RETURN_IF_ERROR(
      CheckListLength(masked.size(), kMaxSecAggVectorWords, "SecAggMaskedInput.masked", "words"));
  CopyList(masked, &out.input.masked);
  return out;
}

Result<SecAggUnmaskRequest> ReadBody(schema::SecAggUnmaskRequest::Reader in) {
  SecAggUnmaskRequest out;
  out.round = in.getRound();
  out.request.round_id = in.getRoundId();
  const auto survivors = in.getSurvivors();
  CLEAVE_RETURN_IF_ERROR(CheckListLength(survivors.size(), kMaxSecAggEntries,
                                         "SecAggUnmaskRequest.survivors", "entries"));
  CopyList(survivors, &out.request.survivors);
  return out;
}

Result<SecAggUnmaskShares> ReadBody(schema::SecAggUnmaskShares::Reader in) {
  SecAggUnmaskShares out;
  out.round = in.getRound();
  out.client_id = ToString(in.getClientId());
  out.shares.round_id = in.getRoundId();
  out.shares.sender = in.getSender();
  CLEAVE_ASSIGN_OR_RETURN(
      out.shares.self_mask_shares,
      ReadRevealedShares(in.getSelfMaskShares(), "SecAggUnmaskShares.self_mask_shares"));
  CLEAVE_ASSIGN_OR_RETURN(
      out.shares.mask_key_shares,
      ReadRevealedShares(in.getMaskKeyShares(), "SecAggUnmaskShares.mask_key_shares"));
  return out;
}

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

// ---- Writing ----

size_t BodyWords(const Register& m) {
  return 8 + TextWords(m.client_id) + TextWords(m.model_name) + TextWords(m.layout_sha256);
}
size_t BodyWords(const RegisterReply& m) { return 4 + TextWords(m.error); }
size_t BodyWords(const RoundConfig& m) {
  return 16 + TextWords(m.model_name) + TextWords(m.layout_sha256) + TensorsWords(m.weights) +
         WordsFor((m.trainable.size() + 7) / 8) + (m.secure ? 16 : 0) + 4;
}
constexpr size_t kKeyWords = 1 + kSecAggKeyBytes / 8;
size_t SealedWords(const std::vector<secagg::EncryptedShare>& shares) {
  size_t words = 1;
  for (const auto& s : shares) words += 3 + WordsFor(s.ciphertext.size());
  return words;
}
size_t RevealedWords(const std::vector<secagg::RevealedShare>& shares) {
  size_t words = 1;
  for (const auto& s : shares) words += 4 + s.share.y.size();
  return words;
}
size_t BodyWords(const SecAggKeys& m) { return 8 + TextWords(m.client_id) + 2 * kKeyWords; }
size_t BodyWords(const SecAggKeyDirectory& m) {
  return 8 + m.directory.keys.size() * (2 + 2 * kKeyWords);
}
size_t BodyWords(const SecAggShareKeys& m) {
  return 8 + TextWords(m.client_id) + SealedWords(m.shares.shares);
}
size_t BodyWords(const SecAggForwardedShares& m) { return 8 + SealedWords(m.forwarded.shares); }
size_t BodyWords(const SecAggMaskedInput& m) {
  return 8 + TextWords(m.client_id) + WordsFor(m.input.masked.size() * 4);
}
size_t BodyWords(const SecAggUnmaskRequest& m) {
  return 8 + WordsFor(m.request.survivors.size() * 4);
}
size_t BodyWords(const SecAggUnmaskShares& m) {
  return 8 + TextWords(m.client_id) + RevealedWords(m.shares.self_mask_shares) +
         RevealedWords(m.shares.mask_key_shares);
}
size_t BodyWords(const Update& m) {
  return 8 + TextWords(m.client_id) + TensorsWords(m.tensors) + WordsFor(m.compressed.size());
}
size_t BodyWords(const UpdateAck& m) { return 4 + TextWords(m.message); }
size_t BodyWords(const Heartbeat& m) { return 4 + TextWords(m.client_id); }
size_t BodyWords(const Wait& m) { return 4 + TextWords(m.reason); }
size_t BodyWords(const Bye& m) { return 4 + TextWords(m.client_id) + TextWords(m.message); }

void WriteBody(const Register& m, FlMessage::Body::Builder body) {
  auto out = body.initRegister();
  out.setClientId(AsText(m.client_id));
  out.setNumExamples(m.num_examples);
  auto caps = out.initCapabilities();
  caps.setCanTrainFull(m.capabilities.can_train_full);
  caps.setCanTrainHead(m.capabilities.can_train_head);
  caps.setMaxSteps(m.capabilities.max_steps);
  caps.setAcceptsDelta(m.capabilities.accepts_delta);
  out.setModelName(AsText(m.model_name));
  out.setLayoutSha256(AsText(m.layout_sha256));
}

void WriteBody(const RegisterReply& m, FlMessage::Body::Builder body) {
  auto out = body.initRegisterReply();
  out.setAccepted(m.accepted);
  if (!m.error.empty()) out.setError(AsText(m.error));
  out.setRound(m.round);
  out.setPollIntervalMs(m.poll_interval_ms);
}

void WriteBody(const RoundConfig& m, FlMessage::Body::Builder body) {
  auto out = body.initRoundConfig();
  out.setRound(m.round);
  out.setModelName(AsText(m.model_name));
  out.setLayoutSha256(AsText(m.layout_sha256));
  WriteTensors(m.weights, out.initWeights(static_cast<unsigned>(m.weights.size())));
  out.setIsDelta(m.is_delta);
  out.setBaseRound(m.base_round);
  out.setTrainableSet(static_cast<schema::TrainableSet>(m.trainable_set));
  auto trainable = out.initTrainable(static_cast<unsigned>(m.trainable.size()));
  for (unsigned i = 0; i < trainable.size(); ++i) trainable.set(i, m.trainable[i]);
  out.setLocalEpochs(m.local_epochs);
  out.setBatchSize(m.batch_size);
  out.setLearningRate(m.learning_rate);
  out.setMomentum(m.momentum);
  out.setWeightDecay(m.weight_decay);
  out.setProximalMu(m.proximal_mu);
  out.setMaxSteps(m.max_steps);
  out.setDeadlineMs(m.deadline_ms);
  out.setTimeBudgetMs(m.time_budget_ms);
  out.setSeed(m.seed);
  if (m.secure) {
    const SecureParams& p = *m.secure;
    auto secure = out.initSecure();
    secure.setRoundId(p.secagg.round_id);
    secure.setNumClients(p.secagg.num_clients);
    secure.setThreshold(p.secagg.threshold);
    secure.setVectorLength(p.secagg.vector_length);
    secure.setGraph(static_cast<schema::SecAggGraph>(p.secagg.graph));
    secure.setDegree(p.secagg.degree);
    secure.setGraphSeed(
        capnp::Data::Reader(p.secagg.graph_seed.data(), p.secagg.graph_seed.size()));
    secure.setClip(p.clip);
    secure.setFractionalBits(p.fractional_bits);
    secure.setExampleScale(p.example_scale);
    secure.setClientIndex(p.client_index);
  }
  if (m.compression.kind != CompressionKind::kNone) {
    auto compression = out.initCompression();
    compression.setKind(static_cast<schema::CompressionKind>(m.compression.kind));
    compression.setTopkFraction(m.compression.topk_fraction);
    compression.setErrorFeedback(m.compression.error_feedback);
  }
}

void WriteBody(const Update& m, FlMessage::Body::Builder body) {
  auto out = body.initUpdate();
  out.setRound(m.round);
  out.setClientId(AsText(m.client_id));
  out.setNumExamples(m.num_examples);
  out.setTrainLoss(m.train_loss);
  WriteTensors(m.tensors, out.initTensors(static_cast<unsigned>(m.tensors.size())));
  out.setIsDelta(m.is_delta);
  out.setTrainSeconds(m.train_seconds);
  out.setSteps(m.steps);
  if (!m.compressed.empty()) {
    out.setCompressed(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(m.compressed.data()),
                                          m.compressed.size()));
  }
}

void WriteBody(const UpdateAck& m, FlMessage::Body::Builder body) {
  auto out = body.initUpdateAck();
  out.setRound(m.round);
  out.setAccepted(m.accepted);
  out.setReason(static_cast<schema::UpdateAck::Reason>(m.reason));
  if (!m.message.empty()) out.setMessage(AsText(m.message));
}

void WriteBody(const Heartbeat& m, FlMessage::Body::Builder body) {
  auto out = body.initHeartbeat();
  out.setClientId(AsText(m.client_id));
  out.setTrainingRound(m.training_round);
  out.setHasGlobal(m.has_global);
  out.setGlobalRound(m.global_round);
}

void WriteBody(const Wait& m, FlMessage::Body::Builder body) {
  auto out = body.initWait();
  out.setRound(m.round);
  out.setRetryAfterMs(m.retry_after_ms);
  if (!m.reason.empty()) out.setReason(AsText(m.reason));
}

void WriteBody(const Bye& m, FlMessage::Body::Builder body) {
  auto out = body.initBye();
  if (!m.client_id.empty()) out.setClientId(AsText(m.client_id));
  out.setReason(static_cast<schema::Bye::Reason>(m.reason));
  if (!m.message.empty()) out.setMessage(AsText(m.message));
}

capnp::Data::Reader KeyData(const crypto::Key256& key) {
  return capnp::Data::Reader(key.data(), key.size());
}

void WriteSealedShares(const std::vector<secagg::EncryptedShare>& shares,
                       capnp::List<schema::SecAggEncryptedShare>::Builder out) {
  for (unsigned i = 0; i < out.size(); ++i) {
    out[i].setSender(shares[i].sender);
    out[i].setRecipient(shares[i].recipient);
    out[i].setCiphertext(
        capnp::Data::Reader(shares[i].ciphertext.data(), shares[i].ciphertext.size()));
  }
}

void WriteRevealedShares(const std::vector<secagg::RevealedShare>& shares,
                         capnp::List<schema::SecAggRevealedShare>::Builder out) {
  for (unsigned i = 0; i < out.size(); ++i) {
    out[i].setOwner(shares[i].owner);
    out[i].setX(shares[i].share.x);
    auto y = out[i].initY(static_cast<unsigned>(shares[i].share.y.size()));
    for (unsigned k = 0; k < y.size(); ++k) y.set(k, shares[i].share.y[k]);
  }
}

void WriteBody(const SecAggKeys& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggKeys();
  out.setRound(m.round);
  out.setClientId(AsText(m.client_id));
  out.setRoundId(m.keys.round_id);
  out.setSender(m.keys.sender);
  out.setCipherPublicKey(KeyData(m.keys.cipher_public_key));
  out.setMaskPublicKey(KeyData(m.keys.mask_public_key));
}

void WriteBody(const SecAggKeyDirectory& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggKeyDirectory();
  out.setRound(m.round);
  out.setRoundId(m.directory.round_id);
  out.setRecipient(m.directory.recipient);
  auto keys = out.initKeys(static_cast<unsigned>(m.directory.keys.size()));
  for (unsigned i = 0; i < keys.size(); ++i) {
    keys[i].setClient(m.directory.keys[i].client);
    keys[i].setCipherPublicKey(KeyData(m.directory.keys[i].cipher_public_key));
    keys[i].setMaskPublicKey(KeyData(m.directory.keys[i].mask_public_key));
  }
}

void WriteBody(const SecAggShareKeys& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggShareKeys();
  out.setRound(m.round);
  out.setClientId(AsText(m.client_id));
  out.setRoundId(m.shares.round_id);
  out.setSender(m.shares.sender);
  WriteSealedShares(m.shares.shares, out.initShares(static_cast<unsigned>(m.shares.shares.size())));
}

void WriteBody(const SecAggForwardedShares& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggForwardedShares();
  out.setRound(m.round);
  out.setRoundId(m.forwarded.round_id);
  out.setRecipient(m.forwarded.recipient);
  WriteSealedShares(m.forwarded.shares,
                    out.initShares(static_cast<unsigned>(m.forwarded.shares.size())));
}

void WriteBody(const SecAggMaskedInput& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggMaskedInput();
  out.setRound(m.round);
  out.setClientId(AsText(m.client_id));
  out.setRoundId(m.input.round_id);
  out.setSender(m.input.sender);
  auto masked = out.initMasked(static_cast<unsigned>(m.input.masked.size()));
  for (unsigned i = 0; i < masked.size(); ++i) masked.set(i, m.input.masked[i]);
}

void WriteBody(const SecAggUnmaskRequest& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggUnmaskRequest();
  out.setRound(m.round);
  out.setRoundId(m.request.round_id);
  auto survivors = out.initSurvivors(static_cast<unsigned>(m.request.survivors.size()));
  for (unsigned i = 0; i < survivors.size(); ++i) survivors.set(i, m.request.survivors[i]);
}

void WriteBody(const SecAggUnmaskShares& m, FlMessage::Body::Builder body) {
  auto out = body.initSecAggUnmaskShares();
  out.setRound(m.round);
  out.setClientId(AsText(m.client_id));
  out.setRoundId(m.shares.round_id);
  out.setSender(m.shares.sender);
  WriteRevealedShares(
      m.shares.self_mask_shares,
      out.initSelfMaskShares(static_cast<unsigned>(m.shares.self_mask_shares.size())));
  WriteRevealedShares(
      m.shares.mask_key_shares,
      out.initMaskKeyShares(static_cast<unsigned>(m.shares.mask_key_shares.size())));
}

}  // namespace

const char* AckReasonName(AckReason reason) {
  switch (reason) {
    case AckReason::kOk: return "ok";
    case AckReason::kStaleRound: return "stale_round";
    case AckReason::kMalformed: return "malformed";
    case AckReason::kUnknownClient: return "unknown_client";
    case AckReason::kWrongShape: return "wrong_shape";
    case AckReason::kNonFinite: return "non_finite";
    case AckReason::kLate: return "late";
    case AckReason::kNotSampled: return "not_sampled";
    case AckReason::kDuplicate: return "duplicate";
    case AckReason::kRejected: return "rejected";
    case AckReason::kInternal: return "internal";
    case AckReason::kNoRound: return "no_round";
    default: return "unknown";
  }
}

UpdateAck MakeUpdateAck(uint32_t round, AckReason reason, std::string message) {
  return UpdateAck{round, reason == AckReason::kOk, reason, std::move(message)};
}

const char* ByeReasonName(ByeReason reason) {
  switch (reason) {
    case ByeReason::kLeaving: return "leaving";
    case ByeReason::kFinished: return "finished";
    case ByeReason::kShuttingDown: return "shutting_down";
    default: return "unknown";
  }
}

const char* CompressionKindName(CompressionKind kind) {
  switch (kind) {
    case CompressionKind::kNone: return "none";
    case CompressionKind::kInt8: return "int8";
    case CompressionKind::kTopK: return "topk";
    default: return "unknown";
  }
}

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

Status ValidateClientId(std::string_view client_id) {
  if (client_id.empty()) return Status::InvalidArgument("client id is empty");
  if (client_id.size() > kMaxClientIdBytes) {
    return TooLong("client id", client_id.size(), kMaxClientIdBytes, "bytes");
  }
  for (size_t i = 0; i < client_id.size(); ++i) {
    const char c = client_id[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    const bool punct = c == '.' || c == '_' || c == ':' || c == '@' || c == '-';
    if (!alnum && !(punct && i > 0)) {
      return Status::InvalidArgument(
          "client id may use only [A-Za-z0-9._:@-] and must start with a letter or digit; byte " +
          std::to_string(static_cast<uint8_t>(c)) + " at offset " + std::to_string(i));
    }
  }
  return Status::Ok();
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

// ---- Checkpoint ----

namespace {

Result<CheckpointData> ReadCheckpoint(schema::Checkpoint::Reader in) {
  CheckpointData out;
  out.format_version = in.getFormatVersion();
  CLEAVE_RETURN_IF_ERROR(capnp_io::CheckVersion(out.format_version, kCheckpointFormatVersion,
                                                "checkpoint payload", "version"));
  out.round = in.getRound();
  out.model_name = ToString(in.getModelName());
  const auto layout = in.getLayout();
  CLEAVE_RETURN_IF_ERROR(
      CheckListLength(layout.size(), kMaxLayoutEntries, "checkpoint layout", "entries"));
  out.layout.reserve(layout.size());
  for (unsigned i = 0; i < layout.size(); ++i) {
    const auto entry = layout[i];
    LayoutEntry item;
    item.name = ToString(entry.getName());
    const auto shape = entry.getShape();
    CLEAVE_RETURN_IF_ERROR(CheckListLength(shape.size(), kMaxTensorRank,
                                           Indexed("checkpoint layout", i) + " shape", "dims"));
    CopyList(shape, &item.shape);
    out.layout.push_back(std::move(item));
  }
  CLEAVE_ASSIGN_OR_RETURN(out.weights, ReadTensors(in.getWeights(), "checkpoint weights"));
  out.strategy_name = ToString(in.getStrategyName());
  const auto state = in.getStrategyState();
  CLEAVE_RETURN_IF_ERROR(CheckListLength(state.size(), kMaxStrategyStateEntries,
                                         "checkpoint strategy_state", "entries"));
  out.strategy_state.reserve(state.size());
  for (unsigned i = 0; i < state.size(); ++i) {
    const auto entry = state[i];
    NamedTensor item;
    item.name = ToString(entry.getName());
    CLEAVE_ASSIGN_OR_RETURN(item.tensor,
                            ReadTensor(entry.getTensor(), Indexed("checkpoint strategy_state", i)));
    out.strategy_state.push_back(std::move(item));
  }
  const auto engine_state = in.getEngineState();
  CLEAVE_RETURN_IF_ERROR(CheckListLength(engine_state.size(), kMaxEngineStateBytes,
                                         "checkpoint engine_state", "bytes"));
  out.engine_state = ToString(engine_state);
  CLEAVE_RETURN_IF_ERROR(ValidateCheckpoint(out));
  return out;
}

std::string ShapeString(const std::vector<uint32_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

template <typename T>
void PutLittleEndian(std::string* out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out->append(bytes, sizeof(T));
}

template <typename T>
T GetLittleEndian(std::string_view bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

constexpr size_t kVersionOffset = 8;
constexpr size_t kLengthOffset = 12;
constexpr size_t kDigestOffset = 20;
static_assert(kDigestOffset + 64 == kCheckpointHeaderBytes);
static_assert(kCheckpointMagic.size() == kVersionOffset);

}  // namespace

Status ValidateCheckpoint(const CheckpointData& c) {
  CLEAVE_RETURN_IF_ERROR(capnp_io::CheckVersion(c.format_version, kCheckpointFormatVersion,
                                                "checkpoint payload", "version"));
  CLEAVE_RETURN_IF_ERROR(CheckName(c.model_name, "checkpoint model_name"));
  CLEAVE_RETURN_IF_ERROR(CheckName(c.strategy_name, "checkpoint strategy_name"));
  if (c.layout.empty()) return Status::InvalidArgument("checkpoint layout is empty");
  if (c.layout.size() > kMaxLayoutEntries) {
    return TooLong("checkpoint layout", c.layout.size(), kMaxLayoutEntries, "entries");
  }
  if (c.weights.size() != c.layout.size()) {
    return Status::InvalidArgument("checkpoint has " + std::to_string(c.weights.size()) +
                                   " weight tensors for " + std::to_string(c.layout.size()) +
                                   " layout entries");
  }
  if (c.strategy_state.size() > kMaxStrategyStateEntries) {
    return TooLong("checkpoint strategy_state", c.strategy_state.size(), kMaxStrategyStateEntries,
                   "entries");
  }
  if (c.engine_state.size() > kMaxEngineStateBytes) {
    return TooLong("checkpoint engine_state", c.engine_state.size(), kMaxEngineStateBytes, "bytes");
  }
  std::unordered_set<std::string_view> names;
  for (size_t i = 0; i < c.layout.size(); ++i) {
    const LayoutEntry& entry = c.layout[i];
    const std::string field = Indexed("checkpoint layout", i);
    CLEAVE_RETURN_IF_ERROR(CheckName(entry.name, field + " name"));
    if (!names.insert(entry.name).second) {
      return Status::InvalidArgument(field + " repeats the name '" + entry.name + "'");
    }
    CLEAVE_RETURN_IF_ERROR(ElementCount(entry.shape).status().WithContext(field + " shape"));
    const EncodedTensor& weight = c.weights[i];
    if (weight.dtype != DType::kFloat32) {
      return Status::InvalidArgument(Indexed("checkpoint weights", i) + " ('" + entry.name +
                                     "') must be f32");
    }
    if (weight.shape != entry.shape) {
      return Status::InvalidArgument(Indexed("checkpoint weights", i) + " ('" + entry.name +
                                     "') has shape " + ShapeString(weight.shape) +
                                     " but the layout says " + ShapeString(entry.shape));
    }
    CLEAVE_RETURN_IF_ERROR(ValidateTensor(weight).WithContext(Indexed("checkpoint weights", i) +
                                                              " ('" + entry.name + "')"));
  }
  names.clear();
  for (size_t i = 0; i < c.strategy_state.size(); ++i) {
    const NamedTensor& entry = c.strategy_state[i];
    const std::string field = Indexed("checkpoint strategy_state", i);
    CLEAVE_RETURN_IF_ERROR(CheckName(entry.name, field + " name"));
    if (!names.insert(entry.name).second) {
      return Status::InvalidArgument(field + " repeats the name '" + entry.name + "'");
    }
    CLEAVE_RETURN_IF_ERROR(
        ValidateTensor(entry.tensor).WithContext(field + " ('" + entry.name + "')"));
  }
  return Status::Ok();
}

std::string EncodeCheckpoint(const CheckpointData& c) {
  size_t words = 16 + TextWords(c.model_name) + TextWords(c.strategy_name) +
                 TextWords(c.engine_state) + TensorsWords(c.weights);
  for (const LayoutEntry& entry : c.layout) {
    words += 4 + TextWords(entry.name) + WordsFor(entry.shape.size() * 4);
  }
  for (const NamedTensor& entry : c.strategy_state) {
    words += 4 + TextWords(entry.name) + TensorWords(entry.tensor);
  }
  capnp::MallocMessageBuilder builder(static_cast<unsigned>(words));
  auto root = builder.initRoot<schema::Checkpoint>();
  root.setFormatVersion(c.format_version);
  root.setRound(c.round);
  root.setModelName(AsText(c.model_name));
  auto layout = root.initLayout(static_cast<unsigned>(c.layout.size()));
  for (unsigned i = 0; i < layout.size(); ++i) {
    layout[i].setName(AsText(c.layout[i].name));
    auto shape = layout[i].initShape(static_cast<unsigned>(c.layout[i].shape.size()));
    for (unsigned d = 0; d < shape.size(); ++d) shape.set(d, c.layout[i].shape[d]);
  }
  WriteTensors(c.weights, root.initWeights(static_cast<unsigned>(c.weights.size())));
  root.setStrategyName(AsText(c.strategy_name));
  auto state = root.initStrategyState(static_cast<unsigned>(c.strategy_state.size()));
  for (unsigned i = 0; i < state.size(); ++i) {
    state[i].setName(AsText(c.strategy_state[i].name));
    WriteTensor(c.strategy_state[i].tensor, state[i].initTensor());
  }
  root.setEngineState(AsText(c.engine_state));
  return WritePacked(builder);
}

Result<CheckpointData> DecodeCheckpoint(std::string_view payload) {
  return WithPackedReader<CheckpointData>(
      payload, "checkpoint payload", kMaxCheckpointBytes, [](capnp::MessageReader& message) {
        return ReadCheckpoint(message.getRoot<schema::Checkpoint>());
      });
}

std::string SerializeCheckpointFile(const CheckpointData& checkpoint) {
  const std::string payload = EncodeCheckpoint(checkpoint);
  std::string out;
  out.reserve(kCheckpointHeaderBytes + payload.size());
  out.append(kCheckpointMagic);
  PutLittleEndian<uint32_t>(&out, checkpoint.format_version);
  PutLittleEndian<uint64_t>(&out, payload.size());
  out.append(Sha256Hex(payload));
  out.append(payload);
  return out;
}

Result<CheckpointData> ParseCheckpointFile(std::string_view bytes, const std::string& name) {
  const std::string what = "checkpoint '" + name + "'";
  if (bytes.size() < kCheckpointHeaderBytes) {
    return Status::DataLoss(what + " is truncated: " + std::to_string(bytes.size()) +
                            " bytes, shorter than the " + std::to_string(kCheckpointHeaderBytes) +
                            "-byte header");
  }
  if (bytes.substr(0, kCheckpointMagic.size()) != kCheckpointMagic) {
    return Status::DataLoss(what + " is not a cleave checkpoint (bad magic)");
  }
  const uint32_t version = GetLittleEndian<uint32_t>(bytes, kVersionOffset);
  if (version != kCheckpointFormatVersion) {
    return Status::VersionMismatch(what + " has format version " + std::to_string(version) +
                                   " but this build reads version " +
                                   std::to_string(kCheckpointFormatVersion));
  }
  const uint64_t length = GetLittleEndian<uint64_t>(bytes, kLengthOffset);
  const std::string_view payload = bytes.substr(kCheckpointHeaderBytes);
  if (length != payload.size()) {
    return Status::DataLoss(what +
                            (length > payload.size() ? " is truncated" : " has trailing bytes") +
                            ": the header promises a " + std::to_string(length) +
                            "-byte payload, the file holds " + std::to_string(payload.size()));
  }
  const std::string_view expected = bytes.substr(kDigestOffset, 64);
  const std::string actual = Sha256Hex(payload);
  if (actual.empty()) return Status::Internal("SHA-256 failed while reading " + what);
  if (expected != actual) {
    return Status::DataLoss(what + " is corrupt: the payload's SHA-256 is " + actual +
                            " but the header records " + std::string(expected));
  }
  Result<CheckpointData> checkpoint = DecodeCheckpoint(payload);
  if (!checkpoint.ok()) return checkpoint.status().WithContext(what);
  return checkpoint;
}

Status WriteCheckpointFile(const fs::path& path, const CheckpointData& checkpoint) {
  const std::string what = "checkpoint '" + path.string() + "'";
  CLEAVE_RETURN_IF_ERROR(ValidateCheckpoint(checkpoint).WithContext("refusing to write " + what));
  const std::string file = SerializeCheckpointFile(checkpoint);
  if (file.size() - kCheckpointHeaderBytes > kMaxCheckpointBytes) {
    return Status::InvalidArgument("refusing to write " + what + ": its payload is " +
                                   std::to_string(file.size() - kCheckpointHeaderBytes) +
                                   " bytes, more than the limit of " +
                                   std::to_string(kMaxCheckpointBytes));
  }
  return WriteFileAtomic(path, file);
}

Result<CheckpointData> ReadCheckpointFile(const fs::path& path) {
  // Refuse absurd sizes before reading the whole file into memory.
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (!ec && size > kCheckpointHeaderBytes + kMaxCheckpointBytes) {
    return Status::InvalidArgument("checkpoint '" + path.string() + "' is " + std::to_string(size) +
                                   " bytes, more than the limit of " +
                                   std::to_string(kCheckpointHeaderBytes + kMaxCheckpointBytes));
  }
  CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, ReadFileToString(path));
  return ParseCheckpointFile(bytes, path.string());
}

}  // namespace cleave::wire::fl
