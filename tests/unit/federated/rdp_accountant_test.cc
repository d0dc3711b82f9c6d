// The RDP accountant against references computed independently here: the closed form of the
// plain Gaussian mechanism (q = 1) and a numerical integration of the sampled Gaussian
// mechanism's Rényi divergence (Mironov et al. 2019, Def. of A_alpha); composition,
// conversion to (epsilon, delta), and every rejection.
#include "federated/rdp_accountant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace cleave::dp {
namespace {

// A_alpha = E_{x ~ N(0, s^2)} [((1 - q) + q * exp((2x - 1) / (2 s^2)))^alpha], by Simpson's
// rule over a range that holds all of the integrand's mass; returns log(A_alpha) / (alpha - 1).
double NumericalRdp(double q, double s, int alpha) {
  const double lo = -40.0 * s, hi = alpha + 40.0 * s;
  const int n = 200000;  // even
  const double h = (hi - lo) / n;
  auto f = [&](double x) {
    const double log_phi = -x * x / (2 * s * s) - std::log(s * std::sqrt(2 * M_PI));
    const double ratio = (1 - q) + q * std::exp((2 * x - 1) / (2 * s * s));
    return std::exp(log_phi + alpha * std::log(ratio));
  };
  double sum = f(lo) + f(hi);
  for (int i = 1; i < n; ++i) sum += f(lo + i * h) * (i % 2 == 1 ? 4.0 : 2.0);
  return std::log(sum * h / 3.0) / (alpha - 1);
}

TEST(RdpAccountantTest, FullSamplingIsTheGaussianMechanism) {
  for (double z : {0.5, 1.0, 2.0}) {
    for (int a : {2, 7, 64}) {
      auto rdp = SampledGaussianRdp(1.0, z, a);
      ASSERT_TRUE(rdp.ok());
      EXPECT_DOUBLE_EQ(*rdp, a / (2 * z * z)) << "z " << z << " order " << a;
    }
  }
}

TEST(RdpAccountantTest, SampledGaussianMatchesNumericalIntegration) {
  struct Case {
    double q, z;
    int order;
  };
  for (const Case& c : {Case{0.01, 1.1, 2}, Case{0.01, 1.1, 8}, Case{0.01, 1.1, 32},
                        Case{0.2, 1.0, 4}, Case{0.2, 2.0, 16}, Case{0.05, 0.8, 6}}) {
    auto rdp = SampledGaussianRdp(c.q, c.z, c.order);
    ASSERT_TRUE(rdp.ok());
    const double reference = NumericalRdp(c.q, c.z, c.order);
    EXPECT_NEAR(*rdp, reference, 1e-6 + 1e-6 * reference)
        << "q " << c.q << " z " << c.z << " order " << c.order;
    EXPECT_GT(*rdp, 0.0);
  }
}

TEST(RdpAccountantTest, EdgeCasesOfTheMechanism) {
  EXPECT_EQ(*SampledGaussianRdp(0.0, 1.0, 8), 0.0) << "nobody sampled: nothing spent";
  EXPECT_EQ(*SampledGaussianRdp(0.0, 0.0, 8), 0.0);
  EXPECT_TRUE(std::isinf(*SampledGaussianRdp(0.1, 0.0, 8))) << "no noise: no privacy";
  // Less sampling, more noise: less privacy spent.
  EXPECT_LT(*SampledGaussianRdp(0.01, 1.0, 8), *SampledGaussianRdp(0.1, 1.0, 8));
  EXPECT_LT(*SampledGaussianRdp(0.1, 2.0, 8), *SampledGaussianRdp(0.1, 1.0, 8));
}

TEST(RdpAccountantTest, RejectsValuesOutOfRange) {
  EXPECT_EQ(SampledGaussianRdp(-0.1, 1.0, 2).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SampledGaussianRdp(1.5, 1.0, 2).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SampledGaussianRdp(std::nan(""), 1.0, 2).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SampledGaussianRdp(0.1, -1.0, 2).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SampledGaussianRdp(0.1, std::numeric_limits<double>::infinity(), 2).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(SampledGaussianRdp(0.1, 1.0, 1).status().code(), StatusCode::kInvalidArgument);

  RdpAccountant accountant;
  EXPECT_EQ(accountant.Compose(2.0, 1.0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(accountant.Compose(0.1, 1.0, -1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(accountant.rounds(), 0) << "a refused round changes nothing";
  for (double rdp : accountant.rdp()) EXPECT_EQ(rdp, 0.0);
  EXPECT_EQ(accountant.Spent(0.0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(accountant.Spent(1.0).status().code(), StatusCode::kInvalidArgument);
}

TEST(RdpAccountantTest, RoundsComposeAdditivelyAndEpsilonUsesTheBestOrder) {
  RdpAccountant one_by_one({2, 8, 32});
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(one_by_one.Compose(0.2, 1.0).ok());
  RdpAccountant at_once({2, 8, 32});
  ASSERT_TRUE(at_once.Compose(0.2, 1.0, 50).ok());
  EXPECT_EQ(at_once.rounds(), 50);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(one_by_one.rdp()[i], at_once.rdp()[i], 1e-9 * at_once.rdp()[i]);
    EXPECT_NEAR(at_once.rdp()[i], 50 * NumericalRdp(0.2, 1.0, at_once.orders()[i]),
                1e-5 * at_once.rdp()[i]);
  }
  // epsilon = min over orders of rdp + log((a-1)/a) - (log(delta) + log(a)) / (a-1).
  const double delta = 1e-5;
  double expected = std::numeric_limits<double>::infinity();
  int expected_order = 0;
  for (size_t i = 0; i < 3; ++i) {
    const double a = at_once.orders()[i];
    const double eps =
        at_once.rdp()[i] + std::log((a - 1) / a) - (std::log(delta) + std::log(a)) / (a - 1);
    if (eps < expected) {
      expected = eps;
      expected_order = at_once.orders()[i];
    }
  }
  auto spent = at_once.Spent(delta);
  ASSERT_TRUE(spent.ok());
  EXPECT_NEAR(spent->epsilon, expected, 1e-12);
  EXPECT_EQ(spent->order, expected_order);
  EXPECT_EQ(spent->delta, delta);
  // Never looser than the classic conversion rdp + log(1/delta) / (a - 1).
  for (size_t i = 0; i < 3; ++i) {
    const double a = at_once.orders()[i];
    EXPECT_LE(spent->epsilon, at_once.rdp()[i] + std::log(1 / delta) / (a - 1));
  }
}

TEST(RdpAccountantTest, EpsilonGrowsWithRoundsAndShrinksWithNoise) {
  auto epsilon = [](double q, double z, int64_t rounds) {
    RdpAccountant accountant;
    EXPECT_TRUE(accountant.Compose(q, z, rounds).ok());
    return accountant.Spent(1e-5)->epsilon;
  };
  EXPECT_LT(epsilon(0.2, 1.0, 10), epsilon(0.2, 1.0, 100));
  EXPECT_LT(epsilon(0.2, 2.0, 100), epsilon(0.2, 1.0, 100));
  EXPECT_LT(epsilon(0.05, 1.0, 100), epsilon(0.2, 1.0, 100));
  EXPECT_EQ(epsilon(0.0, 1.0, 100), 0.0);
  RdpAccountant fresh;
  EXPECT_EQ(fresh.Spent(1e-5)->epsilon, 0.0) << "nothing composed: nothing spent";
  RdpAccountant noiseless;
  ASSERT_TRUE(noiseless.Compose(0.2, 0.0).ok());
  EXPECT_TRUE(std::isinf(noiseless.Spent(1e-5)->epsilon));
}

TEST(RdpAccountantTest, ChangingRatesCompose) {
  // Rounds with different sampling rates (clients that were not available) add up.
  RdpAccountant mixed({4, 16});
  ASSERT_TRUE(mixed.Compose(0.1, 1.2, 3).ok());
  ASSERT_TRUE(mixed.Compose(0.3, 1.2, 2).ok());
  for (size_t i = 0; i < 2; ++i) {
    const int a = mixed.orders()[i];
    EXPECT_NEAR(mixed.rdp()[i],
                3 * *SampledGaussianRdp(0.1, 1.2, a) + 2 * *SampledGaussianRdp(0.3, 1.2, a), 1e-12);
  }
  EXPECT_EQ(mixed.rounds(), 5);
}

}  // namespace
}  // namespace cleave::dp
