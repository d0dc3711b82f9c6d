#include "federated/local_training.h"

#include <gtest/gtest.h>

namespace cleave::federated {
namespace {

// 64 random 28x28 images with labels equal to (mean brightness > 0.5): learnable quickly.
split::LabeledImages Toy(int n = 64, uint64_t seed = 3) {
  torch::manual_seed(seed);
  split::LabeledImages d;
  d.images = torch::rand({n, 1, 28, 28});
  d.images.narrow(0, 0, n / 2).mul_(0.5);
  d.labels = torch::zeros({n}, torch::kLong);
  d.labels.narrow(0, n / 2, n / 2).fill_(1);
  return d;
}

// cleave's own network for `spec`, as federated training sees it.
std::unique_ptr<split::TrainableNet> Tiny(const split::VisionModelSpec& spec) {
  return split::MakeTrainable(spec, split::InputSpec::Legacy(spec));
}

Weights Initial(split::TrainableNet& net) { return GetWeights(net); }

TEST(LocalTrainingTest, TrainsLowersLossAndLeavesFrozenEntriesAlone) {
  auto net = Tiny(split::VisionModelSpec::TinySplit());
  const Weights global = Initial(*net);
  const WeightsLayout layout = LayoutOf(*net);
  LocalTrainOptions o;
  o.fit.local_epochs = 3;
  o.fit.batch_size = 16;
  o.fit.lr = 0.05;
  o.trainable = TrainableMask(layout, TrainableSet::kHeadAndExits, 2);
  auto result = TrainLocally(*net, global, Toy(), o);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->num_examples, 64);
  EXPECT_EQ(result->steps, 12);
  EXPECT_EQ(result->samples, 192);
  EXPECT_FALSE(result->budget_hit);
  ASSERT_TRUE(layout.Check(result->weights).ok());
  int changed = 0;
  for (size_t i = 0; i < layout.size(); ++i) {
    const bool same = torch::equal(result->weights[i], global[i]);
    if (!o.trainable[i] && layout.names[i].find("running") == std::string::npos) {
      EXPECT_TRUE(same) << layout.names[i] << " is frozen but changed";
    }
    changed += !same && o.trainable[i];
  }
  EXPECT_GT(changed, 0);
}

TEST(LocalTrainingTest, FrozenBatchNormKeepsItsStatisticsWhileWeightsTrain) {
  auto net = Tiny(split::VisionModelSpec::TinySplit());
  const Weights global = Initial(*net);
  const WeightsLayout layout = LayoutOf(*net);
  const auto running_changed = [&](const Weights& w) {
    int changed = 0;
    for (size_t i = 0; i < layout.size(); ++i) {
      if (layout.names[i].find("running_") == std::string::npos) continue;
      changed += !torch::equal(w[i], global[i]);
    }
    return changed;
  };
  LocalTrainOptions o;
  o.fit.lr = 0.05;
  auto plain = TrainLocally(*net, global, Toy(), o);
  o.freeze_batch_norm_stats = true;
  auto frozen = TrainLocally(*net, global, Toy(), o);
  ASSERT_TRUE(plain.ok() && frozen.ok());
  EXPECT_GT(running_changed(plain->weights), 0);
  EXPECT_EQ(running_changed(frozen->weights), 0);
  int trained = 0;
  for (size_t i = 0; i < layout.size(); ++i)
    trained += !torch::equal(frozen->weights[i], global[i]);
  EXPECT_GT(trained, 0);  // the weights themselves still moved
}

TEST(LocalTrainingTest, SameSeedSameWeights) {
  auto a = Tiny(split::VisionModelSpec::TinySplit());
  const Weights global = Initial(*a);
  auto b = Tiny(split::VisionModelSpec::TinySplit());
  LocalTrainOptions o;
  o.seed = 42;
  auto ra = TrainLocally(*a, global, Toy(), o);
  auto rb = TrainLocally(*b, global, Toy(), o);
  ASSERT_TRUE(ra.ok() && rb.ok());
  for (size_t i = 0; i < ra->weights.size(); ++i) {
    EXPECT_TRUE(torch::equal(ra->weights[i], rb->weights[i]));
  }
}

TEST(LocalTrainingTest, ReusedTrainerMatchesFreshCallsAndRecyclesBuffers) {
  auto net = Tiny(split::VisionModelSpec::TinySplit());
  auto fresh = Tiny(split::VisionModelSpec::TinySplit());
  const Weights global = Initial(*net);
  LocalTrainer trainer(*net);
  Weights recycled;
  for (uint64_t seed : {1, 2, 3}) {
    LocalTrainOptions o;
    o.seed = seed;
    o.freeze_batch_norm_stats = seed == 2;
    o.global_is_checked = seed == 3;
    const void* reused = recycled.empty() ? nullptr : recycled[0].data_ptr();
    auto a = trainer.Train(global, Toy(), o, std::move(recycled));
    auto b = TrainLocally(*fresh, global, Toy(), o);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status().ToString() << b.status().ToString();
    ASSERT_EQ(a->weights.size(), b->weights.size());
    for (size_t i = 0; i < a->weights.size(); ++i) {
      EXPECT_TRUE(torch::equal(a->weights[i], b->weights[i])) << "seed " << seed << " entry " << i;
    }
    if (reused != nullptr) {
      EXPECT_EQ(a->weights[0].data_ptr(), reused);
    }
    recycled = std::move(a->weights);
  }
  // A global model of the wrong shape is refused even when the caller vouches for it.
  Weights wrong = global;
  wrong[0] = torch::zeros({1});
  LocalTrainOptions vouched;
  vouched.global_is_checked = true;
  EXPECT_EQ(trainer.Train(wrong, Toy(), vouched).status().code(), StatusCode::kInvalidArgument);
}

TEST(LocalTrainingTest, ProximalTermKeepsWeightsCloserToTheGlobalModel) {
  auto net = Tiny(split::VisionModelSpec::TinySplit());
  const Weights global = Initial(*net);
  const auto distance = [&](const Weights& w) {
    double d = 0;
    for (size_t i = 0; i < w.size(); ++i) d += (w[i] - global[i]).pow(2).sum().item<double>();
    return d;
  };
  LocalTrainOptions o;
  o.fit.local_epochs = 4;
  o.fit.lr = 0.1;
  auto plain = TrainLocally(*net, global, Toy(), o);
  o.fit.proximal_mu = 10.0;
  auto prox = TrainLocally(*net, global, Toy(), o);
  ASSERT_TRUE(plain.ok() && prox.ok());
  EXPECT_LT(distance(prox->weights), distance(plain->weights));
}

TEST(LocalTrainingTest, StepAndTimeBudgetsStopEarly) {
  auto net = Tiny(split::VisionModelSpec::TinySplit());
  const Weights global = Initial(*net);
  LocalTrainOptions o;
  o.fit.local_epochs = 5;
  o.fit.batch_size = 8;
  o.fit.max_steps = 3;
  auto steps = TrainLocally(*net, global, Toy(), o);
  ASSERT_TRUE(steps.ok());
  EXPECT_EQ(steps->steps, 3);
  EXPECT_TRUE(steps->budget_hit);

  FakeClock clock;
  o.fit.max_steps = 0;
  o.clock = &clock;
  o.time_budget_micros = 1000;
  int polls = 0;
  o.cancelled = [&] {
    if (++polls == 2) clock.Advance(5000);  // time runs out after the first step
    return false;
  };
  auto timed = TrainLocally(*net, global, Toy(), o);
  ASSERT_TRUE(timed.ok());
  EXPECT_EQ(timed->steps, 1);
  EXPECT_TRUE(timed->budget_hit);
}

TEST(LocalTrainingTest, RejectsBadInputsAndCancels) {
  auto net = Tiny(split::VisionModelSpec::TinySplit());
  const Weights global = Initial(*net);
  LocalTrainOptions o;
  EXPECT_EQ(TrainLocally(*net, global, split::LabeledImages{}, o).status().code(),
            StatusCode::kInvalidArgument);
  Weights wrong = global;
  wrong.pop_back();
  EXPECT_EQ(TrainLocally(*net, wrong, Toy(), o).status().code(), StatusCode::kInvalidArgument);
  LocalTrainOptions mask = o;
  mask.trainable = {true};
  EXPECT_EQ(TrainLocally(*net, global, Toy(), mask).status().code(), StatusCode::kInvalidArgument);
  LocalTrainOptions bad = o;
  bad.fit.lr = -1;
  EXPECT_EQ(TrainLocally(*net, global, Toy(), bad).status().code(), StatusCode::kInvalidArgument);
  LocalTrainOptions huge = o;
  huge.fit.lr = 1e30;
  EXPECT_EQ(TrainLocally(*net, global, Toy(), huge).status().code(), StatusCode::kInternal);
  LocalTrainOptions cancel = o;
  cancel.cancelled = [] { return true; };
  EXPECT_EQ(TrainLocally(*net, global, Toy(), cancel).status().code(),
            StatusCode::kFailedPrecondition);
}

TEST(LocalTrainingTest, EvaluateWeightsReportsAccuracyAndLoss) {
  auto net = Tiny(split::VisionModelSpec::SimpleCnn());
  const Weights global = Initial(*net);
  auto e = EvaluateWeights(*net, global, Toy());
  ASSERT_TRUE(e.ok());
  EXPECT_GE(e->accuracy, 0.0);
  EXPECT_LE(e->accuracy, 1.0);
  EXPECT_GT(e->loss, 0.0);
  EXPECT_EQ(EvaluateWeights(*net, global, split::LabeledImages{}).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cleave::federated
