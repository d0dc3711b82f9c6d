#include "edge/offload_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace cleave::edge {

namespace {

// Recent exchanges needed before outcome fractions weigh on a prediction.
constexpr int kPolicyMinOutcomes = 5;
// An option must be this much more accurate to count as better (keeps equal options from
// trading places on rounding).
constexpr double kPolicyMinAccuracyGain = 1e-3;

bool PolicyFiniteAtLeast(double value, double low) { return std::isfinite(value) && value >= low; }

std::string PolicyFormat(const char* format, double a, double b = 0, double c = 0, double d = 0) {
  char buffer[160];
  std::snprintf(buffer, sizeof(buffer), format, a, b, c, d);
  return buffer;
}

Status PolicyOptionError(size_t index, const std::string& message) {
  return Status::InvalidArgument("offload policy: option " + std::to_string(index) + ": " +
                                 message);
}

}  // namespace

const char* OffloadPolicyKindName(OffloadPolicyKind kind) {
  switch (kind) {
    case OffloadPolicyKind::kStatic: return "static";
    case OffloadPolicyKind::kSlo: return "slo";
    case OffloadPolicyKind::kBytes: return "bytes";
  }
  return "unknown";
}

Result<OffloadPolicyKind> ParseOffloadPolicyKind(const std::string& name) {
  for (OffloadPolicyKind kind :
       {OffloadPolicyKind::kStatic, OffloadPolicyKind::kSlo, OffloadPolicyKind::kBytes}) {
    if (name == OffloadPolicyKindName(kind)) return kind;
  }
  return Status::InvalidArgument("offload policy: unknown policy '" + name +
                                 "' (expected static, slo or bytes)");
}

const char* DecisionReasonName(DecisionReason reason) {
  switch (reason) {
    case DecisionReason::kOffload: return "offload";
    case DecisionReason::kConfident: return "confident";
    case DecisionReason::kLocalOption: return "local_option";
    case DecisionReason::kDeadline: return "deadline";
  }
  return "unknown";
}

const char* ChoiceReasonName(ChoiceReason reason) {
  switch (reason) {
    case ChoiceReason::kCalibrated: return "calibrated";
    case ChoiceReason::kBestMeetsObjective: return "best_meets_objective";
    case ChoiceReason::kHeldByHysteresis: return "held_by_hysteresis";
    case ChoiceReason::kNoneMeetsObjective: return "none_meets_objective";
  }
  return "unknown";
}

Status OffloadPolicyOptions::Validate() const {
  if (menu.empty()) {
    return Status::InvalidArgument("offload policy: the option menu is empty (give at least one)");
  }
  for (size_t i = 0; i < menu.size(); ++i) {
    const OffloadOption& o = menu[i];
    if (o.split < -1) {
      return PolicyOptionError(
          i, "split must be >= 0, or -1 for local only; got " + std::to_string(o.split));
    }
    if (!PolicyFiniteAtLeast(o.exit_threshold, 0)) {
      return PolicyOptionError(i, "exit_threshold must be finite and >= 0");
    }
    if (!(o.exit_fraction >= 0 && o.exit_fraction <= 1)) {
      return PolicyOptionError(i, "exit_fraction must be in [0, 1]");
    }
    if (!(o.accuracy >= 0 && o.accuracy <= 1)) {
      return PolicyOptionError(i, "accuracy must be in [0, 1]");
    }
    if (!PolicyFiniteAtLeast(o.edge_ms, 0)) {
      return PolicyOptionError(i, "edge_ms must be finite and >= 0");
    }
    if (!PolicyFiniteAtLeast(o.cloud_ms, 0)) {
      return PolicyOptionError(i, "cloud_ms must be finite and >= 0");
    }
    if (!PolicyFiniteAtLeast(o.request_bytes, 0)) {
      return PolicyOptionError(i, "request_bytes must be finite and >= 0");
    }
  }
  if (calibrated < 0 || static_cast<size_t>(calibrated) >= menu.size()) {
    return Status::InvalidArgument("offload policy: calibrated must index the menu (0.." +
                                   std::to_string(menu.size() - 1) + "), got " +
                                   std::to_string(calibrated));
  }
  if (!(percentile > 0 && percentile < 1)) {
    return Status::InvalidArgument("offload policy: percentile must be in (0, 1), e.g. 0.95; got " +
                                   std::to_string(percentile));
  }
  if (kind == OffloadPolicyKind::kSlo && !(slo_ms > 0 && std::isfinite(slo_ms))) {
    return Status::InvalidArgument("offload policy: slo_ms must be > 0 for the slo policy, got " +
                                   std::to_string(slo_ms));
  }
  if (kind == OffloadPolicyKind::kBytes &&
      !(max_bytes_per_s > 0 && std::isfinite(max_bytes_per_s))) {
    return Status::InvalidArgument(
        "offload policy: max_bytes_per_s must be > 0 for the bytes policy, got " +
        std::to_string(max_bytes_per_s));
  }
  if (!(hysteresis >= 0 && hysteresis < 1)) {
    return Status::InvalidArgument("offload policy: hysteresis must be in [0, 1), got " +
                                   std::to_string(hysteresis));
  }
  if (min_dwell_us < 0) {
    return Status::InvalidArgument("offload policy: min_dwell_us must be >= 0, got " +
                                   std::to_string(min_dwell_us));
  }
  if (probe_interval_us <= 0) {
    return Status::InvalidArgument("offload policy: probe_interval_us must be > 0, got " +
                                   std::to_string(probe_interval_us));
  }
  if (recovery_probe_interval_us <= 0) {
    return Status::InvalidArgument("offload policy: recovery_probe_interval_us must be > 0, got " +
                                   std::to_string(recovery_probe_interval_us));
  }
  if (rate_window_us < 1000) {
    return Status::InvalidArgument("offload policy: rate_window_us must be >= 1000 (1 ms), got " +
                                   std::to_string(rate_window_us));
  }
  if (!PolicyFiniteAtLeast(assumed_uplink_bytes_per_s, 0)) {
    return Status::InvalidArgument(
        "offload policy: assumed_uplink_bytes_per_s must be finite and >= 0");
  }
  return Status::Ok();
}

Result<std::unique_ptr<OffloadPolicy>> OffloadPolicy::Create(OffloadPolicyOptions options,
                                                             const Clock& clock) {
  CLEAVE_RETURN_IF_ERROR(options.Validate());
  return std::unique_ptr<OffloadPolicy>(new OffloadPolicy(std::move(options), clock));
}

OffloadPolicy::OffloadPolicy(OffloadPolicyOptions options, const Clock& clock)
    : options_(std::move(options)), clock_(clock), current_(options_.calibrated) {
  for (const OffloadOption& o : options_.menu) {
    if (!o.offloads()) local_accuracy_ = std::max(local_accuracy_, o.accuracy);
  }
  rate_buckets_.fill({-1, 0});
  counters_.kind = options_.kind;
  why_ = std::string(OffloadPolicyKindName(options_.kind)) + ": the calibrated " +
         Describe(current_) + " (no estimates yet)";
}

void OffloadPolicy::Update(const LinkSnapshot& link) {
  const int64_t now = clock_.NowMicros();
  MutexLock lock(&mu_);
  link_ = link;
  rate_ = RequestRate(now);
  Reevaluate(now);
}

void OffloadPolicy::Reevaluate(int64_t now_us) {
  const OffloadPolicyKind kind = options_.kind;
  if (kind == OffloadPolicyKind::kStatic) {
    reason_ = ChoiceReason::kCalibrated;
    why_ = "static: the calibrated " + Describe(current_);
    return;
  }
  const bool slo = kind == OffloadPolicyKind::kSlo;
  const int n = static_cast<int>(options_.menu.size());
  std::vector<double> metric(n);
  std::vector<double> accuracy(n);
  for (int i = 0; i < n; ++i) {
    metric[i] = slo ? LatencyMs(i) : BytesPerSecond(i);
    accuracy[i] = Accuracy(i);
  }
  const double limit = slo ? options_.slo_ms : options_.max_bytes_per_s;
  const double roomy_limit = (1 - options_.hysteresis) * limit;
  auto meets = [&](int i) { return metric[i] <= limit; };
  auto roomy = [&](int i) { return metric[i] <= roomy_limit; };
  // The most accurate option passing `ok` (ties: the smaller metric), or -1.
  auto best = [&](auto ok) {
    int pick = -1;
    for (int i = 0; i < n; ++i) {
      if (!ok(i)) continue;
      if (pick < 0 || accuracy[i] > accuracy[pick] + kPolicyMinAccuracyGain ||
          (accuracy[i] >= accuracy[pick] - kPolicyMinAccuracyGain && metric[i] < metric[pick])) {
        pick = i;
      }
    }
    return pick;
  };

  const int cur = current_;
  int next = cur;
  std::string held_note;
  if (!meets(cur)) {
    next = best(roomy);
    if (next < 0) next = best(meets);
    if (next < 0) {
      int fallback = 0;
      for (int i = 1; i < n; ++i) {
        if (metric[i] < metric[fallback] ||
            (metric[i] == metric[fallback] && accuracy[i] > accuracy[fallback])) {
          fallback = i;
        }
      }
      // Already about as fast (cheap): no hopping between near-equals.
      const bool near =
          std::isfinite(metric[cur]) && metric[cur] <= metric[fallback] * (1 + options_.hysteresis);
      next = near || metric[cur] == metric[fallback] ? cur : fallback;
    }
  } else {
    const int challenger = best(
        [&](int i) { return roomy(i) && accuracy[i] > accuracy[cur] + kPolicyMinAccuracyGain; });
    const bool dwelt = last_switch_us_ < 0 || now_us - last_switch_us_ >= options_.min_dwell_us;
    if (challenger >= 0 && dwelt) next = challenger;
    if (challenger >= 0 && !dwelt) {
      held_note = "; " + Describe(challenger) + " is better but the last switch was " +
                  PolicyFormat("%.2f s ago (dwell %.2f s)", (now_us - last_switch_us_) * 1e-6,
                               options_.min_dwell_us * 1e-6);
    }
  }
  if (next != cur) {
    current_ = next;
    ++counters_.switches;
    last_switch_us_ = now_us;
  }

  const int c = current_;
  const std::string p_name = PolicyFormat("p%g", options_.percentile * 100);
  auto quantity = [&](int i) {
    return slo ? PolicyFormat("%.1f ms", metric[i]) : PolicyFormat("%.0f B/s", metric[i]);
  };
  const std::string limit_text = slo ? PolicyFormat("slo %.1f ms at ", limit) + p_name
                                     : PolicyFormat("budget %.0f B/s", limit);
  const std::string rate_text = slo ? "" : PolicyFormat(" at %.1f requests/s", rate_);
  const std::string measure = slo ? "predicted " + p_name + " " : "";
  int better = -1;
  for (int i = 0; i < n; ++i) {
    if (meets(i) && accuracy[i] > accuracy[c] + kPolicyMinAccuracyGain &&
        (better < 0 || accuracy[i] > accuracy[better])) {
      better = i;
    }
  }
  const std::string head = std::string(OffloadPolicyKindName(kind)) + ": ";
  if (!meets(c)) {
    reason_ = ChoiceReason::kNoneMeetsObjective;
    why_ = head + "no option meets " + limit_text + rate_text + "; " + Describe(c) + " is the " +
           (slo ? "fastest" : "cheapest") + " at " + measure + quantity(c);
  } else if (better >= 0) {
    reason_ = ChoiceReason::kHeldByHysteresis;
    why_ = head + "holding " + Describe(c) + " at " + measure + quantity(c) + " <= " + limit_text +
           rate_text + "; " + Describe(better) + " is more accurate" +
           PolicyFormat(" (%.3f vs %.3f)", accuracy[better], accuracy[c]) + " at " + measure +
           quantity(better) +
           (held_note.empty()
                ? PolicyFormat(", without the %.0f%% headroom to switch", options_.hysteresis * 100)
                : held_note);
  } else {
    reason_ = ChoiceReason::kBestMeetsObjective;
    why_ = head + Describe(c) + PolicyFormat(" is the most accurate (%.3f)", accuracy[c]) +
           " meeting " + limit_text + rate_text + ": " + measure + quantity(c);
  }
}

double OffloadPolicy::LegMs(int option) const {
  const OffloadOption& o = options_.menu[option];
  if (!o.offloads()) return 0;
  const double uplink =
      link_.uplink_bytes_per_s > 0 ? link_.uplink_bytes_per_s : options_.assumed_uplink_bytes_per_s;
  const double transfer_ms = uplink > 0 ? 1000.0 * o.request_bytes / uplink : 0.0;
  const double ratio = link_.compute_ratio.known() ? link_.compute_ratio.at_percentile : 1.0;
  return transfer_ms + link_.rtt_ms.at_percentile + link_.queue_ms.at_percentile +
         o.cloud_ms * ratio;
}

double OffloadPolicy::LatencyMs(int option) const {
  return options_.menu[option].edge_ms + LegMs(option);
}

double OffloadPolicy::BytesPerSecond(int option) const {
  const OffloadOption& o = options_.menu[option];
  if (!o.offloads()) return 0;
  return rate_ * (1 - o.exit_fraction) * o.request_bytes;
}

double OffloadPolicy::Accuracy(int option) const {
  const OffloadOption& o = options_.menu[option];
  if (!o.offloads() || local_accuracy_ < 0 || link_.outcomes < kPolicyMinOutcomes) {
    return o.accuracy;
  }
  const double p_fail = std::clamp(1 - link_.ok_fraction, 0.0, 1.0);
  return o.accuracy - (1 - o.exit_fraction) * p_fail * std::max(0.0, o.accuracy - local_accuracy_);
}

double OffloadPolicy::RequestRate(int64_t now_us) const {
  if (first_plan_us_ < 0) return 0;
  const int64_t bucket_us = options_.rate_window_us / kRateBuckets;
  const int64_t index = now_us / bucket_us;
  uint64_t count = 0;
  for (const auto& [bucket, calls] : rate_buckets_) {
    if (bucket > index - kRateBuckets && bucket <= index) count += calls;
  }
  const int64_t span_us = std::clamp(now_us - first_plan_us_, bucket_us, options_.rate_window_us);
  return static_cast<double>(count) * 1e6 / static_cast<double>(span_us);
}

bool OffloadPolicy::ProbeDue(int64_t now_us, int64_t interval_us) const {
  if (last_probe_us_ >= 0 && now_us - last_probe_us_ < interval_us) return false;
  if (link_.last_sample_age_us < 0) return true;  // never heard from the cloud
  const int64_t silent_us = link_.last_sample_age_us + (now_us - link_.at_us);
  return silent_us >= interval_us;
}

int64_t OffloadPolicy::AdaptiveProbeIntervalUs() const {
  const OffloadOption& current = options_.menu[current_];
  if (current.offloads()) return options_.probe_interval_us;
  for (const OffloadOption& o : options_.menu) {
    if (o.offloads() && o.accuracy > current.accuracy + kPolicyMinAccuracyGain) {
      return options_.recovery_probe_interval_us;  // local for want of a link
    }
  }
  return options_.probe_interval_us;
}

int OffloadPolicy::ProbeTarget() const {
  if (options_.menu[current_].offloads()) return current_;
  int target = -1;
  for (int i = 0; i < static_cast<int>(options_.menu.size()); ++i) {
    const OffloadOption& o = options_.menu[i];
    if (!o.offloads()) continue;
    if (target < 0 || o.request_bytes < options_.menu[target].request_bytes ||
        (o.request_bytes == options_.menu[target].request_bytes &&
         o.accuracy > options_.menu[target].accuracy)) {
      target = i;
    }
  }
  return target;
}

OffloadPlan OffloadPolicy::Plan() {
  const int64_t now = clock_.NowMicros();
  MutexLock lock(&mu_);
  if (first_plan_us_ < 0) first_plan_us_ = now;
  const int64_t index = now / (options_.rate_window_us / kRateBuckets);
  auto& bucket = rate_buckets_[static_cast<size_t>(index % kRateBuckets)];
  if (bucket.first != index) bucket = {index, 0};
  ++bucket.second;

  int option = current_;
  bool probe = false;
  if (options_.kind != OffloadPolicyKind::kStatic && ProbeDue(now, AdaptiveProbeIntervalUs())) {
    const int target = ProbeTarget();
    if (target >= 0) {
      option = target;
      probe = true;
      last_probe_us_ = now;
      ++counters_.probes;
    }
  }
  const OffloadOption& o = options_.menu[option];
  OffloadPlan plan;
  plan.option = option;
  plan.split = o.split;
  plan.exit_threshold = o.exit_threshold;
  plan.probe = probe;
  return plan;
}

OffloadDecision OffloadPolicy::Decide(const OffloadPlan& plan, double confidence,
                                      double remaining_ms) {
  MutexLock lock(&mu_);
  OffloadDecision d;
  if (plan.option < 0 || static_cast<size_t>(plan.option) >= options_.menu.size() ||
      !options_.menu[plan.option].offloads()) {
    d.reason = DecisionReason::kLocalOption;
    ++counters_.local_option;
    return d;
  }
  const OffloadOption& o = options_.menu[plan.option];
  d.predicted_leg_ms = LegMs(plan.option);
  if (confidence >= o.exit_threshold) {
    d.reason = DecisionReason::kConfident;
    ++counters_.local_confident;
  } else if (plan.probe && !options_.menu[current_].offloads()) {
    // The policy keeps everything local (the link or the cloud is too slow for any offloading
    // option): the probe's request is served as the current option serves it, on the edge at
    // once, and its features go only to refresh the estimates. Sending it for its answer would
    // make it wait on the very link the policy judged too slow.
    d.reason = DecisionReason::kLocalOption;
    ++counters_.local_option;
  } else if (!(remaining_ms >= d.predicted_leg_ms)) {  // also NaN
    d.reason = DecisionReason::kDeadline;
    ++counters_.local_deadline;
    // The static policy never switches, so nothing else would ever test a link the guard
    // has given up on (a cloud that was down and is back): while the cloud is silent, a
    // held-back request's features still go, once per probe interval.
    const int64_t now = clock_.NowMicros();
    if (options_.kind == OffloadPolicyKind::kStatic && ProbeDue(now, options_.probe_interval_us)) {
      last_probe_us_ = now;
      ++counters_.probes;
      d.send_probe = true;
    }
  } else {
    d.offload = true;
    d.reason = DecisionReason::kOffload;
    ++counters_.offloaded;
  }
  d.send_probe = d.send_probe || (plan.probe && !d.offload);
  if (d.offload || d.send_probe) d.split = o.split;
  return d;
}

OffloadPolicyState OffloadPolicy::State() const {
  const int64_t now = clock_.NowMicros();
  MutexLock lock(&mu_);
  OffloadPolicyState s = counters_;
  const OffloadOption& o = options_.menu[current_];
  s.option = current_;
  s.split = o.split;
  s.exit_threshold = o.exit_threshold;
  s.reason = reason_;
  s.why = why_;
  s.predicted_latency_ms = LatencyMs(current_);
  s.predicted_bytes_per_s = BytesPerSecond(current_);
  s.effective_accuracy = Accuracy(current_);
  s.request_rate = RequestRate(now);
  s.last_switch_us = last_switch_us_;
  return s;
}

double OffloadPolicy::PredictedLatencyMs(int option) const {
  if (option < 0 || static_cast<size_t>(option) >= options_.menu.size()) return 0;
  MutexLock lock(&mu_);
  return LatencyMs(option);
}

double OffloadPolicy::PredictedCloudLegMs(int option) const {
  if (option < 0 || static_cast<size_t>(option) >= options_.menu.size()) return 0;
  MutexLock lock(&mu_);
  return LegMs(option);
}

double OffloadPolicy::PredictedBytesPerSecond(int option) const {
  if (option < 0 || static_cast<size_t>(option) >= options_.menu.size()) return 0;
  MutexLock lock(&mu_);
  return BytesPerSecond(option);
}

double OffloadPolicy::EffectiveAccuracy(int option) const {
  if (option < 0 || static_cast<size_t>(option) >= options_.menu.size()) return 0;
  MutexLock lock(&mu_);
  return Accuracy(option);
}

std::string OffloadPolicy::Describe(int option) const {
  const OffloadOption& o = options_.menu[option];
  if (!o.offloads()) return "option " + std::to_string(option) + " (local only)";
  return "option " + std::to_string(option) + " (split " + std::to_string(o.split) +
         PolicyFormat(", threshold %.3g)", o.exit_threshold);
}

}  // namespace cleave::edge
