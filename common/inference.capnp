# Split inference: the edge sends an InferRequest, the cloud tail answers with one
# InferReply carrying the same requestId.
#
# Mirrored by the plain structs in common/inference_wire.h; only common/inference_wire.cc
# touches these.
# Messages travel Cap'n Proto *packed*. Every message starts with protocolVersion and a
# reader rejects any version it does not speak (see wire::kProtocolVersion).
# Compatibility: field ordinals and enum values are frozen once released.
@0xedb00fadf8007893;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("cleave::schema");

using import "/common/tensor.capnp".Tensor;

struct InferRequest {
  protocolVersion @0 :UInt16;
  requestId @1 :UInt64;
  # Name of the model (bundle) whose tail should finish the computation.
  model @2 :Text;
  # Remaining latency budget the edge allows, in milliseconds; 0 = no deadline.
  deadlineMs @3 :UInt32;

  input :union {
    # Bottleneck features computed by the edge head.
    features @4 :Tensor;
    # The raw input image, PNG or JPEG encoded (the "send everything" baselines); the tail
    # tells them apart by their magic bytes.
    png @5 :Data;
  }
}

struct InferReply {
  enum Status {
    ok @0;
    error @1;
    overloaded @2;        # the cloud shed the request; retry later or answer locally
    deadlineExceeded @3;  # the request's budget ran out before it was computed
  }

  protocolVersion @0 :UInt16;
  requestId @1 :UInt64;
  status @2 :Status;
  # Human-readable cause when status != ok.
  error @3 :Text;
  # Class scores (logits), row-major [rows, numClasses] with rows = len(scores) / numClasses
  # (one row per sample of the request's input). Empty unless status == ok.
  scores @4 :List(Float32);
  numClasses @5 :UInt32;
  # How many requests the cloud computed together in the batch that held this one.
  batchSize @6 :UInt32;
  # Time the request waited in the cloud queue, and the batch's compute time.
  queueUs @7 :UInt64;
  computeUs @8 :UInt64;
}
