#include "split/wire_quant.h"

#include <cfloat>
#include <cmath>
#include <limits>

namespace cleave::split {
namespace {

double QMax(wire::DType dtype) { return dtype == wire::DType::kUInt4 ? 15.0 : 255.0; }

// Values per channel used for the range search; more only costs time.
constexpr int64_t kMaxSamplesPerChannel = 200000;

}  // namespace

std::pair<torch::Tensor, torch::Tensor> ChooseWireRanges(const torch::Tensor& features,
                                                         wire::DType dtype) {
  torch::NoGradGuard no_grad;
  const int64_t channels = features.size(1);
  torch::Tensor values =
      features.detach().to(torch::kFloat).transpose(0, 1).reshape({channels, -1});
  if (values.size(1) > kMaxSamplesPerChannel) {
    values =
        values.index_select(1, torch::randperm(values.size(1)).narrow(0, 0, kMaxSamplesPerChannel));
  }
  const torch::Tensor sorted = std::get<0>(values.sort(1));
  const int64_t m = sorted.size(1);
  const double qmax = QMax(dtype);
  const double tails[] = {0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2};

  torch::Tensor best_lo, best_hi, best_err;
  for (double tail : tails) {
    const int64_t k = std::min<int64_t>(m - 1, static_cast<int64_t>(std::floor(tail * m)));
    torch::Tensor lo = sorted.select(1, k).clamp_max(0.0);
    torch::Tensor hi = sorted.select(1, m - 1 - k).clamp_min(0.0);
    const torch::Tensor scale = ((hi - lo) / qmax).clamp_min(FLT_EPSILON).unsqueeze(1);
    const torch::Tensor zp = (-lo.unsqueeze(1) / scale).round().clamp(0.0, qmax);
    const torch::Tensor q = ((values / scale).round() + zp).clamp(0.0, qmax);
    const torch::Tensor err = ((q - zp) * scale - values).pow(2).mean(1);
    if (!best_err.defined()) {
      best_lo = lo, best_hi = hi, best_err = err;
    } else {
      const torch::Tensor better = err < best_err;
      best_lo = torch::where(better, lo, best_lo);
      best_hi = torch::where(better, hi, best_hi);
      best_err = torch::where(better, err, best_err);
    }
  }
  return {best_lo, best_hi};
}

wire::QuantParams RangesToQuantParams(const torch::Tensor& lo, const torch::Tensor& hi,
                                      wire::DType dtype) {
  const torch::Tensor l = lo.detach().to(torch::kDouble).contiguous();
  const torch::Tensor h = hi.detach().to(torch::kDouble).contiguous();
  const double qmax = QMax(dtype);
  wire::QuantParams params;
  for (int64_t c = 0; c < l.numel(); ++c) {
    const double lo_c = std::min(0.0, l[c].item<double>());
    const double hi_c = std::max(0.0, h[c].item<double>());
    const double range = hi_c - lo_c;
    float scale = static_cast<float>(std::max(range / qmax, static_cast<double>(FLT_EPSILON)));
    if (static_cast<double>(scale) * qmax < range) {
      scale = std::nextafter(scale, std::numeric_limits<float>::infinity());
    }
    const double zp = std::min(std::max(std::nearbyint(-lo_c / scale), 0.0), qmax);
    params.scale.push_back(scale);
    params.zero_point.push_back(static_cast<uint8_t>(zp));
  }
  return params;
}

nlohmann::json WireManifestJson(wire::DType dtype, const wire::QuantParams& params) {
  return {{"dtype", wire::DTypeName(dtype)},
          {"channel_axis", 1},
          {"scale", params.scale},
          {"zero_point", params.zero_point}};
}

torch::Tensor FakeQuantizeWire(const torch::Tensor& x, const wire::QuantParams& params,
                               wire::DType dtype) {
  const int64_t channels = static_cast<int64_t>(params.scale.size());
  const auto opts = torch::TensorOptions().dtype(torch::kFloat);
  const torch::Tensor scale =
      torch::tensor(std::vector<float>(params.scale.begin(), params.scale.end()), opts)
          .view({1, channels, 1, 1});
  const torch::Tensor zp =
      torch::tensor(std::vector<float>(params.zero_point.begin(), params.zero_point.end()), opts)
          .view({1, channels, 1, 1});
  const double qmax = QMax(dtype);
  const torch::Tensor lo = -zp * scale;
  const torch::Tensor hi = (qmax - zp) * scale;
  const torch::Tensor clipped = torch::max(torch::min(x, hi), lo);  // gradient 1 inside
  torch::Tensor dequant;
  {
    torch::NoGradGuard no_grad;
    const torch::Tensor q = ((x.detach() / scale).round() + zp).clamp(0.0, qmax);
    dequant = (q - zp) * scale;
  }
  return clipped + (dequant - clipped).detach();
}

Result<torch::Tensor> WireRoundTrip(const torch::Tensor& features, wire::DType dtype,
                                    const wire::QuantParams* params) {
  const torch::Tensor x = features.detach().to(torch::kFloat).contiguous();
  std::vector<uint32_t> shape;
  for (int64_t d : x.sizes()) shape.push_back(static_cast<uint32_t>(d));
  CLEAVE_ASSIGN_OR_RETURN(const wire::EncodedTensor encoded,
                          wire::EncodeTensor(x.data_ptr<float>(), shape, dtype, 1, params));
  CLEAVE_ASSIGN_OR_RETURN(std::vector<float> decoded, wire::DecodeTensor(encoded));
  return torch::from_blob(decoded.data(), x.sizes(), torch::kFloat).clone();
}

void WireRangeTracker::Observe(const torch::Tensor& features) {
  torch::NoGradGuard no_grad;
  auto [lo, hi] = ChooseWireRanges(features, dtype_);
  if (!lo_.defined()) {
    lo_ = lo, hi_ = hi;
    return;
  }
  lo_ = lo_ * (1.0 - momentum_) + lo * momentum_;
  hi_ = hi_ * (1.0 - momentum_) + hi * momentum_;
}

}  // namespace cleave::split
