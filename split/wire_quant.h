// Wire quantization of bottleneck features, as training sees it and as the codec does it.
//
// The codec (common/tensor_codec.h) maps x -> q = clamp(nearbyint(x / scale) + zp, 0, qmax)
// per channel. Here we (1) choose per-channel ranges from observed features, clipping rare
// outliers where that lowers the quantization error (with 16 u4 levels one outlier can
// double the step), and (2) simulate that mapping inside training with a straight-through
// estimator (Bengio et al. 2013; as in quantization-aware training, Jacob et al. 2018), so
// the decoder and tail learn to cope with exactly the values the wire will carry.
#pragma once

#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "common/tensor_codec.h"

namespace cleave::split {

// Per-channel [lo, hi] ranges (lo <= 0 <= hi) that minimise the mean squared quantization
// error of `features` [N, C, H, W] on a `dtype` grid, among the min/max range and ranges
// clipping a tail fraction of {1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2} on each side.
// Returns [C] lo and [C] hi tensors (float). Precondition: dtype is u8 or u4, N*H*W >= 1.
std::pair<torch::Tensor, torch::Tensor> ChooseWireRanges(const torch::Tensor& features,
                                                         wire::DType dtype);

// Codec parameters for per-channel ranges (the codec's own formula: scale = range / qmax,
// nudged up so [lo, hi] is covered; zp = nearbyint(-lo / scale)).
wire::QuantParams RangesToQuantParams(const torch::Tensor& lo, const torch::Tensor& hi,
                                      wire::DType dtype);

// The manifest's "wire" object of a split bundle: {"dtype", "channel_axis": 1, "scale",
// "zero_point"}.
nlohmann::json WireManifestJson(wire::DType dtype, const wire::QuantParams& params);

// Quantize-dequantize `x` [N, C, H, W] with `params` in fp32 tensor arithmetic matching the
// codec, with a straight-through gradient inside the clipping range (zero outside).
torch::Tensor FakeQuantizeWire(const torch::Tensor& x, const wire::QuantParams& params,
                               wire::DType dtype);

// Encodes `features` [N, C, H, W] with the real codec (fixed `params`, channel axis 1) and
// decodes it again: exactly what the cloud receives. Errors from the codec (e.g. NaN).
Result<torch::Tensor> WireRoundTrip(const torch::Tensor& features, wire::DType dtype,
                                    const wire::QuantParams* params);

// Tracks ranges during training: an exponential moving average of ChooseWireRanges over
// batches (the first batch initialises it). Not thread-safe.
class WireRangeTracker {
 public:
  WireRangeTracker(wire::DType dtype, double momentum) : dtype_(dtype), momentum_(momentum) {}
  // Folds this batch's ranges into the average (no gradient flows).
  void Observe(const torch::Tensor& features);
  bool initialized() const { return lo_.defined(); }
  // Codec parameters for the current average. Precondition: initialized().
  wire::QuantParams Params() const { return RangesToQuantParams(lo_, hi_, dtype_); }
  wire::DType dtype() const { return dtype_; }

 private:
  wire::DType dtype_;
  double momentum_;
  torch::Tensor lo_, hi_;
};

}  // namespace cleave::split
