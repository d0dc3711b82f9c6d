# Federated learning: messages between the aggregator (ZeroMQ ROUTER) and edge or simulation
# clients (DEALER), plus the aggregator's checkpoint file payload.
#
# Every frame on the federated socket is one FlMessage, Cap'n Proto *packed*: a socket reads a
# single type and dispatches on the `body` union. The envelope carries protocolVersion, so
# every message does; readers check it before looking at the body.
#
# Rounds are numbered from 1 (round r starts from the global model after r - 1 completed
# rounds); round 0 means "none" where a field allows it.
#
# A round, seen from one client:
#   client -> Register          aggregator -> RegisterReply (accepted, current round)
#   client -> Heartbeat         aggregator -> RoundConfig (sampled) | Wait (poll again later)
#   client trains, -> Update    aggregator -> UpdateAck (accepted, or why not)
#   either side -> Bye          (client leaving; aggregator finished or shutting down)
#
# A secure round (RoundConfig.secure set; federated/secure_round.h, SecAgg / SecAgg+) inserts
# the protocol's stages; the client's plain model never leaves it:
#   client -> SecAggKeys        aggregator -> SecAggKeyDirectory     (once the stage closes)
#   client -> SecAggShareKeys   aggregator -> SecAggForwardedShares  (once the stage closes)
#   client trains, -> SecAggMaskedInput (instead of Update)   aggregator -> UpdateAck
#   aggregator -> SecAggUnmaskRequest (to the survivors)      client -> SecAggUnmaskShares
# A client message the aggregator refuses (wrong round or stage, not in the roster, refused by
# the protocol) is answered with UpdateAck{accepted = false} naming why.
#
# Weights travel by position in the model's *layout* (names and shapes, fixed by the
# architecture; see federated/weights.h). Both sides name the layout by the lowercase hex
# SHA-256 of its JSON form (WeightsLayout::ToJson().dump()), so a client with a different
# model is refused at Register and a RoundConfig for another model is refused by the client.
#
# Mirrored by the plain structs in common/fl_round_messages.h and common/fl_secagg_messages.h
# (envelope: common/fl_wire.h) and, for Checkpoint, federated/checkpoint_format.h; only those
# codecs touch these. Readers treat every field as hostile (limits in common/fl_protocol.h,
# rules next to each struct). Compatibility: field ordinals and enum values are frozen once
# released; add fields only at new ordinals; bump fl::kProtocolVersion (or
# federated::kCheckpointFormatVersion) on incompatible change.
@0xd181c7da85b3b872;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("cleave::schema");

using import "/common/tensor.capnp".Tensor;

struct FlMessage {
  protocolVersion @0 :UInt16;

  body :union {
    register @1 :Register;
    registerReply @2 :RegisterReply;
    roundConfig @3 :RoundConfig;
    update @4 :Update;
    updateAck @5 :UpdateAck;
    heartbeat @6 :Heartbeat;
    wait @7 :Wait;
    bye @8 :Bye;
    secAggKeys @9 :SecAggKeys;
    secAggKeyDirectory @10 :SecAggKeyDirectory;
    secAggShareKeys @11 :SecAggShareKeys;
    secAggForwardedShares @12 :SecAggForwardedShares;
    secAggMaskedInput @13 :SecAggMaskedInput;
    secAggUnmaskRequest @14 :SecAggUnmaskRequest;
    secAggUnmaskShares @15 :SecAggUnmaskShares;
  }
}

# What a client can do; the aggregator samples only clients able to run the round.
struct Capabilities {
  canTrainFull @0 :Bool;   # may train every layout entry
  canTrainHead @1 :Bool;   # may train the edge head and exits (TrainableSet headAndExits)
  # Largest local step budget the client accepts per round; 0 = no limit.
  maxSteps @2 :UInt64;
  # The client can apply a RoundConfig whose weights are a delta (see RoundConfig.isDelta).
  acceptsDelta @3 :Bool;
}

# Client -> aggregator: join the federation.
struct Register {
  clientId @0 :Text;        # [A-Za-z0-9][A-Za-z0-9._:@-]*, at most 128 bytes
  numExamples @1 :UInt64;   # local training examples (0 allowed: nothing to train on yet)
  capabilities @2 :Capabilities;
  modelName @3 :Text;       # model / bundle name
  layoutSha256 @4 :Text;    # 64 lowercase hex digits
}

# Aggregator -> client: the answer to Register.
struct RegisterReply {
  accepted @0 :Bool;
  error @1 :Text;           # why not, when accepted is false
  round @2 :UInt32;         # the aggregator's current round
  # How often an idle client should send Heartbeat; 0 = the client's default.
  pollIntervalMs @3 :UInt32;
}

# How the RoundConfig trainable mask was derived. The mask itself is authoritative; the set
# lets a client cross-check it against its own TrainableMask() and shows up in logs.
enum TrainableSet {
  all @0;
  headAndExits @1;
  custom @2;                # any other mask (e.g. continual-learning hooks freezing layers)
}

# Aggregator -> client: train this round.
struct RoundConfig {
  round @0 :UInt32;         # >= 1
  modelName @1 :Text;
  layoutSha256 @2 :Text;

  # The global model, one tensor per layout entry in layout order (float32 normally).
  weights @3 :List(Tensor);
  # When set, `weights` is global(round) - global(baseRound), entry by entry; the client
  # adds it to the global of baseRound it holds (it said so in Heartbeat).
  isDelta @4 :Bool;
  baseRound @5 :UInt32;     # < round; meaningful only when isDelta

  trainableSet @6 :TrainableSet;
  # One bit per layout entry (same length as weights); at least one set. The client trains
  # and returns only the entries whose bit is set.
  trainable @7 :List(Bool);

  # Local training (mirrors federated::FitConfig).
  localEpochs @8 :UInt32;   # >= 1
  batchSize @9 :UInt32;     # >= 1
  learningRate @10 :Float64;  # finite, > 0
  momentum @11 :Float64;      # finite, in [0, 1)
  weightDecay @12 :Float64;   # finite, >= 0
  proximalMu @13 :Float64;    # FedProx mu; finite, >= 0 (0 = plain local SGD)
  maxSteps @14 :UInt64;       # local step budget; 0 = unlimited

  # Milliseconds from receipt until the aggregator stops accepting updates for this round
  # (relative: clocks are not synchronized); 0 = no deadline.
  deadlineMs @15 :UInt32;
  # Local training time budget; 0 = none. At most deadlineMs when both are set.
  timeBudgetMs @16 :UInt32;
  # Seed for the client's data order and augmentation, so simulated rounds are repeatable.
  seed @17 :UInt64;
  # Set for a secure round: the client answers the SecAgg stages and sends SecAggMaskedInput
  # instead of Update. A client that cannot must decline (Bye), never send a plain Update.
  secure @18 :SecureRoundParams;
  # How the client sends its update this round (federated/update_compression.h). Unset or
  # kind none: Update.tensors as ever. int8/topk: the client sends Update.compressed instead.
  # Ignored in a secure round (the masked input is never compressed); topk with `secure` is
  # invalid. A client that predates this field ignores it and sends tensors, which the
  # aggregator still accepts: the field is additive, hence no protocol version bump.
  compression @19 :UpdateCompression;
  # Set in a federated continual-learning round (federated/continual_stream.h): the round
  # belongs to one experience of the stream; the client trains on its rows of that experience
  # with the strategy named here and keeps the strategy's state (replay buffer, Fisher,
  # distillation teacher) across rounds. Additive: a client that predates it trains as ever.
  continual @20 :ContinualRound;
}

enum ContinualScenario {
  classIncremental @0;   # experience e holds its group of classes
  domainIncremental @1;  # experience e holds its share of the rows, pixels permuted
}

enum ContinualMethod {
  naive @0;
  er @1;      # experience replay
  ewc @2;     # online EWC
  lwf @3;     # learning without forgetting
  derpp @4;   # DER++
}

# federated::ContinualStreamOptions on the wire, minus what is the client's own (the
# buffer's byte bound and sampling seed).
struct ContinualRound {
  experience @0 :UInt32;        # < experiences
  experiences @1 :UInt32;       # 1 .. 4096
  scenario @2 :ContinualScenario;
  seed @3 :UInt64;              # domainIncremental: the permutations' seed
  method @4 :ContinualMethod;
  bufferRows @5 :UInt32;        # er, derpp: replay buffer rows, >= 1
  classBalanced @6 :Bool;       # class-balanced reservoir (CBRS)
  replayBatch @7 :UInt32;       # buffer rows per step; 0 = the step's batch
  ewcLambda @8 :Float64;        # finite, >= 0
  ewcGamma @9 :Float64;         # [0, 1]
  ewcSamples @10 :UInt32;       # >= 1
  lwfAlpha @11 :Float64;        # finite, >= 0
  lwfTemperature @12 :Float64;  # finite, > 0
  derppAlpha @13 :Float64;      # finite, >= 0
  derppBeta @14 :Float64;       # finite, >= 0
  kdTemperature @15 :Float64;   # finite, > 0
}

enum CompressionKind {
  none @0;
  int8 @1;      # per-chunk int8 with stochastic rounding
  topk @2;      # largest-magnitude coordinates of the delta
}

struct UpdateCompression {
  kind @0 :CompressionKind;
  topkFraction @1 :Float64;  # topk: share of the trainable coordinates sent, in (0, 1]
  errorFeedback @2 :Bool;    # the client carries what it did not send into its next round
}

# ---- Secure aggregation (common/secure_aggregation.h has the protocol) ----

enum SecAggGraph {
  complete @0;   # SecAgg: every client masks with every other
  harary @1;     # SecAgg+: a k-regular Harary graph relabelled by graphSeed
}

# Everything both sides of one secure round agree on (federated::SecureRoundParams), plus the
# addressee's position in the round's roster.
struct SecureRoundParams {
  roundId @0 :UInt64;        # binds keys, seeds and ciphertexts to this round
  numClients @1 :UInt32;     # roster size, 2 .. 65536
  threshold @2 :UInt32;      # Shamir t (secagg::ValidateConfig rules)
  vectorLength @3 :UInt32;   # words per masked input = trainable values + 2
  graph @4 :SecAggGraph;
  degree @5 :UInt32;         # harary: neighbours per client
  graphSeed @6 :Data;        # 32 bytes, public
  clip @7 :Float64;          # finite, > 0
  fractionalBits @8 :UInt32; # fixed-point bits, 0 .. 30
  exampleScale @9 :Float64;  # finite, > 0
  clientIndex @10 :UInt32;   # the addressee's roster index, < numClients
}

struct SecAggPublicKeys {
  client @0 :UInt32;
  cipherPublicKey @1 :Data;  # 32 bytes (X25519)
  maskPublicKey @2 :Data;    # 32 bytes (X25519)
}

struct SecAggEncryptedShare {
  sender @0 :UInt32;
  recipient @1 :UInt32;
  ciphertext @2 :Data;       # exactly secagg::SealedShareBytes()
}

struct SecAggRevealedShare {
  owner @0 :UInt32;          # whose secret this is a share of
  x @1 :UInt32;              # evaluation point, >= 1
  y @2 :List(UInt64);        # one field element (< 2^61 - 1) per chunk of a 32-byte secret
}

# Client -> aggregator, stage 0.
struct SecAggKeys {
  round @0 :UInt32;
  clientId @1 :Text;
  roundId @2 :UInt64;
  sender @3 :UInt32;
  cipherPublicKey @4 :Data;  # 32 bytes
  maskPublicKey @5 :Data;    # 32 bytes
}

# Aggregator -> client, end of stage 0.
struct SecAggKeyDirectory {
  round @0 :UInt32;
  roundId @1 :UInt64;
  recipient @2 :UInt32;
  keys @3 :List(SecAggPublicKeys);
}

# Client -> aggregator, stage 1.
struct SecAggShareKeys {
  round @0 :UInt32;
  clientId @1 :Text;
  roundId @2 :UInt64;
  sender @3 :UInt32;
  shares @4 :List(SecAggEncryptedShare);
}

# Aggregator -> client, end of stage 1.
struct SecAggForwardedShares {
  round @0 :UInt32;
  roundId @1 :UInt64;
  recipient @2 :UInt32;
  shares @3 :List(SecAggEncryptedShare);
}

# Client -> aggregator, stage 2: the masked contribution (vectorLength words).
struct SecAggMaskedInput {
  round @0 :UInt32;
  clientId @1 :Text;
  roundId @2 :UInt64;
  sender @3 :UInt32;
  masked @4 :List(UInt32);
}

# Aggregator -> each survivor, end of stage 2.
struct SecAggUnmaskRequest {
  round @0 :UInt32;
  roundId @1 :UInt64;
  survivors @2 :List(UInt32);  # strictly increasing
}

# Client -> aggregator, stage 3.
struct SecAggUnmaskShares {
  round @0 :UInt32;
  clientId @1 :Text;
  roundId @2 :UInt64;
  sender @3 :UInt32;
  selfMaskShares @4 :List(SecAggRevealedShare);
  maskKeyShares @5 :List(SecAggRevealedShare);
}

# Client -> aggregator: the result of local training.
struct Update {
  round @0 :UInt32;         # >= 1, the RoundConfig's round
  clientId @1 :Text;
  numExamples @2 :UInt64;   # examples trained on; >= 1 (the FedAvg weight)
  trainLoss @3 :Float64;    # mean training loss; finite
  # The trainable entries only (mask bits set in RoundConfig.trainable), in layout order.
  tensors @4 :List(Tensor);
  # When set, tensors are local - global(round) instead of the locally trained values.
  isDelta @5 :Bool;
  trainSeconds @6 :Float64; # finite, >= 0
  steps @7 :UInt64;         # optimizer steps taken
  # When non-empty: the delta local - global(round) over the trainable entries, encoded by
  # federated::EncodeUpdate (RoundConfig.compression); `tensors` is then empty and isDelta
  # false. The aggregator decodes it against its own layout and mask (DecodeUpdate).
  compressed @8 :Data;
}

# Aggregator -> client: what became of an Update.
struct UpdateAck {
  enum Reason {
    ok @0;
    staleRound @1;      # the update is for a round that is over
    malformed @2;       # the message did not decode
    unknownClient @3;   # the client never registered (or was forgotten)
    wrongShape @4;      # tensors do not match the round's layout and mask
    nonFinite @5;       # a value is NaN or infinite
    late @6;            # the round's deadline passed before the update arrived
    notSampled @7;      # the client was not sampled for this round
    duplicate @8;       # the client already sent an update for this round
    rejected @9;        # refused by the strategy or a robustness check (message says why)
    internal @10;       # the aggregator failed; not the client's fault
    noRound @11;        # no round is open (wait for the next RoundConfig)
  }

  round @0 :UInt32;
  accepted @1 :Bool;        # true exactly when reason == ok
  reason @2 :Reason;
  message @3 :Text;
}

# Client -> aggregator: I am alive; give me work if there is any.
struct Heartbeat {
  clientId @0 :Text;
  # The round the client is training now; 0 = idle.
  trainingRound @1 :UInt32;
  # The global weights the client holds (the base it can apply a delta to).
  hasGlobal @2 :Bool;
  globalRound @3 :UInt32;
}

# Aggregator -> client: no work for you now; send Heartbeat again after retryAfterMs.
struct Wait {
  round @0 :UInt32;         # the aggregator's current round
  retryAfterMs @1 :UInt32;  # 1 .. 86400000
  reason @2 :Text;
}

# Either direction: the conversation ends.
struct Bye {
  enum Reason {
    leaving @0;         # client -> aggregator: the client shuts down
    finished @1;        # aggregator -> client: training is complete
    shuttingDown @2;    # aggregator -> client: the aggregator stops (it may come back)
  }
  clientId @0 :Text;        # the sender (client) or addressee (aggregator); may be empty
  reason @1 :Reason;
  message @2 :Text;
}

# ---- Checkpoint (written to disk by the aggregator, never sent) ----
#
# File format (little-endian), written atomically by WriteCheckpointFile:
#   bytes  0..7   magic "CLVCKPT\n"
#   bytes  8..11  format version (UInt32, = Checkpoint.formatVersion)
#   bytes 12..19  payload length in bytes (UInt64)
#   bytes 20..83  SHA-256 of the payload, 64 lowercase hex digits
#   bytes 84..    payload: one packed Checkpoint message

struct LayoutEntry {
  name @0 :Text;
  shape @1 :List(UInt32);
}

struct NamedTensor {
  name @0 :Text;
  tensor @1 :Tensor;
}

struct Checkpoint {
  formatVersion @0 :UInt16;
  # Rounds completed: `weights` is the global model after this many rounds.
  round @1 :UInt32;
  modelName @2 :Text;
  layout @3 :List(LayoutEntry);
  # One float32 tensor per layout entry, in layout order, of the entry's shape.
  weights @4 :List(Tensor);
  strategyName @5 :Text;
  # Server-side strategy state (Strategy::SaveState: FedOpt moments, step counters).
  strategyState @6 :List(NamedTensor);
  # JSON owned by the round engine (rng state, history, counters); opaque here.
  engineState @7 :Text;
}
