#include "federated/update_compression.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "federated/simulation.h"
#include "unit/federated/update_compression_test_helpers.h"

namespace cleave::federated {
namespace {

using namespace compression_testing;  // NOLINT(build/namespaces): the shared test helpers

// ---- CompressionConfig

TEST(CompressionConfigTest, DefaultsAreValidAndJsonRoundTrips) {
  CompressionConfig c;
  EXPECT_TRUE(c.Validate().ok());
  c.kind = "topk";
  c.topk_fraction = 0.05;
  c.error_feedback = false;
  c.seed = 1ULL << 60;
  auto back = CompressionConfig::FromJson(c.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->kind, "topk");
  EXPECT_EQ(back->topk_fraction, 0.05);
  EXPECT_FALSE(back->error_feedback);
  EXPECT_EQ(back->seed, 1ULL << 60);
  auto defaults = CompressionConfig::FromJson(nlohmann::json::object());
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->kind, "none");
  auto signed_seed = CompressionConfig::FromJson({{"seed", 5}});  // a signed json integer
  ASSERT_TRUE(signed_seed.ok()) << signed_seed.status().ToString();
  EXPECT_EQ(signed_seed->seed, 5u);
}

TEST(CompressionConfigTest, ValidateNamesTheKey) {
  CompressionConfig c;
  c.kind = "fp16";
  Status s = c.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("compression.kind"), std::string::npos) << s.message();
  for (double bad : {0.0, -0.1, 1.5, std::nan("")}) {
    c = CompressionConfig{};
    c.topk_fraction = bad;
    s = c.Validate();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("compression.topk_fraction"), std::string::npos) << s.message();
  }
  c = CompressionConfig{};
  c.topk_fraction = 1.0;
  EXPECT_TRUE(c.Validate().ok());
}

TEST(CompressionConfigTest, FromJsonRejectsUnknownKeysWrongTypesAndBadValues) {
  using nlohmann::json;
  EXPECT_FALSE(CompressionConfig::FromJson(json::array()).ok());
  EXPECT_FALSE(CompressionConfig::FromJson({{"knd", "int8"}}).ok());
  EXPECT_FALSE(CompressionConfig::FromJson({{"kind", 8}}).ok());
  EXPECT_FALSE(CompressionConfig::FromJson({{"topk_fraction", "1%"}}).ok());
  EXPECT_FALSE(CompressionConfig::FromJson({{"error_feedback", 1}}).ok());
  EXPECT_FALSE(CompressionConfig::FromJson({{"seed", -1}}).ok());
  EXPECT_FALSE(CompressionConfig::FromJson({{"topk_fraction", 2.0}}).ok());
  EXPECT_FALSE(CompressionConfig::FromJson({{"kind", "zip"}}).ok());
}

// ---- Compatibility

TEST(CompressionCompatibilityTest, NoneAndInt8RunWithEveryStrategyAndSecureAggregation) {
  for (const char* kind : {"none", "int8"}) {
    for (const char* strategy : {"fedavg", "fedadam", "dpfedavg", "fedmedian", "krum"}) {
      for (bool secure : {false, true}) {
        EXPECT_TRUE(CheckCompressionCompatible(CompressionOf(kind), secure, strategy).ok())
            << kind << " " << strategy << " " << secure;
      }
    }
  }
}

TEST(CompressionCompatibilityTest, TopKIsRefusedWithSecureAggregation) {
  const Status s =
      CheckCompressionCompatible(CompressionOf("topk"), /*secure_aggregation=*/true, "fedavg");
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("secure aggregation"), std::string::npos) << s.message();
}

TEST(CompressionCompatibilityTest, TopKIsRefusedWithCoordinateWiseRobustRulesOnly) {
  for (const char* strategy : {"fedmedian", "fedtrimmedavg", "bulyan"}) {
    const Status s = CheckCompressionCompatible(CompressionOf("topk"), false, strategy);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << strategy;
    EXPECT_NE(s.message().find(strategy), std::string::npos) << s.message();
  }
  for (const char* strategy : {"fedavg", "fedprox", "fedyogi", "dpfedavg", "krum", "multikrum"}) {
    EXPECT_TRUE(CheckCompressionCompatible(CompressionOf("topk"), false, strategy).ok())
        << strategy;
  }
}

// ---- Lossless baseline

TEST(UpdateCompressionTest, NoneIsLosslessAndDeltaOnly) {
  const WeightsLayout layout = TestLayout();
  const Weights global = RandomWeights(layout, 1);
  const Weights trained = RandomWeights(layout, 2);
  const auto mask = AllTrainable(layout);
  const Weights delta =
      MustDecode(MustEncode(CompressionOf("none"), global, trained, mask), layout, mask);
  ASSERT_EQ(delta.size(), layout.size());
  for (size_t i = 0; i < layout.size(); ++i) {
    EXPECT_TRUE(torch::equal(delta[i], trained[i] - global[i])) << i;
  }
}

// ---- int8

TEST(UpdateCompressionTest, Int8ErrorIsBelowOneStepPerCoordinate) {
  const WeightsLayout layout = TestLayout();
  const Weights global = RandomWeights(layout, 1);
  Weights trained = RandomWeights(layout, 2, 0.01f);
  for (size_t i = 0; i < layout.size(); ++i) trained[i] += global[i];
  trained[0].view(-1)[3] = global[0].view(-1)[3] + 5.0f;  // an outlier in the first chunk
  const auto mask = AllTrainable(layout);
  const Weights delta =
      MustDecode(MustEncode(CompressionOf("int8"), global, trained, mask), layout, mask);
  for (size_t i = 0; i < layout.size(); ++i) {
    const torch::Tensor want = (trained[i] - global[i]).contiguous().view(-1);
    const torch::Tensor got = delta[i].contiguous().view(-1);
    for (int64_t start = 0; start < want.numel(); start += kInt8ChunkElements) {
      const int64_t len = std::min<int64_t>(kInt8ChunkElements, want.numel() - start);
      const torch::Tensor w = want.slice(0, start, start + len);
      const torch::Tensor g = got.slice(0, start, start + len);
      const float scale = w.abs().max().item<float>() / 127.0f;
      const float worst = (g - w).abs().max().item<float>();
      EXPECT_LE(worst, scale * 1.0001f) << "entry " << i << " chunk at " << start;
    }
  }
  // Per-chunk scales: the outlier's chunk is coarse, the next chunk of the same tensor is not.
  const torch::Tensor err = (delta[0] - (trained[0] - global[0])).abs().view(-1);
  EXPECT_LT(err.slice(0, 256, 512).max().item<float>(), 0.01f / 127 * 5);
}

TEST(UpdateCompressionTest, Int8IsUnbiasedOverSeeds) {
  WeightsLayout layout;
  layout.names = {"w"};
  layout.shapes = {{300}};
  const std::vector<bool> mask = {true};
  // Values a third of the way between steps, where rounding to nearest is off by 1/3 step.
  // The first value is the chunk's maximum, so the step is exactly 1/127 of it.
  torch::Tensor x = torch::empty({300});
  const float step = 1.0f / 127;
  for (int j = 0; j < 300; ++j) x[j] = ((j % 200) - 100 + 0.3f) * step;
  x[0] = 1.0f;
  x[256] = 1.0f;  // the second chunk's maximum too
  const Weights global = {torch::zeros({300})};
  const Weights trained = {x};
  torch::Tensor sum = torch::zeros({300});
  const int draws = 2000;
  for (int s = 0; s < draws; ++s) {
    CompressionConfig c = CompressionOf("int8");
    c.seed = 1000 + s;
    sum += MustDecode(MustEncode(c, global, trained, mask, /*round=*/s % 7, /*client=*/s % 5),
                      layout, mask)[0];
  }
  const torch::Tensor bias = (sum / draws - x).abs();
  // The stddev of one draw is at most step/2, of the mean step / (2 sqrt(draws)) ~ 0.011 step.
  EXPECT_LT(bias.max().item<float>(), 0.06f * step);
  EXPECT_LT(bias.mean().item<float>(), 0.02f * step);
}

TEST(UpdateCompressionTest, Int8IsDeterministicPerSeedRoundAndClient) {
  const WeightsLayout layout = TestLayout();
  const Weights global = RandomWeights(layout, 1);
  const Weights trained = RandomWeights(layout, 2);
  const auto mask = AllTrainable(layout);
  const std::string a = MustEncode(CompressionOf("int8"), global, trained, mask, 3, 4);
  EXPECT_EQ(a, MustEncode(CompressionOf("int8"), global, trained, mask, 3, 4));
  EXPECT_NE(a, MustEncode(CompressionOf("int8"), global, trained, mask, 3, 5));
  EXPECT_NE(a, MustEncode(CompressionOf("int8"), global, trained, mask, 4, 4));
  CompressionConfig other = CompressionOf("int8");
  other.seed = 2;
  EXPECT_NE(a, MustEncode(other, global, trained, mask, 3, 4));
}

TEST(UpdateCompressionTest, Int8IsAQuarterOfFloat32PlusScalesAndHeader) {
  WeightsLayout layout;
  layout.names = {"w"};
  layout.shapes = {{100, 100}};
  const std::vector<bool> mask = {true};
  const Weights global = RandomWeights(layout, 1);
  const Weights trained = RandomWeights(layout, 2);
  const std::string bytes = MustEncode(CompressionOf("int8"), global, trained, mask);
  const size_t scales = (10000 + kInt8ChunkElements - 1) / kInt8ChunkElements;
  EXPECT_EQ(bytes.size(), kHeader + 4 + 4 + 4 * scales + 10000);
  EXPECT_LT(static_cast<double>(bytes.size()) / (4 * 10000), 0.26);
}

TEST(UpdateCompressionTest, Int8OfAZeroDeltaIsZero) {
  const WeightsLayout layout = TestLayout();
  const Weights global = RandomWeights(layout, 1);
  const auto mask = AllTrainable(layout);
  const Weights delta =
      MustDecode(MustEncode(CompressionOf("int8"), global, global, mask), layout, mask);
  for (const auto& t : delta) EXPECT_EQ(t.abs().max().item<float>(), 0.0f);
}

// ---- top-k

TEST(UpdateCompressionTest, TopKKeepsExactlyTheKLargestMagnitudes) {
  const WeightsLayout layout = TestLayout();  // 600 + 256 + 7 = 863 values
  const auto mask = AllTrainable(layout);
  const int64_t n = 863;
  // Distinct magnitudes 1..n in a random order with random signs.
  std::mt19937 rng(5);
  std::vector<float> values(n);
  for (int64_t j = 0; j < n; ++j) values[j] = static_cast<float>(j + 1) * (rng() % 2 ? 1 : -1);
  std::shuffle(values.begin(), values.end(), rng);
  Weights trained;
  int64_t offset = 0;
  for (const auto& shape : layout.shapes) {
    torch::Tensor t = torch::empty(shape);
    std::memcpy(t.data_ptr<float>(), values.data() + offset, 4 * t.numel());
    offset += t.numel();
    trained.push_back(t);
  }
  Weights global;
  for (const auto& shape : layout.shapes) global.push_back(torch::zeros(shape));
  CompressionConfig c = CompressionOf("topk");
  c.topk_fraction = 0.01;  // k = ceil(8.63) = 9
  const std::string bytes = MustEncode(c, global, trained, mask);
  EXPECT_EQ(bytes.size(), PayloadStart(layout) + 4 + 8 * 9);
  const std::vector<float> got = Flat(MustDecode(bytes, layout, mask), mask);
  int kept = 0;
  for (int64_t j = 0; j < n; ++j) {
    const bool large = std::fabs(values[j]) > n - 9;
    EXPECT_EQ(got[j], large ? values[j] : 0.0f) << j;
    kept += got[j] != 0;
  }
  EXPECT_EQ(kept, 9);
}

TEST(UpdateCompressionTest, TopKCountIsTheCeilingOfFractionTimesN) {
  WeightsLayout layout;
  layout.names = {"w"};
  const std::vector<bool> mask = {true};
  const auto size_for = [&](int64_t n, double fraction) {
    layout.shapes = {{n}};
    CompressionConfig c = CompressionOf("topk");
    c.topk_fraction = fraction;
    const Weights trained = RandomWeights(layout, 3);
    return MustEncode(c, {torch::zeros({n})}, trained, mask).size();
  };
  const size_t base = kHeader + 4 + 4;
  EXPECT_EQ(size_for(100, 0.01), base + 8 * 1);   // exactly 1, not 2
  EXPECT_EQ(size_for(250, 0.01), base + 8 * 3);   // 2.5 -> 3
  EXPECT_EQ(size_for(10, 0.01), base + 8 * 1);    // at least one
  EXPECT_EQ(size_for(300, 0.07), base + 8 * 21);  // 0.07 x 300 is 21.000000000000004
  EXPECT_EQ(size_for(40, 1.0), base + 8 * 40);
}

TEST(UpdateCompressionTest, TopKOnePercentCostsAboutTwoPercentOfFloat32) {
  WeightsLayout layout;
  layout.names = {"w"};
  layout.shapes = {{200, 100}};
  const std::vector<bool> mask = {true};
  CompressionConfig c = CompressionOf("topk");
  c.topk_fraction = 0.01;
  const std::string bytes = MustEncode(c, RandomWeights(layout, 1), RandomWeights(layout, 2), mask);
  EXPECT_EQ(bytes.size(), kHeader + 4 + 4 + 8 * 200);  // 8 bytes per kept value
  EXPECT_LT(static_cast<double>(bytes.size()) / (4 * 20000), 0.021);
}

TEST(UpdateCompressionTest, OnlyTrainableEntriesAreSent) {
  const WeightsLayout layout = TestLayout();
  const std::vector<bool> mask = {false, true, true};
  const Weights global = RandomWeights(layout, 1);
  Weights trained = RandomWeights(layout, 2);
  trained[0] = global[0] + 1000.0f;  // untrained entry: must not leak into the update
  for (const char* kind : {"none", "int8", "topk"}) {
    const std::string bytes = MustEncode(CompressionOf(kind), global, trained, mask);
    const Weights delta = MustDecode(bytes, layout, mask);
    EXPECT_EQ(delta[0].abs().max().item<float>(), 0.0f) << kind;
    // Decoding with another mask (entry counts differ) is refused.
    EXPECT_FALSE(DecodeUpdate(bytes, layout, AllTrainable(layout)).ok()) << kind;
  }
  EXPECT_EQ(MustEncode(CompressionOf("none"), global, trained, mask).size(),
            kHeader + 4 * 2 + 4 * (256 + 7));
}

// ---- Error feedback

TEST(ErrorFeedbackTest, TopKSentPlusResidualEqualsTheSumOfDeltasExactly) {
  const WeightsLayout layout = TestLayout();
  const auto mask = AllTrainable(layout);
  CompressionConfig c = CompressionOf("topk", /*error_feedback=*/true);
  c.topk_fraction = 0.05;
  ErrorFeedbackState state;
  Weights delta_sum, sent_sum;
  for (const auto& shape : layout.shapes) {
    delta_sum.push_back(torch::zeros(shape));
    sent_sum.push_back(torch::zeros(shape));
  }
  for (int round = 1; round <= 6; ++round) {
    // Small integers: every sum below is exact in float32.
    Weights global, trained;
    torch::manual_seed(round);
    for (const auto& shape : layout.shapes) {
      global.push_back(torch::randint(-50, 50, shape).to(torch::kFloat));
      trained.push_back(global.back() + torch::randint(-20, 20, shape).to(torch::kFloat));
    }
    const Weights sent =
        MustDecode(MustEncode(c, global, trained, mask, round, 1, &state), layout, mask);
    for (size_t i = 0; i < layout.size(); ++i) {
      delta_sum[i] += trained[i] - global[i];
      sent_sum[i] += sent[i];
    }
    ASSERT_EQ(state.residual.size(), layout.size());
    for (size_t i = 0; i < layout.size(); ++i) {
      EXPECT_TRUE(torch::equal(sent_sum[i] + state.residual[i], delta_sum[i]))
          << "round " << round << " entry " << i;
    }
  }
  // Something was actually held back.
  EXPECT_GT(state.residual[0].abs().sum().item<float>(), 0.0f);
}

TEST(ErrorFeedbackTest, Int8SentPlusResidualTracksTheSumOfDeltas) {
  const WeightsLayout layout = TestLayout();
  const auto mask = AllTrainable(layout);
  ErrorFeedbackState state;
  Weights delta_sum, sent_sum;
  for (const auto& shape : layout.shapes) {
    delta_sum.push_back(torch::zeros(shape));
    sent_sum.push_back(torch::zeros(shape));
  }
  for (int round = 1; round <= 5; ++round) {
    const Weights global = RandomWeights(layout, 10 + round);
    const Weights trained = RandomWeights(layout, 20 + round);
    const Weights sent =
        MustDecode(MustEncode(CompressionOf("int8", true), global, trained, mask, round, 1, &state),
                   layout, mask);
    for (size_t i = 0; i < layout.size(); ++i) {
      delta_sum[i] += trained[i] - global[i];
      sent_sum[i] += sent[i];
    }
  }
  for (size_t i = 0; i < layout.size(); ++i) {
    EXPECT_TRUE(torch::allclose(sent_sum[i] + state.residual[i], delta_sum[i], 1e-5, 1e-5)) << i;
  }
}

TEST(ErrorFeedbackTest, DisabledFeedbackLeavesTheStateAlone) {
  const WeightsLayout layout = TestLayout();
  const auto mask = AllTrainable(layout);
  ErrorFeedbackState state;
  (void)MustEncode(CompressionOf("topk", /*error_feedback=*/false), RandomWeights(layout, 1),
                   RandomWeights(layout, 2), mask, 1, 1, &state);
  EXPECT_TRUE(state.residual.empty());
}

TEST(ErrorFeedbackTest, AResidualOfAnotherLayoutIsRefusedAndKept) {
  const WeightsLayout layout = TestLayout();
  const auto mask = AllTrainable(layout);
  ErrorFeedbackState state;
  state.residual = {torch::ones({3})};
  auto r = EncodeUpdate(CompressionOf("topk", true), RandomWeights(layout, 1),
                        RandomWeights(layout, 2), mask, 1, 1, &state);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  ASSERT_EQ(state.residual.size(), 1u);
  EXPECT_TRUE(torch::equal(state.residual[0], torch::ones({3})));
}

// ---- Encoder input checks

TEST(UpdateCompressionTest, EncodeRejectsMismatchedOrNonFiniteInput) {
  const WeightsLayout layout = TestLayout();
  const auto mask = AllTrainable(layout);
  const Weights global = RandomWeights(layout, 1);
  Weights trained = RandomWeights(layout, 2);
  EXPECT_FALSE(EncodeUpdate(CompressionOf("int8"), global, {trained[0]}, mask, 1, 1).ok());
  EXPECT_FALSE(EncodeUpdate(CompressionOf("int8"), global, trained, {true, true}, 1, 1).ok());
  Weights reshaped = trained;
  reshaped[1] = torch::zeros({256});
  EXPECT_FALSE(EncodeUpdate(CompressionOf("int8"), global, reshaped, mask, 1, 1).ok());
  trained[2][0] = std::numeric_limits<float>::quiet_NaN();
  for (const char* kind : {"none", "int8", "topk"}) {
    auto r = EncodeUpdate(CompressionOf(kind), global, trained, mask, 1, 1);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << kind;
  }
  EXPECT_FALSE(EncodeUpdate(CompressionOf("lz4"), global, global, mask, 1, 1).ok());
}

TEST(UpdateCompressionTest, RoundTripWritesGlobalPlusDecodedDeltaInPlace) {
  const WeightsLayout layout = TestLayout();
  const std::vector<bool> mask = {true, false, true};
  const Weights global = RandomWeights(layout, 1);
  Weights trained = RandomWeights(layout, 2);
  const Weights original = CloneWeights(trained);
  const torch::Tensor storage = trained[0];
  CompressionConfig c = CompressionOf("topk");
  c.topk_fraction = 0.1;
  auto bytes = CompressRoundTrip(c, layout, global, trained, mask, 1, 1);
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  EXPECT_EQ(*bytes, static_cast<int64_t>(MustEncode(c, global, original, mask).size()));
  EXPECT_TRUE(trained[0].is_same(storage));  // reused, not reallocated
  const Weights delta = MustDecode(MustEncode(c, global, original, mask), layout, mask);
  EXPECT_TRUE(torch::equal(trained[0], global[0] + delta[0]));
  EXPECT_TRUE(torch::equal(trained[1], original[1]));  // untrained: left alone
}

}  // namespace
}  // namespace cleave::federated
