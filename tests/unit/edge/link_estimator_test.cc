// LinkEstimator with a FakeClock and synthetic exchanges: network time is what is left of the
// round trip after the cloud's queue and compute; RTT and throughput step changes are followed
// after exactly shift_samples samples (the documented bound) and single outliers are ignored;
// throughput comes from varying request sizes or from bursts of equal requests and is
// "unknown" when not identifiable; overload and timeout fractions, staleness and forgetting.
#include "edge/link_estimator.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

namespace cleave::edge {
namespace {

using wire::ReplyStatus;

constexpr double kBitsPerByte = 8.0;

double MbitToBytesPerS(double mbit) { return mbit * 1e6 / kBitsPerByte; }

// Drives one estimator through exchanges that each have the link to themselves.
class LinkTestLink {
 public:
  explicit LinkTestLink(LinkEstimatorOptions options = {}) {
    auto created = LinkEstimator::Create(options, clock);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    estimator = std::move(created).value();
  }

  // Sends `bytes`; the reply comes back `network_ms` + the cloud's time later; then the link
  // idles `gap_ms`.
  void Exchange(double network_ms, uint64_t bytes = 1000, uint64_t queue_us = 0,
                uint64_t compute_us = 0, ReplyStatus status = ReplyStatus::kOk,
                int64_t expected_compute_us = 0, double gap_ms = 10) {
    const uint64_t id = next_id++;
    estimator->OnSend(id, bytes, expected_compute_us);
    clock.Advance(static_cast<int64_t>(network_ms * 1000) + static_cast<int64_t>(queue_us) +
                  static_cast<int64_t>(compute_us));
    ExchangeReply reply;
    reply.status = status;
    reply.wire_bytes = 60;
    reply.queue_us = queue_us;
    reply.compute_us = compute_us;
    reply.batch_size = 4;
    estimator->OnReply(id, reply);
    clock.Advance(static_cast<int64_t>(gap_ms * 1000));
  }

  // An exchange over a link with `base_ms` round trip plus jitter and `bytes_per_s` uplink.
  void Transfer(double base_ms, double bytes_per_s, uint64_t bytes) {
    Exchange(base_ms + Jitter() + 1000.0 * static_cast<double>(bytes) / bytes_per_s, bytes);
  }

  double Jitter() { return std::uniform_real_distribution<double>(-0.3, 0.3)(rng); }
  uint64_t Size() { return std::uniform_int_distribution<uint64_t>(2000, 40000)(rng); }

  LinkSnapshot Snapshot(double p = 0.95) const { return estimator->Snapshot(p); }

  FakeClock clock{1'000'000};
  std::unique_ptr<LinkEstimator> estimator;
  uint64_t next_id = 1;
  std::mt19937_64 rng{7};
};

TEST(LinkEstimatorTest, NetworkTimeIsRoundTripMinusQueueAndCompute) {
  LinkTestLink link;
  for (int i = 0; i < 20; ++i) link.Exchange(12.0, 1000, 3000, 7000, ReplyStatus::kOk, 5000);
  const LinkSnapshot s = link.Snapshot();
  EXPECT_EQ(s.rtt_ms.samples, 20);
  EXPECT_NEAR(s.rtt_ms.p50, 12.0, 1e-9);
  EXPECT_NEAR(s.rtt_ms.base, 12.0, 1e-9);
  EXPECT_NEAR(s.queue_ms.p50, 3.0, 1e-9);
  EXPECT_NEAR(s.compute_ms.p95, 7.0, 1e-9);
  EXPECT_NEAR(s.compute_ratio.p50, 1.4, 1e-9);
  EXPECT_NEAR(s.mean_batch_size, 4.0, 1e-9);
  EXPECT_EQ(s.uplink_status, UplinkStatus::kNoSizeSpread);  // every request the same size
  EXPECT_EQ(s.uplink_bytes_per_s, 0);
  EXPECT_EQ(s.sent, 20u);
  EXPECT_EQ(s.replies, 20u);
  EXPECT_EQ(s.bytes_sent, 20000u);
  EXPECT_EQ(s.bytes_received, 20u * 60);
  EXPECT_EQ(s.in_flight, 0u);
  EXPECT_DOUBLE_EQ(s.ok_fraction, 1.0);
  EXPECT_FALSE(s.stale);
}

TEST(LinkEstimatorTest, QuantilesAreNearestRankOverTheWindow) {
  LinkTestLink link;
  for (int i = 1; i <= 100; ++i) link.Exchange(i);  // 1..100 ms, one each
  const LinkSnapshot s = link.Snapshot(0.9);
  EXPECT_EQ(s.rtt_ms.samples, 100);
  EXPECT_NEAR(s.rtt_ms.p50, 50, 1e-9);
  EXPECT_NEAR(s.rtt_ms.p95, 95, 1e-9);
  EXPECT_NEAR(s.rtt_ms.p99, 99, 1e-9);
  EXPECT_NEAR(s.rtt_ms.at_percentile, 90, 1e-9);
  EXPECT_NEAR(s.rtt_ms.base, 5, 1e-9);
  EXPECT_NEAR(s.rtt_ms.mean, 50.5, 1e-9);
  // Only the last window_samples count.
  for (int i = 0; i < 100; ++i) link.Exchange(200);
  EXPECT_NEAR(link.Snapshot().rtt_ms.base, 200, 1e-9);
}

TEST(LinkEstimatorTest, SingleOutlierMovesNeitherMedianNorBase) {
  LinkTestLink link;
  for (int i = 0; i < 100; ++i) link.Exchange(5.0 + link.Jitter());
  const LinkSnapshot before = link.Snapshot();
  link.Exchange(500);
  const LinkSnapshot after = link.Snapshot();
  EXPECT_NEAR(after.rtt_ms.p50, before.rtt_ms.p50, 0.1);
  EXPECT_DOUBLE_EQ(after.rtt_ms.base, before.rtt_ms.base);
  EXPECT_LT(after.rtt_ms.p99, 6.0);
  EXPECT_EQ(after.level_shifts, 0u);
  // Neither do shift_samples - 1 in a row: they are the tail, not a new level.
  for (int i = 0; i < link.estimator->options().shift_samples - 2; ++i) link.Exchange(500);
  const LinkSnapshot burst = link.Snapshot();
  EXPECT_EQ(burst.level_shifts, 0u);
  EXPECT_LT(burst.rtt_ms.p50, 5.5);
  EXPECT_DOUBLE_EQ(burst.rtt_ms.base, before.rtt_ms.base);
  EXPECT_GT(burst.rtt_ms.p99, 400);  // the tail is honest about them
  // And the next normal sample ends the run.
  link.Exchange(5.0);
  link.Exchange(500);
  EXPECT_EQ(link.Snapshot().level_shifts, 0u);
}

TEST(LinkEstimatorTest, FollowsRttStepWithinShiftSamples) {
  LinkTestLink link;
  const int k = link.estimator->options().shift_samples;
  for (int i = 0; i < 100; ++i) link.Exchange(5.0 + link.Jitter());
  for (int i = 0; i < k - 1; ++i) link.Exchange(80.0 + link.Jitter());
  EXPECT_LT(link.Snapshot().rtt_ms.p50, 5.5);  // not yet: k - 1 could be a burst of outliers
  link.Exchange(80.0 + link.Jitter());
  LinkSnapshot s = link.Snapshot();
  EXPECT_EQ(s.level_shifts, 1u);
  EXPECT_EQ(s.rtt_ms.samples, k);
  EXPECT_NEAR(s.rtt_ms.p50, 80, 0.5);
  EXPECT_NEAR(s.rtt_ms.base, 80, 0.5);
  EXPECT_NEAR(s.rtt_ms.p95, 80, 0.5);
  // And back down, with the same bound.
  for (int i = 0; i < 50; ++i) link.Exchange(80.0 + link.Jitter());
  for (int i = 0; i < k; ++i) link.Exchange(5.0 + link.Jitter());
  s = link.Snapshot();
  EXPECT_EQ(s.level_shifts, 2u);
  EXPECT_NEAR(s.rtt_ms.p50, 5, 0.5);
  EXPECT_NEAR(s.rtt_ms.p99, 5, 0.5);
}

TEST(LinkEstimatorTest, SmallStepFollowedByTheWindowWithinHalfOfIt) {
  LinkTestLink link;
  for (int i = 0; i < 100; ++i) link.Exchange(10.0);
  // 10 -> 11 ms lies inside the fences (25% of the median): no shift, the window follows.
  for (int i = 0; i < 50; ++i) link.Exchange(11.0);
  EXPECT_NEAR(link.Snapshot().rtt_ms.p50, 10.0, 1e-9);
  link.Exchange(11.0);
  const LinkSnapshot s = link.Snapshot();
  EXPECT_NEAR(s.rtt_ms.p50, 11.0, 1e-9);
  EXPECT_EQ(s.level_shifts, 0u);
}

TEST(LinkEstimatorTest, UplinkFromVaryingRequestSizes) {
  LinkTestLink link;
  const double bw = MbitToBytesPerS(10);
  for (int i = 0; i < 60; ++i) link.Transfer(5.0, bw, link.Size());
  const LinkSnapshot s = link.Snapshot();
  ASSERT_EQ(s.uplink_status, UplinkStatus::kKnown);
  EXPECT_NEAR(s.uplink_bytes_per_s, bw, 0.05 * bw);
  // The RTT is the network time without the transfer: the 5 ms base, not 5 ms + 2..32 ms.
  EXPECT_NEAR(s.rtt_ms.p50, 5.0, 0.5);
  EXPECT_NEAR(s.rtt_ms.base, 5.0, 0.5);
  EXPECT_LT(s.rtt_ms.p99, 6.0);
}

TEST(LinkEstimatorTest, FollowsBandwidthStepsWithinShiftSamples) {
  LinkTestLink link;
  const int k = link.estimator->options().shift_samples;
  const double steps_mbit[] = {10, 0.2, 2};
  for (double mbit : steps_mbit) {
    const double bw = MbitToBytesPerS(mbit);
    for (int i = 0; i < k; ++i) link.Transfer(5.0, bw, link.Size());
    const LinkSnapshot s = link.Snapshot();
    ASSERT_EQ(s.uplink_status, UplinkStatus::kKnown) << mbit << " Mbit/s";
    EXPECT_NEAR(s.uplink_bytes_per_s, bw, 0.1 * bw) << mbit << " Mbit/s after " << k;
    EXPECT_NEAR(s.rtt_ms.p50, 5.0, 2.0) << mbit << " Mbit/s";
    // Steady afterwards.
    for (int i = 0; i < 40; ++i) link.Transfer(5.0, bw, link.Size());
    EXPECT_NEAR(link.Snapshot().uplink_bytes_per_s, bw, 0.05 * bw) << mbit << " Mbit/s";
  }
  EXPECT_EQ(link.Snapshot().level_shifts, 2u);
}

TEST(LinkEstimatorTest, UplinkFromBurstsOfEqualRequests) {
  // Every request is 5000 bytes; only the burst position spreads the regressor (the queueing
  // signature): the i-th of a back-to-back burst arrives after i * 5000 bytes crossed.
  LinkTestLink link;
  const double bw = MbitToBytesPerS(2);
  const double base_ms = 8.0;
  uint64_t id = 1;
  for (int burst = 0; burst < 30; ++burst) {
    const int m = 1 + burst % 4;
    const int64_t t0 = link.clock.NowMicros();
    for (int i = 0; i < m; ++i) {
      link.estimator->OnSend(id + i, 5000);
      link.clock.Advance(10);
    }
    for (int i = 0; i < m; ++i) {
      const double arrive_ms = base_ms + link.Jitter() + 1000.0 * 5000 * (i + 1) / bw;
      link.clock.Set(t0 + static_cast<int64_t>(arrive_ms * 1000));
      link.estimator->OnReply(id + i, ExchangeReply{});
    }
    id += m;
    link.clock.Advance(50'000);
  }
  const LinkSnapshot s = link.Snapshot();
  ASSERT_EQ(s.uplink_status, UplinkStatus::kKnown);
  EXPECT_NEAR(s.uplink_bytes_per_s, bw, 0.05 * bw);
  EXPECT_NEAR(s.rtt_ms.p50, base_ms, 0.5);
}

TEST(LinkEstimatorTest, UplinkUnknownWhenTransferHidesInJitter) {
  LinkTestLink link;
  const double bw = MbitToBytesPerS(1000);  // a LAN: 2..40 kB take 16..320 us
  for (int i = 0; i < 80; ++i) {
    const uint64_t bytes = link.Size();
    link.Exchange(2.0 + 10 * link.Jitter() + 1000.0 * static_cast<double>(bytes) / bw, bytes);
  }
  const LinkSnapshot s = link.Snapshot();
  EXPECT_EQ(s.uplink_bytes_per_s, 0);
  EXPECT_EQ(s.uplink_status, UplinkStatus::kBelowNoise);
  EXPECT_STREQ(UplinkStatusName(s.uplink_status), "below_noise");
  EXPECT_GT(s.rtt_ms.samples, 0);  // the RTT is still known: the whole network time
}

TEST(LinkEstimatorTest, FollowsCloudQueueAndComputeSteps) {
  // The cloud gets busy: its queue goes from ~1 ms to ~30 ms and batches take 2.5x the profile.
  LinkTestLink link;
  const int k = link.estimator->options().shift_samples;
  for (int i = 0; i < 60; ++i)
    link.Exchange(5, 1000, 1000 + i % 3 * 100, 8000, ReplyStatus::kOk, 8000);
  LinkSnapshot s = link.Snapshot();
  EXPECT_NEAR(s.queue_ms.p50, 1.1, 1e-9);
  EXPECT_NEAR(s.compute_ratio.p95, 1.0, 1e-9);
  for (int i = 0; i < k; ++i)
    link.Exchange(5, 1000, 30000 + i * 100, 20000, ReplyStatus::kOk, 8000);
  s = link.Snapshot();
  EXPECT_EQ(s.queue_ms.samples, k);
  EXPECT_NEAR(s.queue_ms.p50, 30.2, 1e-9);  // nearest rank: the 3rd of 6
  EXPECT_NEAR(s.compute_ms.p50, 20, 1e-9);
  EXPECT_NEAR(s.compute_ratio.at_percentile, 2.5, 1e-9);
  EXPECT_NEAR(s.rtt_ms.p50, 5, 1e-9);  // the network did not change
  EXPECT_EQ(s.level_shifts, 3u);       // queue, compute and ratio windows
}

TEST(LinkEstimatorTest, OverloadedFractionOverRecentWindow) {
  LinkEstimatorOptions options;
  options.outcome_window = 20;
  LinkTestLink link(options);
  for (int i = 0; i < 20; ++i) link.Exchange(5);
  EXPECT_DOUBLE_EQ(link.Snapshot().overloaded_fraction, 0);
  for (int i = 0; i < 10; ++i) link.Exchange(5, 1000, 0, 0, ReplyStatus::kOverloaded);
  LinkSnapshot s = link.Snapshot();
  EXPECT_EQ(s.outcomes, 20);
  EXPECT_DOUBLE_EQ(s.overloaded_fraction, 0.5);
  EXPECT_DOUBLE_EQ(s.ok_fraction, 0.5);
  // Refusals come back at once: they are RTT samples, but not queue or compute ones.
  EXPECT_EQ(s.rtt_ms.samples, 30);
  EXPECT_EQ(s.queue_ms.samples, 20);
  for (int i = 0; i < 10; ++i) link.Exchange(5, 1000, 0, 0, ReplyStatus::kOverloaded);
  EXPECT_DOUBLE_EQ(link.Snapshot().overloaded_fraction, 1.0);
  // Deadline and error replies count as outcomes but give no timing.
  link.Exchange(5, 1000, 0, 0, ReplyStatus::kDeadlineExceeded);
  link.Exchange(5, 1000, 0, 0, ReplyStatus::kError);
  s = link.Snapshot();
  EXPECT_DOUBLE_EQ(s.deadline_fraction, 0.05);
  EXPECT_DOUBLE_EQ(s.error_fraction, 0.05);
  EXPECT_EQ(s.rtt_ms.samples, 40);
}

TEST(LinkEstimatorTest, TimeoutsAreCensoredRttSamplesAndLateRepliesCountOnce) {
  LinkTestLink link;
  for (int i = 0; i < 3; ++i) link.Exchange(5);
  link.estimator->OnSend(100, 1000);
  link.clock.Advance(250'000);
  link.estimator->OnTimeout(100);
  link.estimator->OnTimeout(100);  // once only
  LinkSnapshot s = link.Snapshot();
  EXPECT_EQ(s.timeouts, 1u);
  EXPECT_DOUBLE_EQ(s.timeout_fraction, 0.25);
  EXPECT_EQ(s.in_flight, 0u);
  EXPECT_EQ(s.rtt_ms.samples, 4);
  link.clock.Advance(150'000);
  link.estimator->OnReply(100, ExchangeReply{});
  s = link.Snapshot();
  EXPECT_EQ(s.late_replies, 1u);
  EXPECT_EQ(s.outcomes, 4);  // the late reply does not count twice
  EXPECT_DOUBLE_EQ(s.timeout_fraction, 0.25);
  // The timeout was a censored sample of 250 ms; the late reply adds no second one.
  EXPECT_EQ(s.rtt_ms.samples, 4);
  EXPECT_NEAR(s.rtt_ms.p99, 250, 1e-9);
  // A second reply for the same id, and one for an id never sent, are ignored.
  link.estimator->OnReply(100, ExchangeReply{});
  link.estimator->OnReply(12345, ExchangeReply{});
  EXPECT_EQ(link.Snapshot().unmatched_replies, 2u);
}

TEST(LinkEstimatorTest, DeadLinkShowsUpThroughTimeouts) {
  // No replies at all: the censored samples of the timeouts are a level shift like any other.
  LinkTestLink link;
  for (int i = 0; i < 100; ++i) link.Exchange(5.0 + link.Jitter());
  const int k = link.estimator->options().shift_samples;
  for (int i = 0; i < k; ++i) {
    const uint64_t id = 1000 + i;
    link.estimator->OnSend(id, 1000);
    link.clock.Advance(250'000);
    link.estimator->OnTimeout(id);
  }
  const LinkSnapshot s = link.Snapshot();
  EXPECT_EQ(s.level_shifts, 1u);
  EXPECT_NEAR(s.rtt_ms.p50, 250, 1e-9);
  EXPECT_NEAR(s.rtt_ms.base, 250, 1e-9);
  EXPECT_NEAR(s.timeout_fraction, static_cast<double>(k) / 50, 1e-9);
  EXPECT_EQ(s.in_flight, 0u);
}

TEST(LinkEstimatorTest, NegativeNetworkTimeIsClampedAndCounted) {
  LinkTestLink link;
  link.estimator->OnSend(1, 1000);
  link.clock.Advance(5'000);
  ExchangeReply reply;
  reply.queue_us = 4'000;
  reply.compute_us = 3'000;  // the cloud claims 7 ms of a 5 ms round trip
  link.estimator->OnReply(1, reply);
  const LinkSnapshot s = link.Snapshot();
  EXPECT_EQ(s.negative_network_times, 1u);
  EXPECT_EQ(s.rtt_ms.p50, 0);
}

TEST(LinkEstimatorTest, StaleAfterSilenceThenForgets) {
  LinkTestLink link;
  for (int i = 0; i < 10; ++i) link.Exchange(20, 1000, 1000, 2000, ReplyStatus::kOk, 1000);
  LinkSnapshot s = link.Snapshot();
  EXPECT_FALSE(s.stale);
  EXPECT_EQ(s.last_sample_age_us, 10'000);
  const LinkEstimatorOptions& o = link.estimator->options();
  link.clock.Advance(o.stale_after_us);
  s = link.Snapshot();
  EXPECT_TRUE(s.stale);
  EXPECT_EQ(s.rtt_ms.samples, 10);  // stale, still known
  link.clock.Advance(o.max_sample_age_us);
  s = link.Snapshot();
  EXPECT_TRUE(s.stale);
  EXPECT_FALSE(s.rtt_ms.known());
  EXPECT_FALSE(s.queue_ms.known());
  EXPECT_FALSE(s.compute_ms.known());
  EXPECT_FALSE(s.compute_ratio.known());
  EXPECT_EQ(s.outcomes, 0);
  EXPECT_EQ(s.uplink_bytes_per_s, 0);
  // The next sample starts from scratch: the forgotten ones do not weigh on it.
  link.Exchange(90);
  s = link.Snapshot();
  EXPECT_FALSE(s.stale);
  EXPECT_EQ(s.rtt_ms.samples, 1);
  EXPECT_NEAR(s.rtt_ms.p50, 90, 1e-9);
}

TEST(LinkEstimatorTest, NeverHeardIsStaleAndUnknown) {
  FakeClock clock;
  auto estimator = LinkEstimator::Create({}, clock);
  ASSERT_TRUE(estimator.ok());
  const LinkSnapshot s = (*estimator)->Snapshot();
  EXPECT_TRUE(s.stale);
  EXPECT_EQ(s.last_sample_age_us, -1);
  EXPECT_FALSE(s.rtt_ms.known());
  EXPECT_EQ(s.uplink_status, UplinkStatus::kFewSamples);
}

TEST(LinkEstimatorTest, ForgetsInFlightRequestsBeyondTheBound) {
  LinkEstimatorOptions options;
  options.max_in_flight = 4;
  LinkTestLink link(options);
  for (uint64_t id = 1; id <= 6; ++id) link.estimator->OnSend(id, 100);
  EXPECT_EQ(link.Snapshot().in_flight, 4u);
  link.estimator->OnReply(1, ExchangeReply{});  // evicted: oldest first
  link.estimator->OnReply(6, ExchangeReply{});
  const LinkSnapshot s = link.Snapshot();
  EXPECT_EQ(s.unmatched_replies, 1u);
  EXPECT_EQ(s.replies, 1u);
}

TEST(LinkEstimatorTest, InvalidOptionsAreRejected) {
  FakeClock clock;
  auto expect_invalid = [&](LinkEstimatorOptions o, const std::string& field) {
    auto created = LinkEstimator::Create(o, clock);
    ASSERT_FALSE(created.ok()) << field;
    EXPECT_EQ(created.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(created.status().message().find(field), std::string::npos)
        << created.status().message();
  };
  LinkEstimatorOptions o;
  o.window_samples = 4;
  expect_invalid(o, "window_samples");
  o = {};
  o.shift_samples = 1;
  expect_invalid(o, "shift_samples");
  o = {};
  o.shift_samples = 500;
  expect_invalid(o, "shift_samples");
  o = {};
  o.outcome_window = 0;
  expect_invalid(o, "outcome_window");
  o = {};
  o.max_sample_age_us = 0;
  expect_invalid(o, "max_sample_age_us");
  o = {};
  o.stale_after_us = o.max_sample_age_us + 1;
  expect_invalid(o, "stale_after_us");
  o = {};
  o.burst_gap_us = -1;
  expect_invalid(o, "burst_gap_us");
  o = {};
  o.max_in_flight = 0;
  expect_invalid(o, "max_in_flight");
  EXPECT_TRUE(LinkEstimatorOptions{}.Validate().ok());
}

}  // namespace
}  // namespace cleave::edge
