// Federated round messages: registration, the round configuration, updates and their
// acknowledgements, heartbeats, waits and goodbyes. Plain C++ mirrors of the FlMessage bodies
// of common/federated.capnp; they travel in the envelope of common/fl_wire.h, whose
// ValidateMessage and DecodeMessage apply the rules written next to each field here.
// libtorch-free; the name helpers are thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/fl_protocol.h"
#include "common/secure_aggregation.h"
#include "common/tensor_codec.h"

namespace cleave::wire::fl {

// ---- Messages (see federated.capnp for the protocol and every field's meaning) ----
// Rounds are numbered from 1; 0 means "none" where a field allows it.

struct Capabilities {
  bool can_train_full = false;
  bool can_train_head = false;
  uint64_t max_steps = 0;  // 0 = no limit
  bool accepts_delta = false;
};

// Client -> aggregator.
struct Register {
  std::string client_id;      // ValidateClientId
  uint64_t num_examples = 0;  // <= kMaxNumExamples; 0 allowed
  Capabilities capabilities;
  std::string model_name;     // non-empty, <= kMaxNameBytes, no control bytes
  std::string layout_sha256;  // 64 lowercase hex digits
};

// Aggregator -> client.
struct RegisterReply {
  bool accepted = false;
  std::string error;  // <= kMaxTextBytes
  uint32_t round = 0;
  uint32_t poll_interval_ms = 0;  // <= kMaxRetryAfterMs; 0 = client default
};

enum class TrainableSet : uint8_t { kAll = 0, kHeadAndExits = 1, kCustom = 2 };

// What a client needs to take part in a secure round (federated::SecureRoundParams on the
// wire) and its own roster index. Rules: secagg::ValidateConfig, vector_length <=
// kMaxSecAggVectorWords, clip and example_scale finite and > 0, fractional_bits <=
// kMaxFractionalBits, client_index < num_clients.
struct SecureParams {
  secagg::SecAggConfig secagg;
  double clip = 64;
  uint32_t fractional_bits = 0;
  double example_scale = 1000;
  uint32_t client_index = 0;
};

// How a client sends its update (federated::CompressionConfig on the wire, minus the seed:
// the client draws int8 rounding from RoundConfig.seed). Rules: kind known; topk_fraction
// finite in (0, 1] when kind is kTopK; kTopK never with RoundConfig.secure.
enum class CompressionKind : uint8_t { kNone = 0, kInt8 = 1, kTopK = 2 };
// "none", "int8", "topk" (as federated::CompressionConfig::kind); "unknown" otherwise.
const char* CompressionKindName(CompressionKind kind);
struct UpdateCompression {
  CompressionKind kind = CompressionKind::kNone;
  double topk_fraction = 0.01;
  bool error_feedback = true;
};

// Aggregator -> client. `trainable` is authoritative; `trainable_set` says how it was made.
// Federated continual learning: which experience the round belongs to and the strategy every
// client runs (federated::ContinualStreamOptions on the wire; common/federated.capnp).
enum class ContinualScenario : uint8_t { kClass = 0, kDomain = 1 };
enum class ContinualMethod : uint8_t { kNaive = 0, kEr = 1, kEwc = 2, kLwf = 3, kDerpp = 4 };
inline constexpr uint32_t kMaxExperiences = 4096;
// "class"/"domain" and "naive", "er", "ewc", "lwf", "derpp"; "unknown" otherwise.
const char* ContinualScenarioName(ContinualScenario scenario);
const char* ContinualMethodName(ContinualMethod method);
struct ContinualRound {
  uint32_t experience = 0;   // < experiences
  uint32_t experiences = 1;  // 1..kMaxExperiences
  ContinualScenario scenario = ContinualScenario::kClass;
  uint64_t seed = 0;  // domain: the permutations' seed
  ContinualMethod method = ContinualMethod::kNaive;
  uint32_t buffer_rows = 500;  // er, derpp: >= 1
  bool class_balanced = false;
  uint32_t replay_batch = 0;
  double ewc_lambda = 180, ewc_gamma = 1;  // >= 0; gamma <= 1
  uint32_t ewc_samples = 1024;             // >= 1
  double lwf_alpha = 1, lwf_temperature = 2;
  double derpp_alpha = 1, derpp_beta = 0.5;
  double kd_temperature = 2;
};

struct RoundConfig {
  uint32_t round = 1;  // >= 1
  std::string model_name;
  std::string layout_sha256;
  std::vector<EncodedTensor> weights;  // 1..kMaxLayoutEntries, layout order
  bool is_delta = false;
  uint32_t base_round = 0;  // < round when is_delta
  TrainableSet trainable_set = TrainableSet::kAll;
  std::vector<bool> trainable;  // weights.size() bits, at least one set
  uint32_t local_epochs = 1;    // 1..kMaxLocalEpochs
  uint32_t batch_size = 32;     // 1..kMaxBatchSize
  double learning_rate = 0.05;  // finite, > 0
  double momentum = 0;          // finite, [0, 1)
  double weight_decay = 0;      // finite, >= 0
  double proximal_mu = 0;       // finite, >= 0
  uint64_t max_steps = 0;       // 0 = unlimited
  uint32_t deadline_ms = 0;     // relative to receipt; 0 = none
  uint32_t time_budget_ms = 0;  // 0 = none; <= deadline_ms when both are set
  uint64_t seed = 0;
  std::optional<SecureParams> secure;  // set: a secure round (no plain Update allowed)
  // kNone: Update.tensors. Otherwise Update.compressed (ignored in a secure round).
  UpdateCompression compression;
  std::optional<ContinualRound> continual;  // set: a continual-learning round
};

// Client -> aggregator. Exactly one of `tensors` and `compressed` is non-empty.
struct Update {
  uint32_t round = 1;                  // >= 1
  std::string client_id;               // ValidateClientId
  uint64_t num_examples = 0;           // 1..kMaxNumExamples
  double train_loss = 0;               // finite
  std::vector<EncodedTensor> tensors;  // <= kMaxLayoutEntries: trainable entries, layout order
  bool is_delta = false;               // tensors are local - global(round); false if compressed
  double train_seconds = 0;            // finite, >= 0
  uint64_t steps = 0;
  // federated::EncodeUpdate bytes of local - global(round). Opaque here: only its presence
  // and size are checked; the aggregator's DecodeUpdate checks the content.
  std::string compressed;
};

enum class AckReason : uint8_t {
  kOk = 0,
  kStaleRound = 1,
  kMalformed = 2,
  kUnknownClient = 3,
  kWrongShape = 4,
  kNonFinite = 5,
  kLate = 6,
  kNotSampled = 7,
  kDuplicate = 8,
  kRejected = 9,
  kInternal = 10,
  kNoRound = 11,
};
// "ok", "stale_round", "malformed", ... ("unknown" for values outside the enum).
const char* AckReasonName(AckReason reason);

// Aggregator -> client. accepted == (reason == kOk); MakeUpdateAck keeps the two in step.
struct UpdateAck {
  uint32_t round = 0;  // 0 when unknown (e.g. the update did not decode)
  bool accepted = false;
  AckReason reason = AckReason::kOk;
  std::string message;  // <= kMaxTextBytes
};
UpdateAck MakeUpdateAck(uint32_t round, AckReason reason, std::string message = {});

// Client -> aggregator.
struct Heartbeat {
  std::string client_id;        // ValidateClientId
  uint32_t training_round = 0;  // 0 = idle
  bool has_global = false;
  uint32_t global_round = 0;  // meaningful when has_global
};

// Aggregator -> client.
struct Wait {
  uint32_t round = 0;
  uint32_t retry_after_ms = 1000;  // 1..kMaxRetryAfterMs
  std::string reason;              // <= kMaxTextBytes
};

enum class ByeReason : uint8_t { kLeaving = 0, kFinished = 1, kShuttingDown = 2 };
// "leaving", "finished", "shutting_down" ("unknown" otherwise).
const char* ByeReasonName(ByeReason reason);

// Either direction.
struct Bye {
  std::string client_id;  // empty, or ValidateClientId
  ByeReason reason = ByeReason::kLeaving;
  std::string message;  // <= kMaxTextBytes
};

}  // namespace cleave::wire::fl
