#include "federated/continual_metrics.h"

#include <algorithm>
#include <cmath>

namespace cleave::federated {

nlohmann::json ContinualMetrics::ToJson() const {
  return {{"acc", acc}, {"bwt", bwt}, {"forgetting", forgetting}, {"min_acc", min_acc}};
}

Result<ContinualMetrics> ComputeContinualMetrics(
    const AccuracyMatrix& r, const std::vector<std::optional<double>>& lowest_after_learning) {
  if (r.empty()) return Status::InvalidArgument("continual metrics: empty accuracy matrix");
  const size_t t = r[0].size();
  if (t == 0 || r.size() > t) {
    return Status::InvalidArgument("continual metrics: the matrix must have 1..T rows of T");
  }
  for (const auto& row : r) {
    if (row.size() != t) return Status::InvalidArgument("continual metrics: ragged matrix");
    for (double v : row) {
      if (!std::isfinite(v) || v < 0 || v > 1) {
        return Status::InvalidArgument("continual metrics: accuracy outside [0, 1]");
      }
    }
  }
  const size_t last = r.size() - 1;  // the experience learned last
  ContinualMetrics m;
  for (size_t j = 0; j <= last; ++j) m.acc += r[last][j];
  m.acc /= static_cast<double>(last + 1);
  if (last == 0) return m;
  for (size_t j = 0; j < last; ++j) {
    m.bwt += r[last][j] - r[j][j];
    double best = r[j][j];
    for (size_t l = j; l < last; ++l) best = std::max(best, r[l][j]);
    m.forgetting += best - r[last][j];
    double lowest = r[j + 1][j];
    for (size_t i = j + 1; i <= last; ++i) lowest = std::min(lowest, r[i][j]);
    if (j < lowest_after_learning.size() && lowest_after_learning[j]) {
      lowest = std::min(lowest, *lowest_after_learning[j]);
    }
    m.min_acc += lowest;
  }
  m.bwt /= static_cast<double>(last);
  m.forgetting /= static_cast<double>(last);
  m.min_acc /= static_cast<double>(last);
  return m;
}

Status ContinualTracker::Record(int experience, const std::vector<double>& accuracies,
                                bool end_of_experience) {
  if (experience < 0 || experience >= experiences_ ||
      accuracies.size() != static_cast<size_t>(experiences_)) {
    return Status::InvalidArgument("continual tracker: experience " + std::to_string(experience) +
                                   " with " + std::to_string(accuracies.size()) +
                                   " accuracies, expected " + std::to_string(experiences_));
  }
  if (static_cast<size_t>(experience) != matrix_.size()) {
    return Status::InvalidArgument("continual tracker: experience " + std::to_string(experience) +
                                   " out of order (next is " + std::to_string(matrix_.size()) +
                                   ")");
  }
  lowest_.resize(experiences_);
  // Experiences learned before this one (their rows exist) enter the stability-gap minimum.
  for (int j = 0; j < experience; ++j) {
    lowest_[j] = lowest_[j] ? std::min(*lowest_[j], accuracies[j]) : accuracies[j];
  }
  if (end_of_experience) matrix_.push_back(accuracies);
  return Status::Ok();
}

Result<ContinualMetrics> ContinualTracker::Metrics() const {
  if (matrix_.empty()) return Status::FailedPrecondition("continual tracker: no experience yet");
  return ComputeContinualMetrics(matrix_, lowest_);
}

}  // namespace cleave::federated
