// The private side of RunSimulation (federated/simulation.h), shared by the files that
// implement it:
//   simulation.cc         set-up, planning a round's tasks, the round loop and RunSimulation;
//   simulation_pool.cc    the worker pool: training sampled clients and submitting their
//                         updates to the engine in arrival order;
//   simulation_secure.cc  update compression and the clients' side of secure aggregation;
//   simulation_continual.cc  federated continual learning: experiences, the clients'
//                         strategies and the per-experience evaluation;
//   sim_options.cc        model and data loading, options, results and the history CSV.
// Not part of the public API: include only from those files. A Simulation belongs to the
// thread that calls Run; its workers touch only what the members' comments allow.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/mutex.h"
#include "common/progress.h"
#include "common/thread_annotations.h"
#include "federated/local_training.h"
#include "federated/simulation.h"
#include "federated/splitmix.h"

namespace cleave::federated::sim_internal {

// SplitMix64 decorrelates (seed, round, client) into independent streams.
inline uint64_t StreamSeed(uint64_t seed, uint64_t a, uint64_t b) {
  return SplitMix64(SplitMix64(SplitMix64(seed) ^ a) ^ b);
}

// "client-007": zero-padded so that sorting ids sorts clients by index.
inline std::string ClientId(int index, int width) {
  std::string digits = std::to_string(index);
  if (static_cast<int>(digits.size()) < width) digits.insert(0, width - digits.size(), '0');
  return "client-" + digits;
}
inline int ClientIndex(const std::string& id) { return std::stoi(id.substr(7)); }

// Wall-clock seconds elapsed since `since`.
inline double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// One sampled client's fate in a round, decided before anyone trains.
struct Task {
  std::string id;
  int client = 0;
  int64_t arrival_micros = 0;  // virtual
  enum class Kind { kTrain, kLate, kDropped } kind = Kind::kTrain;
};

// What a worker hands to the submitting thread for one task (guarded by Simulation::mu_).
struct TaskResult {
  Result<LocalTrainResult> result{Status::Internal("not run")};
  bool values_checked = false;  // RoundEngine::CheckValues passed, on the worker
  int64_t upload_bytes = -1;    // the compressed update's encoded size; -1 = not compressed
  std::optional<secagg::MaskedInput> masked;  // secure rounds: what the client sends instead
  bool done = false;
};

// One run of RunSimulation: borrows `options` and `data`, which must outlive it; owns the
// engine, the worker threads and their networks. Not thread-safe: call Run once, from one
// thread (which becomes worker 0).
class Simulation {
 public:
  // `model` is the simulated network with its initial weights.
  Simulation(const SimOptions& options, const SimData& data,
             std::unique_ptr<split::TrainableNet> model, Partition partition)
      : options_(options),
        data_(data),
        model_(std::move(model)),
        partition_(std::move(partition)) {}
  ~Simulation() { StopPool(); }

  // Sets up, resumes from the checkpoint if any, runs the remaining rounds on the pool.
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
  // Continual runs (SimOptions::continual). The experience of round `round` (from 1).
  int ExperienceOfRound(int round) const;
  // The dataset rows client `client` trains on in `experience` (its whole share when the run
  // is not continual).
  std::vector<int64_t> ClientRows(int client, int experience) const;
  // Rows a client trains on in the current round's experience.
  int64_t ClientSize(int client) const;
  // Domain-incremental: `images` seen through the experience's pixel permutation.
  torch::Tensor InExperience(const torch::Tensor& images, int experience) const;
  // Makes the clients with data in `experience` the sampling pool.
  void EnterExperience(int experience);
  // The client's strategy (created on first use) and the rows it consolidates on when it
  // moves to `experience` (empty when it does not).
  ContinualStrategy* ClientStrategy(int client, int experience, LabeledBatch& consolidate)
      EXCLUDES(mu_);
  // Evaluates `w` on every experience's test data into the round's record and the tracker.
  Status EvaluateExperiences(const Weights& w, int round, RoundRecord& record);

  const SimOptions& options_;
  const SimData& data_;
  std::unique_ptr<split::TrainableNet> model_;  // initial weights; the server's evaluator
  Partition partition_;
  FakeClock clock_;
  std::unique_ptr<RoundEngine> engine_;
  ClientPool clients_;           // the population's clients with data, built once
  std::vector<bool> malicious_;  // by client index (options_.attack); read-only after Setup
  int workers_ = 1;
  std::vector<std::unique_ptr<split::TrainableNet>> nets_;  // one per worker
  std::vector<std::unique_ptr<LocalTrainer>> trainers_;     // one per worker, on nets_
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

  // Continual runs. The experience whose clients form clients_ (-1 before the first).
  int experience_ = -1;
  std::vector<torch::Tensor> permutations_;  // domain: per experience, [H x W] (0: identity)
  struct ClientContinual {
    std::unique_ptr<ContinualStrategy> strategy;
    int experience = -1;  // the experience it last trained in
  };
  std::unordered_map<int, ClientContinual> continual_ GUARDED_BY(mu_);
  std::optional<ExperienceEvaluator> evaluator_;  // the accuracy matrix
};

}  // namespace cleave::federated::sim_internal
