// The experience stream of federated continual learning, shared by `cleave sim --continual`,
// cleave-aggregator and the edge's federated client, so that all three cut the stream the same
// way: which experience a round belongs to (the experiences spread evenly over the rounds),
// which of a client's rows an experience holds, how a domain-incremental experience sees its
// inputs, and the per-experience evaluation that fills the accuracy matrix R[i][j]
// (federated/continual_metrics.h).
//
// Scenarios (van de Ven & Tolias, "Three scenarios for continual learning", 2019):
//   class   class-incremental: the classes are cut into `experiences` groups in label order
//           (experience e holds the classes c with c * experiences / classes == e); one head
//           over every class.
//   domain  domain-incremental: experience e holds the e-th contiguous share of each client's
//           rows and sees every input through its own pixel permutation (experience 0 the
//           identity), as in Permuted MNIST (Goodfellow et al. 2013); evaluation sees the
//           whole test set through each experience's permutation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/fl_round_messages.h"
#include "common/status.h"
#include "federated/continual.h"
#include "federated/continual_metrics.h"
#include "federated/round_engine.h"
#include "federated/weights.h"
#include "split/image_rows.h"
#include "split/trainable_net.h"

namespace cleave::federated {

struct ContinualStreamOptions {
  bool enabled = false;
  std::string scenario = "class";  // class | domain
  int experiences = 5;
  ContinualConfig strategy;  // what every client runs
  nlohmann::json ToJson() const;
  // Scenario, 1 <= experiences <= rounds, the strategy. `who` starts each message and names
  // the rounds key ("sim": sim.rounds; "aggregator": aggregator.rounds).
  Status Validate(int rounds, const std::string& who) const;
};

// The round's part of the stream on the wire (RoundConfig.continual): experience
// `experience`, permutations drawn from `seed`. `options` must be valid and enabled.
wire::fl::ContinualRound ToWireContinual(const ContinualStreamOptions& options, int experience,
                                         uint64_t seed);
// What a client runs from a validated RoundConfig.continual (the replay buffer's byte bound
// and seed are the client's: `replay_max_bytes`, `replay_seed`). InvalidArgument when the
// strategy it describes does not validate.
Result<ContinualStreamOptions> FromWireContinual(const wire::fl::ContinualRound& round,
                                                 int64_t replay_max_bytes, uint64_t replay_seed);

// The experience (from 0) of `round` (from 1) when `experiences` share `rounds` evenly.
int ExperienceOfRound(int round, int rounds, int experiences);
// The class group of `label` among `experiences` groups of `classes` classes.
int ClassExperience(int64_t label, int classes, int experiences);
// The positions (0..labels.size()-1, ascending) of a client's rows that `experience` holds;
// `labels` are the rows' classes in the client's order.
std::vector<int64_t> ExperienceSelection(const std::vector<int64_t>& labels,
                                         const std::string& scenario, int classes, int experience,
                                         int experiences);
// Domain-incremental: one permutation of `pixels` positions per experience (the first the
// identity), drawn from `seed`. The same seed gives the same permutations everywhere.
std::vector<torch::Tensor> DomainPermutations(uint64_t seed, int experiences, int64_t pixels);
// `images` [N, C, H, W] seen through experience `experience`'s permutation (every channel the
// same way). Unchanged when `permutations` is empty or experience is 0.
torch::Tensor InExperience(const torch::Tensor& images,
                           const std::vector<torch::Tensor>& permutations, int experience);

// Evaluates a global model on every experience after each round and keeps the accuracy matrix.
// Not thread-safe.
class ExperienceEvaluator {
 public:
  // `seed`: the domain permutations' (DomainPermutations).
  ExperienceEvaluator(ContinualStreamOptions options, int classes, uint64_t seed);
  // Rebuilds the matrix from a resumed run's records (their extra["continual"]).
  Status Restore(const std::vector<RoundRecord>& history);
  // Accuracy of `weights` on each experience's share of `test` after `round` of `rounds`;
  // records it (the row of R when the round ends its experience) and returns the round's
  // extra["continual"]: {experience, accuracies, accuracy_seen, end_of_experience}.
  Result<nlohmann::json> Evaluate(split::TrainableNet& net, const Weights& weights,
                                  const split::ImageRows& test, int round, int rounds);
  // {scenario, experiences, strategy, matrix, metrics (once a row exists)}.
  nlohmann::json Summary() const;
  const ContinualTracker& tracker() const { return tracker_; }

 private:
  ContinualStreamOptions options_;
  int classes_;
  uint64_t seed_;
  ContinualTracker tracker_;
  std::vector<split::ImageRows> tests_;  // class: each experience's test rows (built once)
  std::vector<torch::Tensor> permutations_;
};

}  // namespace cleave::federated
