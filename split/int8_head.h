// Int8 post-training static quantization of the edge head of a SplitVisionNet.
//
// The edge runs blocks [0, end_block) (up to and including the bottleneck encoder) plus the
// early exits attached to them. Int8Head is a self-contained quantized copy of that part:
// BatchNorm folded into each conv (Jacob et al. 2018), per-output-channel symmetric int8
// weights, fp32 biases, and per-tensor affine uint8 activations whose ranges were observed
// on calibration images (Krishnamoorthi 2018). It keeps no reference to the source network.
//
// What is int8: every conv (BN folded) and every activation between them, the residual adds
// (quantized::add), and the bottleneck output. The exit (and classifier) tail, global
// average pooling + linear, keeps int8 weights but reads the dequantized conv output and
// produces fp32 logits: it is <0.1% of the MACs, and uint8 logits would flip top-1 whenever
// two logits are closer than one quantization step. Details in split/int8_ops.h.
//
// Execution engines: "onednn" and "qnnpack" run libtorch's quantized kernels (reached
// through the dispatcher); "reference" runs the same arithmetic in fp32 with
// quantize-dequantize at every quantization point (fake-quant) and is always available.
// The quantized engine is process-global libtorch state: Forward sets it for the duration
// of the call and restores it, so heads using different engines must not run concurrently.
// Forward uses libtorch's intra-op threads (torch::set_num_threads is the caller's choice).
//
// Measured on DefaultSplit(2), blocks [0, 4) + exit (7.0 M MACs), on a 2-core AVX-512 VNNI
// machine, 1 thread, median ms: batch 1: fp32 0.35, onednn 0.12, qnnpack 0.42, reference
// 0.59; batch 32: fp32 6.2, onednn 1.77, qnnpack 12.7, reference 13.4. With 2 threads
// qnnpack gets worse at batch 32 (16 ms). WeightBytes 44,709 vs 172,760 fp32 bytes (25.9%).
//
// A moved-from Int8Head answers FailedPrecondition (WeightBytes 0, engine "").
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <torch/torch.h>

#include "common/status.h"
#include "split/vision_model.h"

namespace cleave::split {

struct Int8HeadState;  // weights, scales and prepacked kernels (int8_ops.h)

class Int8Head {
 public:
  // Post-training static quantization (Jacob et al. 2018; Krishnamoorthi 2018): BatchNorm
  // folded into each conv, per-output-channel symmetric int8 weights, per-tensor affine uint8
  // activations whose ranges are observed on `calibration_images` ([N,1,28,28] floats in
  // [0,1]), for blocks [0, end_block) of `net` and every exit attached to them. `net` is only
  // read (its BN running statistics are used; its train/eval mode is left unchanged).
  // end_block is in [1, number of blocks]; including the classifier makes `features` its
  // fp32 logits. InvalidArgument for a bad end_block, images of the wrong shape/dtype or
  // non-finite values. The returned head uses the "reference" engine until SelectEngine.
  static Result<Int8Head> Quantize(SplitVisionNetImpl& net, int end_block,
                                   const torch::Tensor& calibration_images);

  // Same contract as net.ForwardWithExits(images, end_block) (exit logits float, features
  // float = dequantized encoder output, contiguous NCHW), computed with int8
  // weights/activations. `images` must be float32 [N>=1, C, S, S] with the spec's C and S and
  // finite values, else InvalidArgument. Not thread-safe: one caller at a time.
  Result<SplitVisionNetImpl::Outputs> Forward(const torch::Tensor& images);

  // Self-contained serialization of the quantized head (int8 weights, scales, zero points,
  // biases, activation ranges, end_block) to bytes, and back. Deserialize validates
  // everything against `spec` (shapes, counts) and returns DataLoss/InvalidArgument on
  // mismatch (VersionMismatch for another format version). The format (Cap'n Proto list of
  // blobs, JSON header, CRC-32) is described in split/int8_serialization.h. A deserialized
  // head uses the "reference" engine until SelectEngine is called.
  Result<std::string> Serialize() const;
  static Result<Int8Head> Deserialize(const std::string& bytes, const VisionModelSpec& spec);

  // Bytes of the stored int8 head (weights + per-channel scales + biases + activation
  // params), the figure reported as head_int8_bytes.
  int64_t WeightBytes() const;

  // "onednn" | "qnnpack" | "reference". "auto" times each available engine on a batch-1
  // input (best of 15 runs, engines taking turns, at the current torch::get_num_threads())
  // and keeps the fastest;
  // "reference" runs the same integer arithmetic in fp32 (fake-quant: quantize-dequantize
  // at every quantization point) and is the fallback. Unknown names are InvalidArgument;
  // engines this libtorch lacks are Unavailable; a failed prepack leaves "reference".
  Status SelectEngine(const std::string& engine);
  const std::string& engine() const;
  // Per-engine batch-1 latency measured by the last SelectEngine("auto") (ms), for reports.
  const std::map<std::string, double>& engine_timings_ms() const;

  Int8Head(Int8Head&&) noexcept;
  Int8Head& operator=(Int8Head&&) noexcept;
  Int8Head(const Int8Head&) = delete;
  Int8Head& operator=(const Int8Head&) = delete;
  ~Int8Head();

 private:
  explicit Int8Head(std::unique_ptr<Int8HeadState> state);
  Status SelectFastestEngine();
  std::unique_ptr<Int8HeadState> state_;
};

}  // namespace cleave::split
