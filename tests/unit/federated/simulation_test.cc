#include "federated/simulation.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/file_util.h"
#include "federated/checkpoint.h"
#include "unit/federated/sim_test_data.h"

namespace cleave::federated {
namespace {

namespace fs = std::filesystem;

SimData SimSynthetic() { return SyntheticSimData(400, 100, 11); }

SimOptions Small() {
  SimOptions o;
  o.model = "tiny_split";
  o.num_clients = 20;
  o.partition = *PartitionSpec::Parse("dirichlet:0.5");
  o.rounds = 3;
  o.engine.fraction = 0.25;
  o.engine.min_clients = 2;
  o.engine.fit.local_epochs = 1;
  o.engine.fit.batch_size = 8;
  o.engine.fit.lr = 0.05;
  o.workers = 2;
  o.progress_out = nullptr;
  return o;
}

fs::path Temp(const std::string& name) {
  return fs::temp_directory_path() / ("cleave_sim_" + name + "_" + std::to_string(::getpid()));
}

TEST(SimulationTest, RunsRoundsAndRecordsEverything) {
  const SimData data = SimSynthetic();
  auto r = RunSimulation(Small(), data);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->history.size(), 3u);
  for (const auto& rec : r->history) {
    EXPECT_TRUE(rec.applied);
    EXPECT_EQ(rec.sampled, 5);  // ceil(0.25 * 20)
    EXPECT_EQ(rec.succeeded, 5);
    EXPECT_TRUE(rec.eval_accuracy.has_value());
    EXPECT_GT(rec.extra.at("bytes_down").get<int64_t>(), 0);
    EXPECT_GT(rec.extra.at("bytes_up").get<int64_t>(), 0);
    EXPECT_GT(rec.extra.at("peak_rss_bytes").get<int64_t>(), 0);
    EXPECT_GE(rec.extra.at("wall_seconds").get<double>(), 0.0);
  }
  EXPECT_GT(r->peak_rss_bytes, 0);
  const fs::path csv = Temp("csv");
  ASSERT_TRUE(WriteHistoryCsv(r->history, csv.string()).ok());
  auto text = ReadFileToString(csv);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(std::count(text->begin(), text->end(), '\n'), 4);  // header + 3 rounds
  fs::remove(csv);
}

TEST(SimulationTest, SameSeedSameModelAnyWorkerCount) {
  const SimData data = SimSynthetic();
  SimOptions one = Small();
  one.workers = 1;
  SimOptions two = Small();
  two.workers = 2;
  auto a = RunSimulation(one, data);
  auto b = RunSimulation(two, data);
  ASSERT_TRUE(a.ok() && b.ok());
  for (size_t i = 0; i < a->global.size(); ++i) {
    EXPECT_TRUE(torch::equal(a->global[i], b->global[i])) << i;
  }
}

TEST(SimulationTest, ResumedRunEndsWithTheSameWeights) {
  const SimData data = SimSynthetic();
  for (const std::string strategy : {"fedavg", "fedyogi"}) {
    SimOptions straight = Small();
    straight.strategy.name = strategy;
    auto full = RunSimulation(straight, data);
    ASSERT_TRUE(full.ok()) << full.status().ToString();

    const fs::path ckpt = Temp("ckpt_" + strategy);
    fs::remove(ckpt);
    SimOptions first = straight;
    first.rounds = 2;  // "interrupted" after round 2
    first.checkpoint = ckpt.string();
    ASSERT_TRUE(RunSimulation(first, data).ok());
    SimOptions rest = straight;
    rest.checkpoint = ckpt.string();
    auto resumed = RunSimulation(rest, data);
    ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
    EXPECT_EQ(resumed->resumed_from_round, 2);
    ASSERT_EQ(resumed->history.size(), 3u);
    for (size_t i = 0; i < full->global.size(); ++i) {
      EXPECT_TRUE(torch::equal(full->global[i], resumed->global[i])) << strategy << " " << i;
    }
    fs::remove(ckpt);
  }
}

TEST(SimulationTest, DropoutSlowClientsAndDeadlinesAreCounted) {
  const SimData data = SimSynthetic();
  SimOptions o = Small();
  o.rounds = 2;
  o.engine.fraction = 0.5;  // 10 sampled
  o.dropout = 0.3;
  o.speed_min = 1;
  o.speed_max = 20;
  o.step_seconds = 1;
  o.engine.deadline_micros = 30'000'000;  // fast clients (few steps x small factor) make it
  auto r = RunSimulation(o, data);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  int failed = 0, late = 0, ok = 0;
  for (const auto& rec : r->history) {
    failed += rec.failed;
    late += rec.late;
    ok += rec.succeeded;
    EXPECT_EQ(rec.succeeded + rec.failed + rec.late + rec.rejected + rec.missing, rec.sampled);
    EXPECT_LE(rec.extra.at("virtual_seconds").get<double>(), 30.001);
  }
  EXPECT_GT(failed, 0);
  EXPECT_GT(late, 0);
  EXPECT_GT(ok, 0);
}

TEST(SimulationTest, OvercommitClosesTheRoundAtTheTarget) {
  const SimData data = SimSynthetic();
  SimOptions o = Small();
  o.rounds = 1;
  o.engine.fraction = 0.2;    // target 4
  o.engine.overcommit = 0.5;  // sample 6
  o.speed_max = 5;
  auto r = RunSimulation(o, data);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->history[0].sampled, 6);
  EXPECT_EQ(r->history[0].succeeded, 4);
  EXPECT_EQ(r->history[0].late, 2);
}

TEST(SimulationTest, RejectsBadOptionsAndDamagedCheckpoints) {
  const SimData data = SimSynthetic();
  const auto code = [&](SimOptions o) { return RunSimulation(o, data).status().code(); };
  SimOptions o = Small();
  o.model = "resnet";
  EXPECT_EQ(code(o), StatusCode::kInvalidArgument);
  o = Small();
  o.num_clients = 0;
  EXPECT_EQ(code(o), StatusCode::kInvalidArgument);
  o = Small();
  o.dropout = 1.0;
  EXPECT_EQ(code(o), StatusCode::kInvalidArgument);
  o = Small();
  o.speed_min = 2;
  o.speed_max = 1;
  EXPECT_EQ(code(o), StatusCode::kInvalidArgument);
  o = Small();
  o.strategy.name = "fedmagic";
  EXPECT_EQ(code(o), StatusCode::kInvalidArgument);
  SimData no_labels = data;
  no_labels.train_labels.clear();
  EXPECT_EQ(RunSimulation(Small(), no_labels).status().code(), StatusCode::kInvalidArgument);

  const fs::path ckpt = Temp("bad_ckpt");
  ASSERT_TRUE(WriteFileAtomic(ckpt, "CLVCKPT\nnot a checkpoint").ok());
  o = Small();
  o.checkpoint = ckpt.string();
  EXPECT_EQ(code(o), StatusCode::kDataLoss);  // never a silent fresh start
  // A checkpoint of another strategy is refused too.
  fs::remove(ckpt);
  SimOptions avg = Small();
  avg.rounds = 1;
  avg.checkpoint = ckpt.string();
  ASSERT_TRUE(RunSimulation(avg, data).ok());
  SimOptions median = avg;
  median.strategy.name = "fedmedian";
  EXPECT_EQ(code(median), StatusCode::kInvalidArgument);
  fs::remove(ckpt);
}

TEST(SimulationTest, CancelledRunKeepsTheLastCheckpoint) {
  const SimData data = SimSynthetic();
  const fs::path ckpt = Temp("cancel");
  fs::remove(ckpt);
  SimOptions o = Small();
  o.checkpoint = ckpt.string();
  int rounds_seen = 0;
  o.on_round = [&](const RoundRecord&) { ++rounds_seen; };
  o.cancelled = [&] { return rounds_seen >= 1; };
  auto r = RunSimulation(o, data);
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(fs::exists(ckpt));
  SimOptions again = Small();
  again.checkpoint = ckpt.string();
  auto resumed = RunSimulation(again, data);
  ASSERT_TRUE(resumed.ok());
  EXPECT_EQ(resumed->resumed_from_round, 1);
  fs::remove(ckpt);
}

}  // namespace
}  // namespace cleave::federated
