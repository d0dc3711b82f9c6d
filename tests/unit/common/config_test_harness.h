// Test support for the config system (common/config.h) and its command-line adapter
// (common/cli/config_flags.h): a small schema with a key of every type, and a fixture that
// owns a temporary directory for TOML files.
#pragma once

#include <filesystem>
#include <string>
#include <system_error>

#include <gtest/gtest.h>

#include "common/config.h"
#include "common/file_util.h"

namespace cleave::config_test {

inline ConfigSchema TestSchema() {
  ConfigSchema schema;
  schema.Add("cloud.endpoint", ConfigType::kString, "tcp://127.0.0.1:5555", "tail service")
      .Add("cloud.port", ConfigType::kInt, "5555", "port")
      .Add("cloud.timeout_ms", ConfigType::kInt, "2000", "request deadline")
      .Add("edge.exit_threshold", ConfigType::kDouble, "0.9", "confidence to exit early")
      .Add("edge.quantize", ConfigType::kBool, "false", "int8 bottleneck")
      .Add("log_level", ConfigType::kString, "info", "spdlog level");
  return schema;
}

// A fresh directory per test (removed afterwards); WriteToml puts a config file in it.
class ConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("cleave_test_config_" + UniqueSuffix());
    ASSERT_TRUE(std::filesystem::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  // Writes `text` to <dir>/cleave.toml and returns that path.
  std::string WriteToml(const std::string& text) {
    const std::filesystem::path path = dir_ / "cleave.toml";
    EXPECT_TRUE(WriteFileAtomic(path, text).ok());
    return path.string();
  }
  std::filesystem::path dir_;
};

}  // namespace cleave::config_test
