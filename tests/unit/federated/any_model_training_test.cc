// Federated training of models cleave did not define: a user's TorchScript model in
// `cleave sim` (sim.model = FILE.pt) and an imported split model in local training, where a
// head-and-exits round touches only the edge's parts.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "federated/local_training.h"
#include "federated/simulation.h"
#include "federated/weights.h"
#include "split/trainable_net.h"
#include "testing/idx_writer.h"
#include "testing/tiny_torchscript.h"

namespace cleave::federated {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int kAmSide = cleave::testing::kTinyChainSide;

// 1 x 8 x 8 images, class 1 bright on the left half, class 0 on the right; `classes` > 2
// adds labels the task never uses (for rejection tests).
split::LabeledImages AmImages(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  split::LabeledImages d;
  d.labels = torch::arange(n, torch::kLong).remainder(2);
  d.images = torch::rand({n, 1, kAmSide, kAmSide}) * 0.3;
  for (int64_t i = 0; i < n; ++i) {
    const bool left = d.labels[i].item<int64_t>() == 1;
    d.images[i].narrow(2, left ? 0 : kAmSide / 2, kAmSide / 2).add_(0.6);
  }
  return d;
}

SimData AmSimData(int classes = 2) {
  SimData data;
  data.train = AmImages(240, 1);
  data.test = AmImages(80, 2);
  for (int64_t i = 0; i < data.train.size(); ++i) {
    data.train_labels.push_back(static_cast<uint8_t>(data.train.labels()[i].item<int64_t>()));
  }
  split::InputSpec input;
  input.channels = 1;
  input.height = input.width = kAmSide;
  for (int c = 0; c < classes; ++c) input.class_names.push_back("class" + std::to_string(c));
  data.input = input;
  data.mean = {0.0f};
  data.std = {1.0f};
  return data;
}

class AnyModelTrainingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_any_model_" + UniqueSuffix());
    fs::create_directories(dir_);
    model_ = (dir_ / "chain.pt").string();
    cleave::testing::TinyChainModel(1).save(model_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  SimOptions Options() const {
    SimOptions o;
    o.model = model_;
    o.num_clients = 4;
    o.partition = *PartitionSpec::Parse("iid");
    o.rounds = 3;
    o.engine.fraction = 1.0;
    o.engine.min_clients = 4;
    o.engine.quorum = 4;
    o.engine.fit.local_epochs = 2;
    o.engine.fit.batch_size = 16;
    o.engine.fit.lr = 0.05;
    o.workers = 2;
    o.eval_every = 1;
    o.progress_out = nullptr;
    return o;
  }
  fs::path dir_;
  std::string model_;
};

TEST_F(AnyModelTrainingTest, SimulationTrainsATorchScriptModel) {
  const SimOptions o = Options();
  ASSERT_TRUE(o.Validate().ok()) << o.Validate().ToString();
  const SimData data = AmSimData();
  Result<SimResult> result = RunSimulation(o, data);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  ASSERT_EQ(result->history.size(), 3u);
  // The model's own layout travels: its six parameters, nothing of cleave's networks.
  ASSERT_EQ(result->global.size(), 6u);
  EXPECT_EQ(result->global[4].sizes(), (std::vector<int64_t>{2, 64}));  // fc.weight
  // Trained from the exported (random) weights to solving the task.
  Result<std::unique_ptr<split::TrainableNet>> start = MakeSimModel(o.model, data, o.seed);
  ASSERT_TRUE(start.ok()) << start.status().ToString();
  Result<Evaluation> before = EvaluateWeights(**start, GetWeights(**start), data.test);
  ASSERT_TRUE(before.ok());
  EXPECT_GE(result->final_accuracy, 0.9)
      << "started at " << before->accuracy << " " << result->ToJson().dump();
  EXPECT_GT(result->final_accuracy, before->accuracy);

  // Same seeds, same final weights (workers train in parallel on their own clones).
  Result<SimResult> again = RunSimulation(o, data);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  for (size_t i = 0; i < result->global.size(); ++i) {
    EXPECT_TRUE(torch::equal(result->global[i], again->global[i])) << "tensor " << i;
  }
}

// Secure aggregation and checkpoints follow the model's own parameters: a secure run
// interrupted after round 2 and resumed ends where the uninterrupted one does.
TEST_F(AnyModelTrainingTest, SecureRoundsAndCheckpointsCarryATorchScriptModel) {
  SimOptions o = Options();
  o.engine.secure.enabled = true;
  ASSERT_TRUE(o.Validate().ok()) << o.Validate().ToString();
  const SimData data = AmSimData();
  Result<SimResult> full = RunSimulation(o, data);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  for (const RoundRecord& r : full->history) EXPECT_TRUE(r.applied) << r.failure;
  EXPECT_GE(full->final_accuracy, 0.9);

  SimOptions first = o;
  first.rounds = 2;
  first.checkpoint = (dir_ / "ckpt").string();
  ASSERT_TRUE(RunSimulation(first, data).ok());
  SimOptions rest = o;
  rest.checkpoint = first.checkpoint;
  Result<SimResult> resumed = RunSimulation(rest, data);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_EQ(resumed->resumed_from_round, 2);
  ASSERT_EQ(resumed->global.size(), full->global.size());
  for (size_t i = 0; i < full->global.size(); ++i) {
    EXPECT_TRUE(torch::equal(full->global[i], resumed->global[i])) << "tensor " << i;
  }
}

// An IDX copy of AmImages (pixels as bytes), for LoadSimData.
void WriteAmIdx(const fs::path& dir, const std::string& prefix, const split::LabeledImages& d) {
  const torch::Tensor bytes =
      (d.images * 255).round().clamp(0, 255).to(torch::kUInt8).contiguous().view({d.size(), -1});
  const torch::Tensor labels = d.labels.contiguous();
  ASSERT_TRUE(cleave::testing::WriteIdxPair(
                  dir, prefix, static_cast<int>(d.size()), kAmSide,
                  [&](int i, int p) { return bytes[i][p].item<uint8_t>(); },
                  [&](int i) { return static_cast<uint8_t>(labels[i].item<int64_t>()); })
                  .ok());
}

// A dataset read when each client trains (sim.memory_mb 0) simulates exactly what the same
// dataset held in memory does.
TEST_F(AnyModelTrainingTest, StreamedSimulationDataGivesTheSameRun) {
  fs::create_directories(dir_ / "data");
  WriteAmIdx(dir_ / "data", "train", AmImages(240, 1));
  WriteAmIdx(dir_ / "data", "t10k", AmImages(80, 2));
  const std::string spec = "idx:" + (dir_ / "data").string();
  Result<SimData> memory = LoadSimData(spec, 0, 0, 0, 4096);
  Result<SimData> streamed = LoadSimData(spec, 0, 0, 0, 0);
  ASSERT_TRUE(memory.ok()) << memory.status().ToString();
  ASSERT_TRUE(streamed.ok()) << streamed.status().ToString();
  EXPECT_FALSE(memory->train.streamed());
  EXPECT_TRUE(streamed->train.streamed());
  EXPECT_TRUE(streamed->test.streamed());
  EXPECT_EQ(memory->train_labels, streamed->train_labels);
  const SimOptions o = Options();
  Result<SimResult> a = RunSimulation(o, *memory);
  Result<SimResult> b = RunSimulation(o, *streamed);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(a->final_accuracy, b->final_accuracy);
  ASSERT_EQ(a->global.size(), b->global.size());
  for (size_t i = 0; i < a->global.size(); ++i) {
    EXPECT_TRUE(torch::equal(a->global[i], b->global[i])) << "tensor " << i;
  }
  EXPECT_EQ(LoadSimData(spec, 0, 0, 0, -1).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(AnyModelTrainingTest, SimulationRefusesATorchScriptModelThatDoesNotFitTheData) {
  SimOptions o = Options();
  // Logits for 2 classes, data with 3.
  Result<SimResult> classes = RunSimulation(o, AmSimData(3));
  EXPECT_EQ(classes.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(classes.status().message(), HasSubstr("[N, 3] logits"));
  // No such file: refused before any data is touched.
  o.model = (dir_ / "absent.pt").string();
  EXPECT_EQ(o.Validate().code(), StatusCode::kNotFound);
  // Not TorchScript.
  ASSERT_TRUE(WriteFileAtomic(dir_ / "junk.pt", "junk").ok());
  o.model = (dir_ / "junk.pt").string();
  ASSERT_TRUE(o.Validate().ok());
  EXPECT_EQ(RunSimulation(o, AmSimData()).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(AnyModelTrainingTest, HeadAndExitsRoundOfAnImportedModelTrainsOnlyTheEdgesParts) {
  Result<std::unique_ptr<split::TrainableNet>> made =
      split::MakeTrainable(cleave::testing::TinyImportedModel());
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  split::TrainableNet& net = **made;
  const WeightsLayout layout = LayoutOf(net);
  const Weights global = GetWeights(net);
  LocalTrainOptions o;
  o.fit.local_epochs = 2;
  o.fit.batch_size = 16;
  o.fit.lr = 0.05;
  o.trainable = TrainableMask(layout, TrainableSet::kHeadAndExits, net.split_after(),
                              /*named_parts=*/true);
  // Without named parts nothing of an imported model is the edge's but its exits.
  const std::vector<bool> unnamed =
      TrainableMask(layout, TrainableSet::kHeadAndExits, net.split_after());
  int edge_entries = 0;
  for (size_t i = 0; i < layout.size(); ++i) {
    const std::string& name = layout.names[i];
    const bool edge = name.rfind("head.", 0) == 0 || name.rfind("encoder.", 0) == 0 ||
                      name.rfind("exit0.", 0) == 0;
    EXPECT_EQ(o.trainable[i], edge) << name;
    EXPECT_EQ(unnamed[i], name.rfind("exit0.", 0) == 0) << name;
    edge_entries += edge;
  }
  ASSERT_GT(edge_entries, 0);
  o.freeze_batch_norm_stats = true;
  Result<LocalTrainResult> trained = TrainLocally(net, global, AmImages(64, 3), o);
  ASSERT_TRUE(trained.ok()) << trained.status().ToString();
  int head_changed = 0;
  for (size_t i = 0; i < layout.size(); ++i) {
    const bool same = torch::equal(trained->weights[i], global[i]);
    if (!o.trainable[i]) {
      EXPECT_TRUE(same) << layout.names[i] << " belongs to the cloud but changed";
    } else if (layout.names[i].rfind("head.", 0) == 0) {
      head_changed += !same;
    }
  }
  EXPECT_GT(head_changed, 0);
}

}  // namespace
}  // namespace cleave::federated
