# Tensors on the wire: dtype, shape, per-channel quantization parameters and packed bytes.
#
# Mirrored by cleave::wire::EncodedTensor (common/tensor_codec.h); only common/capnp_io.*
# (for the wire codecs) reads or builds these structs. Readers treat every field as hostile:
# see wire::ValidateTensor.
# Compatibility: field ordinals and enum values are frozen once released; add fields only
# at new ordinals.
@0xe1a79931d8bfcaca;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("cleave::schema");

struct Tensor {
  enum DType {
    float32 @0;
    float16 @1;
    uint8 @2;   # asymmetric affine per channel: x = (q - zeroPoint[c]) * scale[c]
    uint4 @3;   # as uint8, two values per byte, low nibble first
  }

  dtype @0 :DType;
  # Row-major dimensions; the element count is their product.
  shape @1 :List(UInt32);
  # Index into `shape` of the channel dimension (uint8/uint4 only). Defaults to 1 (NCHW):
  # values are stored XOR the default, so the common axis packs to nothing on the wire.
  channelAxis @2 :UInt32 = 1;
  # One entry per channel for uint8/uint4, empty for float types.
  scale @3 :List(Float32);
  zeroPoint @4 :List(UInt8);
  # Little-endian element bytes; exactly as many as dtype and shape require.
  data @5 :Data;
}
