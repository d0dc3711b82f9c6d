#include "federated/simulation.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <thread>

#include <ATen/CPUGeneratorImpl.h>

#include "common/process_stats.h"
#include "federated/checkpoint.h"
#include "federated/simulation_internal.h"
#include "split/compute_runtime.h"
#include "split/torch_status.h"
#include "split/vision_bundle.h"

namespace cleave::federated {

using nlohmann::json;

namespace sim_internal {

double Simulation::SpeedOf(int client) const {
  if (options_.speed_max == options_.speed_min) return options_.speed_min;
  const double u = Uniform01(StreamSeed(options_.seed, 0x5eed, static_cast<uint64_t>(client)));
  return options_.speed_min + u * (options_.speed_max - options_.speed_min);
}

Status Simulation::Setup() {
  workers_ =
      options_.workers > 0 ? options_.workers : std::max(1u, std::thread::hardware_concurrency());
  torch::manual_seed(options_.seed);
  if (model_->kind() != split::kVisionSplitKind && workers_ > 1 && options_.progress_out) {
    // cleave's own networks draw no random numbers while training; a TorchScript model's
    // dropout draws from libtorch's one global generator, which the workers share.
    std::fprintf(options_.progress_out,
                 "note: a TorchScript model with dropout is reproducible run to run only with "
                 "sim.workers = 1 (the workers share libtorch's global generator)\n");
  }
  const WeightsLayout layout = LayoutOf(*model_);
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<Strategy> strategy, MakeStrategy(options_.strategy));
  EngineOptions engine_options = options_.engine;
  engine_options.split_after = model_->split_after();
  engine_options.named_parts = model_->kind() == split::kTorchScriptSplitKind;
  CLEAVE_ASSIGN_OR_RETURN(engine_, RoundEngine::Create(engine_options, std::move(strategy), layout,
                                                       GetWeights(*model_), clock_));
  for (int w = 0; w < workers_; ++w) {
    CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<split::TrainableNet> net, model_->Clone());
    nets_.push_back(std::move(net));
    trainers_.push_back(std::make_unique<LocalTrainer>(*nets_.back()));
  }
  // Update buffers for the first clients; later ones reuse what aggregation hands back.
  {
    MutexLock lock(&mu_);  // no workers yet; the lock is for the analysis
    for (size_t k = 0; k < 2 * nets_.size(); ++k) spare_.push_back(ZerosLike(layout));
  }
  model_bytes_ = WeightBytes(layout);
  const std::vector<bool> mask = TrainableMask(
      layout, engine_options.trainable, engine_options.split_after, engine_options.named_parts);
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
  if (options_.continual.enabled) {
    if (options_.continual.scenario == "class" &&
        options_.continual.experiences > model_->num_classes()) {
      return Status::InvalidArgument(
          "sim: continual.experiences (" + std::to_string(options_.continual.experiences) +
          ") exceeds the data's classes (" + std::to_string(model_->num_classes()) + ")");
    }
    if (options_.continual.scenario == "domain") {
      CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor first, data_.test.Slice(0, 1));
      permutations_ = DomainPermutations(options_.seed, options_.continual.experiences,
                                         first.size(2) * first.size(3));
    }
  }
  malicious_ = MaliciousClients(options_.attack, options_.num_clients, options_.seed);
  engine_->set_evaluator([this](const Weights& w) -> Result<Evaluation> {
    const int round = engine_->rounds_completed() + 1;
    const bool last = round >= options_.rounds;
    const bool due = options_.eval_every > 0 && round % options_.eval_every == 0;
    if (!last && !due) return Status::FailedPrecondition("not evaluated this round");
    const auto eval_start = std::chrono::steady_clock::now();
    Result<Evaluation> e = EvaluateWeights(*model_, w, data_.test);
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
    const int64_t n = ClientSize(t.client);
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

Status Simulation::RunRound() {
  const auto wall_start = std::chrono::steady_clock::now();
  if (options_.continual.enabled) {
    const int experience = ExperienceOfRound(engine_->rounds_completed() + 1);
    if (experience != experience_) EnterExperience(experience);
  }
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
  if (options_.continual.enabled) {
    const auto eval_start = std::chrono::steady_clock::now();
    CLEAVE_RETURN_IF_ERROR(EvaluateExperiences(engine_->global(), plan.round, *stored));
    stored->extra["eval_seconds"] = eval_seconds_ + Seconds(eval_start);
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
  if (options_.continual.enabled) {  // the accuracy matrix so far, from the history
    evaluator_.emplace(options_.continual, model_->num_classes(), options_.seed);
    CLEAVE_RETURN_IF_ERROR(evaluator_->Restore(engine_->history()));
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
  if (options_.continual.enabled && evaluator_) result.continual = evaluator_->Summary();
  result.wall_seconds = Seconds(start);
  result.peak_rss_bytes = PeakRssBytes();
  return result;
}

}  // namespace sim_internal

Result<SimResult> RunSimulation(const SimOptions& options, const SimData& data) {
  CLEAVE_RETURN_IF_ERROR(options.Validate());
  if (data.train.size() == 0 || data.test.size() == 0) {
    return Status::InvalidArgument("sim: training and test data are required");
  }
  if (data.train_labels.size() != static_cast<size_t>(data.train.size())) {
    return Status::InvalidArgument("sim: train_labels must have one label per training row");
  }
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<split::TrainableNet> model,
                          MakeSimModel(options.model, data, options.seed));
  PartitionSpec partition_spec = options.partition;
  partition_spec.seed = options.seed;
  CLEAVE_ASSIGN_OR_RETURN(
      Partition partition,
      MakePartition(data.train_labels, model->num_classes(), options.num_clients, partition_spec));
  return split::CallTorch(split::TorchSource::kOwnState, "sim: libtorch error", [&] {
    sim_internal::Simulation sim(options, data, std::move(model), std::move(partition));
    return sim.Run();
  });
}

}  // namespace cleave::federated
