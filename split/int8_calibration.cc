#include "split/int8_calibration.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace cleave::split::int8 {
namespace {

constexpr int64_t kChunk = 64;  // images per calibration forward, bounds memory

struct MinMax {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
};

}  // namespace

Status CalibrateActivations(Int8HeadState& state, const torch::Tensor& images) {
  std::vector<MinMax> ranges(state.acts.size());
  const int64_t n = images.size(0);
  for (int64_t start = 0; start < n; start += kChunk) {
    const torch::Tensor chunk = images.slice(0, start, std::min(n, start + kChunk));
    (void)ForwardFloat(state, chunk, [&ranges](int act, const torch::Tensor& x) {
      const auto [lo, hi] = torch::aminmax(x);
      ranges[act].lo = std::min(ranges[act].lo, lo.item<float>());
      ranges[act].hi = std::max(ranges[act].hi, hi.item<float>());
      return x;
    });
  }
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (!std::isfinite(ranges[i].lo) || !std::isfinite(ranges[i].hi)) {
      return Status::InvalidArgument(
          "int8 head: calibration produced non-finite activations (check the weights)");
    }
    // ReLU outputs are >= 0, so their zero point is 0, which fused conv+ReLU kernels need.
    state.acts[i] = ChooseActQuant(state.act_after_relu[i] ? 0.0f : ranges[i].lo, ranges[i].hi);
  }
  return Status::Ok();
}

}  // namespace cleave::split::int8
