#include "federated/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/file_util.h"

namespace cleave::federated {
namespace {

namespace fs = std::filesystem;

WeightsLayout Layout() {
  WeightsLayout l;
  l.names = {"block0.w", "block1.w"};
  l.shapes = {{2, 2}, {3}};
  return l;
}

std::unique_ptr<RoundEngine> Engine(Clock& clock, const std::string& strategy = "fedadam") {
  StrategyConfig config;
  config.name = strategy;
  auto s = MakeStrategy(config);
  EXPECT_TRUE(s.ok());
  auto e = RoundEngine::Create({}, std::move(*s), Layout(),
                               {torch::zeros({2, 2}), torch::zeros({3})}, clock);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return std::move(*e);
}

void OneRound(RoundEngine& engine, float value) {
  ASSERT_TRUE(engine.StartRound({{"a", 5}}).ok());
  ClientUpdate u;
  u.client_id = "a";
  u.num_examples = 5;
  u.weights = {torch::full({2, 2}, value), torch::full({3}, -value)};
  ASSERT_EQ(engine.Submit(engine.rounds_completed() + 1, u), UpdateVerdict::kAccepted);
  ASSERT_TRUE(engine.FinishRound().ok());
}

fs::path Temp(const std::string& name) {
  return fs::temp_directory_path() / ("cleave_ckpt_" + name + "_" + std::to_string(::getpid()));
}

TEST(CheckpointTest, RoundTripRestoresWeightsStateAndHistory) {
  FakeClock clock;
  auto a = Engine(clock);
  OneRound(*a, 1.0f);
  OneRound(*a, 2.0f);
  const fs::path path = Temp("roundtrip");
  ASSERT_TRUE(SaveCheckpoint(path, *a).ok());
  auto b = Engine(clock);
  ASSERT_TRUE(RestoreCheckpoint(path, *b).ok());
  EXPECT_EQ(b->rounds_completed(), 2);
  ASSERT_EQ(b->history().size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_TRUE(torch::equal(a->global()[i], b->global()[i]));
  // The FedAdam moments came back too: the next round moves both engines identically.
  OneRound(*a, 3.0f);
  OneRound(*b, 3.0f);
  for (size_t i = 0; i < 2; ++i) EXPECT_TRUE(torch::equal(a->global()[i], b->global()[i]));
  fs::remove(path);
}

TEST(CheckpointTest, MissingTamperedAndForeignCheckpointsAreRefused) {
  FakeClock clock;
  auto a = Engine(clock);
  OneRound(*a, 1.0f);
  const fs::path path = Temp("tamper");
  fs::remove(path);
  auto fresh = Engine(clock);
  EXPECT_EQ(RestoreCheckpoint(path, *fresh).code(), StatusCode::kNotFound);

  ASSERT_TRUE(SaveCheckpoint(path, *a).ok());
  auto bytes = ReadFileToString(path);
  ASSERT_TRUE(bytes.ok());
  std::string flipped = *bytes;
  flipped[flipped.size() / 2] ^= 0x20;
  ASSERT_TRUE(WriteFileAtomic(path, flipped).ok());
  const Status tampered = RestoreCheckpoint(path, *fresh);
  EXPECT_EQ(tampered.code(), StatusCode::kDataLoss) << tampered.ToString();
  EXPECT_EQ(fresh->rounds_completed(), 0);  // unchanged

  ASSERT_TRUE(WriteFileAtomic(path, *bytes).ok());
  auto median = Engine(clock, "fedmedian");
  EXPECT_EQ(RestoreCheckpoint(path, *median).code(), StatusCode::kInvalidArgument);

  StrategyConfig config;
  auto s = MakeStrategy(config);
  WeightsLayout other = Layout();
  other.shapes[1] = {4};
  auto different = RoundEngine::Create({}, std::move(*s), other,
                                       {torch::zeros({2, 2}), torch::zeros({4})}, clock);
  ASSERT_TRUE(different.ok());
  EXPECT_EQ(RestoreCheckpoint(path, **different).code(), StatusCode::kInvalidArgument);

  ASSERT_TRUE(a->StartRound({{"a", 5}}).ok());
  EXPECT_EQ(SaveCheckpoint(path, *a).code(), StatusCode::kFailedPrecondition);  // mid-round
  fs::remove(path);
}

}  // namespace
}  // namespace cleave::federated
