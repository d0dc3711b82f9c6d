#include "tools/sim_command.h"

#include <filesystem>
#include <iostream>
#include <map>
#include <memory>

#include "common/cli/config_flags.h"
#include "common/file_util.h"
#include "common/plot.h"
#include "common/shutdown.h"
#include "federated/fl_config.h"
#include "tools/command_error.h"

namespace cleave::tools {

using federated::SimResult;

using federated::LoadSimData;
using federated::RoundRecord;
using federated::RunSimulation;
using federated::SimData;
using federated::SimOptions;

using federated::SimSchema;
using federated::SimSetup;
using federated::SimSetupFromConfig;
using federated::WriteHistoryCsv;

using nlohmann::json;

Status WriteSimOutputs(const federated::SimResult& result, const json& options,
                       const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IoError("cannot create " + dir + ": " + ec.message());
  json report = result.ToJson();
  report["options"] = options;
  CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(dir + "/history.json", report.dump(2) + "\n"));
  CLEAVE_RETURN_IF_ERROR(WriteHistoryCsv(result.history, dir + "/history.csv"));
  PlotSeries series;
  series.label = "test accuracy";
  for (const auto& r : result.history) {
    if (!r.eval_accuracy) continue;
    series.x.push_back(r.round);
    series.y.push_back(*r.eval_accuracy);
  }
  if (series.x.empty()) return Status::Ok();
  PlotSpec plot;
  plot.title = "cleave sim: " + options.value("/strategy/name"_json_pointer, std::string()) + ", " +
               options.value("partition", std::string()) + ", " +
               std::to_string(options.value("num_clients", 0)) + " clients";
  plot.xlabel = "round";
  plot.ylabel = "test accuracy";
  plot.series.push_back(series);
  if (!result.continual.is_null()) {
    // Each experience's test accuracy over the rounds, and the accuracy matrix.
    const int experiences = result.continual.value("experiences", 0);
    for (int j = 0; j < experiences; ++j) {
      PlotSeries e;
      e.label = "experience " + std::to_string(j + 1);
      for (const auto& r : result.history) {
        if (!r.extra.contains("continual")) continue;
        const json& c = r.extra["continual"];
        if (c.value("experience", 0) < j) continue;  // not learned yet
        e.x.push_back(r.round);
        e.y.push_back(c["accuracies"][j].get<double>());
      }
      if (!e.x.empty()) plot.series.push_back(e);
    }
    HeatmapSpec heat;
    heat.title = "accuracy (%) after experience i on experience j";
    heat.xlabel = "evaluated on experience j";
    heat.ylabel = "after training experience i";
    heat.values = result.continual["matrix"].get<std::vector<std::vector<double>>>();
    if (!heat.values.empty()) {
      // Rows not reached yet (an interrupted run) stay out; the matrix is square otherwise.
      CLEAVE_RETURN_IF_ERROR(WriteHeatmapPng(heat, dir + "/accuracy-matrix.png"));
    }
  }
  return WritePlotPng(plot, dir + "/accuracy.png");
}

namespace {

struct SimArgs {
  std::string config_path;
  std::map<std::string, std::string> flags;
  std::string out = "sim-out";
  bool quiet = false;
  bool print_config = false;
  bool continual = false;  // --continual: continual.enabled = true
};

void RunSim(SimArgs args, const ConfigSchema& schema) {
  if (args.continual) args.flags["continual.enabled"] = "true";
  Result<Config> config = Config::Load(schema, args.config_path, args.flags);
  if (!config.ok()) Fail("sim", config.status());
  if (args.print_config) {
    std::cout << config->ToJson().dump(2) << "\n";
    return;
  }
  Result<SimSetup> setup = SimSetupFromConfig(*config);
  if (!setup.ok()) Fail("sim", setup.status());
  Result<SimData> data = LoadSimData(setup->data, setup->train_limit, setup->test_limit,
                                     setup->image_size, setup->memory_mb);
  if (!data.ok()) Fail("sim", data.status());
  SimOptions options = setup->options;
  options.progress_out = args.quiet ? nullptr : stderr;
  InstallShutdownHandlers();
  options.cancelled = [] { return ShutdownRequested(); };
  const json options_json = options.ToJson();
  // Keep the history on disk as rounds finish, so a long run shows progress and an
  // interrupted one keeps what it did.
  std::vector<RoundRecord> so_far;
  options.on_round = [&](const RoundRecord& r) {
    so_far.push_back(r);
    SimResult partial;
    partial.history = so_far;
    (void)WriteHistoryCsv(partial.history, args.out + "/history.csv");
  };
  std::error_code ec;
  std::filesystem::create_directories(args.out, ec);
  Result<SimResult> result = RunSimulation(options, *data);
  if (!result.ok()) Fail("sim", result.status());
  if (Status s = WriteSimOutputs(*result, options_json, args.out); !s.ok()) Fail("sim", s);
  json summary = {{"best_accuracy", result->best_accuracy},
                  {"final_accuracy", result->final_accuracy},
                  {"rounds", result->history.size()},
                  {"resumed_from_round", result->resumed_from_round},
                  {"wall_seconds", result->wall_seconds},
                  {"peak_rss_bytes", result->peak_rss_bytes},
                  {"out", args.out}};
  if (!result->continual.is_null()) {
    summary["continual"] = result->continual.value("metrics", json::object());
  }
  std::cout << summary.dump(2) << std::endl;
}

}  // namespace

void RegisterSimCommand(CLI::App& app) {
  auto args = std::make_shared<SimArgs>();
  auto schema = std::make_shared<ConfigSchema>(SimSchema());
  CLI::App* cmd = app.add_subcommand(
      "sim",
      "simulate federated training of many virtual clients in one process (same strategy "
      "code as cleave-aggregator); writes history.json/.csv and accuracy.png to --out");
  cli::AddConfigFlags(*cmd, *schema, &args->config_path, &args->flags);
  cmd->add_option("--out", args->out, "output directory")->capture_default_str();
  cmd->add_flag("--quiet", args->quiet, "no progress output on stderr");
  cmd->add_flag("--continual", args->continual,
                "federated continual learning (continual.enabled = true; see continual.*)");
  cmd->add_flag("--print-config", args->print_config,
                "print the effective configuration as JSON and exit");
  cmd->callback([args, schema] { RunSim(*args, *schema); });
}

}  // namespace cleave::tools
