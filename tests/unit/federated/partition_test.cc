#include "federated/partition.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>

namespace cleave::federated {
namespace {

// 1,000 samples, labels 0..9 in equal numbers.
std::vector<uint8_t> BalancedLabels(int n = 1000, int classes = 10) {
  std::vector<uint8_t> labels(n);
  for (int i = 0; i < n; ++i) labels[i] = static_cast<uint8_t>(i % classes);
  return labels;
}

// Every sample assigned exactly once.
void ExpectCover(const Partition& p, size_t n) {
  std::vector<int> seen(n, 0);
  for (int c = 0; c < p.num_clients(); ++c) {
    for (int64_t i : p.ClientIndices(c)) ++seen[i];
  }
  EXPECT_EQ(p.total(), static_cast<int64_t>(n));
  EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; }));
}

TEST(PartitionSpecTest, ParsesEveryKindAndRejectsTheRest) {
  EXPECT_EQ(PartitionSpec::Parse("iid")->kind, PartitionSpec::Kind::kIid);
  auto d = PartitionSpec::Parse("dirichlet:0.3");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->kind, PartitionSpec::Kind::kDirichlet);
  EXPECT_DOUBLE_EQ(d->alpha, 0.3);
  EXPECT_EQ(d->ToString(), "dirichlet:0.3");
  auto k = PartitionSpec::Parse("labels:2");
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->labels_per_client, 2);
  EXPECT_EQ(k->ToString(), "labels:2");
  for (const char* bad :
       {"", "iid:3", "dirichlet", "dirichlet:", "dirichlet:0", "dirichlet:-1", "dirichlet:abc",
        "dirichlet:1x", "labels:0", "labels:1.5", "labels:", "shards:2", "dirichlet:nan"}) {
    EXPECT_FALSE(PartitionSpec::Parse(bad).ok()) << bad;
  }
}

TEST(PartitionTest, IidCoversEverySampleInNearEqualShares) {
  const auto labels = BalancedLabels(1003);
  auto p = MakePartition(labels, 10, 10, *PartitionSpec::Parse("iid"));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ExpectCover(*p, labels.size());
  for (int c = 0; c < 10; ++c) {
    EXPECT_GE(p->client_size(c), 100);
    EXPECT_LE(p->client_size(c), 101);
  }
}

TEST(PartitionTest, SameSeedSamePartitionOtherSeedDifferent) {
  const auto labels = BalancedLabels();
  PartitionSpec spec = *PartitionSpec::Parse("dirichlet:0.5");
  auto a = MakePartition(labels, 10, 20, spec);
  auto b = MakePartition(labels, 10, 20, spec);
  spec.seed = 2;
  auto c = MakePartition(labels, 10, 20, spec);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  bool all_same = true, any_diff = false;
  for (int i = 0; i < 20; ++i) {
    all_same &= a->ClientIndices(i) == b->ClientIndices(i);
    any_diff |= a->ClientIndices(i) != c->ClientIndices(i);
  }
  EXPECT_TRUE(all_same);
  EXPECT_TRUE(any_diff);
}

// Mean over clients of the largest label share: 0.1 for perfectly balanced clients, 1.0
// when every client holds one label.
double MeanTopShare(const Partition& p, const std::vector<uint8_t>& labels) {
  const auto h = LabelHistogram(p, labels, 10);
  double sum = 0;
  int counted = 0;
  for (const auto& row : h) {
    const int64_t total = std::accumulate(row.begin(), row.end(), int64_t{0});
    if (total == 0) continue;
    sum += static_cast<double>(*std::max_element(row.begin(), row.end())) / total;
    ++counted;
  }
  return sum / counted;
}

TEST(PartitionTest, DirichletSkewGrowsAsAlphaShrinks) {
  const auto labels = BalancedLabels(5000);
  PartitionSpec spec;
  spec.kind = PartitionSpec::Kind::kDirichlet;
  spec.alpha = 100;
  auto flat = MakePartition(labels, 10, 10, spec);
  spec.alpha = 0.1;
  auto skewed = MakePartition(labels, 10, 10, spec);
  ASSERT_TRUE(flat.ok() && skewed.ok());
  ExpectCover(*flat, labels.size());
  ExpectCover(*skewed, labels.size());
  EXPECT_LT(MeanTopShare(*flat, labels), 0.2);
  EXPECT_GT(MeanTopShare(*skewed, labels), 0.5);
}

TEST(PartitionTest, DirichletHonoursMinimumSizeOrSaysWhyNot) {
  const auto labels = BalancedLabels(2000);
  PartitionSpec spec;
  spec.kind = PartitionSpec::Kind::kDirichlet;
  spec.alpha = 0.5;
  spec.min_size = 10;
  auto p = MakePartition(labels, 10, 10, spec);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  for (int c = 0; c < 10; ++c) EXPECT_GE(p->client_size(c), 10);
  spec.min_size = 500;  // impossible: 10 clients x 500 > 2000 samples
  auto impossible = MakePartition(labels, 10, 10, spec);
  ASSERT_FALSE(impossible.ok());
  EXPECT_EQ(impossible.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(impossible.status().message().find("min_size"), std::string::npos);
}

TEST(PartitionTest, DirichletScalesToMoreClientsThanSamples) {
  const auto labels = BalancedLabels(1000);
  auto p = MakePartition(labels, 10, 100000, *PartitionSpec::Parse("dirichlet:0.3"));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->num_clients(), 100000);
  ExpectCover(*p, labels.size());
}

TEST(PartitionTest, LabelsPerClientGivesExactlyKLabels) {
  const auto labels = BalancedLabels(2000);
  auto p = MakePartition(labels, 10, 20, *PartitionSpec::Parse("labels:2"));
  ASSERT_TRUE(p.ok());
  ExpectCover(*p, labels.size());
  const auto h = LabelHistogram(*p, labels, 10);
  for (int c = 0; c < 20; ++c) {
    const int held =
        static_cast<int>(std::count_if(h[c].begin(), h[c].end(), [](int64_t v) { return v > 0; }));
    EXPECT_EQ(held, 2) << "client " << c;
    EXPECT_GT(h[c][c % 10], 0) << "client " << c << " must hold label " << c % 10;
  }
}

TEST(PartitionTest, RejectsBadArguments) {
  const auto labels = BalancedLabels(100);
  EXPECT_EQ(MakePartition(labels, 10, 0, {}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(MakePartition(labels, 5, 3, {}).status().code(), StatusCode::kInvalidArgument);
  PartitionSpec k = *PartitionSpec::Parse("labels:11");
  EXPECT_EQ(MakePartition(labels, 10, 3, k).status().code(), StatusCode::kInvalidArgument);
  PartitionSpec d;
  d.kind = PartitionSpec::Kind::kDirichlet;
  d.alpha = 0;
  EXPECT_EQ(MakePartition(labels, 10, 3, d).status().code(), StatusCode::kInvalidArgument);
  d.alpha = 1;
  d.min_size = -1;
  EXPECT_EQ(MakePartition(labels, 10, 3, d).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave::federated
