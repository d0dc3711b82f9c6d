// End-to-end behaviour of secure aggregation: configuration, neighbour graphs, exact mask
// cancellation, dropout recovery at every stage, clean failure below the threshold, and what
// the server gets to see. Malformed-message rejection is in secagg_server_test.cc.
#include "common/secure_aggregation.h"

#include <algorithm>
#include <bitset>
#include <cmath>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "federated/fixed_point_codec.h"
#include "unit/federated/secagg_test_harness.h"

namespace cleave::secagg {
namespace {

using testing::CompleteConfig;
using testing::HararyConfig;
using testing::Harness;
using testing::PlainSum;
using testing::SmallInputs;

std::vector<ClientIndex> AllBut(uint32_t n, const std::set<ClientIndex>& out) {
  std::vector<ClientIndex> members;
  for (ClientIndex u = 0; u < n; ++u) {
    if (out.count(u) == 0) members.push_back(u);
  }
  return members;
}

// ---- Configuration and graphs ----

TEST(SecureAggregationTest, ConfigNeedsAMajorityThresholdAndSaneSizes) {
  EXPECT_TRUE(ValidateConfig(CompleteConfig(10, 6)).ok());
  auto minority = ValidateConfig(CompleteConfig(10, 5));
  EXPECT_EQ(minority.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(
      minority.message().find("strict majority of the 10 share holders of each client (6..10)"),
      std::string::npos)
      << minority.message();
  EXPECT_FALSE(ValidateConfig(CompleteConfig(10, 11)).ok());
  EXPECT_FALSE(ValidateConfig(CompleteConfig(1, 1)).ok());
  EXPECT_FALSE(ValidateConfig(CompleteConfig(10, 6, 0)).ok());
  EXPECT_FALSE(ValidateConfig(CompleteConfig(kMaxClients + 1, kMaxClients)).ok());
  // SecAgg+: the threshold is relative to the k + 1 holders of each client.
  EXPECT_TRUE(ValidateConfig(HararyConfig(20, 6, 4)).ok());
  EXPECT_FALSE(ValidateConfig(HararyConfig(20, 6, 3)).ok());
  EXPECT_FALSE(ValidateConfig(HararyConfig(20, 6, 8)).ok());
  EXPECT_FALSE(ValidateConfig(HararyConfig(20, 0, 2)).ok());
  auto odd = ValidateConfig(HararyConfig(15, 5, 4));
  EXPECT_EQ(odd.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(odd.message().find("use degree 6"), std::string::npos) << odd.message();
  EXPECT_TRUE(ValidateConfig(HararyConfig(16, 5, 4)).ok());
  // A degree that reaches every other client is the complete graph.
  EXPECT_EQ(HoldersPerClient(HararyConfig(8, 7, 5)), 8u);
  EXPECT_EQ(HoldersPerClient(HararyConfig(8, 4, 3)), 5u);
}

TEST(SecureAggregationTest, HararyGraphIsRegularSymmetricAndSeededByPublicRandomness) {
  for (uint32_t k : {2u, 4u, 5u, 7u}) {
    const SecAggConfig config = HararyConfig(20, k, (k + 1) / 2 + 1);
    auto graph = NeighbourGraph::Build(config);
    ASSERT_TRUE(graph.ok()) << graph.status().ToString();
    EXPECT_EQ(graph->degree(), k);
    for (ClientIndex u = 0; u < 20; ++u) {
      const auto neighbours = graph->Neighbours(u);
      EXPECT_EQ(neighbours.size(), k) << "client " << u;
      EXPECT_TRUE(std::is_sorted(neighbours.begin(), neighbours.end()));
      EXPECT_EQ(std::set<ClientIndex>(neighbours.begin(), neighbours.end()).size(), k);
      EXPECT_FALSE(graph->Adjacent(u, u));
      for (ClientIndex v : neighbours) EXPECT_TRUE(graph->Adjacent(v, u)) << u << "-" << v;
    }
    EXPECT_FALSE(graph->Adjacent(0, 20));
  }
  // Same seed, same graph; another seed relabels it.
  SecAggConfig config = HararyConfig(20, 4, 3);
  auto a = NeighbourGraph::Build(config);
  auto b = NeighbourGraph::Build(config);
  config.graph_seed[0] ^= 1;
  auto c = NeighbourGraph::Build(config);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  bool all_same = true, any_differs = false;
  for (ClientIndex u = 0; u < 20; ++u) {
    all_same = all_same && a->Neighbours(u) == b->Neighbours(u);
    any_differs = any_differs || a->Neighbours(u) != c->Neighbours(u);
  }
  EXPECT_TRUE(all_same);
  EXPECT_TRUE(any_differs);
  // The complete graph.
  auto complete = NeighbourGraph::Build(CompleteConfig(5, 3));
  ASSERT_TRUE(complete.ok());
  EXPECT_EQ(complete->Neighbours(2), (std::vector<ClientIndex>{0, 1, 3, 4}));
  EXPECT_TRUE(complete->Adjacent(4, 0));
}

// ---- Correctness ----

TEST(SecureAggregationTest, MasksCancelExactlyWithoutDropouts) {
  for (const SecAggConfig& config : {CompleteConfig(10, 6, 64), HararyConfig(20, 6, 4, 64)}) {
    Harness h(config);
    ASSERT_TRUE(h.ready());
    const auto inputs = SmallInputs(config.num_clients, config.vector_length, 1);
    auto result = h.Run(inputs);
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    const auto everyone = AllBut(config.num_clients, {});
    EXPECT_EQ(result->sum, PlainSum(inputs, everyone));
    EXPECT_EQ(result->contributors, everyone);
    EXPECT_TRUE(result->recovered_dropouts.empty());
    EXPECT_EQ(h.server->stage(), SecAggServer::Stage::kDone);
    EXPECT_TRUE(h.aborted.empty());
  }
}

TEST(SecureAggregationTest, InputsNearTheRingBoundaryWrapExactlyModulo2To32) {
  Harness h(CompleteConfig(4, 3, 3));
  ASSERT_TRUE(h.ready());
  const std::vector<std::vector<uint32_t>> inputs = {
      {0xffffffffu, 0x80000000u, 1}, {1, 0x80000000u, 2}, {0xfffffffeu, 0, 3}, {5, 0x7fffffffu, 4}};
  auto result = h.Run(inputs);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->sum, (std::vector<uint32_t>{3, 0x7fffffffu, 10}));
}

TEST(SecureAggregationTest, ThirtyPercentDropAfterSendingMaskedInputsStillCount) {
  // Clients that sent y_u and vanish before unmasking are still in the sum: their self-masks
  // are rebuilt from the other holders' shares.
  const SecAggConfig config = CompleteConfig(20, 11, 32);
  Harness h(config);
  ASSERT_TRUE(h.ready());
  const auto inputs = SmallInputs(20, 32, 2);
  const std::set<ClientIndex> drop = {1, 4, 7, 10, 13, 16};  // 30 %
  auto result = h.Run(inputs, {}, {}, {}, /*drop_before_unmask=*/drop);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->sum, PlainSum(inputs, AllBut(20, {})));
  EXPECT_EQ(result->contributors.size(), 20u);
  EXPECT_EQ(h.server->progress().unmasked, 14u);
}

TEST(SecureAggregationTest, ThirtyPercentDropBeforeMaskingGiveTheExactSurvivorSum) {
  // The dropped clients' pairwise masks sit in every survivor's y_v; the server rebuilds
  // their masking keys from shares and removes them, so the result is exactly the plain
  // sum of the survivors' inputs.
  // k = 14: even if all six dropped clients are among one client's neighbours, 15 - 6 = 9
  // of its holders remain, above t = 8.
  for (const SecAggConfig& config : {CompleteConfig(20, 11, 32), HararyConfig(20, 14, 8, 32)}) {
    Harness h(config);
    ASSERT_TRUE(h.ready());
    const auto inputs = SmallInputs(20, 32, 3);
    const std::set<ClientIndex> drop = {0, 3, 8, 9, 15, 19};  // 30 %
    auto result = h.Run(inputs, {}, {}, /*drop_before_mask=*/drop);
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    const auto survivors = AllBut(20, drop);
    EXPECT_EQ(result->sum, PlainSum(inputs, survivors));
    EXPECT_EQ(result->contributors, survivors);
    EXPECT_EQ(result->recovered_dropouts, std::vector<ClientIndex>(drop.begin(), drop.end()));
  }
}

TEST(SecureAggregationTest, DropoutsAtEveryStageCombineExactly) {
  for (const SecAggConfig& config : {CompleteConfig(16, 9, 8), HararyConfig(16, 8, 5, 8)}) {
    Harness h(config);
    ASSERT_TRUE(h.ready());
    const auto inputs = SmallInputs(16, 8, 4);
    const std::set<ClientIndex> before_advertise = {2}, before_share = {5}, before_mask = {11},
                                before_unmask = {14};
    auto result = h.Run(inputs, before_advertise, before_share, before_mask, before_unmask);
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    // 14 dropped after masking: its input counts. 2, 5 never shared keys: nothing to remove.
    const auto contributors = AllBut(16, {2, 5, 11});
    EXPECT_EQ(result->sum, PlainSum(inputs, contributors));
    EXPECT_EQ(result->contributors, contributors);
    EXPECT_EQ(result->recovered_dropouts, std::vector<ClientIndex>{11});
    const SecAggProgress p = h.server->progress();
    EXPECT_EQ(p.advertised, 15u);
    EXPECT_EQ(p.shared, 14u);
    EXPECT_EQ(p.masked, 13u);
    EXPECT_EQ(p.unmasked, 12u);
  }
}

TEST(SecureAggregationTest, FloatUpdatesSurviveEncodingMaskingAndDecoding) {
  const uint32_t n = 8, length = 50;
  auto codec = FixedPointCodec::Create(/*clip=*/0.5, /*fractional_bits=*/20, n);
  ASSERT_TRUE(codec.ok()) << codec.status().ToString();
  std::vector<std::vector<uint32_t>> encoded;
  std::vector<double> plain(length, 0.0);
  for (uint32_t u = 0; u < n; ++u) {
    std::vector<float> update(length);
    for (uint32_t i = 0; i < length; ++i) update[i] = 0.6f * std::sin(0.37f * (u * length + i));
    encoded.push_back(*codec->Encode(update));
    if (u == 6) continue;  // drops before masking
    for (uint32_t i = 0; i < length; ++i) plain[i] += std::clamp(update[i], -0.5f, 0.5f);
  }
  Harness h(CompleteConfig(n, 5, length));
  ASSERT_TRUE(h.ready());
  auto result = h.Run(encoded, {}, {}, /*drop_before_mask=*/{6});
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->sum, PlainSum(encoded, AllBut(n, {6})));
  auto decoded = codec->DecodeSum(result->sum, result->contributors.size());
  ASSERT_TRUE(decoded.ok());
  for (uint32_t i = 0; i < length; ++i) {
    EXPECT_NEAR((*decoded)[i], plain[i], 7 * std::ldexp(0.5, -20)) << i;
  }
}

// ---- Failure below the threshold ----

TEST(SecureAggregationTest, FewerThanThresholdMaskedInputsFailCleanlyNamingTheCounts) {
  Harness h(CompleteConfig(10, 6));
  ASSERT_TRUE(h.ready());
  const auto inputs = SmallInputs(10, 16, 5);
  ASSERT_TRUE(h.Advertise().ok());
  ASSERT_TRUE(h.ShareKeys().ok());
  Status closed = h.MaskInputs(inputs, {0, 1, 2, 3, 4});
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(closed.message().find("only 5 of 10 clients sent masked inputs"), std::string::npos)
      << closed.message();
  EXPECT_NE(closed.message().find("threshold of 6"), std::string::npos);
  EXPECT_EQ(h.server->stage(), SecAggServer::Stage::kFailed);
  EXPECT_EQ(h.server->failure_reason(), closed.message());
  // Everything afterwards reports the same reason and nothing is revealed.
  auto finish = h.server->Finish();
  EXPECT_EQ(finish.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(finish.status().message().find("only 5 of 10"), std::string::npos);
  EXPECT_EQ(h.server->HandleMaskedInput({42, 7, std::vector<uint32_t>(16)}).code(),
            StatusCode::kFailedPrecondition);
}

TEST(SecureAggregationTest, TooFewUnmaskingClientsFailAtFinish) {
  Harness h(CompleteConfig(10, 6));
  ASSERT_TRUE(h.ready());
  auto result = h.Run(SmallInputs(10, 16, 6), {}, {}, {}, /*drop_before_unmask=*/{0, 1, 2, 3, 4});
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("only 5 of 10 clients sent unmasking shares"),
            std::string::npos)
      << result.status().message();
}

TEST(SecureAggregationTest, EarlyStagesFailWhenTooFewClientsShowUp) {
  Harness few_keys(CompleteConfig(5, 3));
  ASSERT_TRUE(few_keys.ready());
  Status advertised = few_keys.Advertise({0, 1, 2});
  EXPECT_NE(advertised.message().find("only 2 of 5 clients advertised keys"), std::string::npos)
      << advertised.message();
  Harness few_shares(CompleteConfig(5, 3));
  ASSERT_TRUE(few_shares.Advertise().ok());
  Status shared = few_shares.ShareKeys({0, 1, 2});
  EXPECT_NE(shared.message().find("only 2 of 5 clients shared keys"), std::string::npos)
      << shared.message();
}

TEST(SecureAggregationTest, SecAggPlusFailsNamingTheClientWhoseMasksCannotBeRemoved) {
  // Every holder of one client's shares but itself leaves before unmasking: its self-mask
  // cannot be rebuilt, although many more than t clients answered overall.
  const SecAggConfig config = HararyConfig(20, 4, 3, 8);
  Harness h(config);
  ASSERT_TRUE(h.ready());
  auto graph = NeighbourGraph::Build(config);
  ASSERT_TRUE(graph.ok());
  const auto holders = graph->Neighbours(0);
  const std::set<ClientIndex> drop(holders.begin(), holders.end());
  auto result = h.Run(SmallInputs(20, 8, 7), {}, {}, {}, drop);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("cannot remove the self-mask of client 0: 1 of its "
                                           "share holders sent unmasking shares; threshold is 3"),
            std::string::npos)
      << result.status().message();
}

// ---- What the server sees ----

TEST(SecureAggregationTest, TheServerReceivesOnlyMaskedVectorsThatLookUniform) {
  const uint32_t n = 10, length = 4096;
  Harness h(CompleteConfig(n, 6, length));
  ASSERT_TRUE(h.ready());
  // Inputs all small (< 1001): unmasked, no word would have its top bits set.
  const auto inputs = SmallInputs(n, length, 8);
  auto result = h.Run(inputs, {}, {}, /*drop_before_mask=*/{9});
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  ASSERT_EQ(h.masked_received.size(), n - 1);
  for (const MaskedInput& m : h.masked_received) {
    const auto& x = inputs[m.sender];
    size_t equal = 0, top_bit = 0, ones = 0;
    for (size_t i = 0; i < length; ++i) {
      equal += m.masked[i] == x[i];
      top_bit += m.masked[i] >> 31;
      ones += std::bitset<32>(m.masked[i]).count();
    }
    EXPECT_LE(equal, 2u) << "client " << m.sender;
    // Uniform words: every bit is 1 with probability 1/2 (5 standard deviations).
    EXPECT_NEAR(top_bit / double(length), 0.5, 5 * 0.5 / std::sqrt(double(length)));
    EXPECT_NEAR(ones / (32.0 * length), 0.5, 5 * 0.5 / std::sqrt(32.0 * length));
  }
}

TEST(SecureAggregationTest, EvenKnowingASurvivorsSelfMaskTheServerSeesOnlyPairwiseMaskedData) {
  // The server legitimately learns every survivor's b_u in round 3. Rebuild it from the
  // transcript, strip PRG(b_u) from y_u: what remains is still hidden by pairwise masks.
  const uint32_t n = 6, length = 1024;
  Harness h(CompleteConfig(n, 4, length));
  ASSERT_TRUE(h.ready());
  const auto inputs = SmallInputs(n, length, 9);
  auto result = h.Run(inputs);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  const ClientIndex target = 2;
  std::vector<shamir::Share> shares;
  for (const UnmaskShares& m : h.unmask_received) {
    for (const RevealedShare& r : m.self_mask_shares) {
      if (r.owner == target) shares.push_back(r.share);
    }
    EXPECT_TRUE(m.mask_key_shares.empty());  // nobody dropped: no masking key revealed
  }
  auto seed = shamir::Reconstruct(shares, 4, 32);
  ASSERT_TRUE(seed.ok()) << seed.status().ToString();
  Key256 b{};
  std::copy(seed->begin(), seed->end(), b.begin());
  const auto masked = std::find_if(h.masked_received.begin(), h.masked_received.end(),
                                   [&](const MaskedInput& m) { return m.sender == target; });
  ASSERT_NE(masked, h.masked_received.end());
  std::vector<uint32_t> stripped = masked->masked;
  ASSERT_TRUE(crypto::AddSeedStream(b, /*subtract=*/true, stripped.data(), length).ok());
  size_t equal = 0, top_bit = 0;
  for (size_t i = 0; i < length; ++i) {
    equal += stripped[i] == inputs[target][i];
    top_bit += stripped[i] >> 31;
  }
  EXPECT_LE(equal, 2u);
  EXPECT_NEAR(top_bit / double(length), 0.5, 5 * 0.5 / std::sqrt(double(length)));
}

}  // namespace
}  // namespace cleave::secagg
