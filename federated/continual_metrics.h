// The metrics continual-learning papers report, from an accuracy matrix R where R[i][j] is
// the accuracy on experience j's test data after training on experience i (i, j from 0):
//   ACC        average accuracy after the last experience: mean_j R[T-1][j]
//              (Lopez-Paz & Ranzato, "Gradient Episodic Memory", NeurIPS 2017);
//   BWT        backward transfer: mean_{j<T-1} (R[T-1][j] - R[j][j]) (same paper; negative
//              is forgetting);
//   forgetting mean_{j<T-1} max_{l<T-1} (R[l][j] - R[T-1][j]) over l >= j (Chaudhry et al.,
//              "Riemannian Walk for Incremental Learning", ECCV 2018);
//   min-ACC    mean_{j<T-1} of the lowest accuracy on experience j at any evaluation after j
//              was learned (De Lange et al., "Continual Evaluation for Lifelong Learning:
//              Identifying the Stability Gap", ICLR 2023). Evaluations inside later
//              experiences (every k steps) catch the gap; with only R it is
//              min_{i>j} R[i][j].
// Accuracies are fractions in [0, 1]. With one experience BWT, forgetting and min-ACC are 0
// and ACC is R[0][0].
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::federated {

using AccuracyMatrix = std::vector<std::vector<double>>;

struct ContinualMetrics {
  double acc = 0, bwt = 0, forgetting = 0, min_acc = 0;
  nlohmann::json ToJson() const;  // {"acc", "bwt", "forgetting", "min_acc"}
};

// Tracks R and the continual evaluations while a learner walks through T experiences.
class ContinualTracker {
 public:
  explicit ContinualTracker(int experiences) : experiences_(experiences) {}
  // An evaluation during or after training on `experience` (accuracies on every
  // experience's test data, T values). `end_of_experience` marks the one that fills R's row.
  Status Record(int experience, const std::vector<double>& accuracies, bool end_of_experience);
  const AccuracyMatrix& matrix() const { return matrix_; }
  // The lowest accuracy seen on each experience after it was learned (empty optional until
  // a later evaluation exists).
  const std::vector<std::optional<double>>& lowest_after_learning() const { return lowest_; }
  // Metrics over the finished rows; FailedPrecondition before the first row.
  Result<ContinualMetrics> Metrics() const;

 private:
  int experiences_;
  AccuracyMatrix matrix_;
  std::vector<std::optional<double>> lowest_;
};

// The metrics of a full T x T matrix (rows may be fewer than T: the metrics of the rows so
// far, over the experiences learned so far). `lowest_after_learning[j]`, when given and
// set, is the stability-gap minimum for experience j; otherwise min-ACC uses R.
// InvalidArgument for an empty or ragged matrix or accuracies outside [0, 1].
Result<ContinualMetrics> ComputeContinualMetrics(
    const AccuracyMatrix& r, const std::vector<std::optional<double>>& lowest_after_learning = {});

}  // namespace cleave::federated
