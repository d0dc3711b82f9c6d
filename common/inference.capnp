# Split inference: the edge sends an InferRequest, the cloud tail answers with one
# InferReply carrying the same requestId.
#
# Mirrored by the plain structs in common/inference_wire.h; only common/inference_wire.cc
# touches these.
# Messages travel Cap'n Proto *packed*. Every message starts with protocolVersion (a UInt16
# at bit 0 of the root's data section in every struct here) and a reader rejects any version
# it does not speak. Version 1 requests are InferRequest; version 2 requests (issue 19) are
# InferRequestV2, which carries only what the cloud does not already know. Replies are
# InferReply, version 1, to both (its format did not change).
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

# Version 2 of the request. The bundle fixes the features' shape, dtype, quantization and
# entropy model at each split point, so none of it travels, nor does the model name; a 16-bit
# tag of that layout (split::WireLayoutTag) lets the cloud refuse features coded for another
# bundle instead of computing garbage. Field order packs the envelope into two data words.
struct InferRequestV2 {
  protocolVersion @0 :UInt16;  # 2
  layoutTag @1 :UInt16;
  requestId @2 :UInt32;
  # Remaining latency budget the edge allows, in milliseconds; 0 = no deadline.
  deadlineMs @3 :UInt32;
  # Index of the bundle's split point that produced the features (0 = deployment split).
  split @4 :UInt8;

  input :union {
    # The features of split point `split`, coded as its layout says (common/feature_coding.h).
    features @5 :Data;
    # The raw input, PNG or JPEG encoded: the cloud runs the whole model.
    image @6 :Data;
    # The features of split point `split` as the tensor codec packs them (u4 two a byte),
    # sent instead of `features` when entropy coding would not make them shorter.
    packed @7 :Data;
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
