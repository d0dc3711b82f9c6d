// The cloud side of hard-token routing, transport-free: turns one LmRequest into one
// LmReply using the cloud part of an lm-split model and the context manager. The daemon's
// loop (and tests, in process) call Handle() for each request.
//
// Per request: check the model name and the states (2-D, width = the bottleneck); find the
// session's cache. `reset_session` starts a fresh cache at `start`; otherwise a missing
// cache answers resync with position 0 and a cache at another position answers resync
// with its position, so the edge re-sends what the cloud lacks. The states are decoded,
// run through the bottleneck decoder and layers [K, N) (growing the cache), and with
// `predict` the reply carries the next-byte log-probabilities after the last state.
//
// Token requests (the cloud-only configuration) carry raw bytes instead of states; the
// service then runs the whole model (it must hold the edge part too) with a cache for all
// layers. A session is either kind for its life: mixing them is an error. Every ok reply
// counts the multiply-accumulates computed (split/lm_model.h, LmLayersMacs).
// Errors (bad shapes, libtorch failures) are error replies; nothing throws. Not
// thread-safe: one loop owns it.
#pragma once

#include <string>

#include "cloud/lm_context.h"
#include "common/lm_wire.h"
#include "split/lm_model.h"

namespace cleave::cloud {

struct LmServiceStats {
  uint64_t requests = 0, predictions = 0, resyncs = 0, errors = 0, states = 0, tokens = 0;
  uint64_t compute_errors = 0;  // the share of `errors` where the model itself failed
};

class LmTailService {
 public:
  // `model` holds at least the cloud part of the bundle called `model_name`; with
  // `serves_tokens` it holds the edge part too and token requests are served.
  LmTailService(std::string model_name, split::SplitLm model, LmContextOptions context,
                Clock& clock, bool serves_tokens = false);

  lm_wire::LmReply Handle(const lm_wire::LmRequest& request);
  // Runs one state (and, serving tokens, one token) through the model outside any session,
  // so the first request does not pay for lazy initialization. Touches no session or stat.
  Status WarmUp();
  // Drops idle sessions (call now and then from the loop).
  size_t ExpireIdle() { return contexts_.ExpireIdle(); }

  const LmServiceStats& stats() const { return stats_; }
  LmContextStats context_stats() const { return contexts_.stats(); }
  const split::LmSpec& spec() const { return model_->spec(); }

 private:
  // An error reply; `compute_failure` when the model failed rather than the request.
  lm_wire::LmReply Error(const lm_wire::LmRequest& request, const std::string& message,
                         bool compute_failure = false);

  std::string model_name_;
  split::SplitLm model_;
  bool serves_tokens_;
  LmContextManager contexts_;
  LmServiceStats stats_;
};

}  // namespace cleave::cloud
