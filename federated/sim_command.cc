#include "federated/sim_command.h"

#include <filesystem>
#include <iostream>
#include <map>
#include <memory>

#include "common/cli/config_flags.h"
#include "common/file_util.h"
#include "common/plot.h"
#include "common/shutdown.h"
#include "federated/fl_config.h"

namespace cleave::federated {

using nlohmann::json;

ConfigSchema SimSchema() {
  ConfigSchema s;
  s.Add("sim.model", ConfigType::kString, "simple_cnn",
        "network: simple_cnn | default_split | tiny_split")
      .Add("sim.clients", ConfigType::kInt, "100", "population of virtual clients")
      .Add("sim.partition", ConfigType::kString, "dirichlet:0.5",
           "iid | dirichlet:<alpha> | labels:<k>")
      .Add("sim.partition_min_size", ConfigType::kInt, "0",
           "dirichlet: redraw until every client has this many samples")
      .Add("sim.rounds", ConfigType::kInt, "10", "federated rounds")
      .Add("sim.workers", ConfigType::kInt, "0", "training threads (0 = one per core)")
      .Add("sim.step_seconds", ConfigType::kDouble, "0.05",
           "simulated time of one local step at speed 1 (for deadlines)")
      .Add("sim.speed_min", ConfigType::kDouble, "1.0", "slowest client speed factor (1 = nominal)")
      .Add("sim.speed_max", ConfigType::kDouble, "1.0",
           "per-client slowdown factor drawn uniformly in [speed_min, speed_max]")
      .Add("sim.dropout", ConfigType::kDouble, "0.0",
           "probability that a sampled client drops out of a round")
      .Add("sim.eval_every", ConfigType::kInt, "1",
           "evaluate the global model on the test set every k rounds (0 = last only)")
      .Add("sim.seed", ConfigType::kInt, "1", "seed of partition, init, sampling and training")
      .Add("sim.checkpoint", ConfigType::kString, "",
           "checkpoint file: written after every round, resumed from when present")
      .Add("sim.data_dir", ConfigType::kString, kFashionMnistDir, "Fashion-MNIST directory")
      .Add("sim.train_limit", ConfigType::kInt, "0", "use the first N training rows (0 = all)")
      .Add("sim.test_limit", ConfigType::kInt, "0", "evaluate on the first N test rows (0 = all)");
  AddRoundConfigKeys(s);  // also compression.*
  s.Add("attack.kind", ConfigType::kString, "none",
        "Byzantine clients: none | sign_flip (send global - scale x delta) | scale (global + "
        "scale x delta) | random (Gaussian delta, scale x the honest norm) | label_flip "
        "(train on labels 9 - y)")
      .Add("attack.fraction", ConfigType::kDouble, "0.0",
           "share of the population that is malicious, in [0, 1] (chosen from sim.seed; a "
           "malicious client attacks whenever it is sampled)")
      .Add("attack.scale", ConfigType::kDouble, "10.0",
           "sign_flip/scale/random: boost factor of the malicious delta (> 0)");
  return s;
}

Result<SimSetup> SimSetupFromConfig(const Config& c) {
  SimSetup setup;
  SimOptions& o = setup.options;
  o.model = c.GetString("sim.model");
  o.num_clients = static_cast<int>(c.GetInt("sim.clients"));
  CLEAVE_ASSIGN_OR_RETURN(o.partition, PartitionSpec::Parse(c.GetString("sim.partition")));
  o.partition.min_size = static_cast<int>(c.GetInt("sim.partition_min_size"));
  o.rounds = static_cast<int>(c.GetInt("sim.rounds"));
  o.workers = static_cast<int>(c.GetInt("sim.workers"));
  o.step_seconds = c.GetDouble("sim.step_seconds");
  o.speed_min = c.GetDouble("sim.speed_min");
  o.speed_max = c.GetDouble("sim.speed_max");
  o.dropout = c.GetDouble("sim.dropout");
  o.eval_every = static_cast<int>(c.GetInt("sim.eval_every"));
  o.seed = static_cast<uint64_t>(c.GetInt("sim.seed"));
  o.checkpoint = c.GetString("sim.checkpoint");
  setup.data_dir = c.GetString("sim.data_dir");
  setup.train_limit = c.GetInt("sim.train_limit");
  setup.test_limit = c.GetInt("sim.test_limit");
  CLEAVE_RETURN_IF_ERROR(ReadRoundConfigKeys(c, o.engine, o.strategy, o.compression));
  o.engine.seed = o.seed;
  o.compression.seed = o.seed;
  CLEAVE_ASSIGN_OR_RETURN(o.attack.kind, ParseAttackKind(c.GetString("attack.kind")));
  o.attack.fraction = c.GetDouble("attack.fraction");
  o.attack.scale = c.GetDouble("attack.scale");
  CLEAVE_RETURN_IF_ERROR(o.Validate());
  if (setup.train_limit < 0 || setup.test_limit < 0) {
    return Status::InvalidArgument("sim.train_limit and sim.test_limit must be >= 0");
  }
  return setup;
}

Status WriteSimOutputs(const SimResult& result, const json& options, const std::string& dir) {
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
  return WritePlotPng(plot, dir + "/accuracy.png");
}

namespace {

struct SimArgs {
  std::string config_path;
  std::map<std::string, std::string> flags;
  std::string out = "sim-out";
  bool quiet = false;
  bool print_config = false;
};

[[noreturn]] void Fail(const Status& status) {
  std::cerr << "cleave sim: " << status.ToString() << "\n";
  throw CLI::RuntimeError(1);
}

void RunSim(const SimArgs& args, const ConfigSchema& schema) {
  Result<Config> config = Config::Load(schema, args.config_path, args.flags);
  if (!config.ok()) Fail(config.status());
  if (args.print_config) {
    std::cout << config->ToJson().dump(2) << "\n";
    return;
  }
  Result<SimSetup> setup = SimSetupFromConfig(*config);
  if (!setup.ok()) Fail(setup.status());
  Result<SimData> data = LoadSimData(setup->data_dir, setup->train_limit, setup->test_limit);
  if (!data.ok()) Fail(data.status());
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
  if (!result.ok()) Fail(result.status());
  if (Status s = WriteSimOutputs(*result, options_json, args.out); !s.ok()) Fail(s);
  json summary = {{"best_accuracy", result->best_accuracy},
                  {"final_accuracy", result->final_accuracy},
                  {"rounds", result->history.size()},
                  {"resumed_from_round", result->resumed_from_round},
                  {"wall_seconds", result->wall_seconds},
                  {"peak_rss_bytes", result->peak_rss_bytes},
                  {"out", args.out}};
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
  cmd->add_flag("--print-config", args->print_config,
                "print the effective configuration as JSON and exit");
  cmd->callback([args, schema] { RunSim(*args, *schema); });
}

}  // namespace cleave::federated
