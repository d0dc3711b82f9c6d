#include "federated/simulation.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "common/datasets.h"
#include "common/file_util.h"
#include "common/process_stats.h"
#include "common/progress.h"
#include "federated/checkpoint.h"
#include "federated/local_training.h"

namespace cleave::federated {

using nlohmann::json;

namespace {

// SplitMix64 finalizer: decorrelates (seed, round, client) into independent streams.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
uint64_t StreamSeed(uint64_t seed, uint64_t a, uint64_t b) { return Mix(Mix(Mix(seed) ^ a) ^ b); }
double Uniform01(uint64_t bits) { return (bits >> 11) * (1.0 / 9007199254740992.0); }

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// "client-007": zero-padded so that sorting ids sorts clients by index.
std::string ClientId(int index, int width) {
  std::string digits = std::to_string(index);
  if (static_cast<int>(digits.size()) < width) digits.insert(0, width - digits.size(), '0');
  return "client-" + digits;
}

int ClientIndex(const std::string& id) { return std::stoi(id.substr(7)); }

// One sampled client's fate in a round, decided before anyone trains.
struct Task {
  std::string id;
  int client = 0;
  int64_t arrival_micros = 0;  // virtual
  enum class Kind { kTrain, kLate, kDropped } kind = Kind::kTrain;
};

struct TaskResult {
  Result<LocalTrainResult> result{Status::Internal("not run")};
  bool done = false;
};

}  // namespace

Result<split::VisionModelSpec> ModelSpecByName(const std::string& name) {
  if (name == "simple_cnn") return split::VisionModelSpec::SimpleCnn();
  if (name == "default_split") return split::VisionModelSpec::DefaultSplit();
  if (name == "tiny_split") return split::VisionModelSpec::TinySplit();
  return Status::InvalidArgument("unknown model '" + name +
                                 "' (simple_cnn, default_split, tiny_split)");
}

Result<SimData> LoadSimData(const std::string& dir, int64_t train_limit, int64_t test_limit) {
  CLEAVE_ASSIGN_OR_RETURN(ImageDataset train_raw, LoadFashionMnist(DatasetSplit::kTrain, dir));
  CLEAVE_ASSIGN_OR_RETURN(ImageDataset test_raw, LoadFashionMnist(DatasetSplit::kTest, dir));
  SimData data;
  CLEAVE_ASSIGN_OR_RETURN(data.train, split::ToLabeledImages(train_raw));
  CLEAVE_ASSIGN_OR_RETURN(data.test, split::ToLabeledImages(test_raw));
  if (train_limit > 0) data.train = data.train.Head(train_limit);
  if (test_limit > 0) data.test = data.test.Head(test_limit);
  data.train_labels.assign(train_raw.labels.begin(), train_raw.labels.begin() + data.train.size());
  return data;
}

json SimOptions::ToJson() const {
  return {{"model", model},
          {"num_clients", num_clients},
          {"partition", partition.ToString()},
          {"partition_min_size", partition.min_size},
          {"rounds", rounds},
          {"engine", engine.ToJson()},
          {"strategy", strategy.ToJson()},
          {"workers", workers},
          {"step_seconds", step_seconds},
          {"speed_min", speed_min},
          {"speed_max", speed_max},
          {"dropout", dropout},
          {"eval_every", eval_every},
          {"seed", seed}};
}

Status SimOptions::Validate() const {
  CLEAVE_RETURN_IF_ERROR(ModelSpecByName(model).status());
  if (num_clients < 1) return Status::InvalidArgument("sim: num_clients must be >= 1");
  if (rounds < 1) return Status::InvalidArgument("sim: rounds must be >= 1");
  if (workers < 0 || workers > 256) return Status::InvalidArgument("sim: workers in [0, 256]");
  if (!(step_seconds > 0) || !std::isfinite(step_seconds)) {
    return Status::InvalidArgument("sim: step_seconds must be > 0");
  }
  if (!(speed_min > 0) || !(speed_max >= speed_min) || !std::isfinite(speed_max)) {
    return Status::InvalidArgument("sim: need 0 < speed_min <= speed_max");
  }
  if (!(dropout >= 0 && dropout < 1)) return Status::InvalidArgument("sim: dropout in [0, 1)");
  if (eval_every < 0) return Status::InvalidArgument("sim: eval_every must be >= 0");
  CLEAVE_RETURN_IF_ERROR(engine.Validate());
  return strategy.Validate();
}

json SimResult::ToJson() const {
  json rounds = json::array();
  for (const auto& r : history) rounds.push_back(r.ToJson());
  return {{"rounds", rounds},
          {"best_accuracy", best_accuracy},
          {"final_accuracy", final_accuracy},
          {"wall_seconds", wall_seconds},
          {"peak_rss_bytes", peak_rss_bytes},
          {"resumed_from_round", resumed_from_round}};
}

Status WriteHistoryCsv(const std::vector<RoundRecord>& history, const std::string& path) {
  std::ostringstream out;
  out << "round,applied,accuracy,loss,train_loss,sampled,succeeded,failed,late,rejected,"
         "missing,bytes_up,bytes_down,wall_seconds,training_seconds,peak_rss_bytes\n";
  const auto num = [](const json& extra, const char* key) -> std::string {
    return extra.contains(key) ? extra.at(key).dump() : "";
  };
  for (const auto& r : history) {
    out << r.round << ',' << (r.applied ? 1 : 0) << ','
        << (r.eval_accuracy ? std::to_string(*r.eval_accuracy) : "") << ','
        << (r.eval_loss ? std::to_string(*r.eval_loss) : "") << ',' << r.train_loss << ','
        << r.sampled << ',' << r.succeeded << ',' << r.failed << ',' << r.late << ',' << r.rejected
        << ',' << r.missing << ',' << num(r.extra, "bytes_up") << ',' << num(r.extra, "bytes_down")
        << ',' << num(r.extra, "wall_seconds") << ',' << num(r.extra, "training_seconds") << ','
        << num(r.extra, "peak_rss_bytes") << '\n';
  }
  return WriteFileAtomic(path, out.str());
}

namespace {

class Simulation {
 public:
  Simulation(const SimOptions& options, const SimData& data, const split::VisionModelSpec& spec,
             Partition partition)
      : options_(options), data_(data), spec_(spec), partition_(std::move(partition)) {}

  Result<SimResult> Run();

 private:
  Status Setup();
  // Decides every sampled client's fate (dropout, lateness, target) in arrival order.
  std::vector<Task> PlanTasks(const RoundPlan& plan);
  Status RunRound();
  void Worker(int worker, const RoundPlan& plan, const std::vector<Task>& tasks);
  double SpeedOf(int client) const;

  const SimOptions& options_;
  const SimData& data_;
  split::VisionModelSpec spec_;
  Partition partition_;
  FakeClock clock_;
  std::unique_ptr<RoundEngine> engine_;
  std::vector<ClientInfo> clients_;  // the population, sorted by id
  int workers_ = 1;
  std::vector<split::SplitVisionNet> nets_;  // one per worker
  split::SplitVisionNet eval_net_{nullptr};
  int64_t model_bytes_ = 0, trainable_bytes_ = 0;

  // Per-round hand-off between workers and the submitting thread.
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<TaskResult> results_;
  std::atomic<size_t> next_task_{0};
  std::atomic<int64_t> training_micros_{0};  // inside TrainLocally's step loop
  std::atomic<int64_t> client_micros_{0};    // whole TrainLocally calls (weights in and out)
  double eval_seconds_ = 0;                  // of the last FinishRound's evaluation
};

double Simulation::SpeedOf(int client) const {
  if (options_.speed_max == options_.speed_min) return options_.speed_min;
  const double u = Uniform01(StreamSeed(options_.seed, 0x5eed, static_cast<uint64_t>(client)));
  return options_.speed_min + u * (options_.speed_max - options_.speed_min);
}

Status Simulation::Setup() {
  workers_ =
      options_.workers > 0 ? options_.workers : std::max(1u, std::thread::hardware_concurrency());
  torch::manual_seed(options_.seed);
  split::SplitVisionNet init(spec_);
  const WeightsLayout layout = LayoutOf(*init);
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<Strategy> strategy, MakeStrategy(options_.strategy));
  EngineOptions engine_options = options_.engine;
  engine_options.split_after = spec_.split_after;
  CLEAVE_ASSIGN_OR_RETURN(engine_, RoundEngine::Create(engine_options, std::move(strategy), layout,
                                                       GetWeights(*init), clock_));
  for (int w = 0; w < workers_; ++w) nets_.emplace_back(spec_);
  eval_net_ = split::SplitVisionNet(spec_);
  model_bytes_ = WeightBytes(layout);
  const std::vector<bool> mask =
      TrainableMask(layout, engine_options.trainable, engine_options.split_after);
  for (size_t i = 0; i < layout.size(); ++i) {
    if (!mask[i]) continue;
    int64_t n = 1;
    for (int64_t d : layout.shapes[i]) n *= d;
    trainable_bytes_ += 4 * n;
  }
  int width = 1;
  for (int n = options_.num_clients - 1; n >= 10; n /= 10) ++width;
  clients_.reserve(options_.num_clients);
  for (int c = 0; c < options_.num_clients; ++c) {
    clients_.push_back({ClientId(c, width), partition_.client_size(c)});
  }
  engine_->set_evaluator([this](const Weights& w) -> Result<Evaluation> {
    const int round = engine_->rounds_completed() + 1;
    const bool last = round >= options_.rounds;
    const bool due = options_.eval_every > 0 && round % options_.eval_every == 0;
    if (!last && !due) return Status::FailedPrecondition("not evaluated this round");
    const auto eval_start = std::chrono::steady_clock::now();
    Result<Evaluation> e = EvaluateWeights(*eval_net_, w, data_.test);
    eval_seconds_ = Seconds(eval_start);
    return e;
  });
  return Status::Ok();
}

std::vector<Task> Simulation::PlanTasks(const RoundPlan& plan) {
  const int64_t start = clock_.NowMicros();
  std::vector<Task> tasks;
  tasks.reserve(plan.clients.size());
  for (const std::string& id : plan.clients) {
    Task t;
    t.id = id;
    t.client = ClientIndex(id);
    const int64_t n = partition_.client_size(t.client);
    int64_t steps = plan.fit.local_epochs * ((n + plan.fit.batch_size - 1) / plan.fit.batch_size);
    if (plan.fit.max_steps > 0) steps = std::min(steps, plan.fit.max_steps);
    const double seconds = steps * options_.step_seconds * SpeedOf(t.client);
    t.arrival_micros = start + static_cast<int64_t>(seconds * 1e6);
    const uint64_t bits = StreamSeed(options_.seed, 0xd20b + plan.round, t.client);
    if (Uniform01(bits) < options_.dropout) {
      t.kind = Task::Kind::kDropped;
      t.arrival_micros = start + static_cast<int64_t>(seconds * 1e6 * Uniform01(Mix(bits)));
    }
    tasks.push_back(std::move(t));
  }
  std::sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) {
    return a.arrival_micros != b.arrival_micros ? a.arrival_micros < b.arrival_micros : a.id < b.id;
  });
  int on_time = 0;
  for (Task& t : tasks) {
    if (t.kind == Task::Kind::kDropped) continue;
    if (t.arrival_micros > plan.deadline_micros || on_time >= plan.target) {
      t.kind = Task::Kind::kLate;
    } else {
      ++on_time;
    }
  }
  return tasks;
}

void Simulation::Worker(int worker, const RoundPlan& plan, const std::vector<Task>& tasks) {
  for (;;) {
    if (options_.cancelled && options_.cancelled()) return;
    const size_t i = next_task_.fetch_add(1);
    if (i >= tasks.size()) return;
    const Task& t = tasks[i];
    Result<LocalTrainResult> result = Status::Internal("not trained");
    if (t.kind == Task::Kind::kTrain) {
      const std::vector<int64_t> rows = partition_.ClientIndices(t.client);
      const torch::Tensor index = torch::tensor(rows, torch::kLong);
      const split::LabeledImages local = data_.train.Select(index);
      LocalTrainOptions o;
      o.fit = plan.fit;
      o.trainable = plan.trainable;
      o.freeze_batch_norm_stats = plan.trainable_set == TrainableSet::kHeadAndExits;
      o.seed = StreamSeed(options_.seed, 0x7a1 + plan.round, t.client);
      o.cancelled = options_.cancelled;
      const auto call_start = std::chrono::steady_clock::now();
      result = TrainLocally(*nets_[worker], engine_->global(), local, o);
      client_micros_ += static_cast<int64_t>(Seconds(call_start) * 1e6);
      if (result.ok()) {
        training_micros_ += static_cast<int64_t>(result->seconds * 1e6);
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      results_[i].result = std::move(result);
      results_[i].done = true;
    }
    cv_.notify_all();
  }
}

Status Simulation::RunRound() {
  const auto wall_start = std::chrono::steady_clock::now();
  CLEAVE_ASSIGN_OR_RETURN(RoundPlan plan, engine_->StartRound(clients_));
  const std::vector<Task> tasks = PlanTasks(plan);
  results_.assign(tasks.size(), TaskResult{});
  next_task_ = 0;
  training_micros_ = 0;
  client_micros_ = 0;
  const int64_t round_start = clock_.NowMicros();

  std::optional<ProgressBar> bar;
  if (options_.progress_out) {
    bar.emplace("round " + std::to_string(plan.round) + "/" + std::to_string(options_.rounds),
                tasks.size(), options_.progress_out);
  }
  std::vector<std::thread> threads;
  const int active = std::min<int>(workers_, static_cast<int>(tasks.size()));
  for (int w = 0; w < active; ++w) {
    threads.emplace_back([this, w, &plan, &tasks] { Worker(w, plan, tasks); });
  }
  int trained = 0;
  // Submit in arrival order, whichever worker finishes first.
  for (size_t i = 0; i < tasks.size(); ++i) {
    const Task& t = tasks[i];
    Result<LocalTrainResult> r = Status::Internal("not run");
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock,
               [&] { return results_[i].done || (options_.cancelled && options_.cancelled()); });
      if (!results_[i].done) break;
      r = std::move(results_[i].result);
      results_[i] = TaskResult{};
    }
    // Stragglers and drop-outs count at the deadline at the latest: the round is closed by
    // then, and its virtual time ends there.
    clock_.Set(t.kind == Task::Kind::kTrain ? t.arrival_micros
                                            : std::min(t.arrival_micros, plan.deadline_micros + 1));
    if (t.kind == Task::Kind::kDropped) {
      engine_->ReportFailure(plan.round, t.id, "dropped out");
    } else if (t.kind == Task::Kind::kLate) {
      ClientUpdate late;
      late.client_id = t.id;
      (void)engine_->Submit(plan.round, std::move(late));  // counted late by the engine
    } else if (!r.ok()) {
      engine_->ReportFailure(plan.round, t.id, r.status().ToString());
    } else {
      ClientUpdate u;
      u.client_id = t.id;
      u.num_examples = r->num_examples;
      u.weights = std::move(r->weights);
      u.train_loss = r->train_loss;
      (void)engine_->Submit(plan.round, std::move(u));
      ++trained;
    }
    if (bar) bar->Update(i + 1, "trained " + std::to_string(trained));
  }
  for (auto& th : threads) th.join();
  if (options_.cancelled && options_.cancelled()) {
    return Status::FailedPrecondition("sim: cancelled during round " + std::to_string(plan.round));
  }
  // The round ends at its deadline unless it completed earlier.
  if (!engine_->RoundDone()) clock_.Set(plan.deadline_micros);
  const double train_wall = training_micros_.load() / 1e6 / std::max(1, active);
  eval_seconds_ = 0;
  CLEAVE_ASSIGN_OR_RETURN(RoundRecord record, engine_->FinishRound());
  RoundRecord* stored = engine_->last_record();
  stored->extra["virtual_seconds"] = (clock_.NowMicros() - round_start) / 1e6;
  // Round wall time without the server-side evaluation (which is not part of a round).
  stored->extra["wall_seconds"] = Seconds(wall_start) - eval_seconds_;
  stored->extra["eval_seconds"] = eval_seconds_;
  stored->extra["training_seconds"] = train_wall;
  stored->extra["local_training_seconds"] = client_micros_.load() / 1e6 / std::max(1, active);
  stored->extra["bytes_down"] = static_cast<int64_t>(plan.clients.size()) * model_bytes_;
  stored->extra["bytes_up"] = static_cast<int64_t>(record.succeeded) * trainable_bytes_;
  stored->extra["peak_rss_bytes"] = PeakRssBytes();
  stored->extra.erase("eval_error");
  if (bar) {
    std::string suffix =
        "ok " + std::to_string(record.succeeded) + "/" + std::to_string(record.sampled);
    if (record.eval_accuracy) suffix += " acc " + std::to_string(*record.eval_accuracy);
    bar->Finish(suffix);
  }
  if (!options_.checkpoint.empty()) {
    CLEAVE_RETURN_IF_ERROR(SaveCheckpoint(options_.checkpoint, *engine_));
  }
  if (options_.on_round) options_.on_round(*stored);
  return Status::Ok();
}

Result<SimResult> Simulation::Run() {
  const auto start = std::chrono::steady_clock::now();
  CLEAVE_RETURN_IF_ERROR(Setup());
  SimResult result;
  if (!options_.checkpoint.empty()) {
    Status restored = RestoreCheckpoint(options_.checkpoint, *engine_);
    if (restored.ok()) {
      result.resumed_from_round = engine_->rounds_completed();
      if (options_.progress_out) {
        std::fprintf(options_.progress_out, "resumed from %s after round %d\n",
                     options_.checkpoint.c_str(), result.resumed_from_round);
      }
    } else if (restored.code() != StatusCode::kNotFound) {
      return restored;
    }
  }
  const int threads_before = torch::get_num_threads();
  if (workers_ > 1) torch::set_num_threads(1);  // parallelism comes from the workers
  Status status;
  while (status.ok() && engine_->rounds_completed() < options_.rounds) {
    if (options_.cancelled && options_.cancelled()) {
      status = Status::FailedPrecondition("sim: cancelled after round " +
                                          std::to_string(engine_->rounds_completed()));
      break;
    }
    status = RunRound();
  }
  torch::set_num_threads(threads_before);
  CLEAVE_RETURN_IF_ERROR(status);
  result.history = engine_->history();
  result.global = engine_->global();
  for (const auto& r : result.history) {
    if (r.eval_accuracy) {
      result.best_accuracy = std::max(result.best_accuracy, *r.eval_accuracy);
      result.final_accuracy = *r.eval_accuracy;
    }
  }
  result.wall_seconds = Seconds(start);
  result.peak_rss_bytes = PeakRssBytes();
  return result;
}

}  // namespace

Result<SimResult> RunSimulation(const SimOptions& options, const SimData& data) {
  CLEAVE_RETURN_IF_ERROR(options.Validate());
  if (data.train.size() == 0 || data.test.size() == 0) {
    return Status::InvalidArgument("sim: training and test data are required");
  }
  if (data.train_labels.size() != static_cast<size_t>(data.train.size())) {
    return Status::InvalidArgument("sim: train_labels must have one label per training row");
  }
  CLEAVE_ASSIGN_OR_RETURN(split::VisionModelSpec spec, ModelSpecByName(options.model));
  PartitionSpec partition_spec = options.partition;
  partition_spec.seed = options.seed;
  CLEAVE_ASSIGN_OR_RETURN(Partition partition, MakePartition(data.train_labels, spec.num_classes,
                                                             options.num_clients, partition_spec));
  try {
    Simulation sim(options, data, spec, std::move(partition));
    return sim.Run();
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("sim: libtorch error: ") + e.what_without_backtrace());
  }
}

}  // namespace cleave::federated
