// Rényi differential privacy accountant for the sampled Gaussian mechanism, as used by
// client-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
// Language Models"): each round samples every client with probability q, clips each update
// to L2 norm C and adds Gaussian noise of standard deviation z*C to the sum.
//
// RDP of one round at integer order a >= 2 (Mironov, Talwar, Zhang 2019, "Rényi
// Differential Privacy of the Sampled Gaussian Mechanism", Sec. 3.3):
//   A_a = sum_{k=0..a} C(a,k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 z^2)),
//   RDP(a) = log(A_a) / (a - 1),
// evaluated in log space. Rounds compose by adding RDP per order (also across changing q
// and z). Conversion to (epsilon, delta) takes the best order with the bound of Canonne,
// Kamath, Steinke 2020 ("The Discrete Gaussian for Differential Privacy", Prop. 12):
//   epsilon = RDP(a) + log((a-1)/a) - (log(delta) + log(a)) / (a-1),
// which is never looser than the classic RDP(a) + log(1/delta)/(a-1). Only integer orders
// are used, so the reported epsilon is a valid upper bound, slightly above what an
// accountant that also searches fractional orders between 1 and 2 would report for very
// small epsilons.
//
// Thread-compatible: const methods may be called concurrently.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"

namespace cleave::dp {

// RDP of one application of the sampled Gaussian mechanism at `order` (>= 2): sampling rate
// q in [0, 1], noise multiplier z >= 0 (0 = no noise: infinite unless q == 0).
// InvalidArgument for values out of range.
Result<double> SampledGaussianRdp(double q, double noise_multiplier, int order);

struct PrivacySpent {
  double epsilon = 0;
  double delta = 0;
  int order = 0;  // the order that gave the bound
};

class RdpAccountant {
 public:
  // 2..64, then 72, 80, 96, 128, 160, 192, 256, 512.
  static std::vector<int> DefaultOrders();

  explicit RdpAccountant(std::vector<int> orders = DefaultOrders());

  // Adds `rounds` rounds with sampling rate q and noise multiplier z. InvalidArgument (and
  // nothing changes) for q outside [0, 1], z < 0 or not finite, or rounds < 0.
  Status Compose(double q, double noise_multiplier, int64_t rounds = 1);

  // The smallest epsilon over the orders for `delta` in (0, 1); never negative, and 0 when
  // nothing was spent (every composed round had q = 0, or none was composed). Infinite when
  // no order has a finite RDP (for example after a round without noise). InvalidArgument for
  // delta outside (0, 1).
  Result<PrivacySpent> Spent(double delta) const;

  // Replaces the accumulated RDP (one value per order, >= 0) and round count, as saved from
  // rdp() and rounds() in a checkpoint. InvalidArgument (nothing changes) on a size mismatch
  // or a negative or NaN value.
  Status Restore(std::vector<double> rdp, int64_t rounds);

  const std::vector<int>& orders() const { return orders_; }
  // Accumulated RDP per order (same indexing as orders()).
  const std::vector<double>& rdp() const { return rdp_; }
  int64_t rounds() const { return rounds_; }

 private:
  std::vector<int> orders_;
  std::vector<double> rdp_;
  int64_t rounds_ = 0;
};

}  // namespace cleave::dp
