// The CLI11 adapter of the config system: every schema key is a flag, flags win over the
// file, and a flag that is not a key is a parse error.
#include "common/cli/config_flags.h"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "unit/common/config_test_harness.h"

namespace cleave::cli {
namespace {

using config_test::TestSchema;
using ConfigFlagsTest = config_test::ConfigFileTest;

TEST_F(ConfigFlagsTest, ParsesCommandLineOverFile) {
  const std::string path = WriteToml("[cloud]\nport = 6000\nendpoint = \"from-file\"\n");
  ConfigSchema schema = TestSchema();
  CLI::App app("test");
  std::string config_path;
  std::map<std::string, std::string> flags;
  AddConfigFlags(app, schema, &config_path, &flags);
  std::vector<std::string> args = {"--edge.quantize", "true", "--cloud.port=7001", "--config",
                                   path};
  std::reverse(args.begin(), args.end());  // CLI11 takes a reversed vector
  ASSERT_NO_THROW(app.parse(args));
  EXPECT_EQ(config_path, path);
  EXPECT_EQ(flags.size(), 2u);  // flags not given are absent, so the file value survives
  Result<Config> config = Config::Load(schema, config_path, flags);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->GetInt("cloud.port"), 7001);
  EXPECT_EQ(config->GetString("cloud.endpoint"), "from-file");
  EXPECT_TRUE(config->GetBool("edge.quantize"));
  EXPECT_NE(app.help().find("--cloud.timeout_ms"), std::string::npos);
}

TEST_F(ConfigFlagsTest, RejectsUnknownFlag) {
  ConfigSchema schema = TestSchema();
  CLI::App app("test");
  std::string config_path;
  std::map<std::string, std::string> flags;
  AddConfigFlags(app, schema, &config_path, &flags);
  std::vector<std::string> args = {"--cloud.nope", "1"};
  EXPECT_THROW(app.parse(args), CLI::ParseError);
}

TEST_F(ConfigFlagsTest, HelpShowsEachKeyWithItsTypeAndDefault) {
  ConfigSchema schema = TestSchema();
  CLI::App app("test");
  std::string config_path;
  std::map<std::string, std::string> flags;
  AddConfigFlags(app, schema, &config_path, &flags);
  const std::string help = app.help();
  EXPECT_NE(help.find("--config FILE"), std::string::npos) << help;
  EXPECT_NE(help.find("--cloud.port INT=5555"), std::string::npos) << help;
  EXPECT_NE(help.find("--edge.exit_threshold FLOAT=0.9"), std::string::npos) << help;
  EXPECT_NE(help.find("--edge.quantize BOOL=false"), std::string::npos) << help;
  EXPECT_NE(help.find("--cloud.endpoint TEXT=tcp://127.0.0.1:5555"), std::string::npos) << help;
  EXPECT_NE(help.find("request deadline"), std::string::npos) << help;
}

}  // namespace
}  // namespace cleave::cli
