#include "common/cli/daemon.h"

#include <unistd.h>

#include <cstdio>
#include <utility>

#include "common/cli/config_flags.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/shutdown.h"

namespace cleave::cli {

// One config-driven command: where its flags are parsed to and what it runs.
struct DaemonCli::Command {
  CLI::App* app = nullptr;
  ConfigSchema schema;
  std::string config_path;
  std::map<std::string, std::string> flags;
  std::unique_ptr<DaemonSpec> daemon;        // a daemon, or else
  std::function<Status(const Config&)> run;  // a one-shot command
};

Daemon::Daemon(std::string component, Config config)
    : component_(std::move(component)),
      config_(std::move(config)),
      metrics_(std::make_shared<Metrics>()) {}

std::string Daemon::admin_url() const { return admin_ ? admin_->url() : std::string(); }

Status Daemon::StartAdmin() {
  const std::string key = component_ + ".admin_listen";
  CLEAVE_ASSIGN_OR_RETURN(
      admin_, StartAdminServer(component_, key, config_.GetString(key), metrics_->registry()));
  return Status::Ok();
}

Status Daemon::BecomeReady(const std::string& endpoint, const nlohmann::json& extra) {
  if (admin_) admin_->SetReady(true);  // first, so the ready file implies /readyz 200
  const std::string path = config_.GetString(component_ + ".ready_file");
  if (path.empty()) return Status::Ok();
  nlohmann::json ready = extra.is_object() ? extra : nlohmann::json::object();
  ready["endpoint"] = endpoint;
  ready["pid"] = ::getpid();
  if (admin_) ready["admin"] = admin_->url();
  return WriteFileAtomic(path, ready.dump());
}

void Daemon::SetNotReady(const std::string& reason) {
  if (admin_) admin_->SetReady(false, reason);
}

bool Daemon::ready() const { return admin_ && admin_->ready(); }

bool Daemon::StopRequested() { return ShutdownRequested(); }

DaemonCli::DaemonCli(std::string program, const std::string& description)
    : program_(std::move(program)), app_(description) {}

DaemonCli::~DaemonCli() = default;

void DaemonCli::AddDaemon(CLI::App& command, DaemonSpec spec) {
  auto entry = std::make_unique<Command>();
  entry->app = &command;
  entry->schema = spec.schema;
  entry->daemon = std::make_unique<DaemonSpec>(std::move(spec));
  AddConfigFlags(command, entry->schema, &entry->config_path, &entry->flags);
  commands_.push_back(std::move(entry));
}

void DaemonCli::AddConfigCommand(CLI::App& command, ConfigSchema schema,
                                 std::function<Status(const Config&)> run) {
  auto entry = std::make_unique<Command>();
  entry->app = &command;
  entry->schema = std::move(schema);
  entry->run = std::move(run);
  AddConfigFlags(command, entry->schema, &entry->config_path, &entry->flags);
  commands_.push_back(std::move(entry));
}

int DaemonCli::Main(int argc, char** argv) {
  CLI11_PARSE(app_, argc, argv);
  for (const std::unique_ptr<Command>& command : commands_) {
    if (!command->app->parsed()) continue;
    const Status status = RunCommand(*command);
    if (status.ok()) return 0;
    std::fprintf(stderr, "%s: %s\n", program_.c_str(), status.ToString().c_str());
    return 1;
  }
  return 0;  // a subcommand with its own CLI11 callback ran (its failures exit in CLI11_PARSE)
}

Status DaemonCli::RunCommand(const Command& command) {
  Result<Config> config = Config::Load(command.schema, command.config_path, command.flags);
  if (!config.ok()) return config.status();
  const ConfigKey* level = command.schema.Find("log.level");
  if (level != nullptr && level->type == ConfigType::kString) {
    CLEAVE_RETURN_IF_ERROR(InitLogging(config->GetString("log.level")));
  }
  if (command.daemon) return RunDaemon(*command.daemon, std::move(config).value());
  if (!command.run) return Status::Internal("command has nothing to run");
  return command.run(*config);
}

Status DaemonCli::RunDaemon(const DaemonSpec& spec, Config config) {
  for (const char* suffix : {".admin_listen", ".ready_file"}) {
    const ConfigKey* key = spec.schema.Find(spec.component + suffix);
    if (key == nullptr || key->type != ConfigType::kString) {
      return Status::Internal("daemon '" + spec.component + "' has no string config key " +
                              spec.component + suffix);
    }
  }
  if (!spec.run) return Status::Internal("daemon '" + spec.component + "' has nothing to run");
  if (spec.prepare) CLEAVE_RETURN_IF_ERROR(spec.prepare(config));
  InstallShutdownHandlers();
  // Before the model loads, so probes see "not ready" rather than nothing while it does.
  Daemon daemon(spec.component, std::move(config));
  daemon.metrics()->Service(spec.component);  // every series exists (at 0) while it loads
  if (spec.declare_metrics) spec.declare_metrics(*daemon.metrics());
  CLEAVE_RETURN_IF_ERROR(daemon.StartAdmin());
  Status run = spec.run(daemon);
  if (daemon.ready()) daemon.SetNotReady("shutting down");
  return run;
}

int RunDaemonMain(int argc, char** argv, const std::string& program, const std::string& description,
                  DaemonSpec spec) {
  DaemonCli cli(program, description);
  cli.AddDaemon(cli.app(), std::move(spec));
  return cli.Main(argc, argv);
}

}  // namespace cleave::cli
