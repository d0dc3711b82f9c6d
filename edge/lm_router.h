// Hard-token routing on the edge (see docs/design.md, "hard-token routing"): for each token
// the edge runs the embedding and layers [0, K) of the split language model with its own
// KV cache, computes the early exit's next-byte distribution and the bottleneck code of
// the layer-K state. Confident tokens (exit max-probability >= the bundle's calibrated
// threshold) are answered locally and their codes buffered; a hard token sends the buffered
// codes plus its own in one request and uses the cloud's distribution. So the cloud's cache
// for layers [K, N) always holds every token, and its answer for a hard token is what the
// cloud-only configuration computes for the same prefix (up to float rounding of chunked
// versus token-by-token attention).
//
// The edge keeps the codes of the last `context` positions. When the cloud answers resync
// (its cache was evicted or expired, or it restarted) the edge re-sends from the position
// the cloud has, or restarts the session from its window (reset). Within the context
// window this reproduces the lost cache exactly; beyond it, the rebuilt cache has seen only
// the window (a documented approximation). When the cloud cannot be reached the step uses
// the exit head and is marked degraded; later hard tokens try the cloud again.
//
// Codes travel u8 with one (scale, zero point) per token (channel axis 0), quantized once
// when the token is produced, so re-sent rows are bit-identical.
//
// RouteMode::kCloudOnly is the baseline without the edge: the router sends raw token bytes
// (deferred the same way) and the cloud runs every layer. The edge computes nothing unless
// the cloud fails; then it runs its layers over the token window to catch up and answers
// from the exit head (degraded).
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "common/lm_wire.h"
#include "common/status.h"
#include "split/lm_model.h"

namespace cleave::edge {

// One request to the cloud, one reply: Unavailable/DeadlineExceeded when unreachable.
class LmCloudLink {
 public:
  virtual ~LmCloudLink() = default;
  virtual Result<lm_wire::LmReply> Call(const lm_wire::LmRequest& request) = 0;
};

enum class RouteMode { kRouted, kEdgeOnly, kCloudOnly };

struct LmRouterOptions {
  double exit_threshold = 0.9;  // from the bundle's routing entry
  RouteMode mode = RouteMode::kRouted;
  std::string model;    // bundle name, sent to the cloud
  std::string session;  // session id, unique per generation
  int max_resyncs = 3;  // per step, before giving up on the cloud for it
};

struct RouterStep {
  std::vector<float> log_probs;  // natural-log next-byte distribution that was used
  bool from_cloud = false;
  bool degraded = false;   // the cloud was needed but unreachable: exit head used
  int64_t bytes_sent = 0;  // request bytes sent during this step
  double exit_confidence = 0;
};

struct RouterStats {
  int64_t tokens = 0, routed = 0, degraded = 0, resyncs = 0, resets = 0, requests = 0;
  int64_t bytes_sent = 0;
  uint64_t cloud_macs = 0;  // multiply-accumulates the cloud reported computing
};

class LmRouter {
 public:
  // `model` must have its edge part loaded. `cloud` may be null (edge only); borrowed.
  LmRouter(split::SplitLm model, LmRouterOptions options, LmCloudLink* cloud);

  // Appends `token` (a byte) to the context; returns the distribution of the next byte.
  // With `need_prediction` false (prompt bytes before the last) the step never asks the
  // cloud: its code is buffered like a confident token's and the exit's answer returned
  // (no answer in cloud-only mode, where the edge computes nothing).
  Result<RouterStep> Feed(int token, bool need_prediction = true);
  // Tells the cloud the session is over (best effort; errors are ignored).
  void End();

  const RouterStats& stats() const { return stats_; }
  int64_t position() const { return position_; }

 private:
  struct Row {
    uint8_t token = 0;
    float scale = 0;
    uint8_t zero_point = 0;
    std::string data;  // `bottleneck` bytes (empty in cloud-only mode)
  };
  // Codes of positions [from, position_) as one [n, bottleneck] u8 tensor.
  wire::EncodedTensor RowsFrom(int64_t from) const;
  std::string TokensFrom(int64_t from) const;
  // Runs the edge layers over the window's tokens the cache lacks (cloud-only mode) and
  // returns the exit's natural-log distribution after the newest token.
  Result<std::vector<float>> CatchUpExit();
  Result<lm_wire::LmReply> Send(int64_t from, bool reset, bool predict, RouterStep& step);
  // The cloud's distribution after the newest token, re-sending what it lacks.
  Result<std::vector<float>> AskCloud(RouterStep& step);

  split::SplitLm model_;
  LmRouterOptions options_;
  LmCloudLink* cloud_;
  split::KvCache cache_;
  std::deque<Row> window_;  // codes of positions [window_start_, position_)
  int64_t window_start_ = 0;
  int64_t position_ = 0;        // tokens fed so far
  int64_t cloud_position_ = 0;  // the cloud holds states [.., cloud_position_)
  bool cloud_session_ = false;  // the cloud has (or had) this session
  uint64_t next_request_id_ = 1;
  RouterStats stats_;
};

}  // namespace cleave::edge
