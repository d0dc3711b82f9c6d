# Hard-token routing for the split language model: the edge uploads bottleneck-coded
# layer-K states of a session's tokens (split/lm_model.h) and, for a hard token, asks the
# cloud for its next-byte distribution. The cloud keeps a KV cache per session (the context
# manager); when it has none, or its position differs from the request's start, it answers
# `resync` with the position it expects (0: no cache), and the edge re-sends from there or
# starts the context afresh from the states it keeps (resetSession).
#
# Mirrored by the plain structs in common/lm_wire.h; only common/lm_wire.cc touches these.
# Messages travel Cap'n Proto *packed* and start with protocolVersion.
# Compatibility: field ordinals and enum values are frozen once released.
@0xd5eb39d4907e3c90;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("cleave::schema");

using import "/common/tensor.capnp".Tensor;

struct LmRequest {
  protocolVersion @0 :UInt16;
  requestId @1 :UInt64;
  # Name of the lm-split bundle whose cloud part should run.
  model @2 :Text;
  # Chosen by the edge; printable, at most 128 bytes.
  session @3 :Text;
  # Absolute position of the first state in `states`.
  start @4 :UInt64;
  # Bottleneck codes of consecutive tokens, [tokens, bottleneck]; may be empty (0 rows)
  # when the request only ends the session.
  states @5 :Tensor;
  # Reply with the next-byte log-probabilities after the last state.
  predict @6 :Bool;
  # Free the session's cache after this request.
  endSession @7 :Bool;
  # Remaining latency budget the edge allows, in milliseconds; 0 = no deadline.
  deadlineMs @8 :UInt32;
  # The states begin a fresh context at `start`: drop any cache the session had. Without
  # it, a request for a session the cloud has no cache for (or whose position is not
  # `start`) gets `resync`.
  resetSession @9 :Bool;
  # The cloud-only configuration: raw bytes of consecutive tokens instead of states; the
  # cloud runs the whole model (embedding, every layer, the bottleneck in fp32) for them,
  # keeping the session's cache for all layers. A request carries states or tokens, never
  # both; `states` may then be absent.
  tokens @10 :Data;
}

struct LmReply {
  enum Status {
    ok @0;
    error @1;
    overloaded @2;
    deadlineExceeded @3;
    resync @4;  # no cache at `start`: re-send from `position`
  }

  protocolVersion @0 :UInt16;
  requestId @1 :UInt64;
  status @2 :Status;
  error @3 :Text;
  # The position the cloud expects next: after this request's states when ok, its cache's
  # position (0 = no cache) on resync.
  position @4 :UInt64;
  # Natural-log probabilities of the next byte, one per vocabulary entry, when predicted.
  logProbs @5 :List(Float32);
  computeUs @6 :UInt64;
  # Multiply-accumulates the cloud computed for the request (layers, attention, bottleneck
  # decoder, heads), so edges can account for the cloud's share of the work.
  macs @7 :UInt64;
}
