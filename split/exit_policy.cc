#include "split/exit_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "split/torch_status.h"

namespace cleave::split {
namespace {

using nlohmann::json;

// Copies a 1-D tensor to a vector of T (after converting to `dtype`).
template <typename T>
std::vector<T> ToVector(const torch::Tensor& t, torch::ScalarType dtype) {
  torch::Tensor c = t.detach().to(torch::kCPU, dtype).contiguous();
  const T* p = c.data_ptr<T>();
  return std::vector<T>(p, p + c.numel());
}

// Rows x exits outcome table for the calibration sweep.
struct SweepState {
  std::vector<int> outcome;  // per row: exit index, or E = offloaded
  int64_t local = 0;
  int64_t correct = 0;
  std::vector<int64_t> per_exit;
};

// The standard normal quantile at p in (0, 1), by bisection on erfc (to ~1e-12).
double NormalQuantile(double p) {
  double lo = -40, hi = 40;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return 0.5 * (lo + hi);
}

struct Event {
  double threshold;  // at this threshold (and below) the row moves to `exit`
  int64_t row;
  int exit;
};

bool ParseDouble(const std::string& s, double* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  *out = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() && std::isfinite(*out);
}

}  // namespace

const char* ExitCriterionName(ExitCriterion criterion) {
  switch (criterion) {
    case ExitCriterion::kMaxSoftmax: return "max_softmax";
    case ExitCriterion::kEntropy: return "entropy";
    case ExitCriterion::kMargin: return "margin";
  }
  return "unknown";
}

Result<ExitCriterion> ParseExitCriterion(const std::string& name) {
  if (name == "max_softmax" || name == "max-softmax" || name == "softmax") {
    return ExitCriterion::kMaxSoftmax;
  }
  if (name == "entropy") return ExitCriterion::kEntropy;
  if (name == "margin") return ExitCriterion::kMargin;
  return Status::InvalidArgument("unknown exit criterion '" + name +
                                 "' (expected max_softmax, entropy or margin)");
}

torch::Tensor ExitScores(ExitCriterion criterion, const torch::Tensor& logits) {
  const torch::Tensor logp = logits.detach().to(torch::kFloat).log_softmax(1);
  const torch::Tensor p = logp.exp();
  switch (criterion) {
    case ExitCriterion::kMaxSoftmax: return std::get<0>(p.max(1));
    case ExitCriterion::kEntropy: {
      // 0 * log 0 = 0: where p underflows, p * logp is 0 * (large negative) = -0, fine.
      const torch::Tensor h = -(p * logp).sum(1);
      return (1.0 - h / std::log(static_cast<double>(logits.size(1)))).clamp(0.0, 1.0);
    }
    case ExitCriterion::kMargin: {
      const torch::Tensor top = std::get<0>(p.topk(2, 1));
      return (top.select(1, 0) - top.select(1, 1)).clamp(0.0, 1.0);
    }
  }
  return std::get<0>(p.max(1));
}

Result<ExitPolicy> ExitPolicy::Create(ExitCriterion criterion, std::vector<double> thresholds) {
  for (size_t i = 0; i < thresholds.size(); ++i) {
    if (!std::isfinite(thresholds[i]) || thresholds[i] < 0) {
      return Status::InvalidArgument("exit policy: threshold " + std::to_string(i) +
                                     " must be finite and >= 0");
    }
  }
  return ExitPolicy(criterion, std::move(thresholds));
}

std::vector<int> ExitPolicy::Decide(const std::vector<torch::Tensor>& exit_logits) const {
  int64_t rows = -1;
  for (const auto& l : exit_logits) {
    if (l.defined() && l.dim() >= 1) {
      rows = l.size(0);
      break;
    }
  }
  if (rows < 0) return {};
  std::vector<torch::Tensor> scores;
  for (size_t e = 0; e < exit_logits.size() && e < thresholds_.size(); ++e) {
    const torch::Tensor& l = exit_logits[e];
    torch::Tensor s;
    if (l.defined() && l.dim() == 2 && l.size(0) == rows && l.size(1) >= 2 &&
        l.is_floating_point()) {
      // An exit libtorch cannot score is unusable: not confident (s stays undefined).
      Result<torch::Tensor> scored = CallTorch(TorchSource::kExternalInput, "exit scores",
                                               [&] { return ExitScores(criterion_, l); });
      if (scored.ok()) s = std::move(scored).value();
    }
    scores.push_back(s);
  }
  return DecideRows(scores, rows);
}

std::vector<int> ExitPolicy::DecideFromScores(const std::vector<torch::Tensor>& exit_scores) const {
  int64_t rows = -1;
  for (const auto& s : exit_scores) {
    if (s.defined()) {
      rows = s.numel();
      break;
    }
  }
  return rows < 0 ? std::vector<int>() : DecideRows(exit_scores, rows);
}

std::vector<int> ExitPolicy::DecideRows(const std::vector<torch::Tensor>& scores,
                                        int64_t rows) const {
  std::vector<int> out(rows, -1);
  for (size_t e = 0; e < scores.size() && e < thresholds_.size(); ++e) {
    if (!scores[e].defined() || scores[e].numel() != rows || !scores[e].is_floating_point()) {
      continue;
    }
    const std::vector<float> s = ToVector<float>(scores[e], torch::kFloat);
    for (int64_t r = 0; r < rows; ++r) {
      if (out[r] < 0 && s[r] >= thresholds_[e]) out[r] = static_cast<int>(e);
    }
  }
  return out;
}

json ExitPolicy::ToJson() const {
  return {{"criterion", ExitCriterionName(criterion_)}, {"thresholds", thresholds_}};
}

Result<ExitPolicy> ExitPolicy::FromJson(const json& j) {
  if (!j.is_object()) return Status::InvalidArgument("exit policy: expected a JSON object");
  auto c = j.find("criterion");
  auto t = j.find("thresholds");
  if (c == j.end() || !c->is_string()) {
    return Status::InvalidArgument("exit policy: missing string 'criterion'");
  }
  if (t == j.end() || !t->is_array()) {
    return Status::InvalidArgument("exit policy: missing array 'thresholds'");
  }
  CLEAVE_ASSIGN_OR_RETURN(ExitCriterion criterion, ParseExitCriterion(c->get<std::string>()));
  std::vector<double> thresholds;
  for (const auto& v : *t) {
    if (!v.is_number()) return Status::InvalidArgument("exit policy: thresholds must be numbers");
    thresholds.push_back(v.get<double>());
  }
  return Create(criterion, std::move(thresholds));
}

std::string CalibrationTarget::ToString() const {
  char buf[96];
  if (kind == Kind::kMaxAccuracyDrop && confidence > 0) {
    std::snprintf(buf, sizeof(buf), "drop:%g@%g", value, confidence);
  } else {
    std::snprintf(buf, sizeof(buf), "%s:%g", kind == Kind::kMaxAccuracyDrop ? "drop" : "offload",
                  value);
  }
  return buf;
}

Result<CalibrationTarget> CalibrationTarget::Parse(const std::string& text) {
  const auto bad = [&text](const std::string& why) {
    return Status::InvalidArgument("bad calibration target '" + text + "': " + why +
                                   " (expected drop:X with X accuracy points in [0,100], "
                                   "drop:X@C with a confidence C in (0.5,1) or C% in (50,100), "
                                   "or offload:Y with Y in [0,1] or Y% in [0,100])");
  };
  const size_t colon = text.find(':');
  if (colon == std::string::npos) return bad("missing ':'");
  const std::string kind = text.substr(0, colon);
  std::string number = text.substr(colon + 1);
  CalibrationTarget target;
  if (kind == "drop") {
    target.kind = Kind::kMaxAccuracyDrop;
  } else if (kind == "offload") {
    target.kind = Kind::kMaxOffloadFraction;
  } else {
    return bad("unknown kind '" + kind + "'");
  }
  const size_t at = number.find('@');
  if (at != std::string::npos) {
    if (target.kind != Kind::kMaxAccuracyDrop) return bad("a confidence applies to drop only");
    std::string level = number.substr(at + 1);
    number.resize(at);
    const bool level_percent = !level.empty() && level.back() == '%';
    if (level_percent) level.pop_back();
    double c = 0;
    if (!ParseDouble(level, &c)) return bad("the confidence is not a number");
    if (level_percent) c /= 100.0;
    if (!(c > 0.5 && c < 1)) return bad("the confidence must be in (0.5, 1)");
    target.confidence = c;
  }
  const bool percent = !number.empty() && number.back() == '%';
  if (percent) number.pop_back();
  double value = 0;
  if (!ParseDouble(number, &value)) return bad("not a number");
  if (target.kind == Kind::kMaxAccuracyDrop) {
    if (percent) return bad("drop is already in points; drop the '%'");
    if (value < 0 || value > 100) return bad("drop out of range");
  } else {
    if (percent) value /= 100.0;
    if (value < 0 || value > 1) return bad("offload fraction out of range");
  }
  target.value = value;
  return target;
}

ExitPolicy CalibrationResult::policy() const { return ExitPolicy(criterion, thresholds); }

json CalibrationResult::ToJson() const {
  return {{"criterion", ExitCriterionName(criterion)},
          {"target", target.ToString()},
          {"thresholds", thresholds},
          {"exit_fraction", exit_fraction},
          {"per_exit_fraction", per_exit_fraction},
          {"accuracy", accuracy},
          {"full_accuracy", full_accuracy},
          {"reference_accuracy", reference_accuracy},
          {"drop_upper_bound", drop_upper_bound},
          {"rows", rows}};
}

Result<CalibrationResult> Calibrate(const std::vector<torch::Tensor>& exit_scores,
                                    const std::vector<torch::Tensor>& exit_correct,
                                    const torch::Tensor& full_correct, ExitCriterion criterion,
                                    const CalibrationTarget& target,
                                    std::optional<double> reference_accuracy) {
  // --- Validate everything before touching data. ---
  if (exit_scores.size() != exit_correct.size()) {
    return Status::InvalidArgument("calibration: " + std::to_string(exit_scores.size()) +
                                   " score tensors but " + std::to_string(exit_correct.size()) +
                                   " correctness tensors");
  }
  if (!full_correct.defined() || full_correct.dim() != 1 || full_correct.size(0) == 0) {
    return Status::InvalidArgument("calibration: full_correct must be a non-empty 1-D tensor");
  }
  const int64_t n = full_correct.size(0);
  const int num_exits = static_cast<int>(exit_scores.size());
  for (int e = 0; e < num_exits; ++e) {
    for (const torch::Tensor* t : {&exit_scores[e], &exit_correct[e]}) {
      if (!t->defined() || t->dim() != 1 || t->size(0) != n) {
        return Status::InvalidArgument("calibration: exit " + std::to_string(e) +
                                       " tensors must be 1-D with " + std::to_string(n) +
                                       " rows like full_correct");
      }
    }
  }
  if (target.kind == CalibrationTarget::Kind::kMaxAccuracyDrop &&
      !(target.value >= 0 && target.value <= 100)) {
    return Status::InvalidArgument("calibration: drop must be in [0, 100] points");
  }
  if (target.kind == CalibrationTarget::Kind::kMaxOffloadFraction &&
      !(target.value >= 0 && target.value <= 1)) {
    return Status::InvalidArgument("calibration: offload fraction must be in [0, 1]");
  }
  if (target.confidence != 0 && (target.kind != CalibrationTarget::Kind::kMaxAccuracyDrop ||
                                 !(target.confidence > 0.5 && target.confidence < 1))) {
    return Status::InvalidArgument("calibration: a confidence must be in (0.5, 1), for drop");
  }
  if (reference_accuracy && !(*reference_accuracy >= 0 && *reference_accuracy <= 1)) {
    return Status::InvalidArgument("calibration: reference accuracy must be in [0, 1]");
  }

  std::vector<std::vector<float>> scores(num_exits);
  std::vector<std::vector<uint8_t>> correct(num_exits);
  std::vector<uint8_t> full;
  const auto copy_out = [&] {
    for (int e = 0; e < num_exits; ++e) {
      scores[e] = ToVector<float>(exit_scores[e], torch::kFloat);
      correct[e] = ToVector<uint8_t>(exit_correct[e].ne(0), torch::kUInt8);
      for (float s : scores[e]) {
        if (!std::isfinite(s)) {
          return Status::InvalidArgument("calibration: exit " + std::to_string(e) +
                                         " has a non-finite score");
        }
      }
    }
    full = ToVector<uint8_t>(full_correct.ne(0), torch::kUInt8);
    return Status::Ok();
  };
  CLEAVE_RETURN_IF_ERROR(
      CallTorch(TorchSource::kExternalInput, "calibration: unusable tensor", copy_out));

  // --- Events: as the shared threshold t falls, row r moves to exit min{e : s_e >= t}. ---
  std::vector<Event> events;
  events.reserve(static_cast<size_t>(n) * std::max(num_exits, 1));
  for (int64_t r = 0; r < n; ++r) {
    int cur = num_exits;
    while (cur > 0) {
      int best = 0;
      for (int e = 1; e < cur; ++e) {
        if (scores[e][r] > scores[best][r]) best = e;
      }
      events.push_back({scores[best][r], r, best});
      cur = best;
    }
  }
  std::stable_sort(events.begin(), events.end(),
                   [](const Event& a, const Event& b) { return a.threshold > b.threshold; });

  SweepState state;
  state.outcome.assign(n, num_exits);
  state.per_exit.assign(num_exits, 0);
  for (uint8_t c : full) state.correct += c;
  const double full_accuracy = static_cast<double>(state.correct) / n;
  const double reference = reference_accuracy.value_or(full_accuracy);

  struct Candidate {
    double threshold;
    int64_t local, correct;
    std::vector<int64_t> per_exit;
    double bound;
  };
  std::optional<Candidate> best;
  // Paired differences d_r = full_r - system_r (in {-1, 0, 1}): their sum and sum of |d_r|.
  int64_t sum_d = 0, sum_abs_d = 0;
  const double z = target.confidence > 0 ? NormalQuantile(target.confidence) : 0.0;
  bool sequence_failed = false;  // drop@C: a threshold failed; no lower one is considered
  const auto consider = [&](double threshold) {
    if (sequence_failed) return;
    const double acc = static_cast<double>(state.correct) / n;
    const double offload = static_cast<double>(n - state.local) / n;
    constexpr double kEps = 1e-12;
    bool better = false;
    double bound = 0;
    if (target.kind == CalibrationTarget::Kind::kMaxAccuracyDrop && target.confidence > 0) {
      const double mean = static_cast<double>(sum_d) / n;
      const double var = std::max(0.0, static_cast<double>(sum_abs_d) / n - mean * mean);
      bound = (reference - full_accuracy) + mean + z * std::sqrt(var / n);
      if (bound > target.value / 100.0 + kEps) {
        sequence_failed = true;
        return;
      }
      better = true;  // each threshold tested lies below the last that passed
    } else if (target.kind == CalibrationTarget::Kind::kMaxAccuracyDrop) {
      if (acc + kEps < reference - target.value / 100.0) return;
      better = !best || state.local > best->local ||
               (state.local == best->local && state.correct > best->correct);
    } else {
      if (offload > target.value + kEps) return;
      better = !best || state.correct > best->correct ||
               (state.correct == best->correct && state.local > best->local);
    }
    if (better) best = Candidate{threshold, state.local, state.correct, state.per_exit, bound};
  };

  consider(kExitDisabled);  // nothing exits
  for (size_t i = 0; i < events.size();) {
    const double t = events[i].threshold;
    for (; i < events.size() && events[i].threshold == t; ++i) {
      const Event& ev = events[i];
      int& out = state.outcome[ev.row];
      const int d_old = out == num_exits ? 0 : full[ev.row] - correct[out][ev.row];
      if (out == num_exits) {
        state.local++;
        state.correct -= full[ev.row];
      } else {
        state.per_exit[out]--;
        state.correct -= correct[out][ev.row];
      }
      out = ev.exit;
      state.per_exit[out]++;
      state.correct += correct[out][ev.row];
      const int d_new = full[ev.row] - correct[out][ev.row];
      sum_d += d_new - d_old;
      sum_abs_d += std::abs(d_new) - std::abs(d_old);
    }
    consider(t);
  }

  if (!best) {
    return Status::FailedPrecondition(
        "calibration: no threshold meets target " + target.ToString() + " (" +
        std::to_string(num_exits) + " exits, " + std::to_string(n) +
        " rows; with all exits answering, " + std::to_string(100.0 * (n - state.local) / n) +
        "% is offloaded)");
  }
  CalibrationResult result;
  result.criterion = criterion;
  result.target = target;
  result.thresholds.assign(num_exits, best->threshold);
  result.exit_fraction = static_cast<double>(best->local) / n;
  for (int64_t c : best->per_exit) result.per_exit_fraction.push_back(static_cast<double>(c) / n);
  result.accuracy = static_cast<double>(best->correct) / n;
  result.full_accuracy = full_accuracy;
  result.reference_accuracy = reference;
  result.drop_upper_bound = 100.0 * best->bound;
  result.rows = n;
  return result;
}

}  // namespace cleave::split
