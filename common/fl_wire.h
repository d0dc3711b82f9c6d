// Federated-learning wire messages and the aggregator's checkpoint file: plain C++ mirrors of
// common/federated.capnp, their Cap'n Proto *packed* encoding, and checkpoint file helpers.
//
// Nothing outside common/fl_wire.cc touches Cap'n Proto builders or readers. As in
// common/wire.h, decoders treat every byte as hostile: explicit traversal/nesting limits,
// size limits checked before copying, version check, enum values checked, every tensor
// validated with ValidateTensor, and the rules of ValidateMessage/ValidateCheckpoint below.
// They never throw or abort and accept input at any alignment. libtorch-free (converting to
// torch tensors is federated/'s job). All functions are thread-safe; the file helpers have
// the concurrency rules of common/file_util.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "common/secure_aggregation.h"
#include "common/status.h"
#include "common/tensor_codec.h"

namespace cleave::wire::fl {

// Bumped on any incompatible change to federated.capnp or tensor.capnp. Decoders reject every
// other version with kVersionMismatch.
// Version 2 added secure aggregation (RoundConfig.secure and the SecAgg* messages). It is a
// bump although the change is additive: a version-1 edge would ignore RoundConfig.secure and
// send its trained model in the clear, so it must not get that far.
// RoundConfig.compression and Update.compressed came later without a bump: an edge that
// ignores the compression field sends float32 tensors, which the aggregator still accepts,
// and an edge compresses only when asked, so no peer misreads what it gets.
inline constexpr uint16_t kProtocolVersion = 2;

// Limits applied by the decoders and by ValidateMessage / ValidateCheckpoint.
// A 1M-parameter float32 model is ~4 MiB on the wire; the message limit leaves room for ~64M.
inline constexpr size_t kMaxMessageBytes = size_t{256} << 20;  // packed and unpacked
inline constexpr int kMaxNestingDepth = 16;
inline constexpr size_t kMaxLayoutEntries = 4096;  // tensors per message, mask bits
inline constexpr size_t kMaxClientIdBytes = 128;
inline constexpr size_t kMaxNameBytes = 256;   // model, strategy, layout entry names
inline constexpr size_t kMaxTextBytes = 4096;  // error, reason and message texts
inline constexpr uint64_t kMaxNumExamples = uint64_t{1} << 40;
inline constexpr uint32_t kMaxLocalEpochs = 10000;
inline constexpr uint32_t kMaxBatchSize = uint32_t{1} << 20;
inline constexpr uint32_t kMaxRetryAfterMs = 86400000;  // one day; also pollIntervalMs
// Secure aggregation: keys are X25519 public keys; lists of keys, shares and survivors hold at
// most one entry per roster client; a masked input fits in a message.
inline constexpr size_t kSecAggKeyBytes = crypto::kKeyBytes;
inline constexpr size_t kMaxSecAggEntries = secagg::kMaxClients;
inline constexpr size_t kMaxSecAggVectorWords = kMaxMessageBytes / sizeof(uint32_t) / 2;
inline constexpr uint32_t kMaxFractionalBits = 30;

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

// ---- Secure aggregation stages (protocol: common/secure_aggregation.h). Every message names
// the federated round (>= 1); client messages also name the client (ValidateClientId). The
// protocol fields (round_id, indices, keys, shares) are checked here only for shape: sizes
// (keys kSecAggKeyBytes, sealed shares secagg::SealedShareBytes(), revealed shares one field
// element below shamir::kPrime per chunk of a 32-byte secret), counts (<= kMaxSecAggEntries),
// indices (< secagg::kMaxClients); the state machines check the rest. ----

// Client -> aggregator, stage 0.
struct SecAggKeys {
  uint32_t round = 1;
  std::string client_id;
  secagg::AdvertiseKeys keys;
};
// Aggregator -> client, end of stage 0.
struct SecAggKeyDirectory {
  uint32_t round = 1;
  secagg::KeyDirectory directory;
};
// Client -> aggregator, stage 1.
struct SecAggShareKeys {
  uint32_t round = 1;
  std::string client_id;
  secagg::ShareKeys shares;
};
// Aggregator -> client, end of stage 1.
struct SecAggForwardedShares {
  uint32_t round = 1;
  secagg::ForwardedShares forwarded;
};
// Client -> aggregator, stage 2 (instead of Update). 1..kMaxSecAggVectorWords words.
struct SecAggMaskedInput {
  uint32_t round = 1;
  std::string client_id;
  secagg::MaskedInput input;
};
// Aggregator -> each survivor, end of stage 2. Survivors strictly increasing.
struct SecAggUnmaskRequest {
  uint32_t round = 1;
  secagg::UnmaskRequest request;
};
// Client -> aggregator, stage 3.
struct SecAggUnmaskShares {
  uint32_t round = 1;
  std::string client_id;
  secagg::UnmaskShares shares;
};

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

// Client ids: 1..kMaxClientIdBytes of [A-Za-z0-9._:@-], starting with a letter or digit (safe
// in file names, log lines and metric labels). InvalidArgument saying what is wrong.
Status ValidateClientId(std::string_view client_id);

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

// ---- Checkpoint ----

inline constexpr uint16_t kCheckpointFormatVersion = 1;
// "CLVCKPT\n", then the version, payload length and payload SHA-256 (see federated.capnp).
inline constexpr std::string_view kCheckpointMagic = "CLVCKPT\n";
inline constexpr size_t kCheckpointHeaderBytes = 84;
inline constexpr size_t kMaxCheckpointBytes = size_t{1} << 30;  // payload, packed and unpacked
inline constexpr size_t kMaxStrategyStateEntries = 4 * kMaxLayoutEntries;
inline constexpr size_t kMaxEngineStateBytes = size_t{64} << 20;

struct LayoutEntry {
  std::string name;  // non-empty, <= kMaxNameBytes, no control bytes, unique in the layout
  std::vector<uint32_t> shape;  // rank <= kMaxTensorRank, <= kMaxTensorElements elements
};

struct NamedTensor {
  std::string name;  // as LayoutEntry::name, unique in strategy_state
  EncodedTensor tensor;
};

// What the aggregator needs to resume: the global model after `round` completed rounds, the
// strategy's server state and the engine's own JSON.
struct CheckpointData {
  uint16_t format_version = kCheckpointFormatVersion;
  uint32_t round = 0;
  std::string model_name;           // non-empty, <= kMaxNameBytes
  std::vector<LayoutEntry> layout;  // 1..kMaxLayoutEntries
  // Float32, one per layout entry in order, each of its entry's shape.
  std::vector<EncodedTensor> weights;
  std::string strategy_name;                // non-empty, <= kMaxNameBytes
  std::vector<NamedTensor> strategy_state;  // <= kMaxStrategyStateEntries, any valid dtype
  std::string engine_state;                 // JSON, opaque here; <= kMaxEngineStateBytes
};

// The rules above; VersionMismatch when format_version != kCheckpointFormatVersion.
Status ValidateCheckpoint(const CheckpointData& checkpoint);

// The packed Cap'n Proto payload alone (no header). Does not validate.
std::string EncodeCheckpoint(const CheckpointData& checkpoint);
// Decodes and validates a payload, with the hostile-input rules of DecodeMessage
// (kMaxCheckpointBytes instead of kMaxMessageBytes).
Result<CheckpointData> DecodeCheckpoint(std::string_view payload);

// The whole file: header (magic, version, length, SHA-256) + EncodeCheckpoint. Does not
// validate.
std::string SerializeCheckpointFile(const CheckpointData& checkpoint);
// Parses file bytes; `name` (usually the path) appears in every error message. DataLoss for a
// wrong magic, truncation, trailing bytes or a digest mismatch; VersionMismatch for another
// format version; then DecodeCheckpoint's errors.
Result<CheckpointData> ParseCheckpointFile(std::string_view bytes, const std::string& name);

// Validates, then writes the file atomically (WriteFileAtomic: readers see the old or the
// new checkpoint, never a mix). InvalidArgument (nothing written) when the checkpoint breaks
// the rules or its payload exceeds kMaxCheckpointBytes; file errors as WriteFileAtomic.
Status WriteCheckpointFile(const std::filesystem::path& path, const CheckpointData& checkpoint);
// Reads and verifies a checkpoint file: NotFound when it does not exist, IoError when the OS
// refuses, otherwise ParseCheckpointFile's errors (all naming the path).
Result<CheckpointData> ReadCheckpointFile(const std::filesystem::path& path);

}  // namespace cleave::wire::fl
