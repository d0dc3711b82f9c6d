#include "federated/continual.h"

#include <cmath>

#include <gtest/gtest.h>

namespace cleave::federated {
namespace {

namespace F = torch::nn::functional;

// logits = x.flatten(1) @ W: small enough to compute every loss by hand.
class LinearModel final : public ContinualModel {
 public:
  explicit LinearModel(torch::Tensor w) : w_(std::move(w)) { w_.set_requires_grad(true); }
  torch::Tensor Forward(const torch::Tensor& x) override { return x.flatten(1).matmul(w_); }
  std::vector<torch::Tensor> Parameters() override { return {w_}; }
  Result<FrozenForward> Snapshot() override {
    const torch::Tensor frozen = w_.detach().clone();
    return FrozenForward([frozen](const torch::Tensor& x) { return x.flatten(1).matmul(frozen); });
  }
  void SetTraining(bool) override {}
  torch::Tensor& w() { return w_; }

 private:
  torch::Tensor w_;
};

// Two inputs of dimension 2 and a 3-class linear model.
torch::Tensor W0() { return torch::tensor({{1.0f, -1.0f, 0.5f}, {0.0f, 2.0f, -0.5f}}); }
LabeledBatch TwoRows() {
  return LabeledBatch::Hard(torch::tensor({{1.0f, 0.0f}, {0.5f, 1.0f}}), torch::tensor({0, 1}));
}

// Cross-entropy of one logit row against a class, by hand.
double Ce(const std::vector<double>& z, int label) {
  double sum = 0;
  for (double v : z) sum += std::exp(v);
  return -(z[label] - std::log(sum));
}
std::vector<double> Softmax(const std::vector<double>& z, double t) {
  std::vector<double> p;
  double sum = 0;
  for (double v : z) sum += std::exp(v / t);
  for (double v : z) p.push_back(std::exp(v / t) / sum);
  return p;
}

TEST(ContinualLossTest, HardLabelsSoftLabelsAndUnlabelledRowsByHand) {
  // Row 0: hard label 0, logits (2, 0). Row 1: teacher (2, 0) at T = 2, logits (0, 0).
  // Row 2: no label at all: counts zero.
  LabeledBatch b;
  b.images = torch::zeros({3, 1});
  b.labels = torch::tensor({0, -1, -1});
  b.soft = torch::tensor({{0.0f, 0.0f}, {2.0f, 0.0f}, {0.0f, 0.0f}});
  b.has_soft = torch::tensor({false, true, false});
  const torch::Tensor logits = torch::tensor({{2.0f, 0.0f}, {0.0f, 0.0f}, {5.0f, 1.0f}});
  const double ce = Ce({2, 0}, 0);
  const std::vector<double> target = Softmax({2, 0}, 2);
  const double kl = target[0] * std::log(target[0] / 0.5) + target[1] * std::log(target[1] / 0.5);
  EXPECT_NEAR(LabeledLoss(logits, b, 2.0).item<double>(), (ce + 4 * kl) / 3, 1e-6);
  // A hard label wins over a soft one on the same row.
  b.has_soft = torch::tensor({true, true, false});
  b.soft[0] = torch::tensor({0.0f, 9.0f});
  EXPECT_NEAR(LabeledLoss(logits, b, 2.0).item<double>(), (ce + 4 * kl) / 3, 1e-6);
}

TEST(ContinualLossTest, EveryHeadTrainsOnTheSameTargets) {
  const LabeledBatch b = LabeledBatch::Hard(torch::zeros({1, 1}), torch::tensor({1}));
  // [1 row, 2 heads, 2 classes]
  const torch::Tensor logits = torch::tensor({{{0.0f, 1.0f}, {3.0f, 0.0f}}});
  EXPECT_NEAR(LabeledLoss(logits, b, 2.0).item<double>(), (Ce({0, 1}, 1) + Ce({3, 0}, 1)) / 2,
              1e-6);
}

TEST(ContinualStrategyTest, NaiveIsTheLabeledLoss) {
  LinearModel model(W0());
  auto s = MakeContinualStrategy(ContinualConfig{});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->name(), "naive");
  EXPECT_EQ((*s)->buffer(), nullptr);
  const LabeledBatch b = TwoRows();
  // logits: row 0 (1, -1, 0.5); row 1 (0.5, 1.5, -0.25).
  const double expected = (Ce({1, -1, 0.5}, 0) + Ce({0.5, 1.5, -0.25}, 1)) / 2;
  const StepLoss step = (*s)->Loss(model, b);
  EXPECT_NEAR(step.loss.item<double>(), expected, 1e-6);
  EXPECT_FALSE(step.logits.requires_grad());
  EXPECT_EQ(step.logits.sizes(), (std::vector<int64_t>{2, 3}));
}

TEST(ContinualStrategyTest, ExperienceReplayAveragesOverTheStepAndTheBuffer) {
  LinearModel model(W0());
  ContinualConfig c;
  c.strategy = "er";
  c.replay.capacity = 10;
  auto s = MakeContinualStrategy(c);
  ASSERT_TRUE(s.ok());
  const LabeledBatch b = TwoRows();
  // Empty buffer: the naive loss.
  EXPECT_NEAR((*s)->Loss(model, b).loss.item<double>(),
              (Ce({1, -1, 0.5}, 0) + Ce({0.5, 1.5, -0.25}, 1)) / 2, 1e-6);
  // One stored row (0, 1) with label 2: logits (0, 2, -0.5).
  ASSERT_TRUE((*s)->Observe(LabeledBatch::Hard(torch::tensor({{0.0f, 1.0f}}), torch::tensor({2})),
                            torch::Tensor())
                  .ok());
  ASSERT_NE((*s)->buffer(), nullptr);
  EXPECT_EQ((*s)->buffer()->size(), 1);
  const StepLoss step = (*s)->Loss(model, b);
  EXPECT_NEAR(step.loss.item<double>(),
              (Ce({1, -1, 0.5}, 0) + Ce({0.5, 1.5, -0.25}, 1) + Ce({0, 2, -0.5}, 2)) / 3, 1e-6);
  EXPECT_EQ(step.logits.size(0), 2);  // the step's own rows only
}

TEST(ContinualStrategyTest, OnlineEwcPenaltyUsesTheFisherAtTheBoundary) {
  LinearModel model(W0());
  ContinualConfig c;
  c.strategy = "ewc";
  c.ewc_lambda = 10;
  c.ewc_gamma = 0.5;
  auto s = MakeContinualStrategy(c);
  ASSERT_TRUE(s.ok());
  const LabeledBatch finished = TwoRows();
  // Before any boundary: no penalty.
  EXPECT_NEAR((*s)->Loss(model, finished).loss.item<double>(),
              (Ce({1, -1, 0.5}, 0) + Ce({0.5, 1.5, -0.25}, 1)) / 2, 1e-6);
  ASSERT_TRUE((*s)->Consolidate(model, finished).ok());
  // Empirical Fisher by hand: for a linear model the gradient of a row's cross-entropy is
  // x^T (softmax(z) - onehot(y)); F is the mean of its square over the rows.
  const auto grad_sq = [](const torch::Tensor& x, const torch::Tensor& z, int64_t y) {
    torch::Tensor g = F::softmax(z, F::SoftmaxFuncOptions(0));
    g[y] -= 1;
    return torch::outer(x, g).pow(2);
  };
  const torch::Tensor x = finished.images;
  const torch::Tensor z = x.matmul(W0());
  const torch::Tensor fisher1 = (grad_sq(x[0], z[0], 0) + grad_sq(x[1], z[1], 1)) / 2;
  // Move the weights: the penalty is lambda/2 sum F (w - w*)^2.
  torch::Tensor delta = torch::tensor({{0.1f, 0.0f, -0.2f}, {0.3f, 0.1f, 0.0f}});
  {
    torch::NoGradGuard g;
    model.w().add_(delta);
  }
  const LabeledBatch probe = LabeledBatch::Hard(torch::zeros({1, 2}), torch::tensor({0}));
  const double ce_probe = Ce({0, 0, 0}, 0);
  EXPECT_NEAR((*s)->Loss(model, probe).loss.item<double>(),
              ce_probe + 0.5 * 10 * (fisher1 * delta.pow(2)).sum().item<double>(), 1e-5);
  // A second boundary: F = gamma F1 + F2 around the new weights.
  ASSERT_TRUE((*s)->Consolidate(model, finished).ok());
  const torch::Tensor w1 = W0() + delta;
  const torch::Tensor z1 = x.matmul(w1);
  const torch::Tensor fisher2 = (grad_sq(x[0], z1[0], 0) + grad_sq(x[1], z1[1], 1)) / 2;
  {
    torch::NoGradGuard g;
    model.w().add_(delta);
  }
  EXPECT_NEAR((*s)->Loss(model, probe).loss.item<double>(),
              ce_probe + 0.5 * 10 * ((0.5 * fisher1 + fisher2) * delta.pow(2)).sum().item<double>(),
              1e-5);
}

TEST(ContinualStrategyTest, LwfDistillsTheFrozenModelOnTheOldClassesOnly) {
  LinearModel model(W0());
  ContinualConfig c;
  c.strategy = "lwf";
  c.lwf_alpha = 2;
  c.lwf_temperature = 2;
  auto s = MakeContinualStrategy(c);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE((*s)->Consolidate(model, TwoRows()).ok());  // classes 0 and 1 are old
  const torch::Tensor delta = torch::tensor({{0.5f, 0.5f, 1.0f}, {-1.0f, 0.0f, 0.0f}});
  {
    torch::NoGradGuard g;
    model.w().add_(delta);
  }
  // One new row (1, 1) of class 2. Teacher logits (1, 1, 0); student (0.5, 1.5, 1).
  const LabeledBatch b = LabeledBatch::Hard(torch::tensor({{1.0f, 1.0f}}), torch::tensor({2}));
  const std::vector<double> t = Softmax({1, 1}, 2), p = Softmax({0.5, 1.5}, 2);
  const double distill = -(t[0] * std::log(p[0]) + t[1] * std::log(p[1]));
  EXPECT_NEAR((*s)->Loss(model, b).loss.item<double>(), Ce({0.5, 1.5, 1}, 2) + 2 * distill, 1e-5);
}

TEST(ContinualStrategyTest, DerPlusPlusReplaysStoredLogitsAndLabels) {
  LinearModel model(W0());
  ContinualConfig c;
  c.strategy = "derpp";
  c.derpp_alpha = 0.3;
  c.derpp_beta = 0.7;
  c.replay.capacity = 4;
  auto s = MakeContinualStrategy(c);
  ASSERT_TRUE(s.ok());
  // Store row (0, 1), label 2, with the logits the model had then: (3, 0, 0).
  const LabeledBatch stored = LabeledBatch::Hard(torch::tensor({{0.0f, 1.0f}}), torch::tensor({2}));
  ASSERT_TRUE((*s)->Observe(stored, torch::tensor({{3.0f, 0.0f, 0.0f}})).ok());
  ASSERT_EQ((*s)->buffer()->size(), 1);
  EXPECT_TRUE((*s)->buffer()->All().has_logits[0].item<bool>());
  const LabeledBatch b = TwoRows();
  // Now the row's logits are (0, 2, -0.5): MSE against (3, 0, 0) is (9 + 4 + 0.25) / 3.
  const double naive = (Ce({1, -1, 0.5}, 0) + Ce({0.5, 1.5, -0.25}, 1)) / 2;
  EXPECT_NEAR((*s)->Loss(model, b).loss.item<double>(),
              naive + 0.3 * (13.25 / 3) + 0.7 * Ce({0, 2, -0.5}, 2), 1e-5);
}

TEST(ContinualStrategyTest, ConfigValidationAndJson) {
  ContinualConfig c;
  c.strategy = "derpp";
  c.replay.capacity = 123;
  c.derpp_alpha = 0.25;
  auto back = ContinualConfig::FromJson(c.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->strategy, "derpp");
  EXPECT_EQ(back->replay.capacity, 123);
  EXPECT_EQ(back->derpp_alpha, 0.25);
  const auto rejects = [](const std::function<void(ContinualConfig&)>& f, const char* what) {
    ContinualConfig bad;
    f(bad);
    Status s = bad.Validate();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << what;
    EXPECT_NE(s.message().find(what), std::string::npos) << s.ToString();
    EXPECT_EQ(MakeContinualStrategy(bad).status().code(), StatusCode::kInvalidArgument);
  };
  rejects([](ContinualConfig& b) { b.strategy = "gem"; }, "gem");
  rejects([](ContinualConfig& b) { b.ewc_lambda = -1; }, "ewc_lambda");
  rejects([](ContinualConfig& b) { b.ewc_gamma = 1.5; }, "ewc_gamma");
  rejects([](ContinualConfig& b) { b.lwf_temperature = 0; }, "lwf_temperature");
  rejects([](ContinualConfig& b) { b.derpp_beta = std::nan(""); }, "derpp_beta");
  rejects([](ContinualConfig& b) { b.kd_temperature = -2; }, "kd_temperature");
  rejects([](ContinualConfig& b) { b.replay.capacity = 0; }, "capacity");
  rejects([](ContinualConfig& b) { b.replay_batch = -1; }, "replay_batch");
  rejects([](ContinualConfig& b) { b.ewc_samples = 0; }, "ewc_samples");
  EXPECT_EQ(ContinualConfig::FromJson(nlohmann::json{{"strategy", 3}}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ContinualConfig::FromJson(nlohmann::json::array()).status().code(),
            StatusCode::kInvalidArgument);
}

// Two separable classes per "experience" in 2-D: experience 0 separates classes 0/1 along
// x, experience 1 classes 2/3 along y.
LabeledBatch Experience(int e, int n, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor x = torch::randn({n, 2}) * 0.3;
  torch::Tensor y = torch::randint(0, 2, {n}, torch::kLong);
  const torch::Tensor sign = y.to(torch::kFloat) * 2 - 1;
  x.select(1, e).add_(sign * 2);
  x.select(1, 1 - e).add_(3.0 * (e == 0 ? -1 : 1));
  return LabeledBatch::Hard(x, y + 2 * e);
}

double Accuracy(ContinualModel& m, const LabeledBatch& d) {
  torch::NoGradGuard g;
  return m.Forward(d.images).argmax(1).eq(d.labels).to(torch::kFloat).mean().item<double>();
}

TEST(TrainExperienceTest, ReplayRemembersWhatNaiveFineTuningForgets) {
  const auto run = [](const std::string& strategy) {
    torch::manual_seed(5);
    LinearModel model(torch::zeros({2, 4}));
    ContinualConfig c;
    c.strategy = strategy;
    c.replay.capacity = 50;
    auto s = MakeContinualStrategy(c);
    EXPECT_TRUE(s.ok());
    ExperienceOptions o;
    o.epochs = 3;
    o.batch_size = 16;
    o.lr = 0.1;
    for (int e = 0; e < 2; ++e) {
      if (e > 0) {
        EXPECT_TRUE((*s)->Consolidate(model, Experience(e - 1, 200, 10 + e)).ok());
      }
      auto r = TrainExperience(model, **s, Experience(e, 200, 10 + e), o);
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      EXPECT_EQ(r->steps, 3 * 13);
      EXPECT_EQ(r->samples, 600);
    }
    return Accuracy(model, Experience(0, 400, 99));
  };
  const double naive = run("naive"), er = run("er");
  EXPECT_LT(naive, 0.6) << "er " << er;  // the old classes are overwritten
  EXPECT_GT(er, 0.7) << "naive " << naive;
  EXPECT_GT(er, naive + 0.25) << "naive " << naive;
}

TEST(TrainExperienceTest, CallbackBudgetAndRejections) {
  LinearModel model(torch::zeros({2, 4}));
  auto s = MakeContinualStrategy(ContinualConfig{});
  ASSERT_TRUE(s.ok());
  const LabeledBatch d = Experience(0, 100, 1);
  ExperienceOptions o;
  o.batch_size = 10;
  o.callback_every = 4;
  std::vector<int64_t> calls;
  o.on_steps = [&](int64_t steps) { calls.push_back(steps); };
  ASSERT_TRUE(TrainExperience(model, **s, d, o).ok());
  EXPECT_EQ(calls, (std::vector<int64_t>{4, 8, 10}));
  o.on_steps = nullptr;
  o.max_steps = 3;
  auto r = TrainExperience(model, **s, d, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->steps, 3);
  EXPECT_TRUE(r->budget_hit);
  o.max_steps = 0;
  EXPECT_EQ(TrainExperience(model, **s, LabeledBatch{}, o).status().code(),
            StatusCode::kInvalidArgument);
  ExperienceOptions bad = o;
  bad.lr = 0;
  EXPECT_EQ(TrainExperience(model, **s, d, bad).status().code(), StatusCode::kInvalidArgument);
  bad = o;
  bad.batch_size = 0;
  EXPECT_EQ(TrainExperience(model, **s, d, bad).status().code(), StatusCode::kInvalidArgument);
  ExperienceOptions cancel = o;
  cancel.cancelled = [] { return true; };
  EXPECT_EQ(TrainExperience(model, **s, d, cancel).status().code(),
            StatusCode::kFailedPrecondition);
  LabeledBatch poisoned = d;
  poisoned.images = d.images.clone();
  poisoned.images[0][0] = std::nanf("");
  ExperienceOptions one = o;
  one.batch_size = 100;
  EXPECT_EQ(TrainExperience(model, **s, poisoned, one).status().code(), StatusCode::kInternal);
}

TEST(TrainExperienceTest, TrainsATrainableNetThroughTheAdapter) {
  torch::manual_seed(3);
  auto net = split::MakeTrainable(split::VisionModelSpec::TinySplit(),
                                  split::InputSpec::Legacy(split::VisionModelSpec::TinySplit()));
  auto model = ContinualModelOf(*net);
  EXPECT_FALSE(model->Parameters().empty());
  LabeledBatch d =
      LabeledBatch::Hard(torch::rand({32, 1, 28, 28}), torch::zeros({32}, torch::kLong));
  d.images.narrow(0, 16, 16).mul_(0.2);
  d.labels.narrow(0, 16, 16).fill_(1);
  auto s = MakeContinualStrategy(ContinualConfig{});
  ASSERT_TRUE(s.ok());
  torch::Tensor before;
  {
    torch::NoGradGuard g;
    before = LabeledLoss(model->Forward(d.images), d, 2.0);
  }
  ExperienceOptions o;
  o.epochs = 5;
  o.batch_size = 8;
  o.lr = 0.05;
  ASSERT_TRUE(TrainExperience(*model, **s, d, o).ok());
  torch::NoGradGuard g;
  EXPECT_LT(LabeledLoss(model->Forward(d.images), d, 2.0).item<double>(), before.item<double>());
  // The snapshot is frozen: training more does not move it.
  auto frozen = model->Snapshot();
  ASSERT_TRUE(frozen.ok());
  const torch::Tensor out = (*frozen)(d.images);
  EXPECT_FALSE(out.requires_grad());
  EXPECT_TRUE(torch::allclose(out, model->Forward(d.images)));
}

}  // namespace
}  // namespace cleave::federated
