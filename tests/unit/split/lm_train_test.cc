#include "split/lm_train.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

namespace cleave::split {
namespace {

namespace fs = std::filesystem;

std::string Pattern(size_t bytes) {
  std::string s;
  const std::string unit = "the cat sat on the mat. ";
  while (s.size() < bytes) s += unit;
  return s.substr(0, bytes);
}

fs::path TempDir(const std::string& tag) {
  return fs::temp_directory_path() /
         ("cleave-lm-" + tag + "-" + std::to_string(::getpid()) + "-" +
          ::testing::UnitTest::GetInstance()->current_test_info()->name());
}

TEST(LmRoutingTest, RoutedFiguresAndThresholdByHand) {
  TokenScores s;
  // Four tokens: confidences, exit and final log2 probabilities of the true byte.
  s.exit_confidence = {0.9f, 0.8f, 0.3f, 0.2f};
  s.exit_log2p = {-1.0f, -2.0f, -6.0f, -8.0f};
  s.final_log2p = {-1.0f, -1.5f, -2.0f, -2.0f};
  const LmEval e = Summarize(s);
  EXPECT_DOUBLE_EQ(e.exit_bpc, 17.0 / 4);
  EXPECT_DOUBLE_EQ(e.final_bpc, 6.5 / 4);
  EXPECT_EQ(e.tokens, 4);
  RoutedFigures r = Routed(s, 0.5);  // tokens 0 and 1 at the edge
  EXPECT_DOUBLE_EQ(r.bpc, (1.0 + 2.0 + 2.0 + 2.0) / 4);
  EXPECT_DOUBLE_EQ(r.routed_fraction, 0.5);
  EXPECT_DOUBLE_EQ(Routed(s, 1.0).bpc, e.final_bpc);  // everything to the cloud
  EXPECT_DOUBLE_EQ(Routed(s, 0.0).routed_fraction, 0.0);
  // Cloud-only is 1.625 bits; answering token 0 locally costs nothing, token 1 another
  // 0.125 (1.75 = 1.077x), token 2 far more.
  EXPECT_FLOAT_EQ(ChooseThreshold(s, 0.0), 0.9f);
  EXPECT_FLOAT_EQ(ChooseThreshold(s, 0.08), 0.8f);
  EXPECT_FLOAT_EQ(ChooseThreshold(s, 0.6), 0.8f);  // token 2 would make it 2.75 (1.69x)
  EXPECT_FLOAT_EQ(ChooseThreshold(s, 0.7), 0.3f);
  EXPECT_FLOAT_EQ(ChooseThreshold(s, 2.0), 0.2f);  // all local: 4.25 <= 3 x 1.625
  // Equal confidences are one cut: never half of a tie.
  TokenScores tie = s;
  tie.exit_confidence = {0.9f, 0.9f, 0.3f, 0.2f};
  tie.exit_log2p = {-1.0f, -9.0f, -6.0f, -8.0f};
  EXPECT_FLOAT_EQ(ChooseThreshold(tie, 0.01), 1.0f);
  EXPECT_DOUBLE_EQ(Routed(TokenScores{}, 0.5).bpc, 0.0);
}

TEST(LmTrainTest, LearnsARepeatedTextAndRejectsBadInput) {
  torch::manual_seed(1);
  SplitLm lm(LmSpec::Tiny());
  LmTrainOptions o;
  o.steps = 80;
  o.batch = 8;
  o.warmup = 10;
  o.lr = 5e-3;
  o.eval_every = 40;
  o.eval_bytes = 4096;
  o.progress_out = nullptr;
  const std::string text = Pattern(20000);
  auto r = TrainLm(*lm, text, Pattern(5000), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->steps, 80);
  ASSERT_EQ(r->history.size(), 2u);       // step 40 and the end
  EXPECT_LT(r->held_out.final_bpc, 2.0);  // from 8 bits of a uniform guess
  EXPECT_LT(r->held_out.exit_bpc, 3.0);
  EXPECT_FALSE(lm->is_training());

  EXPECT_EQ(TrainLm(*lm, "short", text, o).status().code(), StatusCode::kInvalidArgument);
  LmTrainOptions zero = o;
  zero.steps = 0;
  EXPECT_EQ(TrainLm(*lm, text, text, zero).status().code(), StatusCode::kInvalidArgument);
  LmTrainOptions cancel = o;
  cancel.cancelled = [] { return true; };
  EXPECT_EQ(TrainLm(*lm, text, text, cancel).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(ScoreTokens(*lm, "tiny", 1000).status().code(), StatusCode::kInvalidArgument);
  auto scores = ScoreTokens(*lm, text, 33 * 10);  // ten windows of context + 1 bytes
  ASSERT_TRUE(scores.ok());
  EXPECT_EQ(scores->exit_log2p.size(), 10u * 32);
}

TEST(LmBundleTest, RoundTripPartsAndEveryRejection) {
  const fs::path dir = TempDir("bundle");
  fs::remove_all(dir);
  torch::manual_seed(2);
  SplitLm lm(LmSpec::Tiny());
  LmBundleInfo info;
  info.spec = LmSpec::Tiny();
  info.exit_threshold = 0.75;
  info.training = {{"steps", 3}};
  ASSERT_TRUE(WriteLmBundle(dir, *lm, info).ok());

  auto both = ReadLmBundle(dir);
  ASSERT_TRUE(both.ok()) << both.status().ToString();
  EXPECT_DOUBLE_EQ(both->info.exit_threshold, 0.75);
  EXPECT_EQ(both->info.training["steps"], 3);
  const torch::Tensor tokens = torch::randint(0, 256, {1, 16}, torch::kLong);
  {
    torch::NoGradGuard no_grad;
    lm->eval();
    EXPECT_TRUE(
        torch::equal(both->model->forward(tokens).final_logits, lm->forward(tokens).final_logits));
  }
  // Edge part only: the edge computes the same exit logits; the cloud part is untouched.
  auto edge = ReadLmBundle(dir, true, false);
  ASSERT_TRUE(edge.ok());
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(
        torch::equal(edge->model->forward(tokens).exit_logits, lm->forward(tokens).exit_logits));
    EXPECT_FALSE(
        torch::equal(edge->model->forward(tokens).final_logits, lm->forward(tokens).final_logits));
  }

  // A manifest with a threshold out of range (edited by hand) is refused.
  const fs::path edited = TempDir("edited");
  fs::remove_all(edited);
  fs::copy(dir, edited);
  nlohmann::json m;
  std::ifstream(edited / "manifest.json") >> m;
  m["model"]["routing"]["exit_threshold"] = 1.5;
  std::ofstream(edited / "manifest.json") << m.dump();
  EXPECT_EQ(ReadLmBundle(edited).status().code(), StatusCode::kInvalidArgument);
  m["model"].erase("spec");
  std::ofstream(edited / "manifest.json") << m.dump();
  EXPECT_EQ(ReadLmBundle(edited).status().code(), StatusCode::kInvalidArgument);

  // A damaged weight file fails verification.
  const fs::path damaged = TempDir("damaged");
  fs::remove_all(damaged);
  fs::copy(dir, damaged);
  {
    std::fstream f(damaged / "cloud.pt", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x5a');
  }
  EXPECT_EQ(ReadLmBundle(damaged).status().code(), StatusCode::kDataLoss);
  // Opening verifies every file, so even an edge that loads only its part refuses it.
  EXPECT_EQ(ReadLmBundle(damaged, true, false).status().code(), StatusCode::kDataLoss);

  EXPECT_EQ(ReadLmBundle(TempDir("missing")).status().code(), StatusCode::kNotFound);
  LmBundleInfo bad = info;
  bad.exit_threshold = -0.1;
  EXPECT_EQ(WriteLmBundle(TempDir("bad"), *lm, bad).code(), StatusCode::kInvalidArgument);
  for (const auto& d : {dir, edited, damaged}) fs::remove_all(d);
}

}  // namespace
}  // namespace cleave::split
