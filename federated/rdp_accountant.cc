#include "federated/rdp_accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace cleave::dp {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

double LogAddExp(double a, double b) {
  if (a == -kInf) return b;
  if (b == -kInf) return a;
  const double hi = std::max(a, b);
  return hi + std::log1p(std::exp(-std::fabs(a - b)));
}

// log C(n, k) via lgamma.
double LogBinomial(int n, int k) {
  return std::lgamma(n + 1.0) - std::lgamma(k + 1.0) - std::lgamma(n - k + 1.0);
}

}  // namespace

Result<double> SampledGaussianRdp(double q, double noise_multiplier, int order) {
  if (!(q >= 0.0 && q <= 1.0)) {
    return Status::InvalidArgument("sampling rate must be in [0, 1], got " + std::to_string(q));
  }
  if (!(noise_multiplier >= 0.0) || !std::isfinite(noise_multiplier)) {
    return Status::InvalidArgument("noise multiplier must be finite and >= 0, got " +
                                   std::to_string(noise_multiplier));
  }
  if (order < 2) {
    return Status::InvalidArgument("RDP order must be an integer >= 2, got " +
                                   std::to_string(order));
  }
  if (q == 0.0) return 0.0;
  if (noise_multiplier == 0.0) return kInf;
  const double z2 = noise_multiplier * noise_multiplier;
  if (q == 1.0) return order / (2.0 * z2);  // the Gaussian mechanism itself
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  double log_a = -kInf;
  for (int k = 0; k <= order; ++k) {
    const double term = LogBinomial(order, k) + k * log_q + (order - k) * log_1mq +
                        (static_cast<double>(k) * k - k) / (2.0 * z2);
    log_a = LogAddExp(log_a, term);
  }
  // A_a >= 1 mathematically; rounding can leave log_a a hair below 0.
  return std::max(0.0, log_a) / (order - 1);
}

std::vector<int> RdpAccountant::DefaultOrders() {
  std::vector<int> orders;
  for (int a = 2; a <= 64; ++a) orders.push_back(a);
  for (int a : {72, 80, 96, 128, 160, 192, 256, 512}) orders.push_back(a);
  return orders;
}

RdpAccountant::RdpAccountant(std::vector<int> orders) : orders_(std::move(orders)) {
  orders_.erase(std::remove_if(orders_.begin(), orders_.end(), [](int a) { return a < 2; }),
                orders_.end());
  if (orders_.empty()) orders_ = DefaultOrders();
  rdp_.assign(orders_.size(), 0.0);
}

Status RdpAccountant::Compose(double q, double noise_multiplier, int64_t rounds) {
  if (rounds < 0) {
    return Status::InvalidArgument("rounds must be >= 0, got " + std::to_string(rounds));
  }
  std::vector<double> add(orders_.size());
  for (size_t i = 0; i < orders_.size(); ++i) {
    CLEAVE_ASSIGN_OR_RETURN(add[i], SampledGaussianRdp(q, noise_multiplier, orders_[i]));
  }
  for (size_t i = 0; i < orders_.size(); ++i) rdp_[i] += add[i] * static_cast<double>(rounds);
  rounds_ += rounds;
  return Status::Ok();
}

Status RdpAccountant::Restore(std::vector<double> rdp, int64_t rounds) {
  if (rdp.size() != orders_.size()) {
    return Status::InvalidArgument("RDP state has " + std::to_string(rdp.size()) +
                                   " orders, the accountant " + std::to_string(orders_.size()));
  }
  if (rounds < 0) return Status::InvalidArgument("RDP state: negative round count");
  for (double v : rdp) {
    if (!(v >= 0)) return Status::InvalidArgument("RDP state: negative or NaN value");
  }
  rdp_ = std::move(rdp);
  rounds_ = rounds;
  return Status::Ok();
}

Result<PrivacySpent> RdpAccountant::Spent(double delta) const {
  if (!(delta > 0.0 && delta < 1.0)) {
    return Status::InvalidArgument("delta must be in (0, 1), got " + std::to_string(delta));
  }
  PrivacySpent best;
  best.delta = delta;
  best.epsilon = kInf;
  for (size_t i = 0; i < orders_.size(); ++i) {
    if (!std::isfinite(rdp_[i])) continue;
    if (rdp_[i] == 0.0) {
      // A Rényi divergence of 0 means identical output distributions: (0, 0)-DP. The
      // conversion below would still report a small positive bound.
      best.epsilon = 0.0;
      best.order = orders_[i];
      break;
    }
    const double a = orders_[i];
    const double eps =
        rdp_[i] + std::log((a - 1.0) / a) - (std::log(delta) + std::log(a)) / (a - 1.0);
    if (eps < best.epsilon) {
      best.epsilon = eps;
      best.order = orders_[i];
    }
  }
  if (std::isfinite(best.epsilon)) best.epsilon = std::max(0.0, best.epsilon);
  return best;
}

}  // namespace cleave::dp
