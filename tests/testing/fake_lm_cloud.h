// Test double of the cloud side of hard-token routing, for edge tests that must not link the
// cloud library (edge and cloud meet only on the wire). It answers lm_wire requests the way
// the protocol (common/lm_wire.h, docs/design.md) says a cloud must:
//   - states requests run the bottleneck decoder and layers [K, N) of `model` on the
//     session's KV cache; token requests (cloud-only) run the whole model, and are refused
//     unless the fake `serves_tokens`;
//   - `reset_session` starts a fresh cache at `start`; a continuation for an unknown session,
//     or at another position than the cache's, answers resync with the cache's position;
//   - with `predict` the reply carries the next-byte log-probabilities after the last row;
//   - every ok reply counts the multiply-accumulates it computed (split::LmLayersMacs);
//   - an `end_session` request drops the session.
// It keeps at most `max_sessions` sessions and drops the least recently used beyond that,
// which is how tests make a cloud lose a session. Model names and deadlines are not checked.
// Not thread-safe.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "common/lm_wire.h"
#include "common/tensor_codec.h"
#include "split/lm_model.h"

namespace cleave::testing {

class FakeLmCloud {
 public:
  struct Stats {
    uint64_t tokens = 0;   // token rows computed (cloud-only requests)
    uint64_t states = 0;   // state rows computed (split requests)
    uint64_t errors = 0;   // error replies
    uint64_t evicted = 0;  // sessions dropped to stay within max_sessions
  };

  // `model` is owned; it must hold the cloud part, and the edge part too when
  // `serves_tokens`. `max_sessions` >= 1.
  explicit FakeLmCloud(split::SplitLm model, bool serves_tokens = true, size_t max_sessions = 64)
      : model_(std::move(model)), serves_tokens_(serves_tokens), max_sessions_(max_sessions) {
    model_->eval();
  }

  // One reply for one request, as the cloud would send it.
  lm_wire::LmReply Handle(const lm_wire::LmRequest& request) {
    lm_wire::LmReply reply;
    reply.request_id = request.request_id;
    const bool by_tokens = !request.tokens.empty();
    if (by_tokens && !serves_tokens_) {
      return Error(reply, "this cloud holds only the cloud part of the model");
    }
    const uint32_t rows = by_tokens ? static_cast<uint32_t>(request.tokens.size())
                                    : (request.states.shape.empty() ? 0 : request.states.shape[0]);
    if (request.end_session && rows == 0) {
      Drop(request.session);
      return reply;
    }
    split::KvCache* cache = nullptr;
    if (request.reset_session) {
      cache = &Create(request.session, by_tokens);
      cache->position = static_cast<int64_t>(request.start);
    } else {
      cache = Find(request.session);
      const uint64_t have = cache ? static_cast<uint64_t>(cache->position) : 0;
      if (cache == nullptr || have != request.start) {
        reply.status = lm_wire::LmStatus::kResync;
        reply.position = have;
        return reply;
      }
    }
    if (rows > 0) {
      try {
        Compute(request, rows, by_tokens, *cache, reply);
      } catch (const c10::Error& e) {
        Drop(request.session);
        return Error(reply, e.what_without_backtrace());
      }
      if (reply.status != lm_wire::LmStatus::kOk) return reply;
    }
    reply.position = static_cast<uint64_t>(cache->position);
    if (request.end_session) Drop(request.session);
    return reply;
  }

  const Stats& stats() const { return stats_; }
  size_t sessions() const { return sessions_.size(); }

 private:
  // Runs the request's rows through the session's cache; fills log_probs and macs.
  void Compute(const lm_wire::LmRequest& request, uint32_t rows, bool by_tokens,
               split::KvCache& cache, lm_wire::LmReply& reply) {
    torch::NoGradGuard no_grad;
    const split::LmSpec& spec = model_->spec();
    const int64_t first = cache.position;
    torch::Tensor hidden;
    if (by_tokens) {
      torch::Tensor tokens = torch::empty({1, rows}, torch::kLong);
      int64_t* ids = tokens.data_ptr<int64_t>();
      for (uint32_t i = 0; i < rows; ++i) ids[i] = static_cast<uint8_t>(request.tokens[i]);
      hidden = model_->WholeHidden(tokens, &cache);
      reply.macs = static_cast<uint64_t>(split::LmLayersMacs(spec, spec.layers, first, rows) +
                                         2 * int64_t{rows} * split::LmCodecMacs(spec));
      stats_.tokens += rows;
    } else {
      Result<std::vector<float>> code = wire::DecodeTensor(request.states);
      if (!code.ok()) {
        Error(reply, code.status().message());
        return;
      }
      const torch::Tensor states =
          torch::from_blob(code->data(), {1, rows, spec.bottleneck}, torch::kFloat).clone();
      hidden = model_->CloudHidden(model_->Decode(states), &cache);
      reply.macs = static_cast<uint64_t>(
          split::LmLayersMacs(spec, spec.layers - spec.split_after, first, rows) +
          int64_t{rows} * split::LmCodecMacs(spec));
      stats_.states += rows;
    }
    if (request.predict) {
      const torch::Tensor logits = model_->FinalLogits(hidden.narrow(1, rows - 1, 1));
      const torch::Tensor lp = torch::log_softmax(logits.reshape({-1}), 0).contiguous();
      reply.log_probs.assign(lp.data_ptr<float>(), lp.data_ptr<float>() + lp.numel());
      reply.macs += static_cast<uint64_t>(split::LmHeadMacs(spec));
    }
  }

  lm_wire::LmReply& Error(lm_wire::LmReply& reply, const std::string& message) {
    ++stats_.errors;
    reply.status = lm_wire::LmStatus::kError;
    reply.error = message;
    return reply;
  }

  // The session's cache, now the most recently used; null when it is not held.
  split::KvCache* Find(const std::string& session) {
    auto it = sessions_.find(session);
    if (it == sessions_.end()) return nullptr;
    recency_.remove(session);
    recency_.push_front(session);
    return &it->second;
  }
  // A fresh cache for `session`, evicting the least recently used beyond max_sessions.
  split::KvCache& Create(const std::string& session, bool whole) {
    Drop(session);
    while (sessions_.size() >= max_sessions_) {
      Drop(recency_.back());
      ++stats_.evicted;
    }
    recency_.push_front(session);
    return sessions_[session] = whole ? model_->NewWholeCache() : model_->NewCloudCache();
  }
  void Drop(const std::string& session) {
    sessions_.erase(session);
    recency_.remove(session);
  }

  split::SplitLm model_;
  bool serves_tokens_;
  size_t max_sessions_;
  std::map<std::string, split::KvCache> sessions_;
  std::list<std::string> recency_;  // front = most recently used
  Stats stats_;
};

}  // namespace cleave::testing
