// A round of AggregatorService outside its secure stages: opening it (the RoundConfig, the
// round's compression), plain and compressed updates, and closing it (the engine's record with
// its byte counts, metrics, checkpoint, publishing a bundle, the summary file).
#include "federated/aggregator_service_internal.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <limits>

#include "common/file_util.h"
#include "federated/checkpoint.h"
#include "federated/wire_convert.h"
#include "split/bundle.h"
#include "split/imported_model.h"
#include "split/int8_head.h"
#include "split/torch_status.h"
#include "split/trainable_net.h"
#include "split/vision_bundle.h"

namespace cleave::federated {

using internal::AckFor;
using internal::Log;
using internal::ToWireCompressionKind;
using internal::ToWireSecureParams;
using nlohmann::json;

Status AggregatorService::Impl::OpenRound() {
  CLEAVE_ASSIGN_OR_RETURN(RoundPlan p, engine->StartRound(LiveClients()));
  fl::RoundConfig config;
  config.round = static_cast<uint32_t>(p.round);
  config.model_name = model.model_name;
  config.layout_sha256 = layout_sha;
  for (const auto& w : engine->global()) config.weights.push_back(ToWireTensor(w));
  config.trainable_set = p.trainable_set == TrainableSet::kAll ? fl::TrainableSet::kAll
                                                               : fl::TrainableSet::kHeadAndExits;
  config.trainable = p.trainable;
  config.local_epochs = static_cast<uint32_t>(p.fit.local_epochs);
  config.batch_size = static_cast<uint32_t>(p.fit.batch_size);
  config.learning_rate = p.fit.lr;
  config.momentum = p.fit.momentum;
  config.weight_decay = p.fit.weight_decay;
  config.proximal_mu = p.fit.proximal_mu;
  config.max_steps = static_cast<uint64_t>(std::max<int64_t>(0, p.fit.max_steps));
  config.deadline_ms = static_cast<uint32_t>(
      std::min<int64_t>(options.engine.deadline_micros / 1000, fl::kMaxRetryAfterMs));
  config.seed = options.engine.seed * 1000003 + p.round;
  if (p.secure) config.secure = ToWireSecureParams(*p.secure, 0);
  if (options.continual.enabled) {
    config.continual =
        ToWireContinual(options.continual,
                        ExperienceOfRound(p.round, options.rounds, options.continual.experiences),
                        options.engine.seed);
  }
  round_compression = CompressionFor(p.round, p.secure.has_value());
  if (round_compression.kind != "none") {
    CLEAVE_ASSIGN_OR_RETURN(config.compression.kind, ToWireCompressionKind(round_compression.kind));
    config.compression.topk_fraction = round_compression.topk_fraction;
    config.compression.error_feedback = round_compression.error_feedback;
  }
  round_bytes_up = 0;
  round_payload_bytes_up = 0;
  trainable_bytes = 0;
  for (size_t i = 0; i < p.trainable.size(); ++i) {
    if (p.trainable[i]) trainable_bytes += engine->global()[i].numel() * 4;
  }
  fl::Message message(config);
  CLEAVE_RETURN_IF_ERROR(fl::ValidateMessage(message).WithContext("round config"));
  plan_config_bytes = fl::EncodeMessage(message);
  plan_config = std::move(config);
  timed_out.clear();
  started_micros = clock->NowMicros();
  plan = std::move(p);
  for (size_t i = 0; i < plan->clients.size(); ++i) {
    Client& c = clients[plan->clients[i]];
    // A secure round's config differs per client only by its roster index.
    c.config_sent =
        Send(c.peer, plan->secure ? fl::EncodeMessage(fl::Message(ConfigFor(plan->clients[i])))
                                  : plan_config_bytes)
            .ok();
  }
  Log()->info("round {} open: {} clients sampled (target {}), {} bytes each{}{}", plan->round,
              plan->clients.size(), plan->target, plan_config_bytes.size(),
              plan->secure ? ", secure aggregation" : "",
              round_compression.kind != "none" ? ", " + round_compression.kind + " updates" : "");
  if (plan->secure) {
    secure_failure.clear();
    secure_progress = json();
    BeginStage(SecureStage::kKeys,
               std::set<std::string>(plan->clients.begin(), plan->clients.end()));
  }
  Count("rounds_started");
  fed->round->Set(plan->round);
  return Status::Ok();
}

CompressionConfig AggregatorService::Impl::CompressionFor(int round, bool secure) const {
  if (secure) return CompressionConfig{};  // the masked input is never compressed
  if (!options.compression_for_round) return options.compression;
  CompressionConfig c = options.compression_for_round(round);
  Status ok = c.Validate();
  if (ok.ok()) {
    ok = CheckCompressionCompatible(c, options.engine.secure.enabled, options.strategy.name);
  }
  if (!ok.ok()) {
    Log()->error("round {}: compression setting refused ({}); sending updates uncompressed", round,
                 ok.ToString());
    return CompressionConfig{};
  }
  return c;
}

Result<Weights> AggregatorService::Impl::FromCompressed(const std::string& bytes) const {
  Result<Weights> decoded = DecodeUpdate(bytes, engine->layout(), plan->trainable);
  if (!decoded.ok()) return decoded.status().WithContext("compressed update");
  const Weights& delta = *decoded;
  const Weights& global = engine->global();
  Weights out(global.size());
  // DecodeUpdate checked the delta against the layout: a failure here is ours.
  CLEAVE_RETURN_IF_ERROR(
      split::CallTorch(split::TorchSource::kOwnState, "applying a compressed update", [&] {
        torch::NoGradGuard no_grad;
        for (size_t i = 0; i < global.size(); ++i) {
          out[i] = plan->trainable[i] ? global[i] + delta[i] : global[i];
        }
      }));
  return out;
}

void AggregatorService::Impl::OnUpdate(const Envelope& from, const fl::Update& update) {
  if (!VouchFor(from, update.client_id, Claim::kRoundMessage, "update", update.round)) return;
  const std::string& peer = from.peer;
  auto it = clients.find(update.client_id);
  if (it == clients.end()) {
    Count("update_unknown_client");
    fed->updates_rejected->Increment();
    SendTo(peer, fl::Message(fl::MakeUpdateAck(update.round, fl::AckReason::kUnknownClient,
                                               "register first")));
    return;
  }
  it->second.peer = peer;
  it->second.last_seen_micros = clock->NowMicros();
  if (plan && update.round == static_cast<uint32_t>(plan->round) &&
      timed_out.count(update.client_id)) {
    // It was given up on (silent too long) and the round moved on without it.
    Count("update_late");
    fed->updates_late->Increment();
    SendTo(peer,
           fl::Message(fl::MakeUpdateAck(update.round, fl::AckReason::kLate,
                                         "client was silent for more than " +
                                             std::to_string(options.client_timeout_ms) +
                                             " ms and was counted as failed for this round")));
    return;
  }
  if (plan && plan->secure && update.round == static_cast<uint32_t>(plan->round)) {
    // Never decoded, never aggregated: the engine refuses it (and counts the rejection).
    ClientUpdate empty;
    empty.client_id = update.client_id;
    std::string why;
    const UpdateVerdict v = engine->Submit(plan->round, std::move(empty), &why);
    Count("update_plain_in_secure_round");
    CountUpdate(v);
    Log()->warn("refused a plain update from '{}' in secure round {}", update.client_id,
                update.round);
    SendTo(peer, fl::Message(fl::MakeUpdateAck(update.round, fl::AckReason::kRejected, why)));
    return;
  }
  if (!plan || update.round != static_cast<uint32_t>(plan->round)) {
    // Let the engine classify (no round / stale) so the counts live in one place.
    ClientUpdate empty;
    empty.client_id = update.client_id;
    std::string why;
    const UpdateVerdict v = engine->Submit(static_cast<int>(update.round), std::move(empty), &why);
    Count(std::string("update_") + UpdateVerdictName(v));
    CountUpdate(v);
    SendTo(peer, fl::Message(fl::MakeUpdateAck(update.round, AckFor(v), why)));
    return;
  }
  ClientUpdate u;
  u.client_id = update.client_id;
  u.num_examples = static_cast<int64_t>(update.num_examples);
  u.train_loss = update.train_loss;
  const bool compressed = !update.compressed.empty();
  Result<Weights> weights =
      compressed ? FromCompressed(update.compressed)
      : update.is_delta
          ? Result<Weights>(Status::Unimplemented("delta updates are not supported"))
          : MaskedFromWire(update.tensors, plan->trainable, engine->layout(), engine->global());
  std::string why;
  UpdateVerdict verdict;
  fl::AckReason reason;
  if (!weights.ok()) {
    // Shape/count and payload errors still go through the engine so the round's counters see
    // them.
    why = weights.status().message();
    u.weights.clear();
    verdict = engine->Submit(plan->round, std::move(u), nullptr);
    const fl::AckReason bad = compressed ? fl::AckReason::kMalformed : fl::AckReason::kWrongShape;
    reason = verdict == UpdateVerdict::kMalformed ? bad : AckFor(verdict);
    if (compressed) Count("update_compressed_undecodable");
  } else {
    u.weights = std::move(*weights);
    verdict = engine->Submit(plan->round, std::move(u), &why);
    reason = AckFor(verdict);
  }
  Count(std::string("update_") + UpdateVerdictName(verdict));
  CountUpdate(verdict);
  if (verdict == UpdateVerdict::kAccepted) {
    round_bytes_up += static_cast<int64_t>(frame_bytes);
    if (compressed) {
      round_payload_bytes_up += static_cast<int64_t>(update.compressed.size());
    } else {
      for (const auto& t : update.tensors) round_payload_bytes_up += t.data.size();
    }
  }
  if (verdict != UpdateVerdict::kAccepted) {
    Log()->warn("update from '{}' for round {} rejected ({}): {}", update.client_id, update.round,
                UpdateVerdictName(verdict), why);
  }
  SendTo(peer, fl::Message(fl::MakeUpdateAck(update.round, reason, why)));
}

namespace {

// An imported bundle (torchscript-split) with the round's weights. The int8 head is
// re-quantized for them on `calibration` images (static, as `cleave import` does); without
// any, the published bundle has none and the edge serves the fp32 head.
Status PublishImported(const Bundle& bundle, const Weights& global,
                       const split::LabeledImages& calibration, int round,
                       std::optional<double> accuracy, const std::filesystem::path& dir) {
  split::ImportedBundleParts parts;
  parts.head_int8 = false;
  CLEAVE_ASSIGN_OR_RETURN(split::ImportedSplitModel m, split::ReadImportedBundle(bundle, parts));
  const bool had_int8 = !m.int8_info.is_null();
  // The trainable view shares m's modules: writing its tensors writes m's.
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<split::TrainableNet> net, split::MakeTrainable(m));
  CLEAVE_RETURN_IF_ERROR(SetWeights(*net, global));
  net->SetMode(split::TrainableNet::Mode::kEval);
  m.int8_head.reset();
  m.int8_info = nullptr;
  if (had_int8 && calibration.size() > 0) {
    const torch::Tensor images =
        calibration.images.narrow(0, 0, std::min<int64_t>(512, calibration.size()));
    CLEAVE_ASSIGN_OR_RETURN(torch::Tensor normalized,
                            split::CallTorch(split::TorchSource::kOwnState, "int8 calibration",
                                             [&] { return m.Normalize(images); }));
    CLEAVE_ASSIGN_OR_RETURN(split::Int8GraphHead head,
                            split::Int8GraphHead::Quantize(m.head, normalized));
    CLEAVE_RETURN_IF_ERROR(head.SelectEngine("auto"));
    m.int8_head = std::make_shared<split::Int8GraphHead>(std::move(head));
    m.int8_info = {{"engine", m.int8_head->engine()},
                   {"engine_timings_ms", m.int8_head->engine_timings_ms()}};
  }
  m.training["federated_round"] = round;
  if (accuracy) m.evaluation["federated_test_accuracy"] = *accuracy;
  return split::WriteImportedBundle(dir, m);
}

}  // namespace

Status AggregatorService::Impl::Publish(int round) {
  CLEAVE_ASSIGN_OR_RETURN(Bundle bundle, Bundle::Open(model.base_bundle));
  if (bundle.kind() == split::kTorchScriptSplitKind) {
    const std::filesystem::path dir =
        std::filesystem::path(options.publish_dir) / ("round-" + std::to_string(round));
    CLEAVE_RETURN_IF_ERROR(PublishImported(bundle, engine->global(), model.eval_data, round,
                                           engine->history().back().eval_accuracy, dir));
    if (!options.signing_key_pem.empty()) {
      CLEAVE_RETURN_IF_ERROR(
          SignBundle(dir, options.signing_key_pem).WithContext("signing " + dir.string()));
    }
    Log()->info("published {}", dir.string());
    return Status::Ok();
  }
  split::VisionBundleParts parts;
  parts.head_int8 = true;
  CLEAVE_ASSIGN_OR_RETURN(split::VisionSplitModel m, split::ReadVisionBundle(bundle, parts));
  CLEAVE_RETURN_IF_ERROR(SetWeights(*m.net, engine->global()));
  if (m.int8_head) {
    m.int8_head.reset();
    if (model.eval_data.size() > 0) {
      // Re-quantize the head for the new weights (static calibration on server-side images).
      const torch::Tensor calib =
          model.eval_data.images.narrow(0, 0, std::min<int64_t>(512, model.eval_data.size()));
      m.net->eval();
      CLEAVE_ASSIGN_OR_RETURN(split::Int8Head head,
                              split::Int8Head::Quantize(*m.net, m.head_end(), calib));
      m.int8_head = std::make_shared<split::Int8Head>(std::move(head));
    }
  }
  m.training["federated_round"] = round;
  if (engine->history().back().eval_accuracy) {
    m.evaluation["federated_test_accuracy"] = *engine->history().back().eval_accuracy;
  }
  const std::filesystem::path dir =
      std::filesystem::path(options.publish_dir) / ("round-" + std::to_string(round));
  CLEAVE_RETURN_IF_ERROR(split::WriteVisionBundle(dir, m));
  if (!options.signing_key_pem.empty()) {
    CLEAVE_RETURN_IF_ERROR(
        SignBundle(dir, options.signing_key_pem).WithContext("signing " + dir.string()));
  }
  Log()->info("published {}", dir.string());
  return Status::Ok();
}

Status AggregatorService::Impl::CloseRound() {
  if (const SecureRound* secure = engine->secure_round()) {
    const secagg::SecAggProgress p = secure->progress();
    secure_progress = {{"advertised", p.advertised},
                       {"shared", p.shared},
                       {"masked", p.masked},
                       {"unmasked", p.unmasked}};
  }
  const auto compute_start = std::chrono::steady_clock::now();
  CLEAVE_ASSIGN_OR_RETURN(RoundRecord record, engine->FinishRound());
  if (plan->secure) {
    RoundRecord* r = engine->last_record();
    r->extra["secure_stages"] = secure_progress;
    if (!r->applied && !secure_failure.empty()) {
      r->failure = "secure aggregation failed: " + secure_failure + " (" + r->failure + ")";
    }
    record = *r;
  }
  secure_stage = SecureStage::kNone;
  stage_expected.clear();
  stage_answered.clear();
  m->compute_seconds->Observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - compute_start).count());
  fed->updates_failed->Increment(record.failed + record.missing);
  fed->round_duration_seconds->Observe(record.seconds);
  if (record.extra.contains("strategy") && record.extra["strategy"].contains("dp")) {
    const nlohmann::json& epsilon = record.extra["strategy"]["dp"]["epsilon"];
    fed->dp_epsilon->Set(epsilon.is_number() ? epsilon.get<double>()
                                             : std::numeric_limits<double>::infinity());
  }
  RoundRecord* stored = engine->last_record();
  stored->extra["bytes_down"] =
      static_cast<int64_t>(plan->clients.size() * plan_config_bytes.size());
  // Uplink as received: the accepted update frames (compressed or not).
  stored->extra["bytes_up"] = round_bytes_up;
  json compression = round_compression.ToJson();
  compression.erase("seed");  // not the aggregator's: clients draw from the round's seed
  compression["payload_bytes_up"] = round_payload_bytes_up;
  compression["dense_bytes_up"] = static_cast<int64_t>(record.succeeded) * trainable_bytes;
  stored->extra["compression"] = compression;
  if (continual_eval) {
    Result<json> c = continual_eval->Evaluate(*eval_net, engine->global(),
                                              split::ImageRows::InMemory(model.eval_data),
                                              record.round, options.rounds);
    if (c.ok()) {
      stored->extra["continual"] = std::move(*c);
    } else {  // the round stands; only its per-experience figures are missing
      Log()->error("round {}: per-experience evaluation failed: {}", record.round,
                   c.status().ToString());
    }
  }
  if (options.continual.enabled) {
    stored->extra["experience"] =
        ExperienceOfRound(record.round, options.rounds, options.continual.experiences);
  }
  plan.reset();
  plan_config_bytes.clear();
  for (auto& [id, c] : clients) c.config_sent = false;
  Log()->info("round {} {}: {} ok, {} failed, {} late, {} rejected, {} missing{}", record.round,
              record.applied ? "applied" : "NOT applied", record.succeeded, record.failed,
              record.late, record.rejected, record.missing,
              record.eval_accuracy ? ", test accuracy " + std::to_string(*record.eval_accuracy)
                                   : std::string());
  if (!record.applied) Log()->warn("{}", record.failure);
  if (!options.checkpoint.empty()) {
    CLEAVE_RETURN_IF_ERROR(SaveCheckpoint(options.checkpoint, *engine));
  }
  if (!options.publish_dir.empty() && record.applied) {
    if (Status s = Publish(record.round); !s.ok()) {
      // Publishing is best effort: the round and its checkpoint stand.
      Count("publish_failed");
      Log()->error("publishing round {} failed: {}", record.round, s.ToString());
    }
  }
  WriteSummary();
  return Status::Ok();
}

json AggregatorService::Impl::SummaryJson() const {
  json rounds = json::array();
  for (const auto& r : engine->history()) rounds.push_back(r.ToJson());
  json j = {{"endpoint", router->endpoint()},
            {"rounds_completed", engine->rounds_completed()},
            {"rounds_planned", options.rounds},
            {"strategy", engine->strategy().name()},
            {"engine", options.engine.ToJson()},
            {"model", model.model_name},
            {"rounds", rounds},
            {"counters", counters},
            {"clients", clients.size()}};
  if (initial_eval) j["initial_accuracy"] = initial_eval->accuracy;
  if (continual_eval) {
    j["continual"] = continual_eval->Summary();
  } else if (options.continual.enabled) {
    j["continual"] = options.continual.ToJson();
  }
  return j;
}

void AggregatorService::Impl::WriteSummary() {
  if (options.summary_file.empty()) return;
  if (Status s = WriteFileAtomic(options.summary_file, SummaryJson().dump(2) + "\n"); !s.ok()) {
    Log()->error("cannot write summary: {}", s.ToString());
  }
}

}  // namespace cleave::federated
