#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>

#include "common/file_util.h"
#include "federated/sim_config.h"
#include "federated/simulation.h"
#include "unit/federated/sim_test_data.h"

namespace cleave::federated {
namespace {

namespace fs = std::filesystem;

// 10 clients, every client every round, 6 rounds over 3 experiences.
SimOptions ContinualRun(const std::string& scenario, const std::string& strategy) {
  SimOptions o;
  o.model = "tiny_split";
  o.num_clients = 10;
  o.partition = *PartitionSpec::Parse("iid");
  o.rounds = 6;
  o.engine.fraction = 1.0;
  o.engine.min_clients = 1;
  o.engine.fit.local_epochs = 1;
  o.engine.fit.batch_size = 8;
  o.engine.fit.lr = 0.05;
  o.workers = 2;
  o.progress_out = nullptr;
  o.continual.enabled = true;
  o.continual.scenario = scenario;
  o.continual.experiences = 3;
  o.continual.strategy.strategy = strategy;
  o.continual.strategy.replay.capacity = 20;
  return o;
}

TEST(SimContinualTest, ClassIncrementalWalksTheExperiencesAndFillsTheMatrix) {
  // Labels cycle 0..9: experience 0 holds classes 0-3 (160 of 400 rows), 1 holds 4-6 (120),
  // 2 holds 7-9 (120).
  const SimData data = SyntheticSimData(400, 100, 11);
  auto r = RunSimulation(ContinualRun("class", "er"), data);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->history.size(), 6u);
  const std::vector<int> experience{0, 0, 1, 1, 2, 2};
  const std::vector<int64_t> examples{160, 160, 120, 120, 120, 120};
  for (size_t i = 0; i < 6; ++i) {
    const auto& c = r->history[i].extra.at("continual");
    EXPECT_EQ(c.at("experience").get<int>(), experience[i]) << "round " << i + 1;
    EXPECT_EQ(c.at("end_of_experience").get<bool>(), i % 2 == 1);
    EXPECT_EQ(c.at("accuracies").size(), 3u);
    EXPECT_EQ(r->history[i].examples, examples[i]) << "round " << i + 1;
  }
  ASSERT_FALSE(r->continual.is_null());
  const auto matrix = r->continual.at("matrix").get<AccuracyMatrix>();
  ASSERT_EQ(matrix.size(), 3u);
  for (const auto& row : matrix) EXPECT_EQ(row.size(), 3u);
  // The metrics are those of the matrix (the stability-gap minimum can only lower min-ACC).
  auto m = ComputeContinualMetrics(matrix);
  ASSERT_TRUE(m.ok());
  const auto& metrics = r->continual.at("metrics");
  EXPECT_DOUBLE_EQ(metrics.at("acc").get<double>(), m->acc);
  EXPECT_DOUBLE_EQ(metrics.at("bwt").get<double>(), m->bwt);
  EXPECT_LE(metrics.at("min_acc").get<double>(), m->min_acc + 1e-12);
  EXPECT_EQ(r->continual.at("strategy").at("strategy"), "er");
  // The history CSV carries the experience.
  const fs::path csv = fs::temp_directory_path() / ("cleave_simc_" + UniqueSuffix() + ".csv");
  ASSERT_TRUE(WriteHistoryCsv(r->history, csv.string()).ok());
  const std::string text = ReadFileToString(csv).value();
  EXPECT_NE(text.find(",experience,accuracy_seen\n"), std::string::npos);
  fs::remove(csv);
}

TEST(SimContinualTest, DomainIncrementalSplitsEachClientsRowsIntoChunks) {
  const SimData data = SyntheticSimData(400, 100, 12);
  auto r = RunSimulation(ContinualRun("domain", "ewc"), data);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  int64_t total = 0;
  for (size_t i = 0; i < 6; i += 2) total += r->history[i].examples;
  EXPECT_EQ(total, 400);  // every row in exactly one experience
  EXPECT_EQ(r->continual.at("matrix").size(), 3u);
}

TEST(SimContinualTest, SameSeedSameWeightsAnyWorkerCount) {
  const SimData data = SyntheticSimData(400, 100, 13);
  SimOptions a = ContinualRun("class", "derpp");
  SimOptions b = a;
  b.workers = 1;
  auto ra = RunSimulation(a, data), rb = RunSimulation(b, data);
  ASSERT_TRUE(ra.ok() && rb.ok());
  ASSERT_EQ(ra->global.size(), rb->global.size());
  for (size_t i = 0; i < ra->global.size(); ++i) {
    EXPECT_TRUE(torch::equal(ra->global[i], rb->global[i])) << i;
  }
}

TEST(SimContinualTest, ResumeRebuildsTheMatrixFromTheHistory) {
  const SimData data = SyntheticSimData(400, 100, 14);
  const fs::path ckpt = fs::temp_directory_path() / ("cleave_simc_" + UniqueSuffix() + ".ckpt");
  SimOptions o = ContinualRun("class", "lwf");
  o.checkpoint = ckpt.string();
  std::atomic<int> rounds{0};
  o.on_round = [&](const RoundRecord&) { ++rounds; };
  o.cancelled = [&] { return rounds.load() >= 3; };
  auto first = RunSimulation(o, data);
  EXPECT_EQ(first.status().code(), StatusCode::kFailedPrecondition);
  o.cancelled = nullptr;
  auto rest = RunSimulation(o, data);
  ASSERT_TRUE(rest.ok()) << rest.status().ToString();
  EXPECT_EQ(rest->resumed_from_round, 3);
  EXPECT_EQ(rest->history.size(), 6u);
  EXPECT_EQ(rest->continual.at("matrix").size(), 3u);
  fs::remove(ckpt);
}

TEST(SimContinualTest, RejectsBadContinualOptions) {
  const SimData data = SyntheticSimData(100, 50, 15);
  SimOptions o = ContinualRun("class", "er");
  o.continual.scenario = "task";
  EXPECT_EQ(RunSimulation(o, data).status().code(), StatusCode::kInvalidArgument);
  o = ContinualRun("class", "er");
  o.continual.experiences = 7;  // more than rounds
  Status s = RunSimulation(o, data).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("sim.rounds"), std::string::npos) << s.ToString();
  o = ContinualRun("class", "er");
  o.rounds = 12;
  o.continual.experiences = 11;  // more than the data's 10 classes
  s = RunSimulation(o, data).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("classes"), std::string::npos) << s.ToString();
  o = ContinualRun("class", "icarl");
  EXPECT_EQ(RunSimulation(o, data).status().code(), StatusCode::kInvalidArgument);
}

Result<SimSetup> ContinualSetup(const std::map<std::string, std::string>& flags) {
  CLEAVE_ASSIGN_OR_RETURN(Config config, Config::Load(SimSchema(), "", flags));
  return SimSetupFromConfig(config);
}

TEST(SimContinualTest, ConfigKeysReachTheOptionsAndBadValuesAreRefused) {
  auto defaults = ContinualSetup({});
  ASSERT_TRUE(defaults.ok()) << defaults.status().ToString();
  EXPECT_FALSE(defaults->options.continual.enabled);
  EXPECT_EQ(defaults->options.continual.strategy.strategy, "naive");
  auto set = ContinualSetup({{"continual.enabled", "true"},
                             {"continual.scenario", "domain"},
                             {"continual.experiences", "4"},
                             {"continual.strategy", "derpp"},
                             {"continual.buffer_size", "200"},
                             {"continual.class_balanced", "true"},
                             {"continual.derpp_alpha", "0.3"},
                             {"continual.ewc_lambda", "50"}});
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  const ContinualSimOptions& c = set->options.continual;
  EXPECT_TRUE(c.enabled);
  EXPECT_EQ(c.scenario, "domain");
  EXPECT_EQ(c.experiences, 4);
  EXPECT_EQ(c.strategy.strategy, "derpp");
  EXPECT_EQ(c.strategy.replay.capacity, 200);
  EXPECT_TRUE(c.strategy.replay.class_balanced);
  EXPECT_EQ(c.strategy.derpp_alpha, 0.3);
  EXPECT_EQ(c.strategy.ewc_lambda, 50);
  EXPECT_EQ(set->options.ToJson().at("continual").at("strategy").at("strategy"), "derpp");
  const std::vector<std::pair<std::map<std::string, std::string>, std::string>> bad = {
      {{{"continual.enabled", "true"}, {"continual.strategy", "agem"}}, "continual.*"},
      {{{"continual.enabled", "true"}, {"continual.scenario", "task"}}, "continual.scenario"},
      {{{"continual.enabled", "true"}, {"continual.experiences", "0"}}, "continual.experiences"},
      {{{"continual.lwf_temperature", "0"}}, "lwf_temperature"},
  };
  for (const auto& [flags, key] : bad) {
    const Status s = ContinualSetup(flags).status();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << key;
    EXPECT_NE(s.message().find(key), std::string::npos) << s.ToString();
  }
}

}  // namespace
}  // namespace cleave::federated
