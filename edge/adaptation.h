// On-gateway learning: the edge learns from what it serves, with the cloud as its teacher.
//
// The serving loop hands the learner every input it answered (EdgeLearner::Observe) and the
// application's feedback (EdgeLearner::Feedback). Each input gets the best label source it
// has (federated/replay_buffer.h): the cloud tail's logits when the cloud answered (a soft
// label: knowledge distillation, Hinton et al. 2015; when the cloud was confident, its
// probability margin reaching edge.adapt_teacher_margin, also a hard pseudo-label of its
// class, as DESIGN.md's "confident cloud answers serve as pseudo-labels"), a confident exit's
// prediction when its probability margin (top-1 minus top-2) reaches edge.adapt_pseudo_margin (a
// pseudo-label), or the true class the application reports later (feedback, matched by the
// connection and the request id). Inputs without any label are kept only for a while, in case
// feedback comes.
//
// A background thread adapts when edge.adapt_min_new labelled inputs have arrived and the
// served traffic has drifted: the exit rate of the requests served since the last cycle is
// significantly below the one the bundle's calibration measured (a one-sided 3-sigma
// binomial test; without a calibrated exit rate every cycle runs). On traffic like the
// calibration data, training on cloud answers could only push the exits past their
// calibrated threshold; those decisions are counted (no_drift) and the rows wait. The
// inputs since the last cycle are one experience of a continual-learning strategy
// (federated/continual.h; its replay buffer, reservoir-sampled over everything served,
// holds the past), trained for edge.adapt_epochs within edge.adapt_max_seconds. The adapted
// model (edge/adaptable_model.h) is swapped in through the daemon's hot swap
// (EdgeServer::SwapEngine), its int8 head re-quantized on the buffer's inputs when training
// may have changed it: serving never waits for the learner. Every fifth cloud
// answer of a cycle is held out of its training (it trains in the next one); if the adapted
// exits would answer those inputs with another class than the cloud more often than the
// learner's model did before the cycle, the cycle is not swapped in (the old head serves
// on) and the learner goes on from its training: the check is a promotion gate, a later
// cycle that passes it is swapped in. Between cycles the
// thread sleeps so that training takes at most edge.adapt_cpu_share of one core.
//
// What adapts keeps the wire contract with the cloud (the bottleneck's code, quantized with
// the bundle's wire parameters, and the cloud's tail are unchanged):
//   auto   (default) head for cleave's own bundles, exits for imported ones.
//   exits  only the early exits. The head and its encoder are untouched, so what
//          the cloud receives is what it was trained on; the exits learn to answer, on the
//          gateway, the inputs the cloud now answers for them (the exit rate recovers).
//   head   the exits and the head's blocks before the encoder, with the encoder's output
//          held by distillation on the code (edge.adapt_code_weight x MSE against the
//          original head's code on the same input). More capacity to follow a shift, at the
//          risk of moving the code the cloud decodes; docs/benchmarks.md measures both (the
//          head also denoises the code under a shift, so the cloud's answers improve too).
//          cleave's own (vision-split) bundles only.
// Every head's exit threshold stays the bundle's calibrated one.
//
// The learner's rows (the strategy's buffer and the pending experience) are written
// atomically to edge.adapt_buffer_file after every cycle and at shutdown (mode 0600; sealed
// with AES-256-GCM under edge.adapt_buffer_key_file when set) and read back at start, so a
// restart keeps them. They never leave the gateway.
//
// Both bundle kinds adapt: cleave's own (vision-split) with either scope; an imported
// (torchscript-split) one with scope exits only: its TorchScript head and encoder stay
// frozen (the engine swapped in runs the bundle's int8 or fp32 head unchanged, so the code
// the cloud receives is bit for bit the bundle's) and its fp32 exits learn on the head's
// output. Scope head on an imported bundle is refused at start (FailedPrecondition naming
// edge.adapt_scope).
//
// Thread-safety: Observe, Feedback, Rebase and stats are safe from any thread; the learner
// thread does the rest.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "common/config.h"
#include "common/crypto.h"
#include "common/edge_api.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "common/status.h"
#include "common/thread_annotations.h"
#include "edge/edge_engine.h"
#include "federated/continual.h"
#include "split/bundle.h"
#include "split/split_runtime.h"

namespace cleave::edge {

class AdaptableModel;  // edge/adaptable_model.h

struct AdaptOptions {
  bool enabled = false;
  std::string scope = "auto";  // auto (head where the bundle allows it, else exits) | exits | head
  federated::ContinualConfig strategy;
  int64_t min_new = 256;  // labelled inputs that start a cycle
  int64_t window = 4096;  // labelled inputs kept for the next cycle (oldest dropped)
  int epochs = 3;         // over the cycle's inputs
  int64_t batch_size = 32;
  double lr = 0.01, momentum = 0.9;
  double cpu_share = 0.25;        // of one core, over time
  double max_cycle_seconds = 30;  // training time of one cycle
  double pseudo_margin = 0;       // 0 = confident exits are not used as labels
  // A cloud answer whose probability margin (top-1 minus top-2) reaches this is also a hard
  // label (its class); below it only its soft label teaches. > 1 = never hard.
  double teacher_margin = 0.3;
  double code_weight = 1.0;        // scope head: weight of the distillation on the code
  int64_t feedback_window = 4096;  // recent requests that can still get feedback
  int64_t inbox = 8192;            // observations waiting for the learner thread
  // Memory the waiting inputs may take, inbox and feedback window each (the oldest request
  // leaves the window first; a full inbox drops).
  int64_t max_bytes = int64_t{128} << 20;
  std::string buffer_file;  // "" = not persisted
  std::optional<crypto::Key256> buffer_key;
  uint64_t seed = 1;
  Status Validate() const;
};

// The edge.adapt_* keys of the edge's schema, and AdaptOptions from a loaded config (the
// key file read and checked; InvalidArgument names the key).
void AddAdaptConfigKeys(ConfigSchema& schema);
Result<AdaptOptions> AdaptOptionsFromConfig(const Config& config);

// One served input, as the serving loop saw it.
struct Observation {
  std::string peer;           // the application's connection (transport identity)
  uint64_t request_id = 0;    // the application's id
  torch::Tensor image;        // [C, H, W] the head's input
  torch::Tensor teacher;      // [classes] the cloud's logits, or undefined
  torch::Tensor exit_logits;  // [classes] the answering exit's logits, or undefined
};

struct LearnerStats {
  int64_t cycles = 0, failed_cycles = 0;  // cycles that trained (swapped or kept); failed
  int64_t kept_cycles = 0;  // cycles whose exits the check refused (the old head serves on)
  // Cycles not run: the served exit rate was not below the bundle's calibrated one.
  int64_t skipped_cycles = 0;
  int64_t observed = 0;  // labelled inputs kept (teacher, pseudo or feedback)
  int64_t dropped = 0;   // the inbox was full
  int64_t buffer_rows = 0, pending_rows = 0;
  double last_cycle_seconds = 0;
  std::string last_error;
};

class EdgeLearner {
 public:
  // Receives each adapted engine (the daemon's SwapEngine). Called on the learner thread.
  using SwapFn = std::function<void(std::unique_ptr<EdgeEngine>)>;

  // Loads the bundle's fp32 head and exits (an imported bundle's int8 head too when
  // head.int8), reads edge.adapt_buffer_file when it exists (a corrupt file is an error: it
  // is never silently replaced) and starts the thread. FailedPrecondition for a model
  // without early exits or scope head on an imported bundle; InvalidArgument for bad options.
  static Result<std::unique_ptr<EdgeLearner>> Create(AdaptOptions options, const Bundle& bundle,
                                                     split::EdgeModel::Options head, SwapFn swap,
                                                     std::shared_ptr<Metrics> metrics);
  ~EdgeLearner();  // stops the thread (a cycle in progress finishes) and saves the rows
  EdgeLearner(const EdgeLearner&) = delete;
  EdgeLearner& operator=(const EdgeLearner&) = delete;

  // Serving thread: never waits for a cycle (a full inbox drops the observation).
  void Observe(Observation observation) EXCLUDES(mu_);
  // The application's label for an earlier request on connection `peer`. Rejected, with the
  // reason, for an unknown (or too old) request id or a class outside the bundle's.
  edge_api::FeedbackReply Feedback(const std::string& peer,
                                   const edge_api::FeedbackRequest& request) EXCLUDES(mu_);
  // A new bundle version serves (the model repository): later cycles start from its head;
  // a cycle in progress on the old one is discarded. The rows are kept. A bundle of another
  // kind (FailedPrecondition), with another input shape or class count (InvalidArgument) or
  // that cannot be loaded is refused, and adaptation pauses (AdaptNow: FailedPrecondition
  // with the reason) until a bundle it can adapt serves: exits adapted on the old base must
  // not replace the new version.
  Status Rebase(const Bundle& bundle) EXCLUDES(mu_);
  // Runs a cycle now on the learner thread and waits for it (tests and benchmarks);
  // FailedPrecondition when no labelled input is pending.
  Status AdaptNow() EXCLUDES(mu_);
  LearnerStats stats() const EXCLUDES(mu_);
  // What adapts: "exits" or "head" (edge.adapt_scope auto resolved for the bundle's kind).
  const std::string& scope() const { return options_.scope; }

 private:
  EdgeLearner(AdaptOptions options, split::EdgeModel::Options head, SwapFn swap,
              std::shared_ptr<Metrics> metrics);
  void Loop() EXCLUDES(mu_);
  // Moves the inbox into the pending rows; applies feedback labels.
  void Drain() EXCLUDES(mu_);
  Status Cycle() EXCLUDES(mu_);
  Status Save() EXCLUDES(mu_);
  Status Load();

  const AdaptOptions options_;
  const split::EdgeModel::Options head_;
  const SwapFn swap_;
  std::shared_ptr<Metrics> metrics_;
  const AdaptationMetrics* m_ = nullptr;

  mutable Mutex mu_;
  CondVar cv_;
  bool stop_ GUARDED_BY(mu_) = false;
  int64_t now_requested_ GUARDED_BY(mu_) = 0;  // AdaptNow calls waiting
  int64_t now_done_ GUARDED_BY(mu_) = 0;
  Status now_status_ GUARDED_BY(mu_);
  // A labelled input waiting for the learner thread: its row id (unique across restarts),
  // the input and its label sources (label >= 0: the application's feedback).
  struct Item {
    int64_t id = 0;
    torch::Tensor image, teacher, exit_logits;
    int64_t label = -1;
  };
  std::vector<Item> inbox_ GUARDED_BY(mu_);
  int64_t labelled_waiting_ GUARDED_BY(mu_) = 0;  // labelled observations in the inbox
  int64_t fresh_ GUARDED_BY(mu_) = 0;  // labelled rows drained since the last cycle decision
  int64_t inbox_bytes_ GUARDED_BY(mu_) = 0, recent_bytes_ GUARDED_BY(mu_) = 0;
  // Recent requests by (peer, request id) -> (row id, input, teacher): feedback finds them here.
  struct Recent {
    int64_t id = 0;
    torch::Tensor image;
  };
  std::map<std::pair<std::string, uint64_t>, Recent> recent_ GUARDED_BY(mu_);
  std::deque<std::pair<std::string, uint64_t>> recent_order_ GUARDED_BY(mu_);
  int64_t next_id_ GUARDED_BY(mu_) = 1;
  std::shared_ptr<AdaptableModel> next_base_ GUARDED_BY(mu_);  // set by Rebase
  uint64_t generation_ GUARDED_BY(mu_) = 0;
  std::string suspended_ GUARDED_BY(mu_);  // why cycles pause (a refused Rebase); "" = not
  LearnerStats stats_ GUARDED_BY(mu_);
  // Requests observed since the last cycle, and those an exit answered (drift test).
  int64_t served_since_ GUARDED_BY(mu_) = 0, exited_since_ GUARDED_BY(mu_) = 0;
  std::string kind_;                    // the bundle's kind; fixed at Create
  int num_classes_ = 0;                 // of the bundle (Feedback's range check); fixed at Create
  std::vector<int64_t> pending_shape_;  // an input's [C, H, W]; fixed at Create

  // Learner thread only.
  std::shared_ptr<AdaptableModel> base_;
  std::unique_ptr<federated::ContinualStrategy> strategy_;
  federated::LabeledBatch pending_;   // labelled rows since the last cycle
  federated::LabeledBatch previous_;  // the last cycle's rows (consolidation)
  // What the last Cycle() did when it returned OK: trained and swapped, trained and kept the
  // serving head, or nothing (no drift).
  enum class CycleOutcome { kNone, kKept, kSwapped };
  CycleOutcome outcome_ = CycleOutcome::kNone;
  std::thread thread_;
};

}  // namespace cleave::edge
