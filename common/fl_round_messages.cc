#include "common/fl_round_messages.h"

#include <cmath>
#include <string>

#include "common/fl_wire_internal.h"

namespace cleave::wire::fl {
namespace internal {

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
CLEAVE_SAME_ENUM(schema::ContinualScenario::CLASS_INCREMENTAL, ContinualScenario::kClass);
CLEAVE_SAME_ENUM(schema::ContinualScenario::DOMAIN_INCREMENTAL, ContinualScenario::kDomain);
CLEAVE_SAME_ENUM(schema::ContinualMethod::NAIVE, ContinualMethod::kNaive);
CLEAVE_SAME_ENUM(schema::ContinualMethod::ER, ContinualMethod::kEr);
CLEAVE_SAME_ENUM(schema::ContinualMethod::EWC, ContinualMethod::kEwc);
CLEAVE_SAME_ENUM(schema::ContinualMethod::LWF, ContinualMethod::kLwf);
CLEAVE_SAME_ENUM(schema::ContinualMethod::DERPP, ContinualMethod::kDerpp);

namespace {

bool KnownAckReason(AckReason reason) {
  return static_cast<uint8_t>(reason) <= static_cast<uint8_t>(AckReason::kNoRound);
}

bool KnownByeReason(ByeReason reason) {
  return static_cast<uint8_t>(reason) <= static_cast<uint8_t>(ByeReason::kShuttingDown);
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

Status CheckContinual(const ContinualRound& c) {
  const std::string field = "RoundConfig.continual";
  CLEAVE_RETURN_IF_ERROR(CheckUint(c.experiences, field + ".experiences", 1, kMaxExperiences));
  CLEAVE_RETURN_IF_ERROR(CheckUint(c.experience, field + ".experience", 0, c.experiences - 1));
  if (static_cast<uint8_t>(c.scenario) > static_cast<uint8_t>(ContinualScenario::kDomain)) {
    return Status::InvalidArgument(field + ".scenario: unknown value " +
                                   std::to_string(static_cast<unsigned>(c.scenario)));
  }
  if (static_cast<uint8_t>(c.method) > static_cast<uint8_t>(ContinualMethod::kDerpp)) {
    return Status::InvalidArgument(field + ".method: unknown value " +
                                   std::to_string(static_cast<unsigned>(c.method)));
  }
  if (c.method == ContinualMethod::kEr || c.method == ContinualMethod::kDerpp) {
    CLEAVE_RETURN_IF_ERROR(CheckUint(c.buffer_rows, field + ".buffer_rows", 1, UINT32_MAX));
  }
  CLEAVE_RETURN_IF_ERROR(CheckDouble(c.ewc_lambda, field + ".ewc_lambda", 0, false));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(c.ewc_gamma, field + ".ewc_gamma", 0, false, 1, false));
  CLEAVE_RETURN_IF_ERROR(CheckUint(c.ewc_samples, field + ".ewc_samples", 1, UINT32_MAX));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(c.lwf_alpha, field + ".lwf_alpha", 0, false));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(c.lwf_temperature, field + ".lwf_temperature", 0, true));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(c.derpp_alpha, field + ".derpp_alpha", 0, false));
  CLEAVE_RETURN_IF_ERROR(CheckDouble(c.derpp_beta, field + ".derpp_beta", 0, false));
  return CheckDouble(c.kd_temperature, field + ".kd_temperature", 0, true);
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

}  // namespace

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
  if (m.secure) CLEAVE_RETURN_IF_ERROR(CheckSecureParams(*m.secure));
  CLEAVE_RETURN_IF_ERROR(CheckCompression(m.compression, m.secure.has_value()));
  if (m.continual) CLEAVE_RETURN_IF_ERROR(CheckContinual(*m.continual));
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
  if (in.hasContinual()) {
    const auto c = in.getContinual();
    ContinualRound r;
    r.experience = c.getExperience();
    r.experiences = c.getExperiences();
    // Values above 255 must not wrap onto a known enumerant.
    const auto scenario = static_cast<uint16_t>(c.getScenario());
    r.scenario = static_cast<ContinualScenario>(scenario > 255 ? 255 : scenario);
    r.seed = c.getSeed();
    const auto method = static_cast<uint16_t>(c.getMethod());
    r.method = static_cast<ContinualMethod>(method > 255 ? 255 : method);
    r.buffer_rows = c.getBufferRows();
    r.class_balanced = c.getClassBalanced();
    r.replay_batch = c.getReplayBatch();
    r.ewc_lambda = c.getEwcLambda();
    r.ewc_gamma = c.getEwcGamma();
    r.ewc_samples = c.getEwcSamples();
    r.lwf_alpha = c.getLwfAlpha();
    r.lwf_temperature = c.getLwfTemperature();
    r.derpp_alpha = c.getDerppAlpha();
    r.derpp_beta = c.getDerppBeta();
    r.kd_temperature = c.getKdTemperature();
    out.continual = r;
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

size_t BodyWords(const Register& m) {
  return 8 + TextWords(m.client_id) + TextWords(m.model_name) + TextWords(m.layout_sha256);
}
size_t BodyWords(const RegisterReply& m) { return 4 + TextWords(m.error); }
size_t BodyWords(const RoundConfig& m) {
  return 16 + TextWords(m.model_name) + TextWords(m.layout_sha256) + TensorsWords(m.weights) +
         WordsFor((m.trainable.size() + 7) / 8) + (m.secure ? 16 : 0) + 4;
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
  if (m.continual) {
    const ContinualRound& r = *m.continual;
    auto c = out.initContinual();
    c.setExperience(r.experience);
    c.setExperiences(r.experiences);
    c.setScenario(static_cast<schema::ContinualScenario>(r.scenario));
    c.setSeed(r.seed);
    c.setMethod(static_cast<schema::ContinualMethod>(r.method));
    c.setBufferRows(r.buffer_rows);
    c.setClassBalanced(r.class_balanced);
    c.setReplayBatch(r.replay_batch);
    c.setEwcLambda(r.ewc_lambda);
    c.setEwcGamma(r.ewc_gamma);
    c.setEwcSamples(r.ewc_samples);
    c.setLwfAlpha(r.lwf_alpha);
    c.setLwfTemperature(r.lwf_temperature);
    c.setDerppAlpha(r.derpp_alpha);
    c.setDerppBeta(r.derpp_beta);
    c.setKdTemperature(r.kd_temperature);
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

}  // namespace internal

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

const char* ContinualScenarioName(ContinualScenario scenario) {
  switch (scenario) {
    case ContinualScenario::kClass: return "class";
    case ContinualScenario::kDomain: return "domain";
  }
  return "unknown";
}

const char* ContinualMethodName(ContinualMethod method) {
  switch (method) {
    case ContinualMethod::kNaive: return "naive";
    case ContinualMethod::kEr: return "er";
    case ContinualMethod::kEwc: return "ewc";
    case ContinualMethod::kLwf: return "lwf";
    case ContinualMethod::kDerpp: return "derpp";
  }
  return "unknown";
}

const char* CompressionKindName(CompressionKind kind) {
  switch (kind) {
    case CompressionKind::kNone: return "none";
    case CompressionKind::kInt8: return "int8";
    case CompressionKind::kTopK: return "topk";
    default: return "unknown";
  }
}

}  // namespace cleave::wire::fl
