#include "federated/simulation.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "common/datasets.h"
#include "common/file_util.h"
#include "common/mutex.h"
#include "common/process_stats.h"
#include "common/progress.h"
#include "common/thread_annotations.h"
#include "federated/checkpoint.h"
#include "federated/local_training.h"
#include "federated/splitmix.h"
#include "split/compute_runtime.h"
#include "split/torch_status.h"

namespace cleave::federated {

using nlohmann::json;

namespace {

// SplitMix64 decorrelates (seed, round, client) into independent streams.
uint64_t StreamSeed(uint64_t seed, uint64_t a, uint64_t b) { return SplitMix64(SplitMix64(SplitMix64(seed) ^ a) ^ b); }

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

// A client's rows of `all` as a new set: LabeledImages::Select without an index tensor and
// the dispatch of two index_select calls, which matter for clients of a few samples.
split::LabeledImages GatherRows(const split::LabeledImages& all, const int64_t* rows,
                                int64_t count) {
  if (!all.images.is_contiguous() || all.images.scalar_type() != torch::kFloat ||
      !all.labels.is_contiguous() || all.labels.scalar_type() != torch::kLong) {
    return all.Select(torch::tensor(std::vector<int64_t>(rows, rows + count), torch::kLong));
  }
  std::vector<int64_t> shape = all.images.sizes().vec();
  shape[0] = count;
  split::LabeledImages out{torch::empty(shape, all.images.options()),
                           torch::empty({shape[0]}, all.labels.options())};
  const int64_t row = all.images[0].numel();
  const float* src = all.images.data_ptr<float>();
  float* dst = out.images.data_ptr<float>();
  const int64_t* labels = all.labels.data_ptr<int64_t>();
  int64_t* out_labels = out.labels.data_ptr<int64_t>();
  for (int64_t k = 0; k < count; ++k) {
    std::memcpy(dst + k * row, src + rows[k] * row, sizeof(float) * row);
    out_labels[k] = labels[rows[k]];
  }
  return out;
}

// One sampled client's fate in a round, decided before anyone trains.
struct Task {
  std::string id;
  int client = 0;
  int64_t arrival_micros = 0;  // virtual
  enum class Kind { kTrain, kLate, kDropped } kind = Kind::kTrain;
};

struct TaskResult {
  Result<LocalTrainResult> result{Status::Internal("not run")};
  bool values_checked = false;  // RoundEngine::CheckValues passed, on the worker
  int64_t upload_bytes = -1;    // the compressed update's encoded size; -1 = not compressed
  std::optional<secagg::MaskedInput> masked;  // secure rounds: what the client sends instead
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
          {"compression", compression.ToJson()},
          {"attack", attack.ToJson()},
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
  CLEAVE_RETURN_IF_ERROR(compression.Validate());
  CLEAVE_RETURN_IF_ERROR(
      CheckCompressionCompatible(compression, engine.secure.enabled, strategy.name));
  CLEAVE_RETURN_IF_ERROR(attack.Validate());
  if (engine.secure.enabled && strategy.name == "dpfedavg" && strategy.dp.adaptive_clip) {
    return Status::InvalidArgument(
        "sim: strategy.dp_adaptive_clip is not available with secure aggregation (the "
        "clients clip with a fixed strategy.dp_clip_norm)");
  }
  if (engine.secure.enabled && strategy.norm_bound > 0) {
    return Status::InvalidArgument(
        "sim: strategy.norm_bound clips each client's update on the server, which secure "
        "aggregation never reveals");
  }
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
  ~Simulation() { StopPool(); }

  Result<SimResult> Run();

 private:
  Status Setup();
  // Decides every sampled client's fate (dropout, lateness, target) in arrival order.
  std::vector<Task> PlanTasks(const RoundPlan& plan);
  Status RunRound();
  void Worker(int worker, const RoundPlan& plan, const std::vector<Task>& tasks);
  // The workers live for the whole run (a thread per round would cost its creation and
  // libtorch's per-thread set-up every round): each waits for the next round's tasks.
  void StartPool() EXCLUDES(pool_mu_);
  void StopPool() EXCLUDES(pool_mu_);
  void PoolThread(int worker) EXCLUDES(pool_mu_);
  void WarmUp(int worker);
  // Runs `tasks` on the first `active` workers and returns when all of them are done.
  void RunOnPool(const RoundPlan& plan, const std::vector<Task>& tasks, int active)
      EXCLUDES(pool_mu_);
  // Submits finished tasks to the engine in task (arrival) order, from whichever worker gets
  // there first: no hand-off to a waiting thread per client. Returns at once when another
  // worker is already submitting; it will pick up what this worker finished.
  void SubmitInOrder(const RoundPlan& plan, const std::vector<Task>& tasks)
      EXCLUDES(submit_mu_, mu_);
  void SubmitOne(const RoundPlan& plan, const Task& t, Result<LocalTrainResult> r,
                 bool values_checked, int64_t upload_bytes = -1,
                 std::optional<secagg::MaskedInput> masked = std::nullopt) REQUIRES(submit_mu_)
      EXCLUDES(mu_);
  // Compresses a trained update in place (encode, decode, global + decoded delta) with the
  // client's error-feedback residual; returns the encoded size. On a worker, in parallel.
  Result<int64_t> CompressUpdate(const RoundPlan& plan, const Task& t, Weights& weights);
  // Secure rounds (federated/secure_round.h), the clients' side played in process with the
  // code an edge runs: every sampled client advertises keys and shares its secrets before
  // training (so a client that then drops or is late has masks the server must remove);
  // trained clients mask their update on the worker; after the pool, survivors reveal
  // shares. Protocol failures are left to the engine, whose FinishRound reports them.
  void SecureSetUp(const RoundPlan& plan);
  void SecureUnmask();
  Result<secagg::MaskedInput> MaskUpdate(const RoundPlan& plan, const Task& t,
                                         const LocalTrainResult& trained);
  double SpeedOf(int client) const;

  const SimOptions& options_;
  const SimData& data_;
  split::VisionModelSpec spec_;
  Partition partition_;
  FakeClock clock_;
  std::unique_ptr<RoundEngine> engine_;
  ClientPool clients_;           // the population's clients with data, built once
  std::vector<bool> malicious_;  // by client index (options_.attack); read-only after Setup
  int workers_ = 1;
  std::vector<split::SplitVisionNet> nets_;              // one per worker
  std::vector<std::unique_ptr<LocalTrainer>> trainers_;  // one per worker, on nets_
  split::SplitVisionNet eval_net_{nullptr};
  int64_t model_bytes_ = 0, trainable_bytes_ = 0;

  // Per-round hand-off between workers and the submitting thread.
  // Lock order: submit_mu_ before mu_; pool_mu_ is never held with either.
  Mutex mu_;
  std::vector<TaskResult> results_ GUARDED_BY(mu_);
  size_t next_submit_ GUARDED_BY(mu_) = 0;  // first task not yet submitted
  std::vector<std::thread> pool_;
  Mutex pool_mu_;
  CondVar start_cv_, done_cv_;
  uint64_t generation_ GUARDED_BY(pool_mu_) = 0;  // bumped per round
  bool quit_ GUARDED_BY(pool_mu_) = false;
  int active_ GUARDED_BY(pool_mu_) = 0;
  int running_ GUARDED_BY(pool_mu_) = 0;
  int ready_ GUARDED_BY(pool_mu_) = 0;
  const RoundPlan* round_plan_ GUARDED_BY(pool_mu_) = nullptr;
  const std::vector<Task>* round_tasks_ GUARDED_BY(pool_mu_) = nullptr;
  Mutex submit_mu_;  // held by the one worker submitting (the engine is not thread-safe)
  int trained_ GUARDED_BY(submit_mu_) = 0;  // updates submitted this round
  // Encoded sizes of this round's accepted updates.
  int64_t compressed_bytes_up_ GUARDED_BY(submit_mu_) = 0;
  // Error-feedback residuals by client index (mu_ guards lookup and insertion; each entry
  // is used by the one worker training that client this round). Grows with the clients that
  // have trained: O(participants x trainable model).
  std::unordered_map<int, ErrorFeedbackState> feedback_ GUARDED_BY(mu_);
  // Secure rounds: each sampled client's session and the shares forwarded to it. Filled
  // before the pool runs and only read (one worker per client) while it does.
  struct SecureClient {
    std::optional<SecureClientSession> session;
    secagg::ForwardedShares forwarded;
  };
  std::map<std::string, SecureClient> secure_clients_;
  std::atomic<int64_t> secure_client_micros_{0};  // clients' protocol work this round
  int64_t secure_server_micros_ = 0;              // the engine's side, stages 0, 1 and 3
  int64_t secure_protocol_bytes_ = 0;             // payload of the key, share and unmask messages
  ProgressBar* bar_ = nullptr;
  // Update tensors handed back after aggregation, for the next clients' results (reused
  // only where the strategy kept no reference; see GetWeightsInto).
  std::vector<Weights> spare_ GUARDED_BY(mu_);
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
  for (int w = 0; w < workers_; ++w) {
    nets_.emplace_back(spec_);
    trainers_.push_back(std::make_unique<LocalTrainer>(*nets_.back()));
  }
  // Update buffers for the first clients; later ones reuse what aggregation hands back.
  {
    MutexLock lock(&mu_);  // no workers yet; the lock is for the analysis
    for (size_t k = 0; k < 2 * nets_.size(); ++k) spare_.push_back(ZerosLike(layout));
  }
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
  std::vector<ClientInfo> population;
  population.reserve(options_.num_clients);
  for (int c = 0; c < options_.num_clients; ++c) {
    population.push_back({ClientId(c, width), partition_.client_size(c)});
  }
  clients_ = ClientPool(population);
  malicious_ = MaliciousClients(options_.attack, options_.num_clients, options_.seed);
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
      t.arrival_micros = start + static_cast<int64_t>(seconds * 1e6 * Uniform01(SplitMix64(bits)));
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

void Simulation::StartPool() {
  // The calling thread is worker 0: a round then wakes one thread fewer, and the caller
  // works instead of waiting.
  for (int w = 1; w < workers_; ++w) pool_.emplace_back([this, w] { PoolThread(w); });
  WarmUp(0);
  MutexLock lock(&pool_mu_);
  done_cv_.Wait(&pool_mu_, [&]() REQUIRES(pool_mu_) { return ready_ == workers_ - 1; });
}

void Simulation::WarmUp(int worker) {
  // One step on two rows: libtorch's per-thread state, the allocator's caches and oneDNN's
  // kernels are set up here, once, instead of inside the first round's clients. Nothing
  // carries over: every client's call reloads the weights, reseeds and resets the optimizer.
  LocalTrainOptions o;
  o.fit = options_.engine.fit;
  o.fit.max_steps = 1;
  o.fit.local_epochs = 1;
  (void)trainers_[worker]->Train(engine_->global(), data_.train.Head(2), o);
}

void Simulation::StopPool() {
  {
    MutexLock lock(&pool_mu_);
    quit_ = true;
  }
  start_cv_.NotifyAll();
  for (auto& t : pool_) t.join();
  pool_.clear();
}

void Simulation::PoolThread(int worker) {
  WarmUp(worker);
  uint64_t seen = 0;
  MutexLock lock(&pool_mu_);
  if (++ready_ == workers_ - 1) done_cv_.NotifyAll();
  for (;;) {
    start_cv_.Wait(&pool_mu_, [&]() REQUIRES(pool_mu_) { return quit_ || generation_ != seen; });
    if (quit_) return;
    seen = generation_;
    if (worker >= active_) continue;
    const RoundPlan& plan = *round_plan_;
    const std::vector<Task>& tasks = *round_tasks_;
    lock.Unlock();
    Worker(worker, plan, tasks);
    lock.Lock();
    if (--running_ == 0) done_cv_.NotifyAll();
  }
}

void Simulation::RunOnPool(const RoundPlan& plan, const std::vector<Task>& tasks, int active) {
  {
    MutexLock lock(&pool_mu_);
    round_plan_ = &plan;
    round_tasks_ = &tasks;
    active_ = active;
    running_ = active - 1;  // the pool's share; worker 0 is this thread
    ++generation_;
  }
  if (active > 1) start_cv_.NotifyAll();
  Worker(0, plan, tasks);
  MutexLock lock(&pool_mu_);
  done_cv_.Wait(&pool_mu_, [&]() REQUIRES(pool_mu_) { return running_ == 0; });
  round_plan_ = nullptr;
  round_tasks_ = nullptr;
}

void Simulation::Worker(int worker, const RoundPlan& plan, const std::vector<Task>& tasks) {
  for (;;) {
    if (options_.cancelled && options_.cancelled()) return;
    const size_t i = next_task_.fetch_add(1);
    if (i >= tasks.size()) return;
    const Task& t = tasks[i];
    Result<LocalTrainResult> result = Status::Internal("not trained");
    bool values_checked = false;
    int64_t upload_bytes = -1;
    std::optional<secagg::MaskedInput> masked;
    if (t.kind == Task::Kind::kTrain) {
      split::LabeledImages local = GatherRows(data_.train, partition_.client_rows(t.client),
                                              partition_.client_size(t.client));
      const bool malicious = malicious_[t.client];
      if (malicious && options_.attack.kind == AttackKind::kLabelFlip) {
        FlipLabels(local, spec_.num_classes);
      }
      LocalTrainOptions o;
      o.fit = plan.fit;
      o.trainable = plan.trainable;
      o.freeze_batch_norm_stats = plan.trainable_set == TrainableSet::kHeadAndExits;
      o.seed = StreamSeed(options_.seed, 0x7a1 + plan.round, t.client);
      o.cancelled = options_.cancelled;
      o.global_is_checked = true;  // the engine's own global model
      Weights recycled;
      {
        MutexLock lock(&mu_);
        if (!spare_.empty()) {
          recycled = std::move(spare_.back());
          spare_.pop_back();
        }
      }
      const auto call_start = std::chrono::steady_clock::now();
      result = trainers_[worker]->Train(engine_->global(), local, o, std::move(recycled));
      client_micros_ += static_cast<int64_t>(Seconds(call_start) * 1e6);
      if (result.ok()) {
        training_micros_ += static_cast<int64_t>(result->seconds * 1e6);
        if (malicious && options_.attack.poisons_updates()) {
          Status poisoned = PoisonUpdate(options_.attack, engine_->global(), plan.trainable,
                                         StreamSeed(options_.seed, 0xa77a + plan.round, t.client),
                                         result->weights);
          if (!poisoned.ok()) result = poisoned.WithContext("attack");
        }
      }
      if (result.ok()) {
        if (options_.compression.kind != "none") {
          Result<int64_t> encoded = CompressUpdate(plan, t, result->weights);
          if (encoded.ok()) {
            upload_bytes = *encoded;
          } else {
            result = encoded.status().WithContext("compression");
          }
        }
      }
      if (result.ok() && plan.secure) {
        Result<secagg::MaskedInput> m = MaskUpdate(plan, t, *result);
        if (m.ok()) {
          masked = std::move(*m);
        } else {
          result = m.status().WithContext("secure aggregation");
        }
      } else if (result.ok()) {
        // The engine's value scan, here in parallel rather than in the serialized Submit.
        values_checked = engine_->CheckValues(result->weights).ok();
      }
    }
    {
      MutexLock lock(&mu_);
      results_[i].result = std::move(result);
      results_[i].values_checked = values_checked;
      results_[i].upload_bytes = upload_bytes;
      results_[i].masked = std::move(masked);
      results_[i].done = true;
    }
    SubmitInOrder(plan, tasks);
  }
}

void Simulation::SubmitInOrder(const RoundPlan& plan, const std::vector<Task>& tasks) {
  const auto next_ready = [&]() REQUIRES(mu_) {
    return next_submit_ < tasks.size() && results_[next_submit_].done;
  };
  for (;;) {
    if (!submit_mu_.TryLock()) return;  // the holder re-checks after it lets go
    MutexLock submitting(&submit_mu_, std::adopt_lock);
    for (;;) {
      size_t i = 0;
      Result<LocalTrainResult> r = Status::Internal("not run");
      bool values_checked = false;
      int64_t upload_bytes = -1;
      std::optional<secagg::MaskedInput> masked;
      {
        MutexLock lock(&mu_);
        if (!next_ready()) break;
        i = next_submit_++;
        r = std::move(results_[i].result);
        values_checked = results_[i].values_checked;
        upload_bytes = results_[i].upload_bytes;
        masked = std::move(results_[i].masked);
        results_[i] = TaskResult{};
      }
      SubmitOne(plan, tasks[i], std::move(r), values_checked, upload_bytes, std::move(masked));
      if (bar_) bar_->Update(i + 1, "trained " + std::to_string(trained_));
    }
    submitting.Unlock();
    // A worker that finished while this one held the lock returned without submitting.
    MutexLock lock(&mu_);
    if (!next_ready()) return;
  }
}

void Simulation::SubmitOne(const RoundPlan& plan, const Task& t, Result<LocalTrainResult> r,
                           bool values_checked, int64_t upload_bytes,
                           std::optional<secagg::MaskedInput> masked) {
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
  } else if (masked) {
    // A secure round: only the masked vector reaches the engine; the trained weights stay
    // with the client (and go back to the spare pool).
    const int64_t words = static_cast<int64_t>(masked->masked.size());
    if (engine_->SubmitMasked(plan.round, t.id, *masked) == UpdateVerdict::kAccepted) {
      compressed_bytes_up_ += words * static_cast<int64_t>(sizeof(uint32_t));
    }
    ++trained_;
    MutexLock lock(&mu_);
    if (spare_.size() < 2 * nets_.size()) spare_.push_back(std::move(r->weights));
  } else {
    ClientUpdate u;
    u.client_id = t.id;
    u.num_examples = r->num_examples;
    u.weights = std::move(r->weights);
    u.train_loss = r->train_loss;
    u.values_checked = values_checked;
    Weights handed = u.weights;  // shares the tensors: they come back after aggregation
    const UpdateVerdict verdict = engine_->Submit(plan.round, std::move(u));
    if (verdict == UpdateVerdict::kAccepted && upload_bytes >= 0) {
      compressed_bytes_up_ += upload_bytes;
    }
    ++trained_;
    MutexLock lock(&mu_);
    if (spare_.size() < 2 * nets_.size()) spare_.push_back(std::move(handed));
  }
}

Result<int64_t> Simulation::CompressUpdate(const RoundPlan& plan, const Task& t, Weights& weights) {
  ErrorFeedbackState* feedback = nullptr;
  if (options_.compression.error_feedback) {
    MutexLock lock(&mu_);
    feedback = &feedback_[t.client];  // unordered_map: the reference survives rehashing
  }
  return CompressRoundTrip(options_.compression, engine_->layout(), engine_->global(), weights,
                           plan.trainable, static_cast<uint64_t>(plan.round),
                           static_cast<uint64_t>(t.client), feedback);
}

void Simulation::SecureSetUp(const RoundPlan& plan) {
  secure_clients_.clear();
  secure_protocol_bytes_ = 0;
  SecureRound& server = *engine_->secure_round();
  int64_t client_micros = 0;
  const auto timed = [](int64_t& micros, auto&& fn) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    micros += static_cast<int64_t>(Seconds(start) * 1e6);
  };
  // Stage 0: every sampled client (roster order = plan.clients) advertises its keys.
  for (size_t u = 0; u < plan.clients.size(); ++u) {
    SecureClient& c = secure_clients_[plan.clients[u]];
    Result<secagg::AdvertiseKeys> keys = Status::Internal("not run");
    timed(client_micros, [&] {
      Result<SecureClientSession> session =
          SecureClientSession::Create(*plan.secure, static_cast<secagg::ClientIndex>(u));
      if (!session.ok()) {
        keys = session.status();
        return;
      }
      c.session.emplace(std::move(*session));
      keys = c.session->Advertise();
    });
    if (!keys.ok()) continue;
    secure_protocol_bytes_ += 2 * 32 + 12;
    timed(secure_server_micros_, [&] { (void)server.HandleAdvertiseKeys(plan.clients[u], *keys); });
  }
  Result<std::map<std::string, secagg::KeyDirectory>> directories = Status::Internal("not run");
  timed(secure_server_micros_, [&] { directories = server.CloseAdvertiseKeys(); });
  if (!directories.ok()) return;  // the round has failed; FinishRound says why
  // Stage 1: each client Shamir-shares its secrets with its neighbours through the server.
  // Named, not structured bindings: lambdas cannot capture those before C++20 (clang refuses).
  for (auto& entry : *directories) {
    const std::string& id = entry.first;
    SecureClient& c = secure_clients_[id];
    if (!c.session) continue;
    Result<secagg::ShareKeys> shares = Status::Internal("not run");
    timed(client_micros, [&] { shares = c.session->ShareSecrets(entry.second); });
    if (!shares.ok()) continue;
    secure_protocol_bytes_ +=
        static_cast<int64_t>(shares->shares.size() * (secagg::SealedShareBytes() + 8));
    timed(secure_server_micros_, [&] { (void)server.HandleShareKeys(id, *shares); });
  }
  Result<std::map<std::string, secagg::ForwardedShares>> forwarded = Status::Internal("not run");
  timed(secure_server_micros_, [&] { forwarded = server.CloseShareKeys(); });
  if (!forwarded.ok()) return;
  for (auto& [id, f] : *forwarded) secure_clients_[id].forwarded = std::move(f);
  secure_client_micros_ += client_micros;
}

Result<secagg::MaskedInput> Simulation::MaskUpdate(const RoundPlan& plan, const Task& t,
                                                   const LocalTrainResult& trained) {
  auto it = secure_clients_.find(t.id);
  if (it == secure_clients_.end() || !it->second.session) {
    return Status::FailedPrecondition("client '" + t.id + "' took no part in the key exchange");
  }
  const auto start = std::chrono::steady_clock::now();
  // The stochastic-rounding seed: per (seed, round, client), 256 bits from HKDF.
  const uint64_t stream = StreamSeed(options_.seed, 0x5ec0 + plan.round, t.client);
  uint8_t ikm[8];
  for (int i = 0; i < 8; ++i) ikm[i] = static_cast<uint8_t>(stream >> (8 * i));
  CLEAVE_ASSIGN_OR_RETURN(
      crypto::Key256 rounding_seed,
      crypto::HkdfKey(crypto::ByteView(), crypto::ByteView(ikm, sizeof(ikm)), crypto::ByteView()));
  Result<secagg::MaskedInput> masked = it->second.session->MaskUpdate(
      it->second.forwarded, engine_->global(), trained.weights, plan.trainable,
      trained.num_examples, trained.train_loss, rounding_seed);
  secure_client_micros_ += static_cast<int64_t>(Seconds(start) * 1e6);
  return masked;
}

void Simulation::SecureUnmask() {
  SecureRound* server = engine_->secure_round();
  if (server == nullptr || server->stage() != secagg::SecAggServer::Stage::kMaskedInput) {
    secure_clients_.clear();
    return;  // failed earlier; FinishRound reports why
  }
  auto start = std::chrono::steady_clock::now();
  Result<SecureRound::UnmaskStage> stage = server->CloseMaskedInput();
  secure_server_micros_ += static_cast<int64_t>(Seconds(start) * 1e6);
  if (stage.ok()) {
    for (const std::string& id : stage->survivors) {
      SecureClient& c = secure_clients_[id];
      if (!c.session) continue;
      start = std::chrono::steady_clock::now();
      Result<secagg::UnmaskShares> shares = c.session->RevealShares(stage->request);
      secure_client_micros_ += static_cast<int64_t>(Seconds(start) * 1e6);
      if (!shares.ok()) continue;  // the client aborted: its shares are missing
      secure_protocol_bytes_ += static_cast<int64_t>(
          (shares->self_mask_shares.size() + shares->mask_key_shares.size()) * 16);
      start = std::chrono::steady_clock::now();
      (void)server->HandleUnmaskShares(id, *shares);
      secure_server_micros_ += static_cast<int64_t>(Seconds(start) * 1e6);
    }
  }
  secure_clients_.clear();  // the clients' secrets go with their sessions
}

Status Simulation::RunRound() {
  const auto wall_start = std::chrono::steady_clock::now();
  CLEAVE_ASSIGN_OR_RETURN(RoundPlan plan, engine_->StartRound(clients_));
  const std::vector<Task> tasks = PlanTasks(plan);
  {
    MutexLock lock(&mu_);  // the pool is idle between rounds; the lock is for the analysis
    results_.assign(tasks.size(), TaskResult{});
    next_submit_ = 0;
  }
  next_task_ = 0;
  training_micros_ = 0;
  client_micros_ = 0;
  const int64_t round_start = clock_.NowMicros();

  std::optional<ProgressBar> bar;
  if (options_.progress_out) {
    bar.emplace("round " + std::to_string(plan.round) + "/" + std::to_string(options_.rounds),
                tasks.size(), options_.progress_out);
  }
  bar_ = bar ? &*bar : nullptr;
  {
    MutexLock lock(&submit_mu_);
    trained_ = 0;
    compressed_bytes_up_ = 0;
  }
  secure_client_micros_ = 0;
  secure_server_micros_ = 0;
  if (plan.secure) SecureSetUp(plan);
  const int active = std::min<int>(workers_, static_cast<int>(tasks.size()));
  RunOnPool(plan, tasks, active);
  bar_ = nullptr;
  bool all_submitted = false;
  int64_t compressed_bytes_up = 0;
  {
    MutexLock submitting(&submit_mu_);
    MutexLock lock(&mu_);
    all_submitted = next_submit_ == tasks.size();
    compressed_bytes_up = compressed_bytes_up_;
  }
  if (!all_submitted) {
    secure_clients_.clear();
    return Status::FailedPrecondition("sim: cancelled during round " + std::to_string(plan.round));
  }
  // The round ends at its deadline unless it completed earlier.
  if (!engine_->RoundDone()) clock_.Set(plan.deadline_micros);
  if (plan.secure) SecureUnmask();
  const double train_wall = training_micros_.load() / 1e6 / std::max(1, active);
  eval_seconds_ = 0;
  const auto finish_start = std::chrono::steady_clock::now();
  CLEAVE_ASSIGN_OR_RETURN(RoundRecord record, engine_->FinishRound());
  // FinishRound includes the server-side evaluation; without it, it is the aggregation (for a
  // secure round: reconstructing the secrets, removing the masks, decoding) and the strategy.
  const double aggregate_seconds = std::max(0.0, Seconds(finish_start) - eval_seconds_);
  RoundRecord* stored = engine_->last_record();
  stored->extra["aggregate_seconds"] = aggregate_seconds;
  if (plan.secure) {
    stored->extra["secure_client_seconds"] = secure_client_micros_.load() / 1e6;
    stored->extra["secure_server_seconds"] = secure_server_micros_ / 1e6 + aggregate_seconds;
    stored->extra["secure_protocol_bytes_up"] = secure_protocol_bytes_;
  }
  stored->extra["virtual_seconds"] = (clock_.NowMicros() - round_start) / 1e6;
  // Round wall time without the server-side evaluation (which is not part of a round).
  stored->extra["wall_seconds"] = Seconds(wall_start) - eval_seconds_;
  stored->extra["eval_seconds"] = eval_seconds_;
  stored->extra["training_seconds"] = train_wall;
  stored->extra["local_training_seconds"] = client_micros_.load() / 1e6 / std::max(1, active);
  stored->extra["bytes_down"] = static_cast<int64_t>(plan.clients.size()) * model_bytes_;
  // Uplink: float32 trainable entries per accepted update, or with compression the encoded
  // sizes of the accepted updates (EncodeUpdate's bytes, header included).
  const int64_t dense_bytes_up = static_cast<int64_t>(record.succeeded) * trainable_bytes_;
  const bool compressed = options_.compression.kind != "none" || plan.secure.has_value();
  stored->extra["bytes_up"] =
      compressed ? compressed_bytes_up + secure_protocol_bytes_ : dense_bytes_up;
  json compression = options_.compression.ToJson();
  compression["dense_bytes_up"] = dense_bytes_up;
  if (compressed && dense_bytes_up > 0) {
    compression["ratio"] = static_cast<double>(compressed_bytes_up) / dense_bytes_up;
  }
  stored->extra["compression"] = compression;
  if (options_.attack.kind != AttackKind::kNone) {
    int64_t malicious_sampled = 0;
    for (const std::string& id : plan.clients) malicious_sampled += malicious_[ClientIndex(id)];
    stored->extra["attack"] = malicious_sampled;  // malicious clients among the sampled
  }
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
  if (workers_ > 1) split::SetComputeThreads(1);  // parallelism comes from the workers
  StartPool();
  Status status;
  while (status.ok() && engine_->rounds_completed() < options_.rounds) {
    if (options_.cancelled && options_.cancelled()) {
      status = Status::FailedPrecondition("sim: cancelled after round " +
                                          std::to_string(engine_->rounds_completed()));
      break;
    }
    status = RunRound();
  }
  StopPool();
  split::SetComputeThreads(threads_before);
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
  return split::CallTorch(split::TorchSource::kOwnState, "sim: libtorch error", [&] {
    Simulation sim(options, data, spec, std::move(partition));
    return sim.Run();
  });
}

}  // namespace cleave::federated
