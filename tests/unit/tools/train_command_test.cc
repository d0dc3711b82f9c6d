// The `cleave train` and `cleave split` command lines: bad flags are refused with one line
// on stderr before anything is trained or written.
#include "tools/train_command.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "split/bundle.h"
#include "testing/tiny_bundle.h"
#include "testing/trained_bundle.h"

namespace cleave::tools {
namespace {

namespace fs = std::filesystem;

// Runs `cleave <args>` through the registered subcommands; returns the exit code CLI11_PARSE
// would return and what went to stderr.
std::pair<int, std::string> RunCli(const std::string& args) {
  CLI::App app("cleave");
  RegisterTrainCommands(app);
  ::testing::internal::CaptureStderr();
  int code = 0;
  try {
    app.parse(args, /*program_name_included=*/false);
  } catch (const CLI::ParseError& e) {
    code = e.get_exit_code();
  }
  return {code, ::testing::internal::GetCapturedStderr()};
}

TEST(TrainCommandTest, SplitCommandRejectsBadFlagsWithOneLine) {
  const fs::path dir = testing::TempPath("split_cli");
  auto trained = testing::TrainTinySplitBundle(dir);
  ASSERT_TRUE(trained.ok()) << trained.status().ToString();
  const std::string bundle = dir.string();
  for (const std::string& args : {"split --bundle " + bundle + " --wire-dtype f16",
                                  "split --bundle " + bundle + " --calibrate fast",
                                  "split --bundle " + bundle + " --criterion best",
                                  "split --bundle " + bundle + " --data-dir /nonexistent/fmnist"}) {
    auto [code, err] = RunCli(args);
    EXPECT_EQ(code, 1) << args;
    EXPECT_EQ(err.rfind("cleave split: ", 0), 0u) << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  }
  EXPECT_NE(RunCli("split --bundle /nonexistent/bundle").first, 0);
  EXPECT_TRUE(Bundle::Open(dir).ok());  // untouched
  fs::remove_all(dir);
}

TEST(TrainCommandTest, TrainRejectsBadFlagsBeforeTraining) {
  const fs::path out =
      fs::temp_directory_path() / ("cleave_train_cli_" + std::to_string(::getpid()));
  EXPECT_NE(RunCli("train").first, 0);  // --out is required
  for (const char* flags :
       {" --wire-dtype f16", " --calibrate offload:2", " --criterion best", " --quick --long",
        " --quick --batch-size 1", " --quick --data-dir /nonexistent/fmnist", " --model resnet",
        " --model tiny_split --tail-blocks 3", " --model-spec /nonexistent/model.toml",
        " --model-spec model.yaml", " --model tiny_split --model-spec model.toml",
        " --model-spec model.toml --bottleneck-channels 8"}) {
    auto [code, err] = RunCli("train --out " + out.string() + std::string(flags));
    EXPECT_EQ(code, 1) << flags;
    EXPECT_EQ(err.rfind("cleave train: ", 0), 0u) << err;
  }
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
}  // namespace cleave::tools
