#include "split/lm_model.h"

#include <gtest/gtest.h>

namespace cleave::split {
namespace {

SplitLm TinyLm(uint64_t seed = 1) {
  torch::manual_seed(seed);
  SplitLm lm(LmSpec::Tiny());
  lm->eval();
  return lm;
}

torch::Tensor Tokens(int64_t b, int64_t t, uint64_t seed = 3) {
  torch::manual_seed(seed);
  return torch::randint(0, 256, {b, t}, torch::kLong);
}

float MaxDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<float>();
}

TEST(LmSpecTest, JsonRoundTripAndEveryRejection) {
  const LmSpec spec = LmSpec::Default();
  ASSERT_TRUE(spec.Validate().ok());
  auto back = LmSpec::FromJson(spec.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->ToJson(), spec.ToJson());

  const auto rejected = [](auto mutate) {
    LmSpec s = LmSpec::Tiny();
    mutate(s);
    return s.Validate().code() == StatusCode::kInvalidArgument;
  };
  EXPECT_TRUE(rejected([](LmSpec& s) { s.vocab = 1; }));
  EXPECT_TRUE(rejected([](LmSpec& s) { s.context = 1; }));
  EXPECT_TRUE(rejected([](LmSpec& s) {
    s.d_model = 30;
    s.heads = 4;
  }));  // not a multiple
  EXPECT_TRUE(rejected([](LmSpec& s) {
    s.d_model = 30;
    s.heads = 2;
  }));  // odd head_dim
  EXPECT_TRUE(rejected([](LmSpec& s) { s.layers = 1; }));
  EXPECT_TRUE(rejected([](LmSpec& s) { s.split_after = 0; }));
  EXPECT_TRUE(rejected([](LmSpec& s) { s.split_after = s.layers; }));
  EXPECT_TRUE(rejected([](LmSpec& s) { s.bottleneck = 0; }));
  EXPECT_TRUE(rejected([](LmSpec& s) { s.bottleneck = s.d_model + 1; }));
  EXPECT_TRUE(rejected([](LmSpec& s) { s.mlp_ratio = 0; }));

  nlohmann::json missing = spec.ToJson();
  missing.erase("heads");
  EXPECT_EQ(LmSpec::FromJson(missing).status().code(), StatusCode::kInvalidArgument);
  nlohmann::json wrong_type = spec.ToJson();
  wrong_type["layers"] = "four";
  EXPECT_EQ(LmSpec::FromJson(wrong_type).status().code(), StatusCode::kInvalidArgument);
  nlohmann::json huge = spec.ToJson();
  huge["d_model"] = int64_t{1} << 40;
  EXPECT_EQ(LmSpec::FromJson(huge).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(LmSpec::FromJson(nlohmann::json::array()).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(LmModelTest, OutputsHaveTheVocabularyAndFutureTokensDoNotLeakBack) {
  auto lm = TinyLm();
  torch::NoGradGuard no_grad;
  torch::Tensor tokens = Tokens(2, 20);
  const LmOutputs a = lm->forward(tokens);
  EXPECT_EQ(a.exit_logits.sizes(), (std::vector<int64_t>{2, 20, 256}));
  EXPECT_EQ(a.final_logits.sizes(), (std::vector<int64_t>{2, 20, 256}));
  // Change tokens from position 12 on: positions 0..11 must not move, 12 on must.
  torch::Tensor changed = tokens.clone();
  changed.narrow(1, 12, 8).add_(1).remainder_(256);
  const LmOutputs b = lm->forward(changed);
  EXPECT_LT(MaxDiff(a.final_logits.narrow(1, 0, 12), b.final_logits.narrow(1, 0, 12)), 1e-6);
  EXPECT_LT(MaxDiff(a.exit_logits.narrow(1, 0, 12), b.exit_logits.narrow(1, 0, 12)), 1e-6);
  EXPECT_GT(MaxDiff(a.final_logits.narrow(1, 12, 8), b.final_logits.narrow(1, 12, 8)), 1e-4);
}

TEST(LmModelTest, CachedDecodingEqualsFullRecomputation) {
  auto lm = TinyLm();
  torch::NoGradGuard no_grad;
  const torch::Tensor tokens = Tokens(1, 30);
  const LmOutputs full = lm->forward(tokens);
  // Token by token on the edge; the cloud gets the states in uneven batches, as deferred
  // uploads deliver them (locally exited tokens buffered until the next hard one).
  KvCache edge = lm->NewEdgeCache();
  KvCache cloud = lm->NewCloudCache();
  std::vector<torch::Tensor> exits, finals, pending;
  const std::vector<int> batches = {1, 4, 1, 1, 7, 2, 9, 5};  // sums to 30
  size_t next_batch = 0;
  for (int64_t i = 0; i < 30; ++i) {
    const torch::Tensor state = lm->EdgeLayers(tokens.narrow(1, i, 1), &edge);
    exits.push_back(lm->ExitLogits(state));
    pending.push_back(lm->Decode(lm->Encode(state)));
    if (static_cast<int>(pending.size()) == batches[next_batch]) {
      finals.push_back(lm->CloudLogits(torch::cat(pending, 1), &cloud));
      pending.clear();
      ++next_batch;
    }
  }
  ASSERT_TRUE(pending.empty());
  EXPECT_EQ(edge.position, 30);
  EXPECT_EQ(cloud.position, 30);
  EXPECT_EQ(edge.length(), 30);
  EXPECT_LT(MaxDiff(torch::cat(exits, 1), full.exit_logits), 1e-4);
  EXPECT_LT(MaxDiff(torch::cat(finals, 1), full.final_logits), 1e-4);
  EXPECT_GT(edge.Bytes(), 0);
  edge.Clear();
  EXPECT_EQ(edge.length(), 0);
  EXPECT_EQ(edge.position, 0);
}

TEST(LmModelTest, WholeModelInChunksEqualsTheFullFinalPath) {
  auto lm = TinyLm();
  torch::NoGradGuard no_grad;
  const torch::Tensor tokens = Tokens(1, 30);
  const LmOutputs full = lm->forward(tokens);
  EXPECT_LT(MaxDiff(lm->FinalLogits(lm->WholeHidden(tokens)), full.final_logits), 1e-4);
  KvCache whole = lm->NewWholeCache();
  std::vector<torch::Tensor> finals;
  int64_t at = 0;
  for (int64_t chunk : {1, 5, 1, 11, 12}) {  // sums to 30
    finals.push_back(lm->FinalLogits(lm->WholeHidden(tokens.narrow(1, at, chunk), &whole)));
    at += chunk;
  }
  EXPECT_EQ(whole.position, 30);
  EXPECT_EQ(whole.keys.size(), static_cast<size_t>(lm->spec().layers));
  EXPECT_EQ(whole.length(), 30);
  for (const auto& v : whole.values) EXPECT_EQ(v.size(2), 30);
  EXPECT_LT(MaxDiff(torch::cat(finals, 1), full.final_logits), 1e-4);
}

TEST(LmModelTest, MultiplyAccumulatesFollowTheLayerArithmetic) {
  LmSpec spec = LmSpec::Tiny();  // d 32, context 32
  spec.mlp_ratio = 4;            // qkv 3 d^2 + projection d^2 + MLP 8 d^2
  const int64_t d = spec.d_model;
  EXPECT_EQ(LmLayerMacs(spec, 1), 12 * d * d + 2 * d);
  EXPECT_EQ(LmLayerMacs(spec, 10), 12 * d * d + 20 * d);
  // Positions 0..2 attend to 1, 2, 3 positions; past the window every token attends to it.
  EXPECT_EQ(LmLayersMacs(spec, 2, 0, 3),
            2 * (LmLayerMacs(spec, 1) + LmLayerMacs(spec, 2) + LmLayerMacs(spec, 3)));
  EXPECT_EQ(LmLayersMacs(spec, 1, 100, 2), 2 * LmLayerMacs(spec, spec.context));
  EXPECT_EQ(LmLayersMacs(spec, 3, 5, 0), 0);
  EXPECT_EQ(LmHeadMacs(spec), d * spec.vocab);
  EXPECT_EQ(LmCodecMacs(spec), d * spec.bottleneck);
}

TEST(LmModelTest, CachesSlideAtTheContextWindow) {
  auto lm = TinyLm();
  torch::NoGradGuard no_grad;
  const int64_t window = lm->spec().context;
  KvCache edge = lm->NewEdgeCache();
  const torch::Tensor tokens = Tokens(1, 3 * window);
  for (int64_t i = 0; i < 3 * window; ++i) {
    const torch::Tensor state = lm->EdgeLayers(tokens.narrow(1, i, 1), &edge);
    ASSERT_TRUE(torch::isfinite(state).all().item<bool>()) << i;
    ASSERT_LE(edge.length(), window);
  }
  EXPECT_EQ(edge.length(), window);
  EXPECT_EQ(edge.position, 3 * window);
}

TEST(LmModelTest, RotaryAttentionDependsOnlyOnRelativePosition) {
  torch::manual_seed(5);
  const torch::Tensor q = torch::randn({1, 1, 1, 8});
  const torch::Tensor k = torch::randn({1, 1, 1, 8});
  const auto score = [&](int64_t a, int64_t b) {
    return (ApplyRotary(q, a) * ApplyRotary(k, b)).sum().item<double>();
  };
  EXPECT_NEAR(score(3, 1), score(1003, 1001), 1e-4);
  EXPECT_NEAR(score(10, 10), (q * k).sum().item<double>(), 1e-5);
  EXPECT_GT(std::abs(score(3, 1) - score(3, 2)), 1e-6);
  // Rotation keeps the norm.
  EXPECT_NEAR(ApplyRotary(q, 77).norm().item<double>(), q.norm().item<double>(), 1e-5);
}

TEST(LmModelTest, TrainingStepLowersBothLosses) {
  auto lm = TinyLm();
  lm->train();
  // A repeated pattern is learnable in a few steps.
  const torch::Tensor pattern =
      torch::arange(0, 32, torch::kLong).remainder(5).add(97).view({1, 32});
  torch::optim::AdamW opt(lm->parameters(), torch::optim::AdamWOptions(3e-3));
  const auto losses = [&] {
    const LmOutputs out = lm->forward(pattern.narrow(1, 0, 31));
    const torch::Tensor target = pattern.narrow(1, 1, 31).reshape({-1});
    return std::make_pair(
        torch::nn::functional::cross_entropy(out.exit_logits.reshape({-1, 256}), target),
        torch::nn::functional::cross_entropy(out.final_logits.reshape({-1, 256}), target));
  };
  const auto [exit0, final0] = losses();
  for (int step = 0; step < 30; ++step) {
    auto [e, f] = losses();
    opt.zero_grad();
    (e + f).backward();
    opt.step();
  }
  const auto [exit1, final1] = losses();
  EXPECT_LT(exit1.item<double>(), 0.5 * exit0.item<double>());
  EXPECT_LT(final1.item<double>(), 0.5 * final0.item<double>());
}

}  // namespace
}  // namespace cleave::split
