// The experience stream shared by cleave sim, the aggregator and the edges
// (federated/continual_stream.h): round -> experience, a client's rows per experience, the
// domain permutations, the wire form of the stream and the per-experience evaluation.
#include "federated/continual_stream.h"

#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <vector>

#include "federated/weights.h"
#include "split/trainable_net.h"
#include "split/vision_model.h"

namespace cleave::federated {
namespace {

TEST(ContinualStreamTest, ExperiencesSpreadEvenlyOverTheRounds) {
  std::vector<int> got;
  for (int round = 1; round <= 10; ++round) got.push_back(ExperienceOfRound(round, 10, 5));
  EXPECT_EQ(got, (std::vector<int>{0, 0, 1, 1, 2, 2, 3, 3, 4, 4}));
  got.clear();
  for (int round = 1; round <= 7; ++round) got.push_back(ExperienceOfRound(round, 7, 3));
  EXPECT_EQ(got, (std::vector<int>{0, 0, 0, 1, 1, 2, 2}));
  EXPECT_EQ(ExperienceOfRound(99, 10, 5), 4);  // past the end: the last experience
  EXPECT_EQ(ExperienceOfRound(1, 1, 1), 0);
}

TEST(ContinualStreamTest, ClassAndDomainSelections) {
  // Ten classes in five groups of two.
  EXPECT_EQ(ClassExperience(0, 10, 5), 0);
  EXPECT_EQ(ClassExperience(1, 10, 5), 0);
  EXPECT_EQ(ClassExperience(2, 10, 5), 1);
  EXPECT_EQ(ClassExperience(9, 10, 5), 4);
  const std::vector<int64_t> labels = {3, 0, 9, 2, 1, 8, 3};
  EXPECT_EQ(ExperienceSelection(labels, "class", 10, 1, 5), (std::vector<int64_t>{0, 3, 6}));
  EXPECT_EQ(ExperienceSelection(labels, "class", 10, 0, 5), (std::vector<int64_t>{1, 4}));
  EXPECT_TRUE(ExperienceSelection(labels, "class", 10, 2, 5).empty());
  // Domain: contiguous shares that cover every row exactly once.
  std::vector<int64_t> all;
  for (int e = 0; e < 3; ++e) {
    const std::vector<int64_t> part = ExperienceSelection(labels, "domain", 10, e, 3);
    all.insert(all.end(), part.begin(), part.end());
  }
  std::vector<int64_t> expected(labels.size());
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(all, expected);
}

TEST(ContinualStreamTest, DomainPermutationsAreSeededAndExperienceZeroIsTheIdentity) {
  const std::vector<torch::Tensor> a = DomainPermutations(7, 3, 16);
  const std::vector<torch::Tensor> b = DomainPermutations(7, 3, 16);
  const std::vector<torch::Tensor> c = DomainPermutations(8, 3, 16);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_TRUE(torch::equal(a[0], torch::arange(16, torch::kLong)));
  for (int e = 0; e < 3; ++e) EXPECT_TRUE(torch::equal(a[e], b[e]));
  EXPECT_FALSE(torch::equal(a[1], c[1]));
  EXPECT_TRUE(torch::equal(std::get<0>(a[2].sort()), torch::arange(16, torch::kLong)));
  const torch::Tensor images = torch::arange(2 * 16, torch::kFloat).reshape({2, 1, 4, 4});
  EXPECT_TRUE(torch::equal(InExperience(images, a, 0), images));
  const torch::Tensor seen = InExperience(images, a, 1);
  EXPECT_EQ(seen.sizes(), images.sizes());
  EXPECT_TRUE(torch::equal(seen.flatten(2)[1][0], images.flatten(2)[1][0].index_select(0, a[1])));
  EXPECT_TRUE(torch::equal(InExperience(images, {}, 2), images));
}

TEST(ContinualStreamTest, TheStreamSurvivesTheWire) {
  ContinualStreamOptions o;
  o.enabled = true;
  o.scenario = "domain";
  o.experiences = 4;
  o.strategy.strategy = "derpp";
  o.strategy.replay.capacity = 300;
  o.strategy.replay.class_balanced = true;
  o.strategy.replay_batch = 12;
  o.strategy.ewc_lambda = 10;
  o.strategy.derpp_alpha = 0.2;
  o.strategy.derpp_beta = 0.9;
  o.strategy.kd_temperature = 4;
  const wire::fl::ContinualRound r = ToWireContinual(o, 2, 99);
  EXPECT_EQ(r.experience, 2u);
  EXPECT_EQ(r.experiences, 4u);
  EXPECT_EQ(r.seed, 99u);
  EXPECT_EQ(r.scenario, wire::fl::ContinualScenario::kDomain);
  EXPECT_EQ(r.method, wire::fl::ContinualMethod::kDerpp);
  Result<ContinualStreamOptions> back = FromWireContinual(r, 1 << 20, 5);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ContinualStreamOptions expected = o;
  expected.strategy.replay.max_bytes = 1 << 20;  // the client's own
  expected.strategy.replay.seed = 5;
  EXPECT_EQ(back->ToJson(), expected.ToJson());
  EXPECT_EQ(back->strategy.replay.max_bytes, 1 << 20);
  EXPECT_EQ(back->strategy.replay.seed, 5u);
  // A strategy that does not validate is refused, naming the field.
  wire::fl::ContinualRound bad = r;
  bad.lwf_temperature = 0;
  Result<ContinualStreamOptions> refused = FromWireContinual(bad, 1 << 20, 5);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("lwf_temperature"), std::string::npos)
      << refused.status().ToString();
}

TEST(ContinualStreamTest, ValidateNamesTheKey) {
  ContinualStreamOptions o;
  EXPECT_TRUE(o.Validate(1, "aggregator").ok());  // disabled: nothing to check
  o.enabled = true;
  o.experiences = 5;
  EXPECT_TRUE(o.Validate(5, "aggregator").ok());
  Status s = o.Validate(4, "aggregator");
  EXPECT_NE(
      s.message().find("aggregator: continual.experiences must be in 1..aggregator.rounds (4)"),
      std::string::npos)
      << s.ToString();
  o.scenario = "task";
  s = o.Validate(10, "sim");
  EXPECT_NE(s.message().find("sim: continual.scenario"), std::string::npos) << s.ToString();
  o.scenario = "class";
  o.strategy.strategy = "gem";
  EXPECT_FALSE(o.Validate(10, "sim").ok());
}

// Accuracy per experience after each round: a model that answers class 0 for everything is
// right on experience 0's class-0 rows only; the matrix fills a row per finished experience.
TEST(ContinualStreamTest, EvaluatorFillsTheMatrixPerExperience) {
  const split::VisionModelSpec spec = split::VisionModelSpec::TinySplit();
  torch::manual_seed(1);
  std::unique_ptr<split::TrainableNet> trainable =
      split::MakeTrainable(spec, split::InputSpec::Legacy(spec));
  Weights w = GetWeights(*trainable);
  // Zero every weight, then bias the last layer towards class 0.
  for (auto& t : w) t = torch::zeros_like(t);
  const WeightsLayout layout = LayoutOf(*trainable);
  for (size_t i = 0; i < layout.size(); ++i) {
    if (layout.names[i].find("bias") != std::string::npos && w[i].numel() == 10) {
      w[i][0] = 5.0;
    }
  }
  split::LabeledImages test;
  test.images = torch::rand({20, 1, spec.image_size, spec.image_size});
  test.labels =
      torch::tensor({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 2, 3, 4, 5, 6, 7, 8, 9}, torch::kLong);
  ContinualStreamOptions o;
  o.enabled = true;
  o.experiences = 2;
  ExperienceEvaluator evaluator(o, 10, 1);
  const split::ImageRows rows = split::ImageRows::InMemory(test);
  Result<nlohmann::json> r1 = evaluator.Evaluate(*trainable, w, rows, 1, 4);
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  // Experience 0 (classes 0..4) has 10 rows, 3 of class 0; experience 1 none of class 0.
  EXPECT_EQ(r1->at("experience"), 0);
  EXPECT_FALSE(r1->at("end_of_experience").get<bool>());
  EXPECT_NEAR(r1->at("accuracies")[0].get<double>(), 0.3, 1e-9);
  EXPECT_NEAR(r1->at("accuracies")[1].get<double>(), 0.0, 1e-9);
  ASSERT_TRUE(evaluator.Evaluate(*trainable, w, rows, 2, 4).ok());
  EXPECT_EQ(evaluator.tracker().matrix().size(), 1u);  // round 2 ended experience 0
  Result<nlohmann::json> r4 = evaluator.Evaluate(*trainable, w, rows, 4, 4);
  ASSERT_TRUE(r4.ok());
  EXPECT_EQ(r4->at("experience"), 1);
  EXPECT_TRUE(r4->at("end_of_experience").get<bool>());
  EXPECT_NEAR(r4->at("accuracy_seen").get<double>(), 0.15, 1e-9);
  const nlohmann::json summary = evaluator.Summary();
  EXPECT_EQ(summary.at("matrix").size(), 2u);
  EXPECT_NEAR(summary.at("metrics").at("acc").get<double>(), 0.15, 1e-9);
  // Restoring from records rebuilds the same matrix.
  std::vector<RoundRecord> history(2);
  history[0].extra["continual"] = *r1;
  history[1].extra["continual"] = *r4;
  history[1].extra["continual"]["experience"] = 0;  // pretend it ended experience 0
  ExperienceEvaluator restored(o, 10, 1);
  ASSERT_TRUE(restored.Restore(history).ok());
  EXPECT_EQ(restored.tracker().matrix().size(), 1u);
}

}  // namespace
}  // namespace cleave::federated
