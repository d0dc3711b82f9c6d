#include "tools/bench_continual.h"

#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/datasets.h"
#include "common/file_util.h"
#include "common/plot.h"
#include "common/shutdown.h"
#include "federated/continual.h"
#include "federated/continual_metrics.h"
#include "federated/partition.h"
#include "federated/simulation.h"
#include "split/torch_status.h"
#include "tools/bench_util.h"
#include "tools/command_error.h"

namespace cleave::tools {

namespace {

using federated::ContinualConfig;
using federated::ContinualMetrics;
using federated::ContinualTracker;
using federated::LabeledBatch;
using nlohmann::json;

struct ContinualArgs {
  std::string json_out, plot_dir, data_dir = kFashionMnistDir;
  bool quick = false;
  std::vector<uint64_t> seeds{1, 2};
  std::vector<std::string> methods{"naive", "ewc", "lwf", "er_200", "er_500", "derpp_500", "joint"};
  int64_t eval_every = 20;  // steps between continual evaluations (min-ACC)
  std::vector<std::string> sections{"class_incremental", "federated"};
};

// The experiences of a class-incremental split: experience e holds classes 2e and 2e+1.
struct ClassIncremental {
  std::vector<LabeledBatch> train;
  std::vector<split::LabeledImages> test;
  LabeledBatch joint;  // every experience's training rows
};

ClassIncremental SplitByClasses(const split::LabeledImages& train, const split::LabeledImages& test,
                                int experiences, int64_t train_per_experience) {
  ClassIncremental split;
  const int per = 10 / experiences;
  for (int e = 0; e < experiences; ++e) {
    const auto in_experience = [&](const torch::Tensor& labels) {
      return labels.ge(per * e).logical_and(labels.lt(per * (e + 1))).nonzero().flatten();
    };
    torch::Tensor rows = in_experience(train.labels);
    if (train_per_experience > 0 && rows.size(0) > train_per_experience) {
      rows = rows.narrow(0, 0, train_per_experience);
    }
    const split::LabeledImages t = train.Select(rows);
    split.train.push_back(LabeledBatch::Hard(t.images, t.labels));
    split.test.push_back(test.Select(in_experience(test.labels)));
    split.joint = LabeledBatch::Concat(split.joint, split.train.back());
  }
  return split;
}

double AccuracyOn(split::TrainableNet& net, const split::LabeledImages& data) {
  torch::NoGradGuard no_grad;
  net.SetMode(split::TrainableNet::Mode::kEval);
  int64_t correct = 0;
  for (int64_t begin = 0; begin < data.size(); begin += 1000) {
    const int64_t n = std::min<int64_t>(1000, data.size() - begin);
    const torch::Tensor logits = net.Forward(data.images.narrow(0, begin, n));
    correct += logits.argmax(1).eq(data.labels.narrow(0, begin, n)).sum().item<int64_t>();
  }
  return static_cast<double>(correct) / static_cast<double>(data.size());
}

// A method name of the benchmark ("er_500") as a strategy config.
ContinualConfig ConfigFor(const std::string& method) {
  ContinualConfig c;
  const size_t underscore = method.find('_');
  c.strategy = method.substr(0, underscore);
  if (underscore != std::string::npos)
    c.replay.capacity = std::stoll(method.substr(underscore + 1));
  return c;
}

struct MethodRun {
  federated::AccuracyMatrix matrix;
  ContinualMetrics metrics;
  double seconds = 0;
};

MethodRun RunMethod(const std::string& method, uint64_t seed, const federated::SimData& data,
                    const ClassIncremental& task, const ContinualArgs& args) {
  const auto start = std::chrono::steady_clock::now();
  torch::manual_seed(seed);
  Result<std::unique_ptr<split::TrainableNet>> net =
      federated::MakeSimModel("simple_cnn", data, seed);
  if (!net.ok()) Fail("bench continual", net.status());
  std::unique_ptr<federated::ContinualModel> model = federated::ContinualModelOf(**net);
  const int experiences = static_cast<int>(task.train.size());
  federated::ExperienceOptions options;  // the setting
  options.epochs = 1;
  options.batch_size = 64;
  options.lr = 0.01;
  options.momentum = 0.9;
  options.cancelled = [] { return ShutdownRequested(); };
  const auto evaluate = [&](int upto) {
    std::vector<double> acc(experiences, 0.0);
    for (int j = 0; j < upto; ++j) acc[j] = AccuracyOn(**net, task.test[j]);
    return acc;
  };
  MethodRun run;
  if (method == "joint") {
    auto strategy = federated::MakeContinualStrategy(ContinualConfig{});
    options.seed = seed * 1000;
    Result<federated::ExperienceResult> r =
        federated::TrainExperience(*model, **strategy, task.joint, options);
    if (!r.ok()) Fail("bench continual", r.status().WithContext(method));
    const std::vector<double> acc = evaluate(experiences);
    run.matrix = {acc};
    run.metrics.acc = Mean(acc);
    run.metrics.min_acc = *std::min_element(acc.begin(), acc.end());
    run.seconds = SecondsSince(start);
    return run;
  }
  Result<std::unique_ptr<federated::ContinualStrategy>> strategy =
      federated::MakeContinualStrategy(ConfigFor(method));
  if (!strategy.ok()) Fail("bench continual", strategy.status());
  ContinualTracker tracker(experiences);
  for (int e = 0; e < experiences; ++e) {
    if (e > 0) {
      if (Status s = (*strategy)->Consolidate(*model, task.train[e - 1]); !s.ok()) {
        Fail("bench continual", s.WithContext(method));
      }
    }
    options.seed = seed * 1000 + e;
    options.callback_every = e > 0 ? args.eval_every : 0;
    options.on_steps = [&](int64_t) {
      if (e == 0) return;
      if (Status s = tracker.Record(e, evaluate(e), false); !s.ok()) Fail("bench continual", s);
    };
    Result<federated::ExperienceResult> r =
        federated::TrainExperience(*model, **strategy, task.train[e], options);
    if (!r.ok()) Fail("bench continual", r.status().WithContext(method));
    if (Status s = tracker.Record(e, evaluate(experiences), true); !s.ok()) {
      Fail("bench continual", s);
    }
  }
  run.matrix = tracker.matrix();
  Result<ContinualMetrics> m = tracker.Metrics();
  if (!m.ok()) Fail("bench continual", m.status());
  run.metrics = *m;
  run.seconds = SecondsSince(start);
  return run;
}

json RunClassIncremental(const ContinualArgs& args, const federated::SimData& data,
                         const std::filesystem::path& plot_dir) {
  Result<split::LabeledImages> train = data.train.Load();
  Result<split::LabeledImages> test = data.test.Load();
  if (!train.ok() || !test.ok()) {
    Fail("bench continual", !train.ok() ? train.status() : test.status());
  }
  const ClassIncremental task = SplitByClasses(*train, *test, 5, args.quick ? 1000 : 0);
  json section = {{"setting",
                   {{"scenario", "class-incremental Split Fashion-MNIST"},
                    {"experiences", 5},
                    {"classes_per_experience", 2},
                    {"model", "simple_cnn"},
                    {"epochs_per_experience", 1},
                    {"batch_size", 64},
                    {"lr", 0.01},
                    {"momentum", 0.9},
                    {"replay_batch", "the step's batch (64)"},
                    {"ewc", {{"lambda", 180}, {"gamma", 1.0}, {"fisher_rows", 1024}}},
                    {"lwf", {{"alpha", 1.0}, {"temperature", 2.0}}},
                    {"derpp", {{"alpha", 1.0}, {"beta", 0.5}}},
                    {"continual_eval_every_steps", args.eval_every},
                    {"seeds", args.seeds},
                    {"preset", args.quick ? "quick (1,000 training rows per experience)" : "full"},
                    {"plain_pytorch_reference_acc",
                     {{"naive", {0.198, 0.199}},
                      {"ewc", {0.199, 0.198}},
                      {"lwf", {0.211, 0.273}},
                      {"er_200", {0.710, 0.692}},
                      {"er_500", {0.733, 0.697}},
                      {"joint", {0.870, 0.873}}}}}}};
  for (const std::string& method : args.methods) {
    std::vector<MethodRun> runs;
    for (uint64_t seed : args.seeds) {
      std::cerr << "== " << method << " seed " << seed << "\n";
      runs.push_back(RunMethod(method, seed, data, task, args));
      std::cerr << "   acc " << runs.back().metrics.acc << " in " << runs.back().seconds << " s\n";
    }
    json per_seed = json::array();
    federated::AccuracyMatrix mean = runs[0].matrix;
    ContinualMetrics avg;
    for (auto& row : mean) std::fill(row.begin(), row.end(), 0.0);
    for (const MethodRun& r : runs) {
      per_seed.push_back(r.metrics.ToJson());
      per_seed.back()["matrix"] = r.matrix;
      per_seed.back()["seconds"] = r.seconds;
      for (size_t i = 0; i < mean.size(); ++i) {
        for (size_t j = 0; j < mean[i].size(); ++j) mean[i][j] += r.matrix[i][j] / runs.size();
      }
      avg.acc += r.metrics.acc / runs.size();
      avg.bwt += r.metrics.bwt / runs.size();
      avg.forgetting += r.metrics.forgetting / runs.size();
      avg.min_acc += r.metrics.min_acc / runs.size();
    }
    json entry = avg.ToJson();
    entry["matrix"] = mean;
    entry["per_seed"] = per_seed;
    if (method == "joint") {
      entry["note"] =
          "trained offline on all experiences at once: one row of per-experience accuracies; "
          "bwt and forgetting are 0 by construction and min_acc is the lowest experience";
    }
    section[method] = entry;
    if (!plot_dir.empty() && method != "joint") {
      HeatmapSpec heat;
      heat.title = "Split Fashion-MNIST, " + method + ": accuracy (%) after experience i on j";
      heat.xlabel = "evaluated on experience j";
      heat.ylabel = "after training experience i";
      heat.values = mean;
      const std::filesystem::path png = plot_dir / ("continual-matrix-" + method + ".png");
      if (Status s = WriteHeatmapPng(heat, png); !s.ok()) {
        std::cerr << "cleave bench continual: heat map not written: " << s.ToString() << "\n";
      } else {
        entry["plot"] = png.string();
        section[method]["plot"] = png.string();
      }
    }
  }
  if (section.contains("er_500") && section.contains("derpp_500")) {
    const double er = section["er_500"]["acc"].get<double>();
    const double derpp = section["derpp_500"]["acc"].get<double>();
    section["targets"] = {{"er_500_acc_min", 0.70},
                          {"er_500_acc_met", er >= 0.70},
                          {"derpp_500_minus_er_500_min", 0.02},
                          {"derpp_500_minus_er_500", derpp - er},
                          {"derpp_500_met", derpp >= er + 0.02}};
  }
  return section;
}

// Federated continual: 10 clients, Dirichlet(0.5), the class-incremental experiences over
// the rounds, FedAvg with each client's ER-500 against naive local fine-tuning.
json RunFederated(const ContinualArgs& args, const federated::SimData& data) {
  const int experiences = 5, rounds_per_experience = args.quick ? 1 : 5;
  json section = {{"setting",
                   {{"scenario", "class-incremental Split Fashion-MNIST over federated rounds"},
                    {"clients", 10},
                    {"partition", "dirichlet:0.5"},
                    {"experiences", experiences},
                    {"rounds_per_experience", rounds_per_experience},
                    {"strategy", "fedavg, every client every round"},
                    {"local_epochs", 1},
                    {"batch_size", 64},
                    {"lr", 0.01},
                    {"momentum", 0.9},
                    {"seeds", args.seeds}}}};
  for (const std::string method : {"naive", "er_500"}) {
    std::vector<double> acc, forgetting, bwt, min_acc;
    json per_seed = json::array();
    for (uint64_t seed : args.seeds) {
      std::cerr << "== federated " << method << " seed " << seed << "\n";
      federated::SimOptions o;
      o.model = "simple_cnn";
      o.num_clients = 10;
      o.partition = *federated::PartitionSpec::Parse("dirichlet:0.5");
      o.partition.min_size = 10;
      o.rounds = experiences * rounds_per_experience;
      o.engine.fraction = 1.0;
      o.engine.min_clients = 1;
      o.engine.quorum = 1;
      o.engine.deadline_micros = int64_t{1} << 50;
      o.engine.fit.local_epochs = 1;
      o.engine.fit.batch_size = 64;
      o.engine.fit.lr = 0.01;
      o.engine.fit.momentum = 0.9;
      o.seed = seed;
      o.engine.seed = seed;
      o.progress_out = nullptr;
      o.cancelled = [] { return ShutdownRequested(); };
      o.continual.enabled = true;
      o.continual.scenario = "class";
      o.continual.experiences = experiences;
      o.continual.strategy = ConfigFor(method);
      federated::SimData subset = data;
      if (args.quick) {
        subset.train = data.train.Head(10000);
        subset.train_labels.resize(10000);
      }
      Result<federated::SimResult> r = federated::RunSimulation(o, subset);
      if (!r.ok()) Fail("bench continual", r.status().WithContext("federated " + method));
      const json& m = r->continual["metrics"];
      acc.push_back(m["acc"].get<double>());
      forgetting.push_back(m["forgetting"].get<double>());
      bwt.push_back(m["bwt"].get<double>());
      min_acc.push_back(m["min_acc"].get<double>());
      per_seed.push_back(
          {{"metrics", m}, {"matrix", r->continual["matrix"]}, {"wall_seconds", r->wall_seconds}});
      std::cerr << "   acc " << acc.back() << " in " << r->wall_seconds << " s\n";
    }
    section[method] = {{"acc", Mean(acc)},
                       {"forgetting", Mean(forgetting)},
                       {"bwt", Mean(bwt)},
                       {"min_acc", Mean(min_acc)},
                       {"per_seed", per_seed}};
  }
  return section;
}

void RunBenchContinual(const ContinualArgs& args) {
  InstallShutdownHandlers();
  torch::set_num_threads(std::max(1u, std::thread::hardware_concurrency()));
  Result<federated::SimData> data = federated::LoadSimData(args.data_dir);
  if (!data.ok()) Fail("bench continual", data.status());
  std::filesystem::path plot_dir = args.plot_dir;
  if (plot_dir.empty() && !args.json_out.empty()) {
    plot_dir = std::filesystem::path(args.json_out).parent_path();
    if (plot_dir.empty()) plot_dir = ".";
  }
  json report;
  for (const std::string& section : args.sections) {
    if (section == "class_incremental") {
      report["class_incremental"] = RunClassIncremental(args, *data, plot_dir);
    } else if (section == "federated") {
      report["federated"] = RunFederated(args, *data);
    }
  }
  std::cout << report.dump(2) << std::endl;
  if (!args.json_out.empty()) {
    if (Status s = WriteFileAtomic(args.json_out, report.dump(2) + "\n"); !s.ok()) {
      Fail("bench continual", s);
    }
  }
}

}  // namespace

void RegisterBenchContinualCommand(CLI::App& bench) {
  auto args = std::make_shared<ContinualArgs>();
  CLI::App* c = bench.add_subcommand(
      "continual",
      "continual learning: class-incremental Split Fashion-MNIST (naive, EWC, LwF, ER, DER++, "
      "joint) with accuracy matrices, ACC, BWT, forgetting and min-ACC");
  c->add_option("--json", args->json_out, "write the report here too");
  c->add_option("--plot-dir", args->plot_dir,
                "directory for the heat-map PNGs (default: beside --json)");
  c->add_flag("--quick", args->quick, "1,000 training rows per experience (for tests)");
  c->add_option("--seeds", args->seeds, "seeds; figures are their mean")->capture_default_str();
  c->add_option("--methods", args->methods, "methods to run")->capture_default_str();
  c->add_option("--eval-every", args->eval_every, "steps between continual evaluations (min-ACC)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  c->add_option("--sections", args->sections, "sections to run")
      ->capture_default_str()
      ->check(CLI::IsMember({"class_incremental", "federated"}));
  c->add_option("--data-dir", args->data_dir, "Fashion-MNIST directory")->capture_default_str();
  c->callback([args] {
    for (const std::string& m : args->methods) {
      if (m == "joint") continue;
      if (Status s = ConfigFor(m).Validate(); !s.ok()) Fail("bench continual", s);
    }
    RunBenchContinual(*args);
  });
}

}  // namespace cleave::tools
