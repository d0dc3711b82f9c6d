# Local application API of cleave-edge: how programs on the gateway ask for a classification.
# Every message carries protocolVersion; readers reject versions they do not speak.
@0x91c77c7409583a61;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("cleave::capnp_edge");

struct ClassifyRequest {
  protocolVersion @0 :UInt16;
  requestId @1 :UInt64;            # chosen by the application, echoed in the reply
  deadlineMs @2 :UInt32;           # end-to-end budget; 0 = the daemon's default
  exitThreshold @3 :Float32 = -1;  # < 0: the calibrated threshold; else an override in [0, 1]
  # Any size and colour: the daemon converts it to what the bundle declares (channels, then
  # resize/crop; split/input_spec.h) and refuses, with the reason, what it cannot convert.
  image :union {
    png @4 :Data;                  # an encoded PNG (any bit depth, gray or colour)
    gray8 @5 :GrayImage;           # raw 8-bit gray pixels, row-major
    jpeg @6 :Data;                 # an encoded JPEG (gray or colour)
    rgb8 @7 :RgbImage;             # raw 8-bit RGB pixels, interleaved (R, G, B), row-major
  }
}

struct GrayImage {
  width @0 :UInt32;
  height @1 :UInt32;
  pixels @2 :Data;
}

struct RgbImage {
  width @0 :UInt32;
  height @1 :UInt32;
  pixels @2 :Data;                 # width * height * 3 bytes
}

enum AnswerSource {
  edgeExit @0;   # a confident early exit answered on the gateway
  cloud @1;      # the cloud tail answered
  degraded @2;   # the cloud did not answer in time; best local exit
  error @3;      # no answer could be computed; see `error`
}

struct ClassifyReply {
  protocolVersion @0 :UInt16;
  requestId @1 :UInt64;
  source @2 :AnswerSource;
  error @3 :Text;
  predictedClass @4 :Int32;        # -1 on error
  confidence @5 :Float32;          # the exit policy's score of the answering exit (0..1)
  scores @6 :List(Float32);        # class logits of the answer
  exitIndex @7 :Int32;             # which exit answered (edgeExit/degraded), else -1
  wireBytes @8 :UInt64;            # bytes this request put on the edge->cloud wire
  edgeMicros @9 :UInt64;           # head + exit + encode compute on the gateway
  totalMicros @10 :UInt64;         # receipt to reply inside the daemon
  className @11 :Text;             # the bundle's name of predictedClass ("" on error)
  # The offload option that served it (edge.offload_policy): the split point the head ran to
  # (-1: the local-only option) and the exits' threshold (< 0: the bundle's calibrated exit
  # policy); probe = the policy ran its probe option for it, not its current choice.
  split @12 :Int32 = -1;
  exitThreshold @13 :Float32 = -1;
  probe @14 :Bool;
}

# Protocol version 2: an envelope, so one connection can carry more than classifications.
# A reader tells the versions apart by protocolVersion, the first field of every root
# message (ClassifyRequest v1 or LocalRequest v2); v1 senders keep getting v1 replies.
struct LocalRequest {
  protocolVersion @0 :UInt16;      # 2
  union {
    classify @1 :ClassifyRequest;  # its own protocolVersion is 1
    feedback @2 :FeedbackRequest;
  }
}

# The true class of an earlier request, sent on the same connection (the daemon matches it by
# the connection and requestId; delayed labels are common in IoT). The daemon learns from it
# when on-gateway adaptation is on (edge.adapt).
struct FeedbackRequest {
  requestId @0 :UInt64;            # the ClassifyRequest's requestId
  trueClass @1 :Int32;             # in [0, classes of the bundle)
}

struct LocalReply {
  protocolVersion @0 :UInt16;      # 2
  union {
    classify @1 :ClassifyReply;
    feedback @2 :FeedbackReply;
  }
}

struct FeedbackReply {
  requestId @0 :UInt64;
  accepted @1 :Bool;               # false: `error` says why (unknown request id, class out of
  error @2 :Text;                  # range, adaptation off)
}
