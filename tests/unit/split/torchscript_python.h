// Tests on TorchScript models that /usr/bin/python3 writes (python3-torch, and
// python3-torchvision for some): a fixture with a folder of its own per test, python runs
// into it, and skips when python3 cannot import a module. Shared by the split tests that
// import models (torchscript_model_test.cc, head_int8_graph_test.cc).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include <gtest/gtest.h>

#include "common/child_process.h"
#include "common/file_util.h"
#include "common/status.h"

namespace cleave::split {

inline constexpr char kTsPython[] = "/usr/bin/python3";

// Whether /usr/bin/python3 can import `module` (torch, torchvision).
inline bool TsPythonHas(const std::string& module) {
  const std::string command =
      std::string(kTsPython) + " -c 'import " + module + "' >/dev/null 2>&1";
  return std::system(command.c_str()) == 0;
}

// Skips the test (from its body or SetUp) when python3 lacks `module`.
#define TS_REQUIRE_PYTHON_MODULE(module)                                        \
  do {                                                                          \
    if (!::cleave::split::TsPythonHas(module)) {                                \
      GTEST_SKIP() << ::cleave::split::kTsPython << " cannot import " << module \
                   << ": install python3-" << module                            \
                   << " (scripts/test does, from scripts/packages-test.txt)";   \
    }                                                                           \
  } while (0)

// Each test gets its own folder, dir_ (removed afterwards); skipped without python3-torch.
class TorchScriptPythonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TS_REQUIRE_PYTHON_MODULE("torch");
    dir_ = std::filesystem::temp_directory_path() / ("cleave_test_torchscript_" + UniqueSuffix());
    ASSERT_TRUE(std::filesystem::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  // Runs `source` as a python script with sys.argv[1] = dir_; returns what it printed (empty
  // and a test failure, with python's output, if it fails).
  std::string RunPythonSource(const std::string& source) {
    const std::filesystem::path script = dir_ / "make_models.py";
    std::ofstream(script) << source;
    return RunScript({script.string(), dir_.string()});
  }

  // Runs python3 with `arguments`; returns what it printed (empty and a test failure if it
  // fails).
  std::string RunScript(const std::vector<std::string>& arguments) {
    const std::filesystem::path log = dir_ / "python.log";
    std::vector<std::string> argv{kTsPython};
    argv.insert(argv.end(), arguments.begin(), arguments.end());
    auto child = ChildProcess::Spawn(argv, log.string());
    EXPECT_TRUE(child.ok()) << child.status().ToString();
    if (!child.ok()) return "";
    Result<int> code = (*child)->Wait(120000);
    const std::string output = ReadFileToString(log).value_or("(no log)");
    std::filesystem::remove(log);
    EXPECT_TRUE(code.ok()) << code.status().ToString();
    EXPECT_EQ(code.value_or(-1), 0) << "python failed:\n" << output;
    return code.ok() && *code == 0 ? output : "";
  }

  std::filesystem::path dir_;
};

}  // namespace cleave::split
