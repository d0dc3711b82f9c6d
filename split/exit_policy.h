// Early-exit policies: when is an exit head confident enough to answer on the edge?
//
// An exit head (BranchyNet, Teerapittayanon et al. 2016) yields class logits; a criterion
// turns them into a confidence score in [0, 1] (higher = more confident), and the policy
// answers a row at the first exit whose score reaches that exit's threshold. Rows no exit
// is confident about are offloaded to the cloud tail.
//
// Thresholds are calibrated on held-out data for a target a user can state: "at most X
// accuracy points below the full model" or "offload at most Y% of the inputs". Everything
// here is a pure function of its inputs; ExitPolicy is an immutable value, safe to share.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::split {

enum class ExitCriterion {
  kMaxSoftmax,  // max_c p_c
  kEntropy,     // 1 - H(p) / log(C)
  kMargin,      // p_top1 - p_top2
};

// "max_softmax", "entropy", "margin".
const char* ExitCriterionName(ExitCriterion criterion);
// Parses the names above (also "max-softmax"/"softmax"); InvalidArgument otherwise.
Result<ExitCriterion> ParseExitCriterion(const std::string& name);

// Confidence scores of `logits` [N, C] (C >= 2) as a float tensor [N] in [0, 1], higher =
// more confident. Computed in fp32 with log-softmax, so saturated logits stay finite.
// Precondition: logits is 2-D with C >= 2 (libtorch throws c10::Error otherwise).
torch::Tensor ExitScores(ExitCriterion criterion, const torch::Tensor& logits);

// A threshold above 1 can never be reached: the exit is disabled.
inline constexpr double kExitDisabled = 2.0;

// Criterion plus one threshold per exit (in exit order).
class ExitPolicy {
 public:
  // No exits: every row is offloaded.
  ExitPolicy() = default;
  // Thresholds must be finite (checked by Create; the constructor trusts its caller).
  ExitPolicy(ExitCriterion criterion, std::vector<double> thresholds)
      : criterion_(criterion), thresholds_(std::move(thresholds)) {}
  // Validating constructor: InvalidArgument for non-finite or negative thresholds.
  static Result<ExitPolicy> Create(ExitCriterion criterion, std::vector<double> thresholds);

  ExitCriterion criterion() const { return criterion_; }
  const std::vector<double>& thresholds() const { return thresholds_; }
  int num_exits() const { return static_cast<int>(thresholds_.size()); }

  // For each row: the index of the first exit whose score >= its threshold, or -1 (offload).
  // `exit_logits[e]` is exit e's [N, C] logits; N is taken from the first defined tensor.
  // Never throws: an exit missing from `exit_logits`, or whose tensor is not a floating
  // [N, C>=2], is treated as not confident, so malformed input degrades to offloading (the
  // safe answer). Returns an empty vector when no tensor is defined.
  std::vector<int> Decide(const std::vector<torch::Tensor>& exit_logits) const;
  // Same decision from precomputed scores (`exit_scores[e]` is [N]; N from the first
  // defined tensor; tensors of another size are ignored).
  std::vector<int> DecideFromScores(const std::vector<torch::Tensor>& exit_scores) const;

  // {"criterion": "max_softmax", "thresholds": [0.93]}
  nlohmann::json ToJson() const;
  // Inverse of ToJson; InvalidArgument naming the problem for anything malformed.
  static Result<ExitPolicy> FromJson(const nlohmann::json& json);

 private:
  std::vector<int> DecideRows(const std::vector<torch::Tensor>& scores, int64_t rows) const;

  ExitCriterion criterion_ = ExitCriterion::kMaxSoftmax;
  std::vector<double> thresholds_;
};

// What calibration must achieve on the held-out data.
struct CalibrationTarget {
  enum class Kind {
    kMaxAccuracyDrop,     // "drop:X": accuracy at most X percentage points below the reference
    kMaxOffloadFraction,  // "offload:Y": offload at most a fraction Y (0..1) of the inputs
  };
  Kind kind = Kind::kMaxAccuracyDrop;
  double value = 0.3;
  // drop only. 0: the drop measured on the held-out rows must be <= X (a point estimate).
  // In (0.5, 1): the one-sided upper confidence bound of the drop at this level must be <= X,
  // and thresholds are tested in fixed sequence from the most conservative (nothing exits)
  // down, stopping at the first that fails ("Learn then Test", Angelopoulos et al. 2021: the
  // chosen threshold's true drop exceeds X with probability about 1 - confidence). The bound
  // is the normal approximation of the mean of the rows' paired differences (offloaded answer
  // right - system's answer right), so it is about the exits' disagreements, not all rows.
  // Choosing the most aggressive threshold whose held-out drop meets X overstates what it
  // delivers on new data (the winner's curse of a sweep over thousands of thresholds).
  double confidence = 0;

  // "drop:0.3" / "drop:0.2@0.9" / "offload:0.35".
  std::string ToString() const;
  // Parses "drop:X" (X points in [0, 100]), "drop:X@C" (C in (0.5, 1), or "C%" in (50, 100))
  // and "offload:Y" (Y in [0, 1], or "Y%" with Y in [0, 100]); InvalidArgument with the
  // accepted forms otherwise.
  static Result<CalibrationTarget> Parse(const std::string& text);
};

struct CalibrationResult {
  ExitCriterion criterion = ExitCriterion::kMaxSoftmax;
  CalibrationTarget target;
  std::vector<double> thresholds;  // one per exit (all equal: see Calibrate)
  double exit_fraction = 0;        // share of rows answered by some exit
  std::vector<double> per_exit_fraction;
  double accuracy = 0;            // accuracy of the exit+offload system on the data
  double full_accuracy = 0;       // accuracy if every row were offloaded
  double reference_accuracy = 0;  // what "drop" was measured against
  // drop with a confidence: the upper confidence bound of the drop at the chosen threshold,
  // in points (0 otherwise).
  double drop_upper_bound = 0;
  int64_t rows = 0;

  ExitPolicy policy() const;
  nlohmann::json ToJson() const;
};

// Chooses thresholds on held-out data. Inputs, one entry per exit in cascade order:
// `exit_scores[e]` [N] float scores (ExitScores), `exit_correct[e]` [N] bool (exit e's
// argmax is right); `full_correct` [N] bool (the offloaded answer is right).
// A single threshold t is shared by all exits (scores of one criterion are comparable across
// exits) and found by an exact sweep over every distinct score:
//   - drop:X    -> the t that answers the most rows locally with accuracy >= reference - X/100
//   - drop:X@C  -> the lowest t reached, testing from the highest down, before the first whose
//                  upper confidence bound (level C) of the drop exceeds X (see confidence)
//   - offload:Y -> among t with offload fraction <= Y, the most accurate (ties: more local).
// `reference_accuracy` defaults to full_correct's accuracy; pass the fp32 model's held-out
// accuracy to bound the drop against it instead. Errors: InvalidArgument for empty,
// mismatched or non-1-D inputs or a bad target; FailedPrecondition when no threshold meets
// the target (e.g. "offload:0.5" with no exits). Does not throw.
Result<CalibrationResult> Calibrate(const std::vector<torch::Tensor>& exit_scores,
                                    const std::vector<torch::Tensor>& exit_correct,
                                    const torch::Tensor& full_correct, ExitCriterion criterion,
                                    const CalibrationTarget& target,
                                    std::optional<double> reference_accuracy = std::nullopt);

}  // namespace cleave::split
