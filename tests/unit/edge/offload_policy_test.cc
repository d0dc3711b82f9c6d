// OffloadPolicy with a FakeClock, first on hand-made LinkSnapshots (which option each policy
// picks, hysteresis, the byte budget, the deadline guard as a property over random conditions,
// probing, invalid configurations), then end to end with a LinkEstimator fed by a simulated link
// (the link slows down and recovers; requests come back by their deadline at the percentile).
#include "edge/offload_policy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace cleave::edge {
namespace {

constexpr double kPolicyTestInf = std::numeric_limits<double>::infinity();

// A vision bundle's menu: 0 local only; 1 a shallow split (big features, most accurate); 2 a deep
// split (small features) — the calibrated one.
std::vector<OffloadOption> PolicyTestMenu() {
  OffloadOption local;
  local.split = -1;
  local.accuracy = 0.80;
  local.edge_ms = 20;
  OffloadOption shallow;
  shallow.split = 1;
  shallow.exit_threshold = 0.9;
  shallow.exit_fraction = 0.3;
  shallow.accuracy = 0.92;
  shallow.edge_ms = 5;
  shallow.cloud_ms = 10;
  shallow.request_bytes = 60000;
  OffloadOption deep;
  deep.split = 3;
  deep.exit_threshold = 0.9;
  deep.exit_fraction = 0.5;
  deep.accuracy = 0.91;
  deep.edge_ms = 12;
  deep.cloud_ms = 6;
  deep.request_bytes = 8000;
  return {local, shallow, deep};
}

OffloadPolicyOptions PolicyTestOptions(OffloadPolicyKind kind) {
  OffloadPolicyOptions o;
  o.kind = kind;
  o.menu = PolicyTestMenu();
  o.calibrated = 2;
  o.slo_ms = 100;
  o.max_bytes_per_s = 100'000;
  return o;
}

double Mbit(double mbit) { return mbit * 1e6 / 8; }

// A snapshot of a steady link: every quantile of the RTT at `rtt_ms`, of the queue at
// `queue_ms`, every recent exchange answered.
LinkSnapshot SteadyLink(const Clock& clock, double rtt_ms, double uplink_bytes_per_s,
                        double queue_ms = 0) {
  LinkSnapshot s;
  s.at_us = clock.NowMicros();
  s.percentile = 0.95;
  auto fill = [](WindowQuantiles& q, double v) {
    q.samples = 50;
    q.base = q.p50 = q.p95 = q.p99 = q.at_percentile = q.mean = v;
  };
  fill(s.rtt_ms, rtt_ms);
  fill(s.queue_ms, queue_ms);
  s.uplink_bytes_per_s = uplink_bytes_per_s;
  s.uplink_status = uplink_bytes_per_s > 0 ? UplinkStatus::kKnown : UplinkStatus::kBelowNoise;
  s.outcomes = 50;
  s.ok_fraction = 1;
  s.last_sample_age_us = 0;
  s.stale = false;
  return s;
}

std::unique_ptr<OffloadPolicy> MakePolicy(const OffloadPolicyOptions& options, const Clock& clock) {
  auto created = OffloadPolicy::Create(options, clock);
  EXPECT_TRUE(created.ok()) << created.status().ToString();
  return created.ok() ? std::move(created).value() : nullptr;
}

TEST(OffloadPolicyTest, StaticPolicyIsTodaysBehaviour) {
  FakeClock clock;
  auto policy = MakePolicy(PolicyTestOptions(OffloadPolicyKind::kStatic), clock);
  std::mt19937_64 rng(3);
  // Without estimates: the calibrated threshold decides, every unconfident input is offloaded.
  for (int i = 0; i < 200; ++i) {
    const OffloadPlan plan = policy->Plan();
    EXPECT_EQ(plan.option, 2);
    EXPECT_EQ(plan.split, 3);
    EXPECT_DOUBLE_EQ(plan.exit_threshold, 0.9);
    EXPECT_FALSE(plan.probe);
    const double confidence = std::uniform_real_distribution<double>(0, 1)(rng);
    const OffloadDecision d = policy->Decide(plan, confidence, 250);
    EXPECT_EQ(d.offload, confidence < 0.9);
    EXPECT_EQ(d.split, d.offload ? 3 : -1);
    EXPECT_FALSE(d.send_probe);
    clock.Advance(2'000'000);  // long silences: still no probe
  }
  // Whatever the link does, the option stays.
  for (double rtt : {5.0, 500.0, 20.0}) {
    clock.Advance(5'000'000);
    policy->Update(SteadyLink(clock, rtt, Mbit(0.1)));
    EXPECT_EQ(policy->State().option, 2);
  }
  const OffloadPolicyState s = policy->State();
  EXPECT_EQ(s.switches, 0u);
  EXPECT_EQ(s.probes, 0u);
  EXPECT_EQ(s.reason, ChoiceReason::kCalibrated);
  EXPECT_NE(s.why.find("calibrated option 2 (split 3"), std::string::npos) << s.why;
}

// A cloud that stopped answering: the guard holds requests back once the timeouts say the
// leg cannot make the deadline, and the static policy still sends one held-back request's
// features per probe interval, so the estimates learn when the cloud is back.
TEST(OffloadPolicyTest, StaticProbesWhileTheGuardHoldsRequestsBack) {
  FakeClock clock;
  auto policy = MakePolicy(PolicyTestOptions(OffloadPolicyKind::kStatic), clock);
  policy->Update(SteadyLink(clock, 400, Mbit(10)));  // the leg now takes > 400 ms
  int probes = 0, offloaded = 0;
  for (int i = 0; i < 40; ++i) {  // 40 requests over 4 s of silence
    const OffloadPlan plan = policy->Plan();
    EXPECT_FALSE(plan.probe);
    const OffloadDecision d = policy->Decide(plan, /*confidence=*/0.1, /*remaining_ms=*/250);
    EXPECT_FALSE(d.offload);
    EXPECT_EQ(d.reason, DecisionReason::kDeadline);
    if (d.send_probe) {
      ++probes;
      EXPECT_EQ(d.split, 3);
    }
    offloaded += d.offload ? 1 : 0;
    clock.Advance(100'000);
  }
  EXPECT_GE(probes, 3);
  EXPECT_LE(probes, 5);  // one per second of silence
  EXPECT_EQ(policy->State().probes, static_cast<uint64_t>(probes));
  EXPECT_EQ(policy->State().switches, 0u);
}

TEST(OffloadPolicyTest, SloPicksTheMostAccurateOptionThatFits) {
  FakeClock clock;
  auto policy = MakePolicy(PolicyTestOptions(OffloadPolicyKind::kSlo), clock);
  policy->Update(SteadyLink(clock, 10, Mbit(10)));
  const OffloadPolicyState s = policy->State();
  EXPECT_EQ(s.option, 1);
  EXPECT_EQ(s.split, 1);
  // 5 edge + 60000 B at 1.25 MB/s (48) + 10 RTT + 10 tail.
  EXPECT_NEAR(s.predicted_latency_ms, 73, 1e-9);
  EXPECT_NEAR(policy->PredictedLatencyMs(2), 12 + 6.4 + 10 + 6, 1e-9);
  EXPECT_NEAR(policy->PredictedLatencyMs(0), 20, 1e-9);
  EXPECT_EQ(s.reason, ChoiceReason::kBestMeetsObjective);
  EXPECT_STREQ(ChoiceReasonName(s.reason), "best_meets_objective");
  EXPECT_NE(s.why.find("option 1 (split 1"), std::string::npos) << s.why;
  EXPECT_NE(s.why.find("slo 100.0 ms at p95"), std::string::npos) << s.why;
  EXPECT_EQ(s.switches, 1u);  // from the calibrated option 2
}

TEST(OffloadPolicyTest, SloGoesLocalWhenTheLinkSlowsAndBackWhenItRecovers) {
  FakeClock clock;
  auto policy = MakePolicy(PolicyTestOptions(OffloadPolicyKind::kSlo), clock);
  policy->Update(SteadyLink(clock, 10, Mbit(10)));
  ASSERT_EQ(policy->State().option, 1);
  clock.Advance(100'000);
  policy->Update(SteadyLink(clock, 300, Mbit(10)));
  EXPECT_EQ(policy->State().option, 0);  // at once: no dwell when the objective is missed
  EXPECT_EQ(policy->State().switches, 2u);
  // Recovered, but the last switch was 0.5 s ago: held for min_dwell_us.
  clock.Advance(500'000);
  policy->Update(SteadyLink(clock, 10, Mbit(10)));
  OffloadPolicyState s = policy->State();
  EXPECT_EQ(s.option, 0);
  EXPECT_EQ(s.reason, ChoiceReason::kHeldByHysteresis);
  EXPECT_NE(s.why.find("dwell"), std::string::npos) << s.why;
  clock.Advance(500'000);
  policy->Update(SteadyLink(clock, 10, Mbit(10)));
  s = policy->State();
  EXPECT_EQ(s.option, 1);
  EXPECT_EQ(s.switches, 3u);
  EXPECT_EQ(s.last_switch_us, clock.NowMicros());
}

TEST(OffloadPolicyTest, SloMovesTheSplitPointWithTheBandwidth) {
  FakeClock clock;
  auto policy = MakePolicy(PolicyTestOptions(OffloadPolicyKind::kSlo), clock);
  // 10 Mbit/s: the shallow split; 2 Mbit/s: 60 kB take 240 ms, the deep split's 8 kB 32 ms;
  // 200 kbit/s: even 8 kB take 320 ms, local only.
  const std::pair<double, int> steps[] = {{10, 1}, {2, 2}, {0.2, 0}, {2, 2}, {10, 1}};
  for (const auto& [mbit, expected] : steps) {
    clock.Advance(2'000'000);
    policy->Update(SteadyLink(clock, 10, Mbit(mbit)));
    EXPECT_EQ(policy->State().option, expected) << mbit << " Mbit/s: " << policy->State().why;
  }
  EXPECT_EQ(policy->State().switches, 5u);
}

TEST(OffloadPolicyTest, SloFallsBackToTheFastestWhenNothingFits) {
  FakeClock clock;
  OffloadPolicyOptions o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.slo_ms = 15;  // below even the local path's 20 ms
  auto policy = MakePolicy(o, clock);
  policy->Update(SteadyLink(clock, 10, Mbit(10)));
  const OffloadPolicyState s = policy->State();
  EXPECT_EQ(s.option, 0);
  EXPECT_EQ(s.reason, ChoiceReason::kNoneMeetsObjective);
  EXPECT_NE(s.why.find("fastest"), std::string::npos) << s.why;
}

TEST(OffloadPolicyTest, SloCorrectsTheTailByTheLiveComputeRatioAndQueue) {
  FakeClock clock;
  auto policy = MakePolicy(PolicyTestOptions(OffloadPolicyKind::kSlo), clock);
  LinkSnapshot link = SteadyLink(clock, 10, Mbit(10), 4);
  link.compute_ratio.samples = 10;
  link.compute_ratio.at_percentile = 2.5;
  policy->Update(link);
  EXPECT_NEAR(policy->PredictedCloudLegMs(1), 48 + 10 + 4 + 10 * 2.5, 1e-9);
  EXPECT_NEAR(policy->PredictedCloudLegMs(0), 0, 1e-9);
}

TEST(OffloadPolicyTest, OverloadedCloudLowersTheValueOfOffloading) {
  FakeClock clock;
  auto policy = MakePolicy(PolicyTestOptions(OffloadPolicyKind::kSlo), clock);
  LinkSnapshot link = SteadyLink(clock, 10, Mbit(10));
  policy->Update(link);
  ASSERT_EQ(policy->State().option, 1);
  // 60% of the requests come back `overloaded`: they get the edge's answer.
  link.ok_fraction = 0.4;
  link.overloaded_fraction = 0.6;
  clock.Advance(2'000'000);
  link.at_us = clock.NowMicros();
  policy->Update(link);
  // 0.92 - 0.7 * 0.6 * 0.12 = 0.8696 < 0.91 - 0.5 * 0.6 * 0.11 = 0.877: the split that offloads
  // less wins.
  EXPECT_NEAR(policy->EffectiveAccuracy(1), 0.8696, 1e-9);
  EXPECT_NEAR(policy->EffectiveAccuracy(2), 0.877, 1e-9);
  EXPECT_NEAR(policy->EffectiveAccuracy(0), 0.80, 1e-9);
  EXPECT_EQ(policy->State().option, 2);
}

TEST(OffloadPolicyTest, HysteresisKeepsNoiseFromFlapping) {
  // The shallow split's prediction wanders around the SLO (RTT 32..42 ms -> 95..105 ms).
  auto run = [](double hysteresis, int64_t dwell_us) {
    FakeClock clock;
    OffloadPolicyOptions o = PolicyTestOptions(OffloadPolicyKind::kSlo);
    o.hysteresis = hysteresis;
    o.min_dwell_us = dwell_us;
    auto policy = MakePolicy(o, clock);
    std::mt19937_64 rng(11);
    policy->Update(SteadyLink(clock, 10, Mbit(10)));
    for (int i = 0; i < 1000; ++i) {
      clock.Advance(100'000);
      const double rtt = std::uniform_real_distribution<double>(32, 42)(rng);
      policy->Update(SteadyLink(clock, rtt, Mbit(10)));
    }
    return policy->State();
  };
  const OffloadPolicyState damped = run(0.1, 1'000'000);
  EXPECT_LE(damped.switches, 2u);  // to the shallow split, then once to the deep one for good
  EXPECT_EQ(damped.option, 2);
  // The same noise without hysteresis flaps, so the test above means something.
  EXPECT_GT(run(0, 0).switches, 100u);
}

TEST(OffloadPolicyTest, BytesPolicyKeepsToTheBudget) {
  FakeClock clock;
  auto policy = MakePolicy(PolicyTestOptions(OffloadPolicyKind::kBytes), clock);
  std::mt19937_64 rng(5);
  // Serves `rate` requests/s for `seconds`, deciding each with a confidence that reaches the
  // threshold as often as the option says; returns the offloaded bytes per second.
  auto serve = [&](double rate, double seconds) {
    double bytes = 0;
    const int n = static_cast<int>(rate * seconds);
    for (int i = 0; i < n; ++i) {
      clock.Advance(static_cast<int64_t>(1e6 / rate));
      policy->Update(SteadyLink(clock, 10, Mbit(10)));
      const OffloadPlan plan = policy->Plan();
      const OffloadOption& option = policy->options().menu[plan.option];
      const bool confident =
          std::uniform_real_distribution<double>(0, 1)(rng) < option.exit_fraction;
      const OffloadDecision d = policy->Decide(plan, confident ? 0.99 : 0.1, 250);
      if (d.offload) bytes += option.request_bytes;
    }
    return bytes / seconds;
  };
  // 2 requests/s: the shallow split sends 2 * 0.7 * 60 kB = 84 kB/s, within the 100 kB/s budget
  // with headroom.
  serve(2, 10);
  OffloadPolicyState s = policy->State();
  EXPECT_NEAR(s.request_rate, 2, 0.1);
  EXPECT_EQ(s.option, 1) << s.why;
  EXPECT_LE(serve(2, 10), 100'000 * 1.1);
  // 10 requests/s: only the deep split fits (40 kB/s).
  serve(10, 6);
  s = policy->State();
  EXPECT_EQ(s.option, 2) << s.why;
  EXPECT_LE(s.predicted_bytes_per_s, 100'000);
  EXPECT_LE(serve(10, 10), 100'000);
  // 50 requests/s: the deep split would send 200 kB/s: local only.
  serve(50, 6);
  s = policy->State();
  EXPECT_EQ(s.option, 0) << s.why;
  EXPECT_EQ(serve(50, 5), 0);
  EXPECT_EQ(s.reason, ChoiceReason::kBestMeetsObjective);
  EXPECT_NE(s.why.find("budget 100000 B/s"), std::string::npos) << s.why;
}

// What the file comment says the cloud leg is.
double ExpectedLegMs(const OffloadOption& o, const LinkSnapshot& link, double assumed_uplink) {
  if (!o.offloads()) return 0;
  const double uplink = link.uplink_bytes_per_s > 0 ? link.uplink_bytes_per_s : assumed_uplink;
  const double transfer = uplink > 0 ? 1000 * o.request_bytes / uplink : 0;
  const double ratio = link.compute_ratio.known() ? link.compute_ratio.at_percentile : 1;
  return transfer + link.rtt_ms.at_percentile + link.queue_ms.at_percentile + o.cloud_ms * ratio;
}

TEST(OffloadPolicyTest, NeverOffloadsWhatCannotComeBackByTheDeadline) {
  std::mt19937_64 rng(2024);
  std::uniform_real_distribution<double> unit(0, 1);
  int offloaded = 0;
  int guarded = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    FakeClock clock(1'000'000);
    const OffloadPolicyKind kinds[] = {OffloadPolicyKind::kStatic, OffloadPolicyKind::kSlo,
                                       OffloadPolicyKind::kBytes};
    OffloadPolicyOptions o = PolicyTestOptions(kinds[trial % 3]);
    o.calibrated = 1 + trial % 2;
    o.slo_ms = 20 + 400 * unit(rng);
    o.assumed_uplink_bytes_per_s = unit(rng) < 0.5 ? 0 : Mbit(1);
    auto policy = MakePolicy(o, clock);
    LinkSnapshot link = SteadyLink(clock, 1 + 500 * unit(rng), 0, 100 * unit(rng));
    if (unit(rng) < 0.7) link.uplink_bytes_per_s = Mbit(0.1 + 20 * unit(rng));
    if (unit(rng) < 0.5) {
      link.compute_ratio.samples = 10;
      link.compute_ratio.at_percentile = 0.5 + 3 * unit(rng);
    }
    if (unit(rng) < 0.2) link = LinkSnapshot{};  // nothing measured yet
    link.ok_fraction = unit(rng) < 0.3 ? unit(rng) : link.ok_fraction;
    clock.Advance(static_cast<int64_t>(3e6 * unit(rng)));
    policy->Update(link);
    for (int r = 0; r < 5; ++r) {
      const OffloadPlan plan = policy->Plan();
      double remaining = 1000 * unit(rng) - 50;
      if (unit(rng) < 0.05) remaining = kPolicyTestInf;
      if (unit(rng) < 0.02) remaining = std::nan("");
      const OffloadDecision d = policy->Decide(plan, unit(rng), remaining);
      const OffloadOption& option = o.menu[plan.option];
      const double leg = ExpectedLegMs(option, link, o.assumed_uplink_bytes_per_s);
      if (d.offload) {
        ++offloaded;
        ASSERT_TRUE(option.offloads());
        ASSERT_LE(leg, remaining) << "trial " << trial;
        ASSERT_GE(leg, link.rtt_ms.at_percentile);
        ASSERT_EQ(d.split, option.split);
        ASSERT_NEAR(d.predicted_leg_ms, leg, 1e-9);
      } else if (d.reason == DecisionReason::kDeadline) {
        ++guarded;
        ASSERT_FALSE(leg <= remaining) << "trial " << trial;
      }
    }
  }
  // Both sides of the guard were exercised.
  EXPECT_GT(offloaded, 1000);
  EXPECT_GT(guarded, 1000);
}

TEST(OffloadPolicyTest, ProbesOncePerIntervalWhileTheCloudIsSilent) {
  FakeClock clock(1'000'000);
  OffloadPolicyOptions options = PolicyTestOptions(OffloadPolicyKind::kSlo);
  options.recovery_probe_interval_us = options.probe_interval_us;  // see the next test
  auto policy = MakePolicy(options, clock);
  LinkSnapshot link = SteadyLink(clock, 400, Mbit(10));
  policy->Update(link);
  ASSERT_EQ(policy->State().option, 0);
  // 10 s of requests every 10 ms, nothing sent, nothing heard.
  const int64_t heard_us = clock.NowMicros();
  int probes = 0;
  for (int i = 0; i < 1000; ++i) {
    clock.Advance(10'000);
    if (i % 10 == 0) {
      link.at_us = clock.NowMicros();
      link.last_sample_age_us = clock.NowMicros() - heard_us;
      link.stale = link.last_sample_age_us > 2'000'000;
      policy->Update(link);
    }
    const OffloadPlan plan = policy->Plan();
    const OffloadDecision d = policy->Decide(plan, 0.1, 250);
    if (!plan.probe) {
      EXPECT_EQ(plan.option, 0);
      EXPECT_FALSE(d.offload || d.send_probe);
      continue;
    }
    ++probes;
    // The cheapest offloading option; the current option is local, so the request is answered
    // locally as it would be, and the features go out as a probe only.
    EXPECT_EQ(plan.option, 2);
    EXPECT_EQ(plan.split, 3);
    EXPECT_FALSE(d.offload);
    EXPECT_TRUE(d.send_probe);
    EXPECT_EQ(d.split, 3);
    EXPECT_EQ(d.reason, DecisionReason::kLocalOption);
  }
  EXPECT_EQ(probes, 10);  // the first after 1 s of silence, then one a second
  EXPECT_EQ(policy->State().probes, 10u);
  // No probes while replies keep coming.
  link.last_sample_age_us = 0;
  link.at_us = clock.NowMicros();
  policy->Update(link);
  for (int i = 0; i < 50; ++i) {
    clock.Advance(10'000);
    EXPECT_FALSE(policy->Plan().probe);
  }
}

// Held local by a slow link while more accurate options offload, the policy probes every
// recovery_probe_interval_us, so the six samples that confirm a recovered link come within
// about a second; when the local option is the most accurate anyway, once a second.
TEST(OffloadPolicyTest, ProbesOftenWhileHeldLocalByTheLink) {
  for (const bool local_is_best : {false, true}) {
    FakeClock clock(1'000'000);
    OffloadPolicyOptions options = PolicyTestOptions(OffloadPolicyKind::kSlo);
    if (local_is_best) options.menu[0].accuracy = 0.95;
    auto policy = MakePolicy(options, clock);
    LinkSnapshot link = SteadyLink(clock, 400, Mbit(10));
    policy->Update(link);
    ASSERT_EQ(policy->State().option, 0) << local_is_best;
    const int64_t heard_us = clock.NowMicros();
    int probes = 0;
    for (int i = 0; i < 300; ++i) {  // 3 s of requests every 10 ms, nothing heard
      clock.Advance(10'000);
      link.at_us = clock.NowMicros();
      link.last_sample_age_us = clock.NowMicros() - heard_us;
      policy->Update(link);
      probes += policy->Plan().probe;
    }
    EXPECT_EQ(probes, local_is_best ? 3 : 30) << local_is_best;
  }
}

// A probe while the policy is local for want of a link never makes its request wait on the
// link, even when the deadline would allow the leg: the answer is local, the features go only
// for the estimates. A probe on an offloading current option is an ordinary request.
TEST(OffloadPolicyTest, AProbeFromTheLocalOptionIsAnsweredLocally) {
  FakeClock clock(1'000'000);
  auto policy = MakePolicy(PolicyTestOptions(OffloadPolicyKind::kSlo), clock);
  LinkSnapshot link = SteadyLink(clock, 150, Mbit(10));  // over the 100 ms objective
  link.last_sample_age_us = 5'000'000;                   // and silent: a probe is due
  policy->Update(link);
  ASSERT_EQ(policy->State().option, 0);
  const OffloadPlan plan = policy->Plan();
  ASSERT_TRUE(plan.probe);
  const OffloadDecision d = policy->Decide(plan, 0.1, /*remaining_ms=*/10'000);
  EXPECT_FALSE(d.offload);
  EXPECT_TRUE(d.send_probe);
  EXPECT_EQ(d.reason, DecisionReason::kLocalOption);
  EXPECT_EQ(d.split, plan.split);
  // A fast link, silent for a while: the probe rides the current (offloading) option.
  LinkSnapshot fast = SteadyLink(clock, 5, Mbit(10));
  fast.last_sample_age_us = 5'000'000;
  clock.Advance(2'000'000);
  fast.at_us = clock.NowMicros();
  policy->Update(fast);
  ASSERT_TRUE(policy->options().menu[static_cast<size_t>(policy->State().option)].offloads());
  const OffloadPlan on_current = policy->Plan();
  ASSERT_TRUE(on_current.probe);
  const OffloadDecision sent = policy->Decide(on_current, 0.1, 10'000);
  EXPECT_TRUE(sent.offload);
  EXPECT_FALSE(sent.send_probe);
}

TEST(OffloadPolicyTest, InvalidConfigurationsAreRejected) {
  FakeClock clock;
  auto expect_invalid = [&](const OffloadPolicyOptions& o, const std::string& words) {
    auto created = OffloadPolicy::Create(o, clock);
    ASSERT_FALSE(created.ok()) << words;
    EXPECT_EQ(created.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(created.status().message().find(words), std::string::npos)
        << created.status().message();
  };
  OffloadPolicyOptions o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.menu.clear();
  expect_invalid(o, "option menu is empty");
  for (double slo : {0.0, -5.0, std::nan(""), kPolicyTestInf}) {
    o = PolicyTestOptions(OffloadPolicyKind::kSlo);
    o.slo_ms = slo;
    expect_invalid(o, "slo_ms must be > 0");
  }
  for (double p : {0.0, 1.0, 1.5, -0.1, std::nan("")}) {
    o = PolicyTestOptions(OffloadPolicyKind::kSlo);
    o.percentile = p;
    expect_invalid(o, "percentile must be in (0, 1)");
  }
  o = PolicyTestOptions(OffloadPolicyKind::kBytes);
  o.max_bytes_per_s = 0;
  expect_invalid(o, "max_bytes_per_s must be > 0");
  o = PolicyTestOptions(OffloadPolicyKind::kStatic);
  o.calibrated = 3;
  expect_invalid(o, "calibrated must index the menu (0..2), got 3");
  o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.hysteresis = 1;
  expect_invalid(o, "hysteresis");
  o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.min_dwell_us = -1;
  expect_invalid(o, "min_dwell_us");
  o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.probe_interval_us = 0;
  expect_invalid(o, "probe_interval_us");
  o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.recovery_probe_interval_us = -5;
  expect_invalid(o, "recovery_probe_interval_us");
  o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.rate_window_us = 10;
  expect_invalid(o, "rate_window_us");
  o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.assumed_uplink_bytes_per_s = -1;
  expect_invalid(o, "assumed_uplink_bytes_per_s");
  o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.menu[1].accuracy = 1.2;
  expect_invalid(o, "option 1: accuracy must be in [0, 1]");
  o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.menu[2].exit_fraction = -0.1;
  expect_invalid(o, "option 2: exit_fraction");
  o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.menu[0].split = -2;
  expect_invalid(o, "option 0: split");
  o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.menu[1].edge_ms = std::nan("");
  expect_invalid(o, "option 1: edge_ms");
  o = PolicyTestOptions(OffloadPolicyKind::kSlo);
  o.menu[1].request_bytes = -1;
  expect_invalid(o, "option 1: request_bytes");
  // What a policy does not use is not checked for it.
  o = PolicyTestOptions(OffloadPolicyKind::kStatic);
  o.slo_ms = 0;
  o.max_bytes_per_s = 0;
  EXPECT_TRUE(o.Validate().ok());

  EXPECT_EQ(*ParseOffloadPolicyKind("slo"), OffloadPolicyKind::kSlo);
  EXPECT_EQ(*ParseOffloadPolicyKind("bytes"), OffloadPolicyKind::kBytes);
  EXPECT_EQ(*ParseOffloadPolicyKind("static"), OffloadPolicyKind::kStatic);
  const auto bad = ParseOffloadPolicyKind("fast");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("static, slo or bytes"), std::string::npos);
}

// --- End to end: OffloadPolicy + LinkEstimator over a simulated link -------------------------

struct SimLinkState {
  double rtt_ms = 10;               // fixed part of the network time
  double jitter_ms = 1;             // uniform in [0, jitter_ms), or exponential (below)
  bool exponential_jitter = false;  // jitter ~ Exp(mean jitter_ms)
  double uplink_bytes_per_s = Mbit(10);
};

// Requests arrive every `interval_ms`; each runs the policy, and what it sends crosses the
// simulated link to a cloud that computes for the option's cloud_ms. Every send, reply and
// timeout reaches the estimator at its time on the FakeClock.
class PolicySim {
 public:
  explicit PolicySim(OffloadPolicyOptions options) {
    auto estimator = LinkEstimator::Create({}, clock);
    EXPECT_TRUE(estimator.ok());
    estimator_ = std::move(estimator).value();
    policy = MakePolicy(options, clock);
  }

  struct Totals {
    int requests = 0;
    int offloaded = 0;
    int late = 0;  // offloaded, and the reply came after the deadline
    int probes_sent = 0;
    int guarded = 0;  // answered locally by the deadline guard
  };

  // Serves requests for `seconds`; `deadline_ms` draws each request's deadline. Calls
  // `each(now_us, option)` after every request.
  template <typename Deadline, typename Each>
  Totals Run(double seconds, const SimLinkState& link, Deadline deadline_ms, Each each,
             double interval_ms = 20) {
    Totals totals;
    const int64_t end = clock.NowMicros() + static_cast<int64_t>(seconds * 1e6);
    while (true) {
      const int64_t arrival = clock.NowMicros() + static_cast<int64_t>(interval_ms * 1000);
      if (arrival > end) break;
      DeliverUntil(arrival);
      clock.Set(arrival);
      policy->Update(estimator_->Snapshot(policy->options().percentile));
      const OffloadPlan plan = policy->Plan();
      const OffloadOption& option = policy->options().menu[plan.option];
      const bool confident = unit_(rng_) < option.exit_fraction;
      const double remaining = deadline_ms() - option.edge_ms;
      const OffloadDecision d = policy->Decide(plan, confident ? 0.99 : 0.1, remaining);
      ++totals.requests;
      if (d.reason == DecisionReason::kDeadline) ++totals.guarded;
      if (d.offload || d.send_probe) {
        const bool late = Send(option, link, remaining);
        if (d.offload) {
          ++totals.offloaded;
          if (late) ++totals.late;
        } else {
          ++totals.probes_sent;
        }
      }
      each(clock.NowMicros(), policy->State().option);
    }
    return totals;
  }

  FakeClock clock{1'000'000};
  std::unique_ptr<OffloadPolicy> policy;

 private:
  struct Event {
    bool timeout = false;
    uint64_t id = 0;
    uint64_t compute_us = 0;
  };

  // Sends one request; returns whether its reply will miss `remaining_ms`.
  bool Send(const OffloadOption& option, const SimLinkState& link, double remaining_ms) {
    const uint64_t id = next_id_++;
    const double bytes = option.request_bytes * (0.8 + 0.4 * unit_(rng_));
    estimator_->OnSend(id, static_cast<uint64_t>(bytes),
                       static_cast<int64_t>(option.cloud_ms * 1000));
    const double jitter = link.exponential_jitter
                              ? std::exponential_distribution<double>(1 / link.jitter_ms)(rng_)
                              : link.jitter_ms * unit_(rng_);
    const double total_ms =
        link.rtt_ms + jitter + 1000 * bytes / link.uplink_bytes_per_s + option.cloud_ms;
    const int64_t now = clock.NowMicros();
    const auto compute_us = static_cast<uint64_t>(option.cloud_ms * 1000);
    events_.emplace(now + static_cast<int64_t>(total_ms * 1000), Event{false, id, compute_us});
    const bool late = total_ms > remaining_ms;
    if (late) {
      events_.emplace(now + static_cast<int64_t>(std::max(0.0, remaining_ms) * 1000),
                      Event{true, id, 0});
    }
    return late;
  }

  void DeliverUntil(int64_t until_us) {
    while (!events_.empty() && events_.begin()->first <= until_us) {
      const auto [at, event] = *events_.begin();
      events_.erase(events_.begin());
      clock.Set(at);
      if (event.timeout) {
        estimator_->OnTimeout(event.id);
      } else {
        ExchangeReply reply;
        reply.wire_bytes = 60;
        reply.compute_us = event.compute_us;
        estimator_->OnReply(event.id, reply);
      }
    }
  }

  std::unique_ptr<LinkEstimator> estimator_;
  std::multimap<int64_t, Event> events_;
  uint64_t next_id_ = 1;
  std::mt19937_64 rng_{99};
  std::uniform_real_distribution<double> unit_{0, 1};
};

TEST(OffloadPolicyTest, EndToEndLinkSlowsDownAndRecovers) {
  PolicySim sim(PolicyTestOptions(OffloadPolicyKind::kSlo));
  auto deadline = [] { return 250.0; };
  int last_option = -1;
  auto track = [&](int64_t, int option) { last_option = option; };

  // Fast link: the shallow split.
  PolicySim::Totals fast = sim.Run(10, SimLinkState{}, deadline, track);
  EXPECT_EQ(last_option, 1) << sim.policy->State().why;
  EXPECT_EQ(fast.late, 0);
  EXPECT_GT(fast.offloaded, 200);

  // The RTT jumps to 400 ms: local within a second, and only what was already on its way (and
  // the few sent before the censored timeouts confirmed the shift) misses its deadline.
  SimLinkState slow;
  slow.rtt_ms = 400;
  const int64_t slow_start = sim.clock.NowMicros();
  int64_t went_local = -1;
  PolicySim::Totals slow_totals = sim.Run(10, slow, deadline, [&](int64_t now, int option) {
    if (option == 0 && went_local < 0) went_local = now;
    last_option = option;
  });
  ASSERT_GE(went_local, 0);
  EXPECT_LT(went_local - slow_start, 1'000'000);
  EXPECT_EQ(last_option, 0);
  EXPECT_LE(slow_totals.late, 25);
  // While local for want of a link, the policy probes after every recovery_probe_interval_us
  // (100 ms) of silence (a probe's timeout is news, so the next one waits for another 100 ms).
  EXPECT_GE(slow_totals.probes_sent, 20);
  EXPECT_LE(slow_totals.probes_sent, 100);

  // The link recovers: the probes' fast replies confirm a level shift after shift_samples of
  // them, and the policy offloads again; the shallow split once the failures of the slow phase
  // have left the outcome window.
  const int64_t fast_again = sim.clock.NowMicros();
  int64_t offloading_again = -1;
  PolicySim::Totals recovered = sim.Run(20, SimLinkState{}, deadline, [&](int64_t now, int option) {
    if (option != 0 && offloading_again < 0) offloading_again = now;
    last_option = option;
  });
  ASSERT_GE(offloading_again, 0);
  // Six probes' replies confirm the recovery: well within two seconds.
  EXPECT_LT(offloading_again - fast_again, 2'000'000);
  EXPECT_EQ(last_option, 1) << sim.policy->State().why;
  EXPECT_EQ(recovered.late, 0);
}

TEST(OffloadPolicyTest, EndToEndOffloadsReturnByTheirDeadlineAtThePercentile) {
  // A jittery link (RTT 30 ms + Exp(20 ms): p95 90 ms) and the static policy's deep split, whose
  // leg is about 102 ms at p95. Deadlines of 100..140 ms leave 88..128 ms after the head, so the
  // guard decides close to the line every time: it sends an input only when the leg's p95 fits,
  // and at most 5% of what it sends may come back late.
  PolicySim sim(PolicyTestOptions(OffloadPolicyKind::kStatic));
  SimLinkState link;
  link.rtt_ms = 30;
  link.jitter_ms = 20;
  link.exponential_jitter = true;
  std::mt19937_64 rng(8);
  auto deadline = [&] { return std::uniform_real_distribution<double>(100, 140)(rng); };
  sim.Run(5, link, deadline, [](int64_t, int) {});  // warm the estimator
  const PolicySim::Totals t = sim.Run(120, link, deadline, [](int64_t, int) {});
  ASSERT_GT(t.offloaded, 1000);
  EXPECT_GT(t.guarded, 500);
  EXPECT_LE(static_cast<double>(t.late) / t.offloaded, 0.05)
      << t.late << " of " << t.offloaded << " offloads came back late";
}

}  // namespace
}  // namespace cleave::edge
