#include "tools/bench_continual.h"

#include <chrono>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include "common/datasets.h"
#include "common/file_util.h"
#include "common/plot.h"
#include "common/shutdown.h"

#include "common/config.h"
#include "common/feature_coding.h"
#include "common/inference_wire.h"
#include "common/mutex.h"
#include "common/transport.h"
#include "edge/adaptation.h"
#include "edge/edge_engine.h"
#include "federated/continual.h"
#include "federated/continual_metrics.h"
#include "federated/partition.h"
#include "federated/simulation.h"
#include "split/bundle.h"
#include "split/split_runtime.h"
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

// The edge daemon's edge.adapt_* defaults (its schema's), so the benchmark measures what a
// user gets.
edge::AdaptOptions DaemonAdaptDefaults() {
  ConfigSchema schema;
  edge::AddAdaptConfigKeys(schema);
  Result<Config> config = Config::Load(schema, "", {});
  if (!config.ok()) Fail("bench continual", config.status());
  Result<edge::AdaptOptions> options = edge::AdaptOptionsFromConfig(*config);
  if (!options.ok()) Fail("bench continual", options.status());
  return *options;
}

struct ContinualArgs {
  std::string json_out, plot_dir, data_dir = kFashionMnistDir;
  bool quick = false;
  std::vector<uint64_t> seeds{1, 2};
  std::vector<std::string> methods{"naive", "ewc", "lwf", "er_200", "er_500", "derpp_500", "joint"};
  int64_t eval_every = 20;  // steps between continual evaluations (min-ACC)
  std::vector<std::string> sections{"class_incremental", "cloud_teacher", "federated"};
  std::string bundle;  // cloud_teacher: a split bundle trained on clean Fashion-MNIST
  std::string shift = "noise:0.08";
  bool validation = false;  // cloud_teacher: stream and evaluation from training rows only
  int stream = 0;           // cloud_teacher: which stream of the training rows (0..6)
  edge::AdaptOptions adapt = DaemonAdaptDefaults();
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

// ---------------------------------------------------------------- cloud_teacher

// The distribution shift of the stream, "<kind>:<strength>" (deterministic per seed):
//   contrast:a    x -> a x + (1 - a) / 2 (a washed-out sensor; a in (0, 1])
//   brightness:b  x -> clamp(x + b)
//   noise:s       x -> clamp(x + N(0, s^2)) (sensor noise)
//   blur:k        k x k box blur (an out-of-focus lens; k odd)
struct ShiftSpec {
  std::string kind;
  double strength = 0;
  static Result<ShiftSpec> Parse(const std::string& text) {
    const size_t colon = text.find(':');
    ShiftSpec s;
    s.kind = text.substr(0, colon);
    try {
      if (colon == std::string::npos) throw std::invalid_argument("no strength");
      size_t used = 0;
      s.strength = std::stod(text.substr(colon + 1), &used);
      if (used != text.size() - colon - 1) throw std::invalid_argument("trailing text");
    } catch (const std::exception&) {
      return Status::InvalidArgument("--shift '" + text + "': expected <kind>:<number>");
    }
    const bool ok = (s.kind == "contrast" && s.strength > 0 && s.strength <= 1) ||
                    (s.kind == "brightness" && std::abs(s.strength) <= 1) ||
                    (s.kind == "noise" && s.strength >= 0 && s.strength <= 1) ||
                    (s.kind == "blur" && s.strength >= 1 && s.strength <= 15 &&
                     static_cast<int>(s.strength) % 2 == 1);
    if (!ok) {
      return Status::InvalidArgument("--shift '" + text +
                                     "': contrast:(0,1] | brightness:[-1,1] | noise:[0,1] | "
                                     "blur:<odd kernel 1..15>");
    }
    return s;
  }
};

torch::Tensor Shift(const torch::Tensor& images, const ShiftSpec& shift, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double a = shift.strength;
  if (shift.kind == "contrast") return images * a + (1 - a) / 2;
  if (shift.kind == "brightness") return (images + a).clamp(0, 1);
  if (shift.kind == "noise") {
    return (images + at::normal(0.0, a, images.sizes(), generator).to(images.dtype())).clamp(0, 1);
  }
  const int k = static_cast<int>(a);
  return torch::nn::functional::avg_pool2d(
      images,
      torch::nn::functional::AvgPool2dFuncOptions(k).stride(1).padding(k / 2).count_include_pad(
          false));
}

// The cloud in process: decodes the edge's requests exactly as cleave-cloud does and runs the
// tail on them as one batch -> logits [requests, classes].
Result<torch::Tensor> CloudAnswers(split::CloudModel& cloud,
                                   const std::vector<const std::string*>& requests) {
  std::vector<torch::Tensor> rows;
  for (const std::string* request : requests) {
    CLEAVE_ASSIGN_OR_RETURN(wire::InferRequest decoded, wire::DecodeInferRequest(*request));
    if (decoded.split >= cloud.num_splits()) {
      return Status::InvalidArgument("request for split point " + std::to_string(decoded.split));
    }
    const wire::FeatureLayout layout = cloud.layout(decoded.split);
    CLEAVE_ASSIGN_OR_RETURN(std::vector<float> features,
                            wire::DecodeRequestFeatures(decoded, layout));
    std::vector<int64_t> shape = {1};
    shape.insert(shape.end(), layout.shape.begin(), layout.shape.end());
    rows.push_back(torch::from_blob(features.data(), shape, torch::kFloat32).clone());
  }
  return cloud.RunTail(torch::cat(rows, 0));
}

// The decisions' answers: the exit's class, or the cloud's for offloaded rows (`teacher`
// receives the cloud's logits of every offloaded row, by row).
Result<std::vector<int64_t>> Answers(split::CloudModel& cloud,
                                     const std::vector<edge::HeadDecision>& decisions,
                                     std::map<size_t, torch::Tensor>* teacher = nullptr) {
  std::vector<int64_t> answers;
  std::vector<const std::string*> offloaded;
  std::vector<size_t> where;
  for (size_t i = 0; i < decisions.size(); ++i) {
    answers.push_back(decisions[i].best_class);
    if (decisions[i].exit_index < 0) {
      offloaded.push_back(&decisions[i].offload_request);
      where.push_back(i);
    }
  }
  if (offloaded.empty()) return answers;
  CLEAVE_ASSIGN_OR_RETURN(torch::Tensor logits, CloudAnswers(cloud, offloaded));
  for (size_t k = 0; k < where.size(); ++k) {
    answers[where[k]] = logits[static_cast<int64_t>(k)].argmax().item<int64_t>();
    if (teacher) (*teacher)[where[k]] = logits[static_cast<int64_t>(k)];
  }
  return answers;
}

// Split-path accuracy with the engine's exit policy: confident exits answer, the rest goes to
// the cloud. Also how many the exits answered and how many of those they got right.
struct SplitPathScore {
  double accuracy = 0, exit_rate = 0, exit_accuracy = 0, cloud_accuracy = 0;
  json ToJson() const {
    return {{"accuracy", accuracy},
            {"exit_rate", exit_rate},
            {"exit_accuracy", exit_accuracy},
            {"cloud_accuracy", cloud_accuracy}};
  }
};

Result<SplitPathScore> SplitPathAccuracy(edge::EdgeEngine& engine, split::CloudModel& cloud,
                                         const torch::Tensor& images, const torch::Tensor& labels) {
  int64_t correct = 0, exited = 0, exit_correct = 0;
  const int64_t n = images.size(0);
  for (int64_t begin = 0; begin < n; begin += 256) {
    const int64_t rows = std::min<int64_t>(256, n - begin);
    const std::vector<uint64_t> ids(rows, 1);
    CLEAVE_ASSIGN_OR_RETURN(
        std::vector<edge::HeadDecision> decisions,
        engine.Decide(images.narrow(0, begin, rows), ids, std::vector<float>(rows, -1.0f),
                      std::vector<uint32_t>(rows, 1000)));
    CLEAVE_ASSIGN_OR_RETURN(std::vector<int64_t> answers, Answers(cloud, decisions));
    for (int64_t i = 0; i < rows; ++i) {
      const bool right = answers[i] == labels[begin + i].item<int64_t>();
      correct += right;
      if (decisions[i].exit_index >= 0) {
        ++exited;
        exit_correct += right;
      }
    }
  }
  SplitPathScore score;
  score.accuracy = static_cast<double>(correct) / static_cast<double>(n);
  score.exit_rate = static_cast<double>(exited) / static_cast<double>(n);
  score.exit_accuracy = exited > 0 ? static_cast<double>(exit_correct) / exited : 0.0;
  score.cloud_accuracy =
      n > exited ? static_cast<double>(correct - exit_correct) / static_cast<double>(n - exited)
                 : 0.0;
  return score;
}

struct StreamWindow {
  int64_t end = 0;  // requests served so far
  double exit_rate = 0, accuracy = 0, bytes_per_request = 0;
};

json RunCloudTeacher(const ContinualArgs& args, const federated::SimData& data,
                     const std::filesystem::path& plot_dir) {
  if (args.bundle.empty()) {
    Fail("bench continual",
         Status::InvalidArgument("the cloud_teacher section needs --bundle (a split bundle "
                                 "trained on clean Fashion-MNIST, e.g. from `cleave train`)"));
  }
  const int64_t clean = args.quick ? 500 : 2000, shifted = args.quick ? 1500 : 5000;
  const int64_t window = args.quick ? 250 : 500;
  // --validation (for choosing settings without the test set): another stream and shift
  // noise, evaluated on training rows the stream does not use.
  // --stream k (a confirming run on inputs and noise nobody has tuned on): training rows
  // from 7,000 k and other noise draws, evaluated on the test set as stream 0 is.
  const int64_t offset = args.validation ? 20000 : int64_t{7000} * args.stream;
  const uint64_t seed = args.validation ? 100 : 1000 * static_cast<uint64_t>(args.stream);
  Result<split::LabeledImages> train =
      data.train.Select(torch::arange(offset, offset + clean + shifted, torch::kLong)).Load();
  Result<split::LabeledImages> test =
      args.validation ? data.train.Select(torch::arange(50000, 55000, torch::kLong)).Load()
                      : data.test.Load();
  if (!train.ok() || !test.ok()) {
    Fail("bench continual", !train.ok() ? train.status() : test.status());
  }
  split::LabeledImages eval = args.quick ? test->Head(2000) : *test;
  // The stream: `clean` served inputs as trained, then `shifted` inputs through the shift.
  torch::Tensor stream = train->images.clone();
  Result<ShiftSpec> shift = ShiftSpec::Parse(args.shift);
  if (!shift.ok()) Fail("bench continual", shift.status());
  stream.narrow(0, clean, shifted).copy_(Shift(stream.narrow(0, clean, shifted), *shift, 7 + seed));
  const torch::Tensor shifted_eval = Shift(eval.images, *shift, 11 + seed);
  Result<Bundle> bundle = Bundle::Open(args.bundle);
  if (!bundle.ok()) Fail("bench continual", bundle.status());
  Result<std::unique_ptr<split::CloudModel>> cloud = split::CloudModel::Load(*bundle);
  if (!cloud.ok()) Fail("bench continual", cloud.status());
  split::EdgeModel::Options head;  // int8, fastest engine: what cleave-edge serves
  {
    // "auto" times the engines at every load; the one it picks first is kept for every
    // load of the run, so the runs differ by adaptation only.
    Result<std::unique_ptr<split::EdgeModel>> probe = split::EdgeModel::Load(*bundle, head);
    if (!probe.ok()) Fail("bench continual", probe.status());
    head.int8_engine = (*probe)->engine();
  }

  edge::AdaptOptions adapt = args.adapt;  // the daemon's defaults unless overridden
  adapt.enabled = true;
  // Cycles are run from here every adapt.min_new labelled inputs (deterministic); the
  // learner's own trigger is pushed out of the way.
  const int64_t cycle_every = adapt.min_new;
  adapt.min_new = adapt.window;
  json section = {{"setting",
                   {{"bundle", args.bundle},
                    {"validation", args.validation},
                    {"stream_index", args.stream},
                    {"int8_engine", head.int8_engine},
                    {"shift", args.shift},
                    {"stream", {{"clean_requests", clean}, {"shifted_requests", shifted}}},
                    {"window_requests", window},
                    {"labels", "the cloud's answers only (no true labels, no exit pseudo-labels)"},
                    {"adapt",
                     {{"scope", adapt.scope},
                      {"strategy", adapt.strategy.ToJson()},
                      {"cycle_every_labelled", cycle_every},
                      {"epochs", adapt.epochs},
                      {"teacher_margin", adapt.teacher_margin},
                      {"batch_size", adapt.batch_size},
                      {"lr", adapt.lr}}}}}};
  PlotSpec exit_plot, accuracy_plot;
  exit_plot.title = "On-gateway learning from the cloud: exit rate over the stream";
  exit_plot.xlabel = "requests served (shift after " + std::to_string(clean) + ")";
  exit_plot.ylabel = "share answered by an exit";
  accuracy_plot.title = "On-gateway learning from the cloud: accuracy over the stream";
  accuracy_plot.xlabel = exit_plot.xlabel;
  accuracy_plot.ylabel = "accuracy of the answers";
  for (const bool on : {false, true}) {
    const std::string mode = on ? "on" : "off";
    std::cerr << "== cloud teacher, adaptation " << mode << "\n";
    Result<std::unique_ptr<split::EdgeModel>> model = split::EdgeModel::Load(*bundle, head);
    if (!model.ok()) Fail("bench continual", model.status());
    auto engine = std::make_unique<edge::EdgeEngine>(std::move(model).value());
    std::unique_ptr<edge::EdgeEngine> staged;
    Mutex staged_mu;
    std::unique_ptr<edge::EdgeLearner> learner;
    if (on) {
      Result<std::unique_ptr<edge::EdgeLearner>> made = edge::EdgeLearner::Create(
          adapt, *bundle, head,
          [&](std::unique_ptr<edge::EdgeEngine> next) {
            MutexLock lock(&staged_mu);
            staged = std::move(next);
          },
          nullptr);
      if (!made.ok()) Fail("bench continual", made.status());
      learner = std::move(made).value();
      section["setting"]["adapt"]["scope"] = learner->scope();  // edge.adapt_scope auto resolved
    }
    json points;
    // The split path's accuracy on `images`; its detail (exit rate and accuracy) goes to
    // points["split_path"][name].
    const auto evaluate = [&](const torch::Tensor& images, const std::string& name) {
      Result<SplitPathScore> a = SplitPathAccuracy(*engine, **cloud, images, eval.labels);
      if (!a.ok()) Fail("bench continual", a.status());
      points["split_path"][name] = a->ToJson();
      return a->accuracy;
    };
    std::vector<StreamWindow> windows;
    StreamWindow current;
    int64_t served = 0, labelled_since_cycle = 0, cycles = 0;
    double adapt_seconds = 0, exits = 0, correct = 0, bytes = 0;
    const auto close_window = [&] {
      current.end = served;
      const double n = static_cast<double>(window);
      current.exit_rate = exits / n;
      current.accuracy = correct / n;
      current.bytes_per_request = bytes / n;
      windows.push_back(current);
      exits = correct = bytes = 0;
    };
    for (int64_t begin = 0, rows = 0; begin < clean + shifted; begin += rows) {
      if (begin == clean) {
        points["accuracy_clean_start"] = evaluate(eval.images, "clean_start");
        points["accuracy_shift_start"] = evaluate(shifted_eval, "shift_start");
      }
      // Batches do not straddle the shift.
      rows = std::min<int64_t>(32, (begin < clean ? clean : clean + shifted) - begin);
      const torch::Tensor batch = stream.narrow(0, begin, rows);
      const std::vector<uint64_t> ids(rows, 1);
      Result<std::vector<edge::HeadDecision>> decisions = engine->Decide(
          batch, ids, std::vector<float>(rows, -1.0f), std::vector<uint32_t>(rows, 1000));
      if (!decisions.ok()) Fail("bench continual", decisions.status());
      std::map<size_t, torch::Tensor> teacher;
      Result<std::vector<int64_t>> answers = Answers(**cloud, *decisions, &teacher);
      if (!answers.ok()) Fail("bench continual", answers.status());
      for (int64_t i = 0; i < rows; ++i) {
        const edge::HeadDecision& d = (*decisions)[i];
        edge::Observation o;
        o.peer = "bench";
        o.request_id = static_cast<uint64_t>(begin + i + 1);
        o.image = batch[i];
        if (d.exit_index >= 0) {
          exits += 1;
          o.exit_logits = torch::tensor(d.best_scores);
        } else {
          bytes += static_cast<double>(WireBytes(d.offload_request.size()));
          o.teacher = teacher[static_cast<size_t>(i)];
          ++labelled_since_cycle;
        }
        correct += (*answers)[i] == train->labels[begin + i].item<int64_t>();
        if (learner) learner->Observe(std::move(o));
        ++served;
        if (served % window == 0) close_window();
      }
      if (learner && labelled_since_cycle >= cycle_every) {
        const auto start = std::chrono::steady_clock::now();
        if (Status s = learner->AdaptNow(); !s.ok()) Fail("bench continual", s);
        adapt_seconds += SecondsSince(start);
        ++cycles;
        labelled_since_cycle = 0;
        MutexLock lock(&staged_mu);
        if (staged) engine = std::move(staged);  // the hot swap, between batches
      }
    }
    points["accuracy_clean_end"] = evaluate(eval.images, "clean_end");
    points["accuracy_shift_end"] = evaluate(shifted_eval, "shift_end");
    // Windows: the last clean one, the first shifted one, the last one (`shifted` requests
    // after the shift).
    const size_t clean_windows = static_cast<size_t>(clean / window);
    points["exit_rate_clean"] = windows[clean_windows - 1].exit_rate;
    points["exit_rate_shift_start"] = windows[clean_windows].exit_rate;
    points["exit_rate_shift_end"] = windows.back().exit_rate;
    points["bytes_per_request_start"] = windows[clean_windows].bytes_per_request;
    points["bytes_per_request_end"] = windows.back().bytes_per_request;
    points["bytes_per_request_clean"] = windows[clean_windows - 1].bytes_per_request;
    points["adaptation_cycles"] = cycles;
    points["adaptation_seconds"] = adapt_seconds;
    json over = json::array();
    PlotSeries exit_series, accuracy_series;
    exit_series.label = accuracy_series.label = "adaptation " + mode;
    for (const StreamWindow& w : windows) {
      over.push_back({{"requests", w.end},
                      {"exit_rate", w.exit_rate},
                      {"accuracy", w.accuracy},
                      {"bytes_per_request", w.bytes_per_request}});
      exit_series.x.push_back(static_cast<double>(w.end));
      exit_series.y.push_back(w.exit_rate);
      accuracy_series.x.push_back(static_cast<double>(w.end));
      accuracy_series.y.push_back(w.accuracy);
    }
    points["over_stream"] = over;
    exit_plot.series.push_back(exit_series);
    accuracy_plot.series.push_back(accuracy_series);
    section[mode] = points;
  }
  // What the shift took: the exit rate before and right after it without adaptation (the
  // adapted run has already learned from the first shifted window). Recovered: how far the
  // adapted run's rate at the end is above the unadapted one right after the shift.
  const json& on = section["on"];
  const json& off = section["off"];
  const double drop =
      off["exit_rate_clean"].get<double>() - off["exit_rate_shift_start"].get<double>();
  const double recovered =
      on["exit_rate_shift_end"].get<double>() - off["exit_rate_shift_start"].get<double>();
  section["targets"] = {
      {"exit_rate_taken_by_shift", drop},
      {"exit_rate_recovered", recovered},
      {"exit_rate_recovered_share", drop > 0 ? recovered / drop : 0.0},
      {"exit_rate_recovered_share_min", 0.5},
      {"exit_rate_met", drop > 0 && recovered >= 0.5 * drop},
      // Accuracy: against the bundle as trained (adaptation off), which is what turning
      // adaptation on changes; the changes since the shift are reported beside.
      // Met only when the adapted run ends at or above both the bundle as trained and its
      // own accuracy at the moment of the shift (it may have adapted on the clean stream).
      {"accuracy_shift_vs_unadapted",
       on["accuracy_shift_end"].get<double>() - off["accuracy_shift_start"].get<double>()},
      {"accuracy_shift_met",
       on["accuracy_shift_end"].get<double>() >= off["accuracy_shift_start"].get<double>() &&
           on["accuracy_shift_end"].get<double>() >= on["accuracy_shift_start"].get<double>()},
      {"accuracy_clean_vs_unadapted",
       on["accuracy_clean_end"].get<double>() - off["accuracy_clean_start"].get<double>()},
      {"accuracy_clean_met",
       on["accuracy_clean_end"].get<double>() >= off["accuracy_clean_start"].get<double>() - 0.01 &&
           on["accuracy_clean_end"].get<double>() >=
               on["accuracy_clean_start"].get<double>() - 0.01},
      {"accuracy_shift_change_since_shift",
       on["accuracy_shift_end"].get<double>() - on["accuracy_shift_start"].get<double>()},
      {"accuracy_clean_change_since_shift",
       on["accuracy_clean_end"].get<double>() - on["accuracy_clean_start"].get<double>()}};
  if (!plot_dir.empty()) {
    for (const auto& [plot, name] : {std::pair{&exit_plot, "continual-exit-rate.png"},
                                     std::pair{&accuracy_plot, "continual-stream-accuracy.png"}}) {
      if (Status s = WritePlotPng(*plot, plot_dir / name); !s.ok()) {
        std::cerr << "cleave bench continual: plot not written: " << s.ToString() << "\n";
      } else {
        section["plots"].push_back((plot_dir / name).string());
      }
    }
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
  if (!plot_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(plot_dir, ec);
    if (ec) {
      Fail("bench continual",
           Status::IoError("--plot-dir " + plot_dir.string() + ": " + ec.message()));
    }
  }
  json report;
  for (const std::string& section : args.sections) {
    if (section == "class_incremental") {
      report["class_incremental"] = RunClassIncremental(args, *data, plot_dir);
    } else if (section == "cloud_teacher") {
      report["cloud_teacher"] = RunCloudTeacher(args, *data, plot_dir);
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
      ->check(CLI::IsMember({"class_incremental", "cloud_teacher", "federated"}));
  c->add_option("--shift", args->shift,
                "cloud_teacher: the stream's distribution shift: contrast:<a> | "
                "brightness:<b> | noise:<sd> | blur:<odd kernel>")
      ->capture_default_str();
  c->add_option("--adapt-scope", args->adapt.scope, "cloud_teacher: edge.adapt_scope")
      ->capture_default_str();
  c->add_option("--adapt-strategy", args->adapt.strategy.strategy,
                "cloud_teacher: edge.adapt_strategy")
      ->capture_default_str();
  c->add_option("--adapt-epochs", args->adapt.epochs, "cloud_teacher: edge.adapt_epochs")
      ->capture_default_str();
  c->add_option("--adapt-lr", args->adapt.lr, "cloud_teacher: edge.adapt_lr")
      ->capture_default_str();
  c->add_option("--adapt-kd-temperature", args->adapt.strategy.kd_temperature,
                "cloud_teacher: edge.adapt_kd_temperature")
      ->capture_default_str();
  c->add_option("--adapt-teacher-margin", args->adapt.teacher_margin,
                "cloud_teacher: edge.adapt_teacher_margin")
      ->capture_default_str();
  c->add_option("--adapt-code-weight", args->adapt.code_weight,
                "cloud_teacher: edge.adapt_code_weight")
      ->capture_default_str();
  c->add_option("--stream", args->stream,
                "cloud_teacher: which stream of training rows (0 = rows 0-6,999; k: from "
                "7,000 k, with other noise draws), for a confirming run on inputs nobody "
                "tuned on")
      ->check(CLI::Range(0, 6));
  c->add_flag("--validation", args->validation,
              "cloud_teacher: another stream, evaluated on training rows (choose settings "
              "with this, never with the test set)");
  c->add_option("--bundle", args->bundle,
                "cloud_teacher: split bundle trained on clean Fashion-MNIST (cleave train)");
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
