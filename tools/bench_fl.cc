#include "tools/bench_fl.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>

#include "common/child_process.h"
#include "common/file_util.h"
#include "common/plot.h"
#include "common/process_stats.h"
#include "common/shutdown.h"
#include "federated/simulation.h"
#include "tools/bench_privacy.h"
#include "tools/bench_util.h"
#include "tools/command_error.h"

namespace cleave::tools {

using federated::ClientUpdate;

using federated::LoadSimData;
using federated::PartitionSpec;
using federated::RunSimulation;
using federated::SimData;
using federated::SimOptions;
using federated::SimResult;
using federated::Strategy;
using federated::StrategyConfig;
using federated::Weights;
using federated::WeightsLayout;
namespace {

using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

void Emit(const std::string& cmd, const json& report, const std::string& path) {
  std::cout << report.dump(2) << std::endl;
  if (path.empty()) return;
  if (Status s = WriteFileAtomic(path, report.dump(2) + "\n"); !s.ok()) Fail("bench " + cmd, s);
}

// ---------------------------------------------------------------- bench fl

struct FlArgs {
  std::string json_out, plot_out, data_dir = kFashionMnistDir;
  bool quick = false;
  std::vector<std::string> strategies{"fedavg", "fedprox"};
  int rounds = 0, local_epochs = 0, workers = 0;
  double lr = 0.01, mu = 0.01;
  uint64_t seed = 1;
};

void RunBenchFl(const FlArgs& args) {
  // NIID-Bench's Fashion-MNIST setting; --quick shortens rounds and local epochs only.
  SimOptions base;
  base.model = "simple_cnn";
  base.num_clients = 10;
  base.partition = *PartitionSpec::Parse("dirichlet:0.5");
  base.partition.min_size = 10;  // NIID-Bench redraws until every party has >= 10 samples
  base.rounds = args.rounds > 0 ? args.rounds : (args.quick ? 8 : 50);
  base.engine.fraction = 1.0;
  base.engine.min_clients = 10;
  base.engine.quorum = 1;
  base.engine.deadline_micros = int64_t{1} << 50;  // no deadline: all clients, every round
  base.engine.fit.local_epochs = args.local_epochs > 0 ? args.local_epochs : (args.quick ? 2 : 10);
  base.engine.fit.batch_size = 64;
  base.engine.fit.lr = args.lr;
  base.engine.fit.momentum = 0.9;
  base.workers = args.workers;
  base.seed = args.seed;
  base.engine.seed = args.seed;
  base.eval_every = 1;
  InstallShutdownHandlers();
  base.cancelled = [] { return ShutdownRequested(); };

  Result<SimData> data = LoadSimData(args.data_dir);
  if (!data.ok()) Fail("bench fl", data.status());

  json report = {{"setting",
                  {{"paper", "Li et al., Federated Learning on Non-IID Data Silos (ICDE 2022)"},
                   {"dataset", "fashion-mnist"},
                   {"model", base.model},
                   {"clients", base.num_clients},
                   {"partition", base.partition.ToString()},
                   {"rounds", base.rounds},
                   {"local_epochs", base.engine.fit.local_epochs},
                   {"batch_size", base.engine.fit.batch_size},
                   {"lr", base.engine.fit.lr},
                   {"momentum", base.engine.fit.momentum},
                   {"fedprox_mu", args.mu},
                   {"preset", args.quick ? "quick" : "full"},
                   {"seed", args.seed},
                   {"paper_accuracy", {{"fedavg", 0.8809}, {"fedprox", 0.8815}}}}},
                 {"strategies", json::object()}};
  PlotSpec plot;
  plot.title = "FedAvg vs FedProx, Fashion-MNIST, 10 clients, Dirichlet(0.5)";
  plot.xlabel = "round";
  plot.ylabel = "test accuracy";
  for (const std::string& name : args.strategies) {
    SimOptions o = base;
    o.strategy.name = name;
    o.strategy.proximal_mu = args.mu;
    std::cerr << "== " << name << ": " << o.rounds << " rounds x " << o.engine.fit.local_epochs
              << " local epochs\n";
    Result<SimResult> r = RunSimulation(o, *data);
    if (!r.ok()) Fail("bench fl", r.status().WithContext(name));
    json per_round = json::array();
    PlotSeries series;
    series.label = name;
    for (const auto& rec : r->history) {
      per_round.push_back(rec.eval_accuracy ? json(*rec.eval_accuracy) : json(nullptr));
      if (rec.eval_accuracy) {
        series.x.push_back(rec.round);
        series.y.push_back(*rec.eval_accuracy);
      }
    }
    plot.series.push_back(series);
    report["strategies"][name] = {{"best_accuracy", r->best_accuracy},
                                  {"final_accuracy", r->final_accuracy},
                                  {"rounds", r->history.size()},
                                  {"wall_seconds", r->wall_seconds},
                                  {"accuracy_per_round", per_round}};
  }
  if (report["strategies"].contains("fedavg")) {
    const double best = report["strategies"]["fedavg"]["best_accuracy"].get<double>();
    report["targets"] = {{"fedavg_best_accuracy_min", 0.881},
                         {"fedavg_best_accuracy_met", best >= 0.881}};
  }
  std::string plot_path = args.plot_out;
  if (plot_path.empty() && !args.json_out.empty()) {
    plot_path = std::filesystem::path(args.json_out).replace_extension(".png").string();
  }
  if (!plot_path.empty()) {
    if (Status s = WritePlotPng(plot, plot_path); !s.ok()) {
      std::cerr << "cleave bench fl: plot not written: " << s.ToString() << "\n";
    } else {
      report["plot"] = plot_path;
    }
  }
  Emit("fl", report, args.json_out);
}

// ---------------------------------------------------------------- bench sim-scale

struct ScaleArgs {
  std::string json_out, data_dir = kFashionMnistDir;
  std::vector<int> populations{1000, 100000};
  int child_population = 0;  // internal: run one population and write its JSON
  std::string child_out;
  int sampled = 100, rounds = 3, workers = 0;
};

json RunScaleChild(const ScaleArgs& args) {
  SimOptions o;
  o.model = "simple_cnn";
  o.num_clients = args.child_population;
  o.partition = *PartitionSpec::Parse("dirichlet:0.3");
  o.rounds = args.rounds;
  o.engine.fraction = std::min(1.0, static_cast<double>(args.sampled) / o.num_clients);
  o.engine.min_clients = std::min(args.sampled, o.num_clients);
  o.engine.quorum = 1;
  o.engine.deadline_micros = int64_t{1} << 50;
  o.engine.fit.local_epochs = 1;
  o.engine.fit.batch_size = 32;
  o.engine.fit.lr = 0.01;
  o.workers = args.workers;
  o.eval_every = 0;  // server evaluation is not part of what this measures
  o.progress_out = nullptr;
  Result<SimData> data = LoadSimData(args.data_dir, 0, 1000);
  if (!data.ok()) Fail("bench sim-scale", data.status());
  Result<SimResult> r = RunSimulation(o, *data);
  if (!r.ok()) Fail("bench sim-scale", r.status());
  double round_s = 0, train_s = 0, local_s = 0;
  for (const auto& rec : r->history) {
    round_s += rec.extra.value("wall_seconds", 0.0);
    train_s += rec.extra.value("training_seconds", 0.0);
    local_s += rec.extra.value("local_training_seconds", 0.0);
  }
  const double n = static_cast<double>(r->history.size());
  return {{"peak_rss_bytes", r->peak_rss_bytes},
          {"round_seconds", round_s / n},
          {"training_seconds", train_s / n},
          {"local_training_seconds", local_s / n},
          {"overhead_share", round_s > 0 ? (round_s - train_s) / round_s : 0.0},
          {"clients_with_data_sampled_per_round", r->history.front().sampled},
          {"rounds", r->history.size()}};
}

void RunBenchSimScale(const ScaleArgs& args) {
  if (args.child_population > 0) {
    const json j = RunScaleChild(args);
    if (Status s = WriteFileAtomic(args.child_out, j.dump()); !s.ok()) Fail("bench sim-scale", s);
    return;
  }
  std::error_code ec;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) Fail("bench sim-scale", Status::IoError("cannot find my own executable"));
  const std::filesystem::path tmp =
      std::filesystem::temp_directory_path() / ("cleave-sim-scale-" + UniqueSuffix());
  std::filesystem::create_directories(tmp, ec);
  json report = {{"setting",
                  {{"partition", "dirichlet:0.3"},
                   {"sampled_per_round", args.sampled},
                   {"rounds", args.rounds},
                   {"local_epochs", 1},
                   {"model", "simple_cnn"}}},
                 {"populations", json::object()}};
  for (int population : args.populations) {
    std::cerr << "== population " << population << "\n";
    const std::string out = (tmp / (std::to_string(population) + ".json")).string();
    std::vector<std::string> argv = {self,
                                     "bench",
                                     "sim-scale",
                                     "--child-population",
                                     std::to_string(population),
                                     "--child-out",
                                     out,
                                     "--sampled",
                                     std::to_string(args.sampled),
                                     "--rounds",
                                     std::to_string(args.rounds),
                                     "--workers",
                                     std::to_string(args.workers),
                                     "--data-dir",
                                     args.data_dir};
    auto child = ChildProcess::Spawn(argv, "");
    if (!child.ok()) Fail("bench sim-scale", child.status());
    Result<int> code = (*child)->Wait(-1);
    if (!code.ok() || *code != 0) {
      Fail("bench sim-scale",
           Status::Internal("population " + std::to_string(population) + " run failed (exit " +
                            (code.ok() ? std::to_string(*code) : "?") + ")"));
    }
    Result<std::string> text = ReadFileToString(out);
    if (!text.ok()) Fail("bench sim-scale", text.status());
    report["populations"][std::to_string(population)] = json::parse(*text);
  }
  std::filesystem::remove_all(tmp, ec);
  const auto& pops = report["populations"];
  if (pops.contains("1000") && pops.contains("100000")) {
    const double small = pops["1000"]["peak_rss_bytes"].get<double>();
    const double big = pops["100000"]["peak_rss_bytes"].get<double>();
    const double share = pops["100000"]["overhead_share"].get<double>();
    report["targets"] = {{"rss_ratio_100k_over_1k", big / small},
                         {"rss_ratio_met", big <= 1.1 * small},
                         {"rss_100k_under_2gb", big <= 2e9},
                         {"overhead_share_100k", share},
                         {"overhead_met", share <= 0.10}};
  }
  Emit("sim-scale", report, args.json_out);
}

// ---------------------------------------------------------------- bench aggregate

struct AggregateArgs {
  std::string json_out;
  int updates = 100;
  int64_t parameters = 1'000'000;
  int repeats = 5;
};

void RunBenchAggregate(const AggregateArgs& args) {
  // A 1M-parameter layout shaped like a small CNN: a few large tensors and some small ones.
  WeightsLayout layout;
  const int64_t big = args.parameters / 4;
  int64_t left = args.parameters;
  for (int i = 0; left > 0; ++i) {
    const int64_t n = i < 3 ? std::min(big, left) : std::min<int64_t>(left, big / 8 + 1);
    layout.names.push_back("block" + std::to_string(i) + ".weight");
    layout.shapes.push_back({n});
    left -= n;
  }
  // Distinct update sets cycled so the source data never sits in cache.
  constexpr int kDistinct = 16;
  torch::manual_seed(1);
  std::vector<Weights> sources;
  for (int k = 0; k < kDistinct; ++k) {
    Weights w;
    for (const auto& shape : layout.shapes) w.push_back(torch::randn(shape));
    sources.push_back(std::move(w));
  }
  const Weights global = ZerosLike(layout);
  const std::vector<bool> trainable(layout.size(), true);
  Result<std::unique_ptr<Strategy>> strategy = MakeStrategy(StrategyConfig{});
  if (!strategy.ok()) Fail("bench aggregate", strategy.status());
  const double update_bytes = static_cast<double>(WeightBytes(layout));

  double best_agg = 1e30, best_copy = 1e30;
  for (int rep = 0; rep < args.repeats; ++rep) {
    auto aggregator = (*strategy)->BeginRound(global, trainable);
    const auto t0 = SteadyClock::now();
    for (int u = 0; u < args.updates; ++u) {
      ClientUpdate update;
      update.client_id = "c";
      update.num_examples = 1 + u % 7;
      update.weights = sources[u % kDistinct];
      if (Status s = aggregator->Add(update); !s.ok()) Fail("bench aggregate", s);
    }
    Result<Weights> out = aggregator->Finish();
    if (!out.ok()) Fail("bench aggregate", out.status());
    best_agg = std::min(best_agg, SecondsSince(t0));

    // memcpy of the same bytes from the same kind of sources into one destination.
    std::vector<torch::Tensor> dst;
    for (const auto& shape : layout.shapes) dst.push_back(torch::empty(shape));
    const auto t1 = SteadyClock::now();
    for (int u = 0; u < args.updates; ++u) {
      const Weights& src = sources[u % kDistinct];
      for (size_t i = 0; i < src.size(); ++i) {
        std::memcpy(dst[i].data_ptr<float>(), src[i].data_ptr<float>(), src[i].numel() * 4);
      }
    }
    best_copy = std::min(best_copy, SecondsSince(t1));
    volatile float sink = dst[0].data_ptr<float>()[0];
    (void)sink;
  }
  const double consumed = update_bytes * args.updates;
  const double agg_gbps = consumed / best_agg / 1e9;
  const double copy_gbps = consumed / best_copy / 1e9;
  json report = {{"strategy", "fedavg"},
                 {"updates", args.updates},
                 {"parameters", args.parameters},
                 {"update_bytes", update_bytes},
                 {"aggregate_seconds", best_agg},
                 {"memcpy_seconds", best_copy},
                 {"aggregate_gbps", agg_gbps},
                 {"memcpy_gbps", copy_gbps},
                 {"ratio", agg_gbps / copy_gbps},
                 {"torch_threads", torch::get_num_threads()},
                 {"repeats", args.repeats},
                 {"targets", {{"ratio_min", 0.5}, {"ratio_met", agg_gbps >= 0.5 * copy_gbps}}}};
  Emit("aggregate", report, args.json_out);
}

}  // namespace

void RegisterFederatedBenchCommands(CLI::App& bench) {
  RegisterBenchPrivacyCommand(bench);
  auto fl = std::make_shared<FlArgs>();
  CLI::App* c = bench.add_subcommand(
      "fl", "FedAvg and FedProx on Fashion-MNIST in the NIID-Bench setting (Li et al. 2022)");
  c->add_option("--json", fl->json_out, "write the report here too");
  c->add_option("--plot", fl->plot_out, "accuracy-per-round PNG (default: beside --json)");
  c->add_flag("--quick", fl->quick, "short preset: 8 rounds x 2 local epochs (< 10 min)");
  c->add_option("--strategies", fl->strategies, "strategies to run")
      ->delimiter(',')
      ->capture_default_str();
  c->add_option("--rounds", fl->rounds, "override the preset's rounds");
  c->add_option("--local-epochs", fl->local_epochs, "override the preset's local epochs");
  c->add_option("--lr", fl->lr, "client learning rate")->capture_default_str();
  c->add_option("--mu", fl->mu, "FedProx proximal weight")->capture_default_str();
  c->add_option("--workers", fl->workers, "training threads (0 = one per core)");
  c->add_option("--seed", fl->seed, "seed")->capture_default_str();
  c->add_option("--data-dir", fl->data_dir, "Fashion-MNIST directory")->capture_default_str();
  c->callback([fl] { RunBenchFl(*fl); });

  auto sc = std::make_shared<ScaleArgs>();
  CLI::App* s = bench.add_subcommand(
      "sim-scale", "peak RSS and round overhead of cleave sim at 1,000 and 100,000 clients");
  s->add_option("--json", sc->json_out, "write the report here too");
  s->add_option("--populations", sc->populations, "populations to run")
      ->delimiter(',')
      ->capture_default_str();
  s->add_option("--sampled", sc->sampled, "clients sampled per round")->capture_default_str();
  s->add_option("--rounds", sc->rounds, "rounds per population")->capture_default_str();
  s->add_option("--workers", sc->workers, "training threads (0 = one per core)");
  s->add_option("--data-dir", sc->data_dir, "Fashion-MNIST directory")->capture_default_str();
  s->add_option("--child-population", sc->child_population)->group("");  // internal
  s->add_option("--child-out", sc->child_out)->group("");
  s->callback([sc] { RunBenchSimScale(*sc); });

  auto ag = std::make_shared<AggregateArgs>();
  CLI::App* a = bench.add_subcommand(
      "aggregate", "streaming FedAvg throughput vs memcpy (100 updates of a 1M-parameter model)");
  a->add_option("--json", ag->json_out, "write the report here too");
  a->add_option("--updates", ag->updates, "updates per round")->capture_default_str();
  a->add_option("--parameters", ag->parameters, "model parameters")->capture_default_str();
  a->add_option("--repeats", ag->repeats, "best of this many runs")->capture_default_str();
  a->callback([ag] { RunBenchAggregate(*ag); });
}

}  // namespace cleave::tools
