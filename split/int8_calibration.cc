#include "split/int8_calibration.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace cleave::split::int8 {
namespace {

constexpr int64_t kChunk = 64;
constexpr int64_t kBins = 2048;
constexpr double kTailFractions[] = {0.0, 1e-5, 1e-4, 1e-3};

struct Observer {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  std::vector<double> hist;  // kBins over [lo, hi], nonzero values only
};

template <typename Fn>
void ForEachChunk(const torch::Tensor& images, Fn&& fn) {
  const int64_t n = images.size(0);
  for (int64_t start = 0; start < n; start += kChunk) {
    fn(images.slice(0, start, std::min(n, start + kChunk)));
  }
}

// Expected squared quantization error of the histogram on the grid of `q`.
double GridError(const Observer& obs, const ActQuant& q) {
  const double width = (static_cast<double>(obs.hi) - obs.lo) / kBins;
  const double grid_lo = -q.zero_point * static_cast<double>(q.scale);
  const double grid_hi = (kActQMax - q.zero_point) * static_cast<double>(q.scale);
  const double rounding = static_cast<double>(q.scale) * q.scale / 12.0;
  double error = 0.0;
  for (int64_t i = 0; i < kBins; ++i) {
    if (obs.hist[i] == 0.0) continue;
    const double center = obs.lo + (i + 0.5) * width;
    double e = rounding;
    if (center < grid_lo) e = (grid_lo - center) * (grid_lo - center);
    if (center > grid_hi) e = (center - grid_hi) * (center - grid_hi);
    error += obs.hist[i] * e;
  }
  return error;
}

ActQuant ChooseMseRange(const Observer& obs) {
  double total = 0.0;
  for (double c : obs.hist) total += c;
  ActQuant best = ChooseActQuant(obs.lo, obs.hi);
  if (total <= 0.0) return best;
  double best_error = GridError(obs, best);
  const double width = (static_cast<double>(obs.hi) - obs.lo) / kBins;
  for (double tail : kTailFractions) {
    if (tail == 0.0) continue;
    const double cut = tail * total;
    int64_t first = 0;  // first bin such that at most `cut` values lie below it
    for (double below = 0.0; first < kBins - 1 && below + obs.hist[first] <= cut; ++first) {
      below += obs.hist[first];
    }
    int64_t last = kBins - 1;  // last bin such that at most `cut` values lie above it
    for (double above = 0.0; last > first && above + obs.hist[last] <= cut; --last) {
      above += obs.hist[last];
    }
    const ActQuant q = ChooseActQuant(static_cast<float>(obs.lo + first * width),
                                      static_cast<float>(obs.lo + (last + 1) * width));
    const double error = GridError(obs, q);
    if (error < best_error) {
      best_error = error;
      best = q;
    }
  }
  return best;
}

}  // namespace

Status CalibrateActivations(Int8HeadState& state, const torch::Tensor& images, RangeMethod method) {
  std::vector<Observer> observers(state.acts.size());
  ForEachChunk(images, [&](const torch::Tensor& chunk) {
    (void)ForwardFloat(state, chunk, [&](int act, const torch::Tensor& x) {
      const auto [lo, hi] = torch::aminmax(x);
      observers[act].lo = std::min(observers[act].lo, lo.item<float>());
      observers[act].hi = std::max(observers[act].hi, hi.item<float>());
      return x;
    });
  });
  for (const Observer& obs : observers) {
    if (!std::isfinite(obs.lo) || !std::isfinite(obs.hi)) {
      return Status::InvalidArgument(
          "int8 head: calibration produced non-finite activations (check the weights)");
    }
  }
  if (method == RangeMethod::kMse) {
    ForEachChunk(images, [&](const torch::Tensor& chunk) {
      (void)ForwardFloat(state, chunk, [&](int act, const torch::Tensor& x) {
        Observer& obs = observers[act];
        if (!(obs.hi > obs.lo)) return x;
        const torch::Tensor flat = x.flatten();
        const torch::Tensor hist =
            torch::histc(flat.masked_select(flat != 0), kBins, obs.lo, obs.hi).to(torch::kDouble);
        if (obs.hist.empty()) obs.hist.assign(kBins, 0.0);
        const double* counts = hist.data_ptr<double>();
        for (int64_t i = 0; i < kBins; ++i) obs.hist[i] += counts[i];
        return x;
      });
    });
  }
  for (size_t i = 0; i < observers.size(); ++i) {
    const Observer& obs = observers[i];
    const float lo = state.act_after_relu[i] ? 0.0f : obs.lo;
    state.acts[i] = (method == RangeMethod::kMse && !obs.hist.empty()) ? ChooseMseRange(obs)
                                                                       : ChooseActQuant(lo, obs.hi);
  }
  return Status::Ok();
}

}  // namespace cleave::split::int8
