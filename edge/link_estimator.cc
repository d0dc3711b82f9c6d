#include "edge/link_estimator.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace cleave::edge {

namespace {

// Level-shift fences (see the header): median +- max(kLinkFenceMads * MAD as a standard
// deviation, kLinkFenceRelative * |median|, the window's floor).
constexpr double kLinkMadToSigma = 1.4826;
constexpr double kLinkFenceMads = 4.0;
constexpr double kLinkFenceRelative = 0.25;
constexpr double kLinkRttFenceFloorMs = 1.0;
constexpr double kLinkRatioFenceFloor = 0.05;

// Theil-Sen identifiability (see the header).
constexpr size_t kLinkMaxFitSamples = 128;
constexpr size_t kLinkMinFitSamples = 5;
constexpr size_t kLinkMinFitPairs = 5;
constexpr double kLinkMinPairDxBytes = 64;
constexpr double kLinkMinPairDxRelative = 0.10;
constexpr double kLinkMinPositiveShare = 0.75;

// A burst also ends after this many sends, so sending continuously faster than burst_gap_us
// does not make each request look queued behind every earlier one.
constexpr int kLinkMaxBurstSends = 64;

constexpr double kLinkBaseQuantile = 0.05;

// The (upper) median; `values` is reordered. Precondition: not empty.
double LinkMedian(std::vector<double>& values) {
  auto mid = values.begin() + static_cast<std::ptrdiff_t>(values.size() / 2);
  std::nth_element(values.begin(), mid, values.end());
  return *mid;
}

// Index of the nearest-rank q-quantile of n > 0 sorted values: the ceil(q * n)-th smallest. The
// small epsilon keeps 0.95 * 100 from rounding up to rank 96.
size_t LinkRankIndex(size_t n, double q) {
  const double rank = std::ceil(q * static_cast<double>(n) - 1e-9);
  return static_cast<size_t>(std::clamp(rank, 1.0, static_cast<double>(n))) - 1;
}

double LinkNearestRank(const std::vector<double>& sorted, double q) {
  return sorted[LinkRankIndex(sorted.size(), q)];
}

}  // namespace

// A window of recent samples with level-shift detection (the header's "Windows and level
// shifts"). Samples arrive in time order. `x` is the RTT fit's regressor (bytes ahead in the
// uplink) or, in the compute window, the batch size. Not thread-safe: LinkEstimator locks.
class LinkWindow {
 public:
  struct Sample {
    int64_t at_us = 0;
    double value = 0;
    double x = 0;
  };
  struct SlopeFit {
    double slope = 0;  // ms per byte; 0 = unknown
    UplinkStatus status = UplinkStatus::kFewSamples;
  };
  struct Summary {
    WindowQuantiles quantiles;
    SlopeFit fit;
    double mean_x = 0;
  };

  LinkWindow(const LinkEstimatorOptions& options, double fence_floor, bool fit_slope)
      : capacity_(static_cast<size_t>(options.window_samples)),
        shift_samples_(static_cast<size_t>(options.shift_samples)),
        max_age_us_(options.max_sample_age_us),
        fence_floor_(fence_floor),
        fit_slope_(fit_slope) {}

  void Add(const Sample& sample) {
    DropBefore(sample.at_us - max_age_us_);
    const int side = SideOf(sample);
    if (side == 0) {
      run_ = 0;
    } else if (side == run_side_ && run_ > 0) {
      ++run_;
    } else {
      run_ = 1;
    }
    run_side_ = side;
    samples_.push_back(sample);
    while (samples_.size() > capacity_) samples_.pop_front();
    run_ = std::min(run_, samples_.size());
    if (run_ >= shift_samples_) {
      // A level shift: the run is the new level, everything before it is history.
      samples_.erase(samples_.begin(),
                     samples_.end() - static_cast<std::ptrdiff_t>(shift_samples_));
      run_ = 0;
      run_side_ = 0;
      ++shifts_;
    }
  }

  // Over the samples at or after `cutoff_us` (the fit over those not in the current run).
  Summary Summarize(int64_t cutoff_us, double percentile) const {
    Summary summary;
    size_t begin = 0;
    while (begin < samples_.size() && samples_[begin].at_us < cutoff_us) ++begin;
    const size_t end = samples_.size();
    if (begin == end) return summary;
    const size_t settled_end = std::max(begin, end - run_);
    if (fit_slope_) summary.fit = FitSlope(begin, settled_end);
    std::vector<double> values;
    values.reserve(end - begin);
    double sum = 0;
    double sum_x = 0;
    for (size_t i = begin; i < end; ++i) {
      double v = samples_[i].value - summary.fit.slope * samples_[i].x;
      v = std::max(v, 0.0);
      values.push_back(v);
      sum += v;
      sum_x += samples_[i].x;
    }
    std::sort(values.begin(), values.end());
    WindowQuantiles& q = summary.quantiles;
    const size_t n = values.size();
    q.samples = static_cast<int>(n);
    size_t base_index = LinkRankIndex(n, kLinkBaseQuantile);
    if (n >= 3) base_index = std::max<size_t>(base_index, 1);
    q.base = values[base_index];
    q.p50 = LinkNearestRank(values, 0.50);
    q.p95 = LinkNearestRank(values, 0.95);
    q.p99 = LinkNearestRank(values, 0.99);
    q.at_percentile = LinkNearestRank(values, percentile);
    q.mean = sum / static_cast<double>(n);
    summary.mean_x = sum_x / static_cast<double>(n);
    return summary;
  }

  uint64_t shifts() const { return shifts_; }

 private:
  void DropBefore(int64_t cutoff_us) {
    while (!samples_.empty() && samples_.front().at_us < cutoff_us) samples_.pop_front();
    run_ = std::min(run_, samples_.size());
  }

  // +1 / -1 when `sample` lies above / below the fences of the settled samples, else 0 (also
  // while there are fewer than shift_samples settled samples to set fences from).
  int SideOf(const Sample& sample) const {
    const size_t settled = samples_.size() - run_;
    if (settled < shift_samples_) return 0;
    const double slope = fit_slope_ ? FitSlope(0, settled).slope : 0.0;
    std::vector<double> residuals(settled);
    for (size_t i = 0; i < settled; ++i) {
      residuals[i] = samples_[i].value - slope * samples_[i].x;
    }
    const double median = LinkMedian(residuals);
    for (double& r : residuals) r = std::fabs(r - median);
    const double mad = LinkMedian(residuals);
    const double width = std::max({kLinkFenceMads * kLinkMadToSigma * mad,
                                   kLinkFenceRelative * std::fabs(median), fence_floor_});
    const double residual = sample.value - slope * sample.x;
    if (residual > median + width) return 1;
    if (residual < median - width) return -1;
    return 0;
  }

  // Theil-Sen slope of value on x over samples_[begin, end) (at most the last
  // kLinkMaxFitSamples), with the identifiability tests of the header.
  SlopeFit FitSlope(size_t begin, size_t end) const {
    SlopeFit fit;
    if (end - begin > kLinkMaxFitSamples) begin = end - kLinkMaxFitSamples;
    if (end - begin < kLinkMinFitSamples) return fit;
    std::vector<double> slopes;
    slopes.reserve((end - begin) * (end - begin - 1) / 2);
    for (size_t i = begin; i < end; ++i) {
      for (size_t j = i + 1; j < end; ++j) {
        const double dx = samples_[j].x - samples_[i].x;
        const double larger = std::max(std::fabs(samples_[i].x), std::fabs(samples_[j].x));
        if (std::fabs(dx) < std::max(kLinkMinPairDxBytes, kLinkMinPairDxRelative * larger)) {
          continue;
        }
        slopes.push_back((samples_[j].value - samples_[i].value) / dx);
      }
    }
    if (slopes.size() < kLinkMinFitPairs) {
      fit.status = UplinkStatus::kNoSizeSpread;
      return fit;
    }
    const auto positive =
        std::count_if(slopes.begin(), slopes.end(), [](double s) { return s > 0; });
    const double slope = LinkMedian(slopes);
    if (static_cast<double>(positive) <
            kLinkMinPositiveShare * static_cast<double>(slopes.size()) ||
        !(slope > 0) || !std::isfinite(slope)) {
      fit.status = UplinkStatus::kBelowNoise;
      return fit;
    }
    fit.slope = slope;
    fit.status = UplinkStatus::kKnown;
    return fit;
  }

  size_t capacity_;
  size_t shift_samples_;
  int64_t max_age_us_;
  double fence_floor_;
  bool fit_slope_;
  std::deque<Sample> samples_;  // oldest first
  size_t run_ = 0;              // trailing samples outside the fences, all on run_side_
  int run_side_ = 0;
  uint64_t shifts_ = 0;
};

Status LinkEstimatorOptions::Validate() const {
  if (window_samples < 8 || window_samples > 4096) {
    return Status::InvalidArgument("link estimator: window_samples must be in [8, 4096], got " +
                                   std::to_string(window_samples));
  }
  if (shift_samples < 2 || shift_samples > window_samples) {
    return Status::InvalidArgument(
        "link estimator: shift_samples must be in [2, window_samples], got " +
        std::to_string(shift_samples));
  }
  if (outcome_window < 1) {
    return Status::InvalidArgument("link estimator: outcome_window must be >= 1, got " +
                                   std::to_string(outcome_window));
  }
  if (max_sample_age_us <= 0) {
    return Status::InvalidArgument("link estimator: max_sample_age_us must be > 0, got " +
                                   std::to_string(max_sample_age_us));
  }
  if (stale_after_us <= 0 || stale_after_us > max_sample_age_us) {
    return Status::InvalidArgument(
        "link estimator: stale_after_us must be in (0, max_sample_age_us], got " +
        std::to_string(stale_after_us));
  }
  if (burst_gap_us < 0) {
    return Status::InvalidArgument("link estimator: burst_gap_us must be >= 0, got " +
                                   std::to_string(burst_gap_us));
  }
  if (max_in_flight < 1)
    return Status::InvalidArgument("link estimator: max_in_flight must be >= 1");
  return Status::Ok();
}

ExchangeReply ExchangeReply::FromInferReply(const wire::InferReply& reply, uint64_t wire_bytes) {
  ExchangeReply r;
  r.status = reply.status;
  r.wire_bytes = wire_bytes;
  r.queue_us = reply.queue_us;
  r.compute_us = reply.compute_us;
  r.batch_size = reply.batch_size;
  return r;
}

const char* UplinkStatusName(UplinkStatus status) {
  switch (status) {
    case UplinkStatus::kKnown: return "known";
    case UplinkStatus::kFewSamples: return "few_samples";
    case UplinkStatus::kNoSizeSpread: return "no_size_spread";
    case UplinkStatus::kBelowNoise: return "below_noise";
  }
  return "unknown";
}

Result<std::unique_ptr<LinkEstimator>> LinkEstimator::Create(LinkEstimatorOptions options,
                                                             const Clock& clock) {
  CLEAVE_RETURN_IF_ERROR(options.Validate());
  return std::unique_ptr<LinkEstimator>(new LinkEstimator(std::move(options), clock));
}

LinkEstimator::LinkEstimator(LinkEstimatorOptions options, const Clock& clock)
    : options_(std::move(options)),
      clock_(clock),
      rtt_(std::make_unique<LinkWindow>(options_, kLinkRttFenceFloorMs, true)),
      queue_(std::make_unique<LinkWindow>(options_, kLinkRttFenceFloorMs, false)),
      compute_(std::make_unique<LinkWindow>(options_, kLinkRttFenceFloorMs, false)),
      ratio_(std::make_unique<LinkWindow>(options_, kLinkRatioFenceFloor, false)) {}

LinkEstimator::~LinkEstimator() = default;

void LinkEstimator::OnSend(uint64_t request_id, uint64_t wire_bytes, int64_t expected_compute_us) {
  const int64_t now = clock_.NowMicros();
  MutexLock lock(&mu_);
  DropExpiredInFlight(now);
  if (last_send_us_ >= 0 && now - last_send_us_ <= options_.burst_gap_us &&
      burst_sends_ < kLinkMaxBurstSends) {
    burst_bytes_ += wire_bytes;
    ++burst_sends_;
  } else {
    burst_bytes_ = wire_bytes;
    burst_sends_ = 1;
  }
  last_send_us_ = now;
  InFlight entry;
  entry.sent_us = now;
  entry.wire_bytes = wire_bytes;
  entry.burst_bytes = burst_bytes_;
  entry.expected_compute_us = std::max<int64_t>(0, expected_compute_us);
  in_flight_[request_id] = entry;
  send_order_.emplace_back(now, request_id);
  while (in_flight_.size() > options_.max_in_flight && !send_order_.empty()) {
    const auto [sent_us, id] = send_order_.front();
    send_order_.pop_front();
    auto it = in_flight_.find(id);
    if (it != in_flight_.end() && it->second.sent_us == sent_us) in_flight_.erase(it);
  }
  ++counters_.sent;
  counters_.bytes_sent += wire_bytes;
}

void LinkEstimator::OnReply(uint64_t request_id, const ExchangeReply& reply) {
  const int64_t now = clock_.NowMicros();
  MutexLock lock(&mu_);
  DropExpiredInFlight(now);
  auto it = in_flight_.find(request_id);
  if (it == in_flight_.end()) {
    ++counters_.unmatched_replies;
    return;
  }
  const InFlight sent = it->second;
  in_flight_.erase(it);
  ++counters_.replies;
  counters_.bytes_received += reply.wire_bytes;
  last_news_us_ = now;
  if (sent.timed_out) {
    ++counters_.late_replies;
  } else {
    switch (reply.status) {
      case wire::ReplyStatus::kOk: RecordOutcome(Outcome::kOk, now); break;
      case wire::ReplyStatus::kOverloaded: RecordOutcome(Outcome::kOverloaded, now); break;
      case wire::ReplyStatus::kDeadlineExceeded: RecordOutcome(Outcome::kDeadline, now); break;
      default: RecordOutcome(Outcome::kError, now); break;
    }
  }
  const bool ok = reply.status == wire::ReplyStatus::kOk;
  if (!ok && reply.status != wire::ReplyStatus::kOverloaded) return;  // no timing to trust

  const double elapsed_ms = static_cast<double>(now - sent.sent_us) / 1000.0;
  const double cloud_ms = static_cast<double>(reply.queue_us + reply.compute_us) / 1000.0;
  double network_ms = elapsed_ms - cloud_ms;
  if (network_ms < 0) {
    ++counters_.negative_network_times;
    network_ms = 0;
  }
  // A timed-out request already gave its (censored) RTT sample.
  if (!sent.timed_out) rtt_->Add({now, network_ms, static_cast<double>(sent.burst_bytes)});
  if (!ok) return;
  queue_->Add({now, static_cast<double>(reply.queue_us) / 1000.0, 0});
  compute_->Add(
      {now, static_cast<double>(reply.compute_us) / 1000.0, static_cast<double>(reply.batch_size)});
  if (sent.expected_compute_us > 0) {
    ratio_->Add(
        {now, static_cast<double>(reply.compute_us) / static_cast<double>(sent.expected_compute_us),
         0});
  }
}

void LinkEstimator::OnTimeout(uint64_t request_id) {
  const int64_t now = clock_.NowMicros();
  MutexLock lock(&mu_);
  auto it = in_flight_.find(request_id);
  if (it == in_flight_.end() || it->second.timed_out) return;
  it->second.timed_out = true;
  ++counters_.timeouts;
  last_news_us_ = now;
  RecordOutcome(Outcome::kTimeout, now);
  // Censored: the network time is at least this long (if the cloud held the request, that is
  // counted as network time too). Without it a dead link would leave only old, fast samples.
  rtt_->Add({now, static_cast<double>(now - it->second.sent_us) / 1000.0,
             static_cast<double>(it->second.burst_bytes)});
}

void LinkEstimator::RecordOutcome(Outcome outcome, int64_t now_us) {
  outcomes_.emplace_back(now_us, outcome);
  while (outcomes_.size() > static_cast<size_t>(options_.outcome_window)) outcomes_.pop_front();
}

void LinkEstimator::DropExpiredInFlight(int64_t now_us) {
  const int64_t cutoff = now_us - options_.max_sample_age_us;
  while (!send_order_.empty() && send_order_.front().first < cutoff) {
    const auto [sent_us, id] = send_order_.front();
    send_order_.pop_front();
    auto it = in_flight_.find(id);
    if (it != in_flight_.end() && it->second.sent_us == sent_us) in_flight_.erase(it);
  }
}

LinkSnapshot LinkEstimator::Snapshot(double percentile) const {
  const int64_t now = clock_.NowMicros();
  if (!(percentile >= 0)) percentile = 0;  // also NaN
  percentile = std::min(percentile, 1.0);
  MutexLock lock(&mu_);
  LinkSnapshot s = counters_;
  s.at_us = now;
  s.percentile = percentile;
  const int64_t cutoff = now - options_.max_sample_age_us;

  const LinkWindow::Summary rtt = rtt_->Summarize(cutoff, percentile);
  s.rtt_ms = rtt.quantiles;
  s.uplink_status = rtt.fit.status;
  s.uplink_bytes_per_s = rtt.fit.slope > 0 ? 1000.0 / rtt.fit.slope : 0.0;
  s.queue_ms = queue_->Summarize(cutoff, percentile).quantiles;
  const LinkWindow::Summary compute = compute_->Summarize(cutoff, percentile);
  s.compute_ms = compute.quantiles;
  s.mean_batch_size = compute.mean_x;
  s.compute_ratio = ratio_->Summarize(cutoff, percentile).quantiles;
  s.level_shifts = rtt_->shifts() + queue_->shifts() + compute_->shifts() + ratio_->shifts();

  int counts[5] = {0, 0, 0, 0, 0};
  for (const auto& [at_us, outcome] : outcomes_) {
    if (at_us < cutoff) continue;
    ++counts[static_cast<int>(outcome)];
    ++s.outcomes;
  }
  if (s.outcomes > 0) {
    const double n = s.outcomes;
    s.ok_fraction = counts[static_cast<int>(Outcome::kOk)] / n;
    s.overloaded_fraction = counts[static_cast<int>(Outcome::kOverloaded)] / n;
    s.deadline_fraction = counts[static_cast<int>(Outcome::kDeadline)] / n;
    s.error_fraction = counts[static_cast<int>(Outcome::kError)] / n;
    s.timeout_fraction = counts[static_cast<int>(Outcome::kTimeout)] / n;
  }
  s.last_sample_age_us = last_news_us_ < 0 ? -1 : now - last_news_us_;
  s.stale = last_news_us_ < 0 || s.last_sample_age_us > options_.stale_after_us;
  s.in_flight = static_cast<uint64_t>(
      std::count_if(in_flight_.begin(), in_flight_.end(),
                    [](const auto& entry) { return !entry.second.timed_out; }));
  return s;
}

}  // namespace cleave::edge
