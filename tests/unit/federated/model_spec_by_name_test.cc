// ModelSpecByName: the presets by name, and model spec files (a value ending in .json or
// .toml) for sim.model and aggregator.model.
#include <filesystem>
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "common/config.h"
#include "common/file_util.h"
#include "federated/aggregator_config.h"
#include "federated/simulation.h"
#include "federated/weights.h"
#include "split/model_spec_file.h"
#include "unit/federated/sim_test_data.h"

namespace cleave::federated {
namespace {

namespace fs = std::filesystem;

class ModelSpecByNameTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_model_by_name_" + UniqueSuffix());
    ASSERT_TRUE(fs::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  std::string Write(const std::string& name, const std::string& text) {
    const fs::path path = dir_ / name;
    EXPECT_TRUE(WriteFileAtomic(path, text).ok());
    return path.string();
  }
  fs::path dir_;
};

TEST_F(ModelSpecByNameTest, EveryPresetByName) {
  const std::map<std::string, split::VisionModelSpec> presets = {
      {"simple_cnn", split::VisionModelSpec::SimpleCnn()},
      {"default_split", split::VisionModelSpec::DefaultSplit()},
      {"residual_split", split::VisionModelSpec::ResidualSplit()},
      {"tiny_split", split::VisionModelSpec::TinySplit()}};
  for (const auto& [name, spec] : presets) {
    auto got = ModelSpecByName(name);
    ASSERT_TRUE(got.ok()) << name << ": " << got.status().ToString();
    EXPECT_EQ(got->ToJson(), spec.ToJson()) << name;
  }
  auto unknown = ModelSpecByName("resnet");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("residual_split"), std::string::npos);
  EXPECT_NE(unknown.status().message().find(".toml"), std::string::npos);
}

TEST_F(ModelSpecByNameTest, AJsonOrTomlPathIsASpecFile) {
  const split::VisionModelSpec residual = split::VisionModelSpec::ResidualSplit();
  auto json = ModelSpecByName(Write("residual.json", residual.ToJson().dump()));
  ASSERT_TRUE(json.ok()) << json.status().ToString();
  EXPECT_EQ(json->ToJson(), residual.ToJson());
  auto toml = ModelSpecByName(Write("residual.toml", split::VisionModelSpecToToml(residual)));
  ASSERT_TRUE(toml.ok()) << toml.status().ToString();
  EXPECT_EQ(toml->ToJson(), residual.ToJson());
  auto missing = ModelSpecByName((dir_ / "absent.json").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("absent.json"), std::string::npos);
}

// sim.model = FILE: the simulation trains the network the file declares.
TEST_F(ModelSpecByNameTest, SimulationRunsASpecFileModel) {
  SimOptions o;
  o.model = Write("tiny.toml", split::VisionModelSpecToToml(split::VisionModelSpec::TinySplit()));
  o.num_clients = 4;
  o.partition = *PartitionSpec::Parse("iid");
  o.rounds = 1;
  o.engine.fraction = 0.5;
  o.engine.min_clients = 2;
  o.engine.fit.local_epochs = 1;
  o.engine.fit.batch_size = 8;
  o.workers = 1;
  o.progress_out = nullptr;
  ASSERT_TRUE(o.Validate().ok()) << o.Validate().ToString();
  auto result = RunSimulation(o, SyntheticSimData(64, 16, 3));
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  ASSERT_EQ(result->history.size(), 1u);
  split::SplitVisionNet net(split::VisionModelSpec::TinySplit());
  EXPECT_EQ(result->global.size(), GetWeights(*net).size());
  o.model = (dir_ / "absent.toml").string();
  EXPECT_EQ(o.Validate().code(), StatusCode::kNotFound);
}

// aggregator.model = FILE: the network of the file, named by the file's stem.
TEST_F(ModelSpecByNameTest, AggregatorTakesASpecFile) {
  const std::string path = Write(
      "cifar_res.toml", split::VisionModelSpecToToml(split::VisionModelSpec::ResidualSplit()));
  auto config = Config::Load(AggregatorSchema(), "", {{"aggregator.model", path}});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  auto model = LoadAggregatorModel(*config);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_EQ(model->spec.ToJson(), split::VisionModelSpec::ResidualSplit().ToJson());
  EXPECT_EQ(model->model_name, "cifar_res");
  EXPECT_EQ(model->input.channels, 3);
  EXPECT_EQ(model->input.height, 32);
  EXPECT_FALSE(model->initial.empty());
}

}  // namespace
}  // namespace cleave::federated
