#include "common/metrics.h"

#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <set>
#include <string>

namespace cleave {
namespace {

std::string Text(const Metrics& metrics) {
  return prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
}

bool Has(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

TEST(MetricsTest, ServiceSeriesExistFromTheStartAndCount) {
  Metrics metrics;
  EXPECT_TRUE(metrics.registry()->Collect().empty()) << "families are registered on first use";
  const ServiceMetrics& cloud = metrics.Service("cloud");
  EXPECT_EQ(&cloud, &metrics.Service("cloud")) << "children are created once";
  std::string text = Text(metrics);
  for (const char* outcome :
       {"exit", "offload", "degraded", "rejected", "error", "ok", "overloaded"}) {
    EXPECT_TRUE(Has(text, std::string("cleave_requests_total{component=\"cloud\",outcome=\"") +
                              outcome + "\"} 0"))
        << outcome << "\n"
        << text;
  }
  EXPECT_TRUE(Has(text, "cleave_wire_bytes_total{component=\"cloud\",direction=\"sent\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_wire_bytes_total{component=\"cloud\",direction=\"received\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_pending_requests{component=\"cloud\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_model_version{component=\"cloud\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_queue_seconds_count{component=\"cloud\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_compute_seconds_count{component=\"cloud\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_batch_size_count{component=\"cloud\"} 0"));
  // Only what is used is exported: no federated, edge-count or CURVE series on this daemon.
  EXPECT_FALSE(Has(text, "cleave_federated")) << text;
  EXPECT_FALSE(Has(text, "cleave_connected_edges")) << text;
  EXPECT_FALSE(Has(text, "cleave_curve_refused_total")) << text;

  cloud.Count(Outcome::kOk, 3);
  cloud.Count(Outcome::kRejected);
  cloud.wire_bytes_received->Increment(120);
  cloud.wire_bytes_sent->Increment(64);
  cloud.pending_requests->Set(2);
  cloud.queue_seconds->Observe(0.0003);
  cloud.compute_seconds->Observe(0.004);
  cloud.batch_size->Observe(5);
  // Another component gets its own children on the same families.
  metrics.Service("edge").Count(Outcome::kExit);
  text = Text(metrics);
  EXPECT_TRUE(Has(text, "cleave_requests_total{component=\"cloud\",outcome=\"ok\"} 3")) << text;
  EXPECT_TRUE(Has(text, "cleave_requests_total{component=\"cloud\",outcome=\"rejected\"} 1"));
  EXPECT_TRUE(Has(text, "cleave_requests_total{component=\"cloud\",outcome=\"exit\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_requests_total{component=\"edge\",outcome=\"exit\"} 1"));
  EXPECT_TRUE(Has(text, "cleave_wire_bytes_total{component=\"cloud\",direction=\"received\"} 120"));
  EXPECT_TRUE(Has(text, "cleave_wire_bytes_total{component=\"cloud\",direction=\"sent\"} 64"));
  EXPECT_TRUE(Has(text, "cleave_pending_requests{component=\"cloud\"} 2"));
  // Each observation lands in the first bucket that holds it (buckets are cumulative).
  EXPECT_TRUE(Has(text, "cleave_queue_seconds_bucket{component=\"cloud\",le=\"0.00025\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_queue_seconds_bucket{component=\"cloud\",le=\"0.0005\"} 1"));
  EXPECT_TRUE(Has(text, "cleave_compute_seconds_bucket{component=\"cloud\",le=\"0.0025\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_compute_seconds_bucket{component=\"cloud\",le=\"0.005\"} 1"));
  EXPECT_TRUE(Has(text, "cleave_batch_size_bucket{component=\"cloud\",le=\"4\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_batch_size_bucket{component=\"cloud\",le=\"8\"} 1"));
  EXPECT_TRUE(Has(text, "cleave_batch_size_sum{component=\"cloud\"} 5"));
  EXPECT_TRUE(Has(text, "cleave_batch_size_count{component=\"edge\"} 0"));
}

TEST(MetricsTest, FederatedEdgesAndCurveSeries) {
  Metrics metrics;
  const FederatedMetrics& fed = metrics.Federated();
  EXPECT_EQ(&fed, &metrics.Federated());
  fed.round->Set(4);
  fed.updates_accepted->Increment(2);
  fed.updates_rejected->Increment();
  fed.updates_late->Increment();
  fed.updates_failed->Increment(3);
  fed.round_duration_seconds->Observe(42);
  fed.dp_epsilon->Set(2.5);
  fed.identity_mismatch->Increment(5);
  fed.identity_taken->Increment();
  metrics.ConnectedEdges().Set(7);
  EXPECT_EQ(&metrics.ConnectedEdges(), &metrics.ConnectedEdges());
  prometheus::Counter& refused = metrics.CurveRefused("aggregator");
  EXPECT_EQ(&refused, &metrics.CurveRefused("aggregator"));
  refused.Increment();
  const std::string text = Text(metrics);
  EXPECT_TRUE(Has(text, "cleave_federated_round 4")) << text;
  EXPECT_TRUE(Has(text, "cleave_federated_updates_total{status=\"accepted\"} 2"));
  EXPECT_TRUE(Has(text, "cleave_federated_updates_total{status=\"rejected\"} 1"));
  EXPECT_TRUE(Has(text, "cleave_federated_updates_total{status=\"late\"} 1"));
  EXPECT_TRUE(Has(text, "cleave_federated_updates_total{status=\"failed\"} 3"));
  EXPECT_TRUE(Has(text, "cleave_federated_round_duration_seconds_bucket{le=\"30\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_federated_round_duration_seconds_bucket{le=\"60\"} 1"));
  EXPECT_TRUE(Has(text, "cleave_federated_dp_epsilon 2.5"));
  EXPECT_TRUE(Has(text, "cleave_federated_identity_refused_total{reason=\"mismatch\"} 5"));
  EXPECT_TRUE(Has(text, "cleave_federated_identity_refused_total{reason=\"taken\"} 1"));
  // Every reason exists from the start, at 0.
  EXPECT_TRUE(Has(text, "cleave_federated_identity_refused_total{reason=\"max_clients\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_connected_edges 7"));
  EXPECT_TRUE(Has(text, "cleave_curve_refused_total{component=\"aggregator\"} 1"));
}

TEST(MetricsTest, NamesFollowPrometheusConventions) {
  Metrics metrics;
  metrics.Service("cloud");
  metrics.Federated();
  metrics.ConnectedEdges();
  metrics.CurveRefused("cloud");
  metrics.EdgeNotOffloaded(NotOffloadedReason::kMaxPending);
  metrics.Stream("cam1");
  metrics.Offload();
  std::set<std::string> names;
  for (const prometheus::MetricFamily& family : metrics.registry()->Collect()) {
    names.insert(family.name);
    EXPECT_EQ(family.name.rfind("cleave_", 0), 0u) << family.name;
    EXPECT_FALSE(family.help.empty()) << family.name;
    const bool total =
        family.name.size() > 6 && family.name.compare(family.name.size() - 6, 6, "_total") == 0;
    EXPECT_EQ(family.type == prometheus::MetricType::Counter, total) << family.name;
    EXPECT_FALSE(family.metric.empty()) << family.name << " has no series";
  }
  const std::set<std::string> expected = {"cleave_requests_total",
                                          "cleave_wire_bytes_total",
                                          "cleave_queue_seconds",
                                          "cleave_compute_seconds",
                                          "cleave_batch_size",
                                          "cleave_pending_requests",
                                          "cleave_model_version",
                                          "cleave_connected_edges",
                                          "cleave_federated_round",
                                          "cleave_federated_updates_total",
                                          "cleave_federated_round_duration_seconds",
                                          "cleave_federated_dp_epsilon",
                                          "cleave_federated_identity_refused_total",
                                          "cleave_curve_refused_total",
                                          "cleave_edge_not_offloaded_total",
                                          "cleave_edge_stream_frames_total",
                                          "cleave_edge_stream_answered_total",
                                          "cleave_edge_stream_dropped_total",
                                          "cleave_edge_stream_fps",
                                          "cleave_edge_stream_staleness_seconds",
                                          "cleave_edge_link_rtt_seconds",
                                          "cleave_edge_link_uplink_bytes_per_second",
                                          "cleave_edge_cloud_queue_seconds",
                                          "cleave_edge_cloud_compute_seconds",
                                          "cleave_edge_link_outcome_fraction",
                                          "cleave_edge_offload_split",
                                          "cleave_edge_offload_exit_threshold",
                                          "cleave_edge_offload_predicted_latency_seconds",
                                          "cleave_edge_offload_switches_total",
                                          "cleave_edge_offload_probes_total"};
  EXPECT_EQ(names, expected);
}

// Streams (edge/stream_feeder.h) get their children once, every answer source and drop
// reason at 0 from the start; the edge's not-offloaded reasons likewise.
TEST(MetricsTest, StreamChildrenExistFromTheStartAndAreShared) {
  Metrics metrics;
  const StreamMetrics& cam = metrics.Stream("cam1");
  EXPECT_EQ(&cam, &metrics.Stream("cam1"));
  EXPECT_NE(&cam, &metrics.Stream("cam2"));
  cam.frames->Increment(3);
  cam.answered_cloud->Increment();
  cam.Drop(FrameDrop::kReplaced, 2);
  cam.staleness_seconds->Observe(0.02);
  metrics.EdgeNotOffloaded(NotOffloadedReason::kMaxPending).Increment();
  const std::string text = Text(metrics);
  EXPECT_TRUE(Has(text, "cleave_edge_stream_frames_total{stream=\"cam1\"} 3")) << text;
  EXPECT_TRUE(Has(text, "cleave_edge_stream_answered_total{source=\"cloud\",stream=\"cam1\"} 1"));
  EXPECT_TRUE(Has(text, "cleave_edge_stream_answered_total{source=\"exit\",stream=\"cam1\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_edge_stream_dropped_total{reason=\"replaced\",stream=\"cam1\"} 2"));
  for (size_t i = 0; i < kFrameDropCount; ++i) {
    const std::string reason = FrameDropName(static_cast<FrameDrop>(i));
    EXPECT_TRUE(
        Has(text, "cleave_edge_stream_dropped_total{reason=\"" + reason + "\",stream=\"cam2\"} 0"))
        << reason;
  }
  EXPECT_TRUE(Has(text, "cleave_edge_stream_fps{kind=\"answered\",stream=\"cam1\"} 0"));
  EXPECT_TRUE(Has(text, "cleave_edge_stream_staleness_seconds_count{stream=\"cam1\"} 1"));
  EXPECT_TRUE(Has(text, "cleave_edge_not_offloaded_total{reason=\"max_pending\"} 1"));
}

TEST(MetricsTest, BucketsAreIncreasingAndCoverTheExpectedRanges) {
  struct Case {
    const char* name;
    const std::vector<double>& buckets;
    double smallest, largest;  // the first bucket at most, the last at least
  };
  const Case cases[] = {{"queue", Metrics::QueueSecondsBuckets(), 0.0001, 1},
                        {"compute", Metrics::ComputeSecondsBuckets(), 0.0001, 10},
                        {"batch", Metrics::BatchSizeBuckets(), 1, 256},
                        {"round", Metrics::RoundDurationBuckets(), 1, 3600}};
  for (const Case& c : cases) {
    ASSERT_GE(c.buckets.size(), 8u) << c.name;
    EXPECT_TRUE(std::is_sorted(c.buckets.begin(), c.buckets.end())) << c.name;
    EXPECT_EQ(std::adjacent_find(c.buckets.begin(), c.buckets.end()), c.buckets.end()) << c.name;
    EXPECT_GT(c.buckets.front(), 0) << c.name;
    EXPECT_LE(c.buckets.front(), c.smallest) << c.name;
    EXPECT_GE(c.buckets.back(), c.largest) << c.name;
    // Roughly logarithmic: no bucket more than 5x the previous one.
    for (size_t i = 1; i < c.buckets.size(); ++i) {
      EXPECT_LE(c.buckets[i] / c.buckets[i - 1], 5.0) << c.name << " bucket " << i;
    }
  }
  EXPECT_EQ(Metrics::BatchSizeBuckets().front(), 1) << "a batch of one is its own bucket";
}

TEST(MetricsTest, OutcomeNamesAreTheLabelValues) {
  EXPECT_STREQ(OutcomeName(Outcome::kExit), "exit");
  EXPECT_STREQ(OutcomeName(Outcome::kOffload), "offload");
  EXPECT_STREQ(OutcomeName(Outcome::kDegraded), "degraded");
  EXPECT_STREQ(OutcomeName(Outcome::kRejected), "rejected");
  EXPECT_STREQ(OutcomeName(Outcome::kError), "error");
  EXPECT_STREQ(OutcomeName(Outcome::kOk), "ok");
  EXPECT_STREQ(OutcomeName(Outcome::kOverloaded), "overloaded");
  EXPECT_STREQ(OutcomeName(static_cast<Outcome>(kOutcomeCount)), "unknown");
}

TEST(RecentPeersTest, CountsDistinctPeersWithinTheWindow) {
  RecentPeers peers(/*window_micros=*/1000, /*max_peers=*/3);
  peers.Seen("a", 0);
  peers.Seen("b", 100);
  peers.Seen("a", 500);  // seen again: still one peer, now fresher
  EXPECT_EQ(peers.size(), 2u);
  EXPECT_EQ(peers.Expire(1050), 2u);  // a at 500 and b at 100 are both within 1000 us
  EXPECT_EQ(peers.Expire(1200), 1u);  // b is older than the window now
  EXPECT_EQ(peers.Expire(1600), 0u);
  // At most max_peers are tracked; a flood of new peers does not grow it.
  for (const char* p : {"c", "d", "e", "f", "g"}) peers.Seen(p, 2000);
  EXPECT_EQ(peers.size(), 3u);
  peers.Seen("c", 2500);  // a tracked peer is still refreshed at the cap
  EXPECT_EQ(peers.Expire(3200), 1u);
}

}  // namespace
}  // namespace cleave
