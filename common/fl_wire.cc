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
  return CheckTensors(m.weights, "RoundConfig.weights");
}

Status Check(const Update& m) {
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.round, "Update.round", 1, UINT32_MAX));
  CLEAVE_RETURN_IF_ERROR(ValidateClientId(m.client_id).WithContext("Update.client_id"));
  CLEAVE_RETURN_IF_ERROR(CheckUint(m.num_examples, "Update.num_examples", 1, kMaxNumExamples));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(m.train_loss, "Update.train_loss", -INFINITY, false));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(m.train_seconds, "Update.train_seconds", 0, false));
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
         WordsFor((m.trainable.size() + 7) / 8);
}
size_t BodyWords(const Update& m) { return 8 + TextWords(m.client_id) + TensorsWords(m.tensors); }
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

const char* MessageKindName(const MessageBody& body) {
  static constexpr const char* kNames[] = {"register",   "register_reply", "round_config", "update",
                                           "update_ack", "heartbeat",      "wait",         "bye"};
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
