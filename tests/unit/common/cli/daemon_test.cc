// The one daemon start-up path: what runs in which order, what the ready file holds, and how
// every failure on the way becomes "<program>: <error>" and exit code 1 without running the
// daemon.
#include "common/cli/daemon.h"

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/shutdown.h"
#include "unit/common/config_test_harness.h"

namespace cleave::cli {
namespace {

namespace fs = std::filesystem;
using ::testing::internal::CaptureStderr;
using ::testing::internal::GetCapturedStderr;

ConfigSchema DaemonSchema() {
  ConfigSchema schema;
  schema.Add("test.listen", ConfigType::kString, "tcp://127.0.0.1:0", "endpoint")
      .Add("test.workers", ConfigType::kInt, "1", "workers")
      .Add("test.admin_listen", ConfigType::kString, "", "admin HTTP")
      .Add("test.ready_file", ConfigType::kString, "", "ready file")
      .Add("log.level", ConfigType::kString, "info", "log level");
  return schema;
}

// Runs `cli.Main` over `args` (the program name is added).
int RunMain(DaemonCli& cli, std::vector<std::string> args) {
  args.insert(args.begin(), "test-daemon");
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  return cli.Main(static_cast<int>(argv.size()), argv.data());
}

class DaemonCliTest : public config_test::ConfigFileTest {
 protected:
  void TearDown() override {
    ResetShutdownForTesting();
    ConfigFileTest::TearDown();
  }

  // A spec whose run records that it ran and returns `result`.
  DaemonSpec Spec(Status result = Status::Ok()) {
    DaemonSpec spec;
    spec.component = "test";
    spec.schema = DaemonSchema();
    spec.run = [this, result](Daemon& daemon) {
      ++runs_;
      workers_ = daemon.config().GetInt("test.workers");
      return result;
    };
    return spec;
  }

  int runs_ = 0;
  int64_t workers_ = 0;
};

TEST_F(DaemonCliTest, FlagsReachTheConfigAndARunThatSucceedsExitsZero) {
  DaemonCli cli("test-daemon", "a test daemon");
  cli.AddDaemon(cli.app(), Spec());
  EXPECT_EQ(RunMain(cli, {"--test.workers", "3"}), 0);
  EXPECT_EQ(runs_, 1);
  EXPECT_EQ(workers_, 3);
}

TEST_F(DaemonCliTest, ConfigFileIsReadAndFlagsWinOverIt) {
  const std::string file = WriteToml("[test]\nworkers = 5\n");
  DaemonCli from_file("test-daemon", "a test daemon");
  from_file.AddDaemon(from_file.app(), Spec());
  EXPECT_EQ(RunMain(from_file, {"--config", file}), 0);
  EXPECT_EQ(workers_, 5);

  DaemonCli overridden("test-daemon", "a test daemon");
  overridden.AddDaemon(overridden.app(), Spec());
  EXPECT_EQ(RunMain(overridden, {"--config", file, "--test.workers", "7"}), 0);
  EXPECT_EQ(workers_, 7);
}

TEST_F(DaemonCliTest, ConfigErrorIsPrintedWithTheProgramNameAndExitsOne) {
  DaemonCli cli("test-daemon", "a test daemon");
  cli.AddDaemon(cli.app(), Spec());
  CaptureStderr();
  EXPECT_EQ(RunMain(cli, {"--test.workers", "many"}), 1);
  const std::string err = GetCapturedStderr();
  EXPECT_EQ(err.rfind("test-daemon: ", 0), 0u) << err;
  EXPECT_NE(err.find("--test.workers must be an integer, got 'many'"), std::string::npos) << err;
  EXPECT_EQ(runs_, 0);
}

TEST_F(DaemonCliTest, MissingConfigFileIsAnErrorNamingTheFile) {
  DaemonCli cli("test-daemon", "a test daemon");
  cli.AddDaemon(cli.app(), Spec());
  CaptureStderr();
  EXPECT_EQ(RunMain(cli, {"--config", (dir_ / "absent.toml").string()}), 1);
  const std::string err = GetCapturedStderr();
  EXPECT_NE(err.find("absent.toml"), std::string::npos) << err;
  EXPECT_EQ(runs_, 0);
}

TEST_F(DaemonCliTest, BadLogLevelStopsBeforeTheDaemonRuns) {
  DaemonCli cli("test-daemon", "a test daemon");
  cli.AddDaemon(cli.app(), Spec());
  CaptureStderr();
  EXPECT_EQ(RunMain(cli, {"--log.level", "loud"}), 1);
  const std::string err = GetCapturedStderr();
  EXPECT_NE(err.find("loud"), std::string::npos) << err;
  EXPECT_EQ(runs_, 0);
}

TEST_F(DaemonCliTest, UnknownFlagAndHelpExitAsCli11SaysWithoutRunning) {
  DaemonCli bad("test-daemon", "a test daemon");
  bad.AddDaemon(bad.app(), Spec());
  CaptureStderr();
  const int code = RunMain(bad, {"--test.nope", "1"});
  GetCapturedStderr();
  EXPECT_NE(code, 0);
  EXPECT_NE(code, 1) << "a bad command line exits with CLI11's code, not the daemon's";

  DaemonCli help("test-daemon", "a test daemon");
  help.AddDaemon(help.app(), Spec());
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(RunMain(help, {"--help"}), 0);
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(out.find("a test daemon"), std::string::npos) << out;
  EXPECT_NE(out.find("--test.workers"), std::string::npos) << out;
  EXPECT_NE(out.find("--config"), std::string::npos) << out;
  EXPECT_EQ(runs_, 0);
}

TEST_F(DaemonCliTest, RunErrorIsTheExitMessage) {
  DaemonCli cli("test-daemon", "a test daemon");
  cli.AddDaemon(cli.app(), Spec(Status::Unavailable("the model fell over")));
  CaptureStderr();
  EXPECT_EQ(RunMain(cli, {}), 1);
  EXPECT_EQ(GetCapturedStderr(), "test-daemon: unavailable: the model fell over\n");
  EXPECT_EQ(runs_, 1);
}

TEST_F(DaemonCliTest, PrepareRunsFirstAndItsErrorStopsEverything) {
  DaemonSpec spec = Spec();
  std::vector<std::string> order;
  spec.prepare = [&order](const Config& config) {
    order.push_back("prepare");
    return config.GetInt("test.workers") < 1 ? Status::InvalidArgument("test.workers must be >= 1")
                                             : Status::Ok();
  };
  spec.declare_metrics = [&order](Metrics& metrics) {
    order.push_back("metrics");
    metrics.ConnectedEdges();
  };
  DaemonCli cli("test-daemon", "a test daemon");
  cli.AddDaemon(cli.app(), spec);
  CaptureStderr();
  // A malformed admin address would fail too, but prepare comes first.
  EXPECT_EQ(RunMain(cli, {"--test.workers", "0", "--test.admin_listen", "nowhere"}), 1);
  EXPECT_EQ(GetCapturedStderr(), "test-daemon: invalid_argument: test.workers must be >= 1\n");
  EXPECT_EQ(order, (std::vector<std::string>{"prepare"}));
  EXPECT_EQ(runs_, 0);

  DaemonCli ok("test-daemon", "a test daemon");
  ok.AddDaemon(ok.app(), spec);
  order.clear();
  EXPECT_EQ(RunMain(ok, {}), 0);
  EXPECT_EQ(order, (std::vector<std::string>{"prepare", "metrics"}));
  EXPECT_EQ(runs_, 1);
}

TEST_F(DaemonCliTest, AdminAddressThatCannotBeServedIsAnErrorNamingTheKey) {
  DaemonCli cli("test-daemon", "a test daemon");
  cli.AddDaemon(cli.app(), Spec());
  CaptureStderr();
  EXPECT_EQ(RunMain(cli, {"--test.admin_listen", "127.0.0.1"}), 1);
  const std::string err = GetCapturedStderr();
  EXPECT_NE(err.find("test.admin_listen"), std::string::npos) << err;
  EXPECT_EQ(runs_, 0);
}

TEST_F(DaemonCliTest, BecomeReadyTurnsReadyThenWritesTheReadyFile) {
  const fs::path ready_file = dir_ / "daemon.ready";
  DaemonSpec spec = Spec();
  std::string admin_url;
  bool ready_before = true, ready_after = false, series_exist = false;
  spec.run = [&](Daemon& daemon) {
    admin_url = daemon.admin_url();
    ready_before = daemon.ready();
    // Service("test") was created before the port opened: the same object comes back.
    const ServiceMetrics& first = daemon.metrics()->Service("test");
    series_exist = first.requests[0] != nullptr && &first == &daemon.metrics()->Service("test");
    EXPECT_FALSE(fs::exists(ready_file));
    CLEAVE_RETURN_IF_ERROR(daemon.BecomeReady("tcp://127.0.0.1:4242", {{"model_version", 3}}));
    ready_after = daemon.ready();
    return Status::Ok();
  };
  DaemonCli cli("test-daemon", "a test daemon");
  cli.AddDaemon(cli.app(), spec);
  EXPECT_EQ(RunMain(cli, {"--test.admin_listen", "127.0.0.1:0", "--test.ready_file",
                          ready_file.string()}),
            0);
  EXPECT_FALSE(ready_before) << "ready before the daemon said so";
  EXPECT_TRUE(ready_after);
  EXPECT_TRUE(series_exist);
  ASSERT_EQ(admin_url.rfind("http://127.0.0.1:", 0), 0u) << admin_url;
  Result<std::string> text = ReadFileToString(ready_file);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const nlohmann::json ready = nlohmann::json::parse(*text);
  EXPECT_EQ(ready.at("endpoint"), "tcp://127.0.0.1:4242");
  EXPECT_EQ(ready.at("pid"), ::getpid());
  EXPECT_EQ(ready.at("admin"), admin_url);
  EXPECT_EQ(ready.at("model_version"), 3);
}

TEST_F(DaemonCliTest, WithoutAdminPortOrReadyFileBecomeReadyDoesNothingVisible) {
  DaemonSpec spec = Spec();
  spec.run = [](Daemon& daemon) {
    EXPECT_EQ(daemon.admin_url(), "");
    CLEAVE_RETURN_IF_ERROR(daemon.BecomeReady("tcp://127.0.0.1:1"));
    EXPECT_FALSE(daemon.ready()) << "no admin port, nothing to be ready on";
    daemon.SetNotReady("shutting down");  // harmless without a port
    return Status::Ok();
  };
  DaemonCli cli("test-daemon", "a test daemon");
  cli.AddDaemon(cli.app(), spec);
  EXPECT_EQ(RunMain(cli, {}), 0);
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(DaemonCliTest, UnwritableReadyFileFailsTheDaemon) {
  DaemonSpec spec = Spec();
  spec.run = [](Daemon& daemon) { return daemon.BecomeReady("tcp://127.0.0.1:1"); };
  DaemonCli cli("test-daemon", "a test daemon");
  cli.AddDaemon(cli.app(), spec);
  CaptureStderr();
  EXPECT_EQ(RunMain(cli, {"--test.ready_file", (dir_ / "no" / "such" / "dir").string()}), 1);
  const std::string err = GetCapturedStderr();
  EXPECT_EQ(err.rfind("test-daemon: ", 0), 0u) << err;
}

TEST_F(DaemonCliTest, SchemaWithoutTheDaemonKeysIsAnInternalError) {
  DaemonSpec spec = Spec();
  spec.schema = ConfigSchema();
  spec.schema.Add("test.admin_listen", ConfigType::kString, "", "admin HTTP");
  DaemonCli cli("test-daemon", "a test daemon");
  cli.AddDaemon(cli.app(), spec);
  CaptureStderr();
  EXPECT_EQ(RunMain(cli, {}), 1);
  const std::string err = GetCapturedStderr();
  EXPECT_NE(err.find("internal"), std::string::npos) << err;
  EXPECT_NE(err.find("test.ready_file"), std::string::npos) << err;
  EXPECT_EQ(runs_, 0);
}

TEST_F(DaemonCliTest, StopRequestedFollowsShutdownRequests) {
  EXPECT_FALSE(Daemon::StopRequested());
  RequestShutdown();
  EXPECT_TRUE(Daemon::StopRequested());
}

TEST_F(DaemonCliTest, SubcommandsRunTheOneGiven) {
  DaemonCli cli("test-daemon", "a test daemon");
  cli.app().require_subcommand(1);
  CLI::App* serve = cli.app().add_subcommand("serve", "the daemon");
  cli.AddDaemon(*serve, Spec());
  CLI::App* once = cli.app().add_subcommand("once", "one shot");
  std::string input;
  once->add_option("input", input)->required();
  int64_t once_workers = 0;
  cli.AddConfigCommand(*once, DaemonSchema(), [&](const Config& config) {
    once_workers = config.GetInt("test.workers");
    return Status::Ok();
  });

  EXPECT_EQ(RunMain(cli, {"once", "in.png", "--test.workers", "4"}), 0);
  EXPECT_EQ(once_workers, 4);
  EXPECT_EQ(input, "in.png");
  EXPECT_EQ(runs_, 0) << "the daemon did not start for a one-shot command";
}

TEST_F(DaemonCliTest, OneShotCommandErrorsAndOwnCallbacks) {
  for (const std::string which : {"fail", "own", "serve"}) {
    DaemonCli cli("test-daemon", "a test daemon");
    cli.app().require_subcommand(1);
    cli.AddDaemon(*cli.app().add_subcommand("serve", "the daemon"), Spec());
    CLI::App* fail = cli.app().add_subcommand("fail", "one shot that fails");
    cli.AddConfigCommand(*fail, DaemonSchema(),
                         [](const Config&) { return Status::NotFound("no such image"); });
    bool own_ran = false;
    cli.app().add_subcommand("own", "its own callback")->callback([&own_ran] { own_ran = true; });
    CaptureStderr();
    const int code = RunMain(cli, {which});
    const std::string err = GetCapturedStderr();
    if (which == "fail") {
      EXPECT_EQ(code, 1);
      EXPECT_EQ(err, "test-daemon: not_found: no such image\n");
    } else if (which == "own") {
      EXPECT_EQ(code, 0);
      EXPECT_TRUE(own_ran);
      EXPECT_EQ(err, "");
    } else {
      EXPECT_EQ(code, 0);
      EXPECT_EQ(runs_, 1);
    }
  }
}

TEST_F(DaemonCliTest, MissingSubcommandIsACommandLineError) {
  DaemonCli cli("test-daemon", "a test daemon");
  cli.app().require_subcommand(1);
  cli.AddDaemon(*cli.app().add_subcommand("serve", "the daemon"), Spec());
  CaptureStderr();
  const int code = RunMain(cli, {});
  GetCapturedStderr();
  EXPECT_NE(code, 0);
  EXPECT_EQ(runs_, 0);
}

TEST_F(DaemonCliTest, RunDaemonMainIsTheWholeProgram) {
  std::vector<std::string> args = {"test-daemon", "--test.workers", "2"};
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  EXPECT_EQ(
      RunDaemonMain(static_cast<int>(argv.size()), argv.data(), "test-daemon", "test", Spec()), 0);
  EXPECT_EQ(workers_, 2);
}

}  // namespace
}  // namespace cleave::cli
