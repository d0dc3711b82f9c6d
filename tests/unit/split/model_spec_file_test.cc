// Model spec files (split/model_spec_file.h): JSON and TOML give the same spec as the presets,
// the documented defaults hold, the example file works, and every rejection names the file,
// the field and (TOML) the line.
#include "split/model_spec_file.h"

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "split/vision_model.h"

namespace cleave::split {
namespace {

namespace fs = std::filesystem;

class ModelSpecFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_model_spec_" + UniqueSuffix());
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

  // Loads `text` as file `name` and expects InvalidArgument whose message holds every one of
  // `parts` (the file name is always one of them).
  void ExpectRejected(const std::string& name, const std::string& text,
                      const std::vector<std::string>& parts) {
    const std::string path = Write(name, text);
    auto spec = LoadVisionModelSpecFile(path);
    ASSERT_FALSE(spec.ok()) << name;
    EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument) << spec.status().ToString();
    EXPECT_NE(spec.status().message().find(path), std::string::npos) << spec.status().ToString();
    for (const std::string& part : parts) {
      EXPECT_NE(spec.status().message().find(part), std::string::npos)
          << "'" << part << "' not in: " << spec.status().ToString();
    }
  }

  fs::path dir_;
};

// A small residual split net, every optional field left out.
constexpr char kSmallToml[] = R"(# blocks only
[[blocks]]
type = "conv"
in_channels = 3
out_channels = 8

[[blocks]]
type = "res"
in_channels = 8
out_channels = 16
stride = 2

[[blocks]]
type = "conv"
role = "encoder"
in_channels = 16
out_channels = 2
stride = 2
relu = false

[[blocks]]
type = "conv"
role = "decoder"
in_channels = 2
out_channels = 16

[[blocks]]
type = "classifier"
in_channels = 16
out_channels = 5

[[exits]]
after_block = 1
)";

constexpr char kSmallJson[] = R"({
  "blocks": [
    {"type": "conv", "in_channels": 3, "out_channels": 8},
    {"type": "res", "in_channels": 8, "out_channels": 16, "stride": 2},
    {"type": "conv", "role": "encoder", "in_channels": 16, "out_channels": 2, "stride": 2,
     "relu": false},
    {"type": "conv", "role": "decoder", "in_channels": 2, "out_channels": 16},
    {"type": "classifier", "in_channels": 16, "out_channels": 5}
  ],
  "exits": [{"after_block": 1}]
})";

TEST_F(ModelSpecFileTest, EveryPresetRoundTripsThroughJsonAndToml) {
  for (const VisionModelSpec& spec :
       {VisionModelSpec::DefaultSplit(2), VisionModelSpec::ResidualSplit(),
        VisionModelSpec::ResidualSplit(8, 32, 1), VisionModelSpec::TinySplit(),
        VisionModelSpec::SimpleCnn(), VisionModelSpec::DefaultTeacher()}) {
    auto from_json = LoadVisionModelSpecFile(Write("spec.json", spec.ToJson().dump(2)));
    ASSERT_TRUE(from_json.ok()) << from_json.status().ToString();
    EXPECT_EQ(from_json->ToJson(), spec.ToJson());
    const std::string toml = VisionModelSpecToToml(spec);
    auto from_toml = LoadVisionModelSpecFile(Write("spec.toml", toml));
    ASSERT_TRUE(from_toml.ok()) << from_toml.status().ToString() << "\n" << toml;
    EXPECT_EQ(from_toml->ToJson(), spec.ToJson());
  }
}

TEST_F(ModelSpecFileTest, OmittedFieldsTakeTheDocumentedDefaults) {
  auto toml = LoadVisionModelSpecFile(Write("small.toml", kSmallToml));
  ASSERT_TRUE(toml.ok()) << toml.status().ToString();
  auto json = LoadVisionModelSpecFile(Write("small.json", kSmallJson));
  ASSERT_TRUE(json.ok()) << json.status().ToString();
  EXPECT_EQ(toml->ToJson(), json->ToJson());
  const VisionModelSpec defaults;
  EXPECT_EQ(toml->input_channels, 3);  // blocks[0].in_channels
  EXPECT_EQ(toml->num_classes, 5);     // the last block's out_channels
  EXPECT_EQ(toml->image_size, defaults.image_size);
  EXPECT_EQ(toml->input_mean, defaults.input_mean);
  EXPECT_EQ(toml->input_std, defaults.input_std);
  EXPECT_EQ(toml->split_after, 2);  // the encoder
  ASSERT_EQ(toml->exits.size(), 1u);
  EXPECT_EQ(toml->exits[0].hidden_channels, ExitSpec().hidden_channels);
  const BlockSpec& res = toml->blocks[1];
  EXPECT_EQ(res.kernel, 3);
  EXPECT_EQ(res.expansion, 2);
  EXPECT_TRUE(res.relu);
  EXPECT_TRUE(res.batch_norm);
  EXPECT_EQ(res.padding, -1);
  EXPECT_EQ(res.role, "");

  // Without an encoder there is no split; given fields win over the defaults.
  std::string no_split = std::string(kSmallToml);
  no_split.replace(no_split.find("role = \"encoder\""), 16, "");
  no_split.replace(no_split.find("role = \"decoder\""), 16, "");
  no_split = "image_size = 32\ninput_mean = [0.5, 0.4, 0.3]\ninput_std = 0.25\n" + no_split;
  auto plain = LoadVisionModelSpecFile(Write("plain.toml", no_split));
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_EQ(plain->split_after, -1);
  EXPECT_EQ(plain->image_size, 32);
  EXPECT_EQ(plain->input_mean, (std::vector<float>{0.5f, 0.4f, 0.3f}));
  EXPECT_EQ(plain->input_std, (std::vector<float>{0.25f}));
}

TEST_F(ModelSpecFileTest, TheExampleFileIsAResidualSplitNetFor32x32Rgb) {
  auto spec = LoadVisionModelSpecFile(CLEAVE_SOURCE_DIR "/examples/model_spec.toml");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_GE(spec->split_after, 0);
  bool has_res = false;
  for (const BlockSpec& b : spec->blocks) has_res = has_res || b.type == "res";
  EXPECT_TRUE(has_res);
  auto seated = spec->ForInput(3, 32, 10, {0.5f}, {0.25f});
  ASSERT_TRUE(seated.ok()) << seated.status().ToString();
  SplitVisionNet net(*seated);
  net->eval();
  torch::NoGradGuard no_grad;
  EXPECT_EQ(net->forward(torch::rand({2, 3, 32, 32})).sizes(), (std::vector<int64_t>{2, 10}));
}

TEST_F(ModelSpecFileTest, AMissingFileIsNotFoundAndNamed) {
  const std::string path = (dir_ / "absent.toml").string();
  auto spec = LoadVisionModelSpecFile(path);
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), StatusCode::kNotFound) << spec.status().ToString();
  EXPECT_NE(spec.status().message().find("absent.toml"), std::string::npos);
}

TEST_F(ModelSpecFileTest, OtherExtensionsAreRefused) {
  ExpectRejected("spec.yaml", "blocks: []", {".json or .toml"});
}

TEST_F(ModelSpecFileTest, SyntaxErrorsGiveTheLine) {
  ExpectRejected("broken.toml", "image_size = 32\n\n[[blocks]\ntype = \"conv\"\n",
                 {"broken.toml:3:", "TOML syntax error"});
  ExpectRejected("broken.json", "{\n  \"blocks\": [\n    {\"type\": conv}\n  ]\n}",
                 {"broken.json:3:", "JSON syntax error"});
}

TEST_F(ModelSpecFileTest, UnknownBlockTypeNamesTheFieldAndLine) {
  std::string text = kSmallToml;
  text.replace(text.find("\"res\""), 5, "\"resnet\"");
  ExpectRejected("unknown.toml", text, {"unknown.toml:8:", "blocks[1].type", "'resnet'"});
  std::string json = kSmallJson;
  json.replace(json.find("\"res\""), 5, "\"resnet\"");
  ExpectRejected("unknown.json", json, {"blocks[1].type", "'resnet'"});
}

TEST_F(ModelSpecFileTest, BadChannelChainNamesTheBlock) {
  std::string text = kSmallToml;
  text.replace(text.find("in_channels = 8"), 15, "in_channels = 9");
  ExpectRejected("chain.toml", text, {"block 1 expects 9 input channels but receives 8"});
}

TEST_F(ModelSpecFileTest, MissingFieldsAreNamed) {
  std::string text = kSmallToml;
  text.replace(text.find("out_channels = 16\nstride = 2"), 18, "");
  ExpectRejected("missing.toml", text, {"blocks[1]", "missing field 'out_channels'"});
  ExpectRejected("noblocks.json", R"({"split_after": 1})", {"missing field 'blocks'"});
  ExpectRejected("noexit.json",
                 std::string(kSmallJson)
                     .replace(std::string(kSmallJson).find("\"after_block\": 1"), 16,
                              "\"hidden_channels\": 8"),
                 {"exits[0]", "missing field 'after_block'"});
}

TEST_F(ModelSpecFileTest, UnknownAndMistypedFieldsAreNamed) {
  std::string typo = kSmallToml;
  typo.replace(typo.find("stride = 2"), 10, "strid = 2");
  ExpectRejected("typo.toml", typo, {"typo.toml:11:", "blocks[1].strid", "unknown field"});
  ExpectRejected("top.toml", std::string("classes = 5\n") + kSmallToml,
                 {"top.toml:1:", "classes", "unknown field"});
  std::string mistyped = kSmallToml;
  mistyped.replace(mistyped.find("stride = 2"), 10, "stride = \"2\"");
  ExpectRejected("type.toml", mistyped,
                 {"type.toml:11:", "blocks[1].stride", "must be an integer, got a string"});
  ExpectRejected("date.toml", std::string("image_size = 1979-05-27\n") + kSmallToml,
                 {"image_size", "dates and times"});
  ExpectRejected("array.json", R"({"blocks": {"type": "conv"}})",
                 {"blocks", "must be an array of tables"});
}

}  // namespace
}  // namespace cleave::split
