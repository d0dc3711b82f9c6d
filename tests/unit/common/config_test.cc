#include "common/config.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "common/file_util.h"
#include "unit/common/config_test_harness.h"

namespace cleave {
namespace {

using config_test::TestSchema;

class ConfigTest : public config_test::ConfigFileTest {
 protected:
  Status LoadError(const std::string& toml, std::map<std::string, std::string> overrides = {}) {
    return Config::Load(TestSchema(), WriteToml(toml), overrides).status();
  }
};

void ExpectContains(const Status& s, const std::string& needle) {
  EXPECT_NE(s.message().find(needle), std::string::npos)
      << "'" << needle << "' not in: " << s.ToString();
}

TEST_F(ConfigTest, DefaultsWithoutFile) {
  Result<Config> config = Config::Load(TestSchema(), "", {});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->GetString("cloud.endpoint"), "tcp://127.0.0.1:5555");
  EXPECT_EQ(config->GetInt("cloud.port"), 5555);
  EXPECT_DOUBLE_EQ(config->GetDouble("edge.exit_threshold"), 0.9);
  EXPECT_FALSE(config->GetBool("edge.quantize"));
  EXPECT_EQ(config->GetString("log_level"), "info");
}

TEST_F(ConfigTest, FileOverridesDefaultsAndFlagsOverrideFile) {
  const std::string path = WriteToml(R"(
log_level = "debug"
[cloud]
endpoint = "tcp://10.0.0.2:6000"
port = 6000
[edge]
exit_threshold = 1      # an integer is accepted for a float key
quantize = true
)");
  Result<Config> config =
      Config::Load(TestSchema(), path, {{"cloud.port", "7000"}, {"edge.quantize", "off"}});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->GetString("cloud.endpoint"), "tcp://10.0.0.2:6000");
  EXPECT_EQ(config->GetInt("cloud.port"), 7000);
  EXPECT_EQ(config->GetInt("cloud.timeout_ms"), 2000);  // untouched default
  EXPECT_DOUBLE_EQ(config->GetDouble("edge.exit_threshold"), 1.0);
  EXPECT_FALSE(config->GetBool("edge.quantize"));
  EXPECT_EQ(config->GetString("log_level"), "debug");
}

TEST_F(ConfigTest, DottedKeysAndInlineTablesMapToTheSameNames) {
  Result<Config> config =
      Config::Load(TestSchema(), WriteToml("cloud.port = 1\nedge = { quantize = true }\n"), {});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->GetInt("cloud.port"), 1);
  EXPECT_TRUE(config->GetBool("edge.quantize"));
}

TEST_F(ConfigTest, UnknownKeyNamesKeyFileAndSuggestsCloseKeys) {
  Status s = LoadError("[cloud]\nendpont = \"x\"\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  ExpectContains(s, "cloud.endpont");
  ExpectContains(s, "cleave.toml");
  ExpectContains(s, "did you mean 'cloud.endpoint'");
}

TEST_F(ConfigTest, UnknownSectionIsRejectedEvenWhenEmpty) {
  Status s = LoadError("[clod]\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  ExpectContains(s, "unknown section 'clod'");
}

TEST_F(ConfigTest, UnknownKeyWithNothingCloseGivesHint) {
  Status s = LoadError("zzzzzzzzzzzz = 1\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  ExpectContains(s, "zzzzzzzzzzzz");
  ExpectContains(s, "--help");
}

TEST_F(ConfigTest, WrongTypesAreRejectedWithKeyAndTypes) {
  Status s = LoadError("[cloud]\nport = \"6000\"\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  ExpectContains(s, "cloud.port must be an integer, got string");
  ExpectContains(s, "cleave.toml:2:");  // file:line:col

  ExpectContains(LoadError("cloud.port = 1.5\n"), "cloud.port must be an integer, got float");
  ExpectContains(LoadError("edge.quantize = 1\n"), "edge.quantize must be a boolean, got integer");
  ExpectContains(LoadError("edge.exit_threshold = \"0.5\"\n"),
                 "edge.exit_threshold must be a float, got string");
  ExpectContains(LoadError("log_level = [\"a\"]\n"), "log_level must be a string, got array");
  ExpectContains(LoadError("[log_level]\n"), "log_level must be a string, got table");
  ExpectContains(LoadError("[cloud]\nport = 1979-05-27\n"), "got date");
}

TEST_F(ConfigTest, SyntaxErrorReportsLineAndColumn) {
  Status s = LoadError("[cloud]\nport = = 3\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  ExpectContains(s, "cleave.toml:2:");
  ExpectContains(s, "TOML syntax error");
}

TEST_F(ConfigTest, DuplicateKeyInFileIsASyntaxError) {
  Status s = LoadError("[cloud]\nport = 1\nport = 2\n");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  ExpectContains(s, "cleave.toml:3:");
}

TEST_F(ConfigTest, MissingOrUnreadableFile) {
  Status missing = Config::Load(TestSchema(), (dir_ / "nope.toml").string(), {}).status();
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  ExpectContains(missing, "nope.toml");
  Status directory = Config::Load(TestSchema(), dir_.string(), {}).status();
  EXPECT_EQ(directory.code(), StatusCode::kIoError);
}

TEST_F(ConfigTest, BadOverridesAreRejected) {
  Status unknown = Config::Load(TestSchema(), "", {{"cloud.prot", "1"}}).status();
  EXPECT_EQ(unknown.code(), StatusCode::kInvalidArgument);
  ExpectContains(unknown, "cloud.prot");
  ExpectContains(unknown, "did you mean 'cloud.port'");

  Status bad_int = Config::Load(TestSchema(), "", {{"cloud.port", "12abc"}}).status();
  EXPECT_EQ(bad_int.code(), StatusCode::kInvalidArgument);
  ExpectContains(bad_int, "--cloud.port must be an integer, got '12abc'");
  EXPECT_FALSE(Config::Load(TestSchema(), "", {{"cloud.port", ""}}).ok());
  EXPECT_FALSE(Config::Load(TestSchema(), "", {{"cloud.port", "99999999999999999999"}}).ok());
  EXPECT_FALSE(Config::Load(TestSchema(), "", {{"edge.exit_threshold", "0.5x"}}).ok());
  EXPECT_FALSE(Config::Load(TestSchema(), "", {{"edge.quantize", "maybe"}}).ok());
}

TEST_F(ConfigTest, OverrideTextForms) {
  Result<Config> config = Config::Load(TestSchema(), "",
                                       {{"cloud.port", "+42"},
                                        {"edge.exit_threshold", "-2.5e-1"},
                                        {"edge.quantize", "YES"},
                                        {"log_level", ""}});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->GetInt("cloud.port"), 42);
  EXPECT_DOUBLE_EQ(config->GetDouble("edge.exit_threshold"), -0.25);
  EXPECT_TRUE(config->GetBool("edge.quantize"));
  EXPECT_EQ(config->GetString("log_level"), "");
}

TEST_F(ConfigTest, InconsistentSchemasAreInternalErrors) {
  ConfigSchema duplicate;
  duplicate.Add("a", ConfigType::kInt, "1", "").Add("a", ConfigType::kInt, "2", "");
  EXPECT_EQ(Config::Load(duplicate, "", {}).status().code(), StatusCode::kInternal);

  ConfigSchema bad_default;
  bad_default.Add("a.b", ConfigType::kInt, "one", "");
  Status s = Config::Load(bad_default, "", {}).status();
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  ExpectContains(s, "a.b");

  ConfigSchema section_clash;
  section_clash.Add("a", ConfigType::kInt, "1", "")
      .Add("a-z", ConfigType::kInt, "1", "")
      .Add("a.b", ConfigType::kInt, "1", "");
  EXPECT_EQ(Config::Load(section_clash, "", {}).status().code(), StatusCode::kInternal);

  ConfigSchema bad_name;
  bad_name.Add("a..b", ConfigType::kString, "", "");
  EXPECT_EQ(Config::Load(bad_name, "", {}).status().code(), StatusCode::kInternal);
}

TEST_F(ConfigTest, ToJsonIsNested) {
  Result<Config> config = Config::Load(TestSchema(), "", {{"cloud.port", "1"}});
  ASSERT_TRUE(config.ok());
  nlohmann::json j = config->ToJson();
  EXPECT_EQ(j["cloud"]["port"], 1);
  EXPECT_EQ(j["cloud"]["endpoint"], "tcp://127.0.0.1:5555");
  EXPECT_EQ(j["edge"]["quantize"], false);
  EXPECT_DOUBLE_EQ(j["edge"]["exit_threshold"].get<double>(), 0.9);
  EXPECT_EQ(j["log_level"], "info");
}

// Not a ConfigTest: death-test children re-run SetUp but die before TearDown, which would
// leave their temporary directories behind.
TEST(ConfigDeathTest, GetterPreconditionViolationAborts) {
  Result<Config> config = Config::Load(TestSchema(), "", {});
  ASSERT_TRUE(config.ok());
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(config->GetInt("cloud.endpoint"), "another type");
  EXPECT_DEATH(config->GetString("no.such.key"), "no such key");
}

}  // namespace
}  // namespace cleave
