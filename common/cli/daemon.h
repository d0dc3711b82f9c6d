// The one start-up path of the cleave daemons (cleave-edge serve, cleave-cloud,
// cleave-aggregator). A daemon's main says what the daemon is - its component name, config
// schema, the checks it makes before anything starts, the metrics that exist from the first
// scrape, and a run function that loads and serves - and DaemonCli does the rest, in order:
//   1. the command line: CLI11 with the description, --config FILE and one flag per schema
//      key (common/cli/config_flags.h); --help and parse errors end the process as CLI11
//      says (exit 0 for --help, CLI11's code for a bad command line);
//   2. Config::Load, then logging at `log.level` (when the schema has it);
//   3. DaemonSpec::prepare: checks and process settings that need no port or signal;
//   4. SIGINT/SIGTERM/SIGHUP handling (common/shutdown.h);
//   5. metrics: Service(component) plus DaemonSpec::declare_metrics, so every series is
//      scraped (at 0) while the model loads;
//   6. the admin HTTP port at `<component>.admin_listen` (/metrics, /healthz, /readyz;
//      common/admin_http.h), not ready ("loading the model") until the daemon says so;
//   7. DaemonSpec::run, which calls Daemon::BecomeReady once it serves (/readyz 200, then the
//      ready file at `<component>.ready_file`) and returns when shutdown is requested;
//   8. /readyz turns 503 ("shutting down") if run left it ready.
// Any error on the way is printed as "<program>: <error>" on stderr and the process exits 1;
// a run that returns OK exits 0.
//
// Threads: everything here runs on the main thread; Daemon::SetNotReady and StopRequested
// may also be called from other threads.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/admin_http.h"
#include "common/config.h"
#include "common/metrics.h"
#include "common/status.h"

namespace cleave::cli {

// What a running daemon's run function works with. Owned by DaemonCli for the length of
// the run; not copyable.
class Daemon {
 public:
  Daemon(std::string component, Config config);
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  const std::string& component() const { return component_; }
  const Config& config() const { return config_; }
  // The registry the admin port exports; give it to the servers' options. Never null.
  const std::shared_ptr<Metrics>& metrics() const { return metrics_; }
  // "http://host:port" of the admin port, or "" without `<component>.admin_listen`.
  std::string admin_url() const;

  // Starts the admin port at `<component>.admin_listen` (none when empty). The error names
  // the key when the address is malformed or cannot be bound. Called by DaemonCli.
  Status StartAdmin();

  // The daemon serves at `endpoint`: /readyz turns 200 first, then the ready file at
  // `<component>.ready_file` (when set) is written atomically with {"endpoint", "pid",
  // "admin" (with an admin port)} plus the fields of `extra` (an object). So a ready file
  // always means /readyz answers 200. IoError when the file cannot be written.
  Status BecomeReady(const std::string& endpoint,
                     const nlohmann::json& extra = nlohmann::json::object());
  // /readyz answers 503 with `reason` from now on (no-op without an admin port). Any thread.
  void SetNotReady(const std::string& reason);
  // Whether /readyz answers 200 (false without an admin port).
  bool ready() const;

  // The stop condition of serving loops: true once SIGINT/SIGTERM arrived. Any thread.
  static bool StopRequested();

 private:
  std::string component_;
  Config config_;
  std::shared_ptr<Metrics> metrics_;
  std::unique_ptr<AdminServer> admin_;  // null without an admin port
};

// What a daemon is. `component` names the config section of its admin and ready-file keys
// (`<component>.admin_listen`, `<component>.ready_file`, both required in `schema`), its
// logger and its metrics.
struct DaemonSpec {
  std::string component;
  ConfigSchema schema;
  // Optional: runs after logging, before signal handlers and the admin port: config checks
  // that must stop the daemon before it binds anything, process settings (threads).
  std::function<Status(const Config&)> prepare;
  // Optional: series to create (at 0) beside Service(component) before the admin port opens.
  std::function<void(Metrics&)> declare_metrics;
  // Required: loads, serves until Daemon::StopRequested(), and cleans up. Its error is the
  // daemon's exit message.
  std::function<Status(Daemon&)> run;
};

// A daemon program's command line: the app itself, or some of its subcommands, run a
// DaemonSpec or a one-shot command over the same kind of config.
class DaemonCli {
 public:
  // `program` ("cleave-cloud") starts every error line; `description` is --help's text.
  DaemonCli(std::string program, const std::string& description);
  ~DaemonCli();
  DaemonCli(const DaemonCli&) = delete;
  DaemonCli& operator=(const DaemonCli&) = delete;

  // The CLI11 app, for subcommands and non-config options. Outlives nothing of this object.
  CLI::App& app() { return app_; }

  // Adds the config flags of `spec.schema` to `command` (app() or one of its subcommands)
  // now; when `command` is the one given, Main runs the start-up path above with `spec`.
  void AddDaemon(CLI::App& command, DaemonSpec spec);

  // Adds the config flags of `schema` to `command` now; when it is the one given, Main loads
  // the config, sets up logging and calls `run` (no signals, metrics or admin port): a
  // one-shot command beside a daemon, such as `cleave-edge classify`.
  void AddConfigCommand(CLI::App& command, ConfigSchema schema,
                        std::function<Status(const Config&)> run);

  // Parses argv and runs the command given: CLI11's exit code for --help and a bad command
  // line, 0 when the command succeeded or was handled by its own CLI11 callback, else 1
  // after printing "<program>: <error>" on stderr.
  int Main(int argc, char** argv);

 private:
  struct Command;
  // Load + logging for `command`, then its run.
  Status RunCommand(const Command& command);
  Status RunDaemon(const DaemonSpec& spec, Config config);

  std::string program_;
  CLI::App app_;
  std::vector<std::unique_ptr<Command>> commands_;  // stable: flags are parsed into them
};

// A program that is one daemon (cleave-cloud, cleave-aggregator): DaemonCli with `spec` on
// the app itself. Returns the process exit code.
int RunDaemonMain(int argc, char** argv, const std::string& program, const std::string& description,
                  DaemonSpec spec);

}  // namespace cleave::cli
