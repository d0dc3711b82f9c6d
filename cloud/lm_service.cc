#include "cloud/lm_service.h"

#include <chrono>

#include "split/torch_status.h"

namespace cleave::cloud {

using lm_wire::LmReply;
using lm_wire::LmRequest;
using lm_wire::LmStatus;

LmTailService::LmTailService(std::string model_name, split::SplitLm model, LmContextOptions context,
                             Clock& clock, bool serves_tokens)
    : model_name_(std::move(model_name)),
      model_(std::move(model)),
      serves_tokens_(serves_tokens),
      contexts_(context, clock) {
  model_->eval();
}

Status LmTailService::WarmUp() {
  const auto warm_up = [&] {
    torch::NoGradGuard no_grad;
    const split::LmSpec& spec = model_->spec();
    split::KvCache cache = model_->NewCloudCache();
    const torch::Tensor hidden =
        model_->CloudHidden(model_->Decode(torch::zeros({1, 1, spec.bottleneck})), &cache);
    (void)model_->FinalLogits(hidden);
    if (serves_tokens_) {
      split::KvCache whole = model_->NewWholeCache();
      (void)model_->WholeHidden(torch::zeros({1, 1}, torch::kLong), &whole);
    }
  };
  return split::CallTorch(split::TorchSource::kOwnState, "warm-up of the language model failed",
                          warm_up);
}

LmReply LmTailService::Error(const LmRequest& request, const std::string& message,
                             bool compute_failure) {
  ++stats_.errors;
  if (compute_failure) ++stats_.compute_errors;
  LmReply reply;
  reply.request_id = request.request_id;
  reply.status = LmStatus::kError;
  reply.error = message;
  return reply;
}

LmReply LmTailService::Handle(const LmRequest& request) {
  ++stats_.requests;
  const auto started = std::chrono::steady_clock::now();
  if (!request.model.empty() && request.model != model_name_) {
    return Error(request,
                 "unknown model '" + request.model + "' (this cloud serves '" + model_name_ + "')");
  }
  const split::LmSpec& spec = model_->spec();
  const bool by_tokens = !request.tokens.empty();
  if (by_tokens) {
    if (!serves_tokens_) {
      return Error(request,
                   "this cloud does not serve token (cloud-only) requests: it holds only the "
                   "cloud part of the model");
    }
    for (const char c : request.tokens) {
      if (static_cast<uint8_t>(c) >= spec.vocab) {
        return Error(request, "token " + std::to_string(static_cast<uint8_t>(c)) +
                                  " outside the vocabulary of " + std::to_string(spec.vocab));
      }
    }
  } else if (request.states.shape.size() != 2 ||
             request.states.shape[1] != static_cast<uint32_t>(spec.bottleneck)) {
    return Error(request, "states must be [tokens, " + std::to_string(spec.bottleneck) + "]");
  }
  LmReply reply;
  reply.request_id = request.request_id;
  const uint32_t rows =
      by_tokens ? static_cast<uint32_t>(request.tokens.size()) : request.states.shape[0];
  if (request.end_session && rows == 0) {
    contexts_.Remove(request.session);
    reply.position = 0;
    return reply;
  }
  // A session runs the cloud layers on states or, cloud-only, every layer on tokens.
  const size_t cache_layers =
      static_cast<size_t>(by_tokens ? spec.layers : spec.layers - spec.split_after);
  split::KvCache* cache = nullptr;
  if (request.reset_session) {
    split::KvCache fresh = by_tokens ? model_->NewWholeCache() : model_->NewCloudCache();
    fresh.position = static_cast<int64_t>(request.start);
    cache = &contexts_.Create(request.session, std::move(fresh));
  } else {
    cache = contexts_.Find(request.session);
    const uint64_t have = cache ? static_cast<uint64_t>(cache->position) : 0;
    if (cache == nullptr || have != request.start) {
      ++stats_.resyncs;
      reply.status = LmStatus::kResync;
      reply.position = have;
      reply.error = cache == nullptr ? "no context for session '" + request.session + "'"
                                     : "context is at position " + std::to_string(have) + ", not " +
                                           std::to_string(request.start);
      return reply;
    }
    if (cache->keys.size() != cache_layers) {
      return Error(request, "session '" + request.session + "' was started with " +
                                (by_tokens ? "states" : "tokens") + "; it cannot continue with " +
                                (by_tokens ? "tokens" : "states"));
    }
  }
  if (rows > 0) {
    const int64_t first = cache->position;
    std::vector<float> states;  // decoded before libtorch runs: a bad tensor keeps the session
    if (!by_tokens) {
      Result<std::vector<float>> values = wire::DecodeTensor(request.states);
      if (!values.ok()) return Error(request, values.status().message());
      states = std::move(values).value();
    }
    const auto compute = [&] {
      torch::NoGradGuard no_grad;
      torch::Tensor hidden;
      if (by_tokens) {
        torch::Tensor tokens = torch::empty({1, rows}, torch::kLong);
        auto* out = tokens.data_ptr<int64_t>();
        for (uint32_t i = 0; i < rows; ++i) out[i] = static_cast<uint8_t>(request.tokens[i]);
        hidden = model_->WholeHidden(tokens, cache);
        reply.macs = static_cast<uint64_t>(split::LmLayersMacs(spec, spec.layers, first, rows) +
                                           2 * int64_t{rows} * split::LmCodecMacs(spec));
        stats_.tokens += rows;
      } else {
        const torch::Tensor code =
            torch::from_blob(states.data(), {1, rows, spec.bottleneck}, torch::kFloat).clone();
        hidden = model_->CloudHidden(model_->Decode(code), cache);
        reply.macs = static_cast<uint64_t>(
            split::LmLayersMacs(spec, spec.layers - spec.split_after, first, rows) +
            int64_t{rows} * split::LmCodecMacs(spec));
        stats_.states += rows;
      }
      if (request.predict) {  // the head on the last position only
        const torch::Tensor logits = model_->FinalLogits(hidden.narrow(1, rows - 1, 1));
        const torch::Tensor lp = torch::log_softmax(logits.reshape({-1}), 0).contiguous();
        reply.log_probs.assign(lp.data_ptr<float>(), lp.data_ptr<float>() + lp.numel());
        reply.macs += static_cast<uint64_t>(split::LmHeadMacs(spec));
        ++stats_.predictions;
      }
    };
    const Status computed = split::CallTorch(
        split::TorchSource::kOwnState, by_tokens ? "model failed" : "cloud layers failed", compute);
    if (!computed.ok()) {
      contexts_.Remove(request.session);  // its cache may be half-updated
      return Error(request, computed.message(), /*compute_failure=*/true);
    }
  }
  reply.position = static_cast<uint64_t>(cache->position);
  if (request.end_session) {
    contexts_.Remove(request.session);
  } else {
    contexts_.Update(request.session);
  }
  reply.compute_us = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                               std::chrono::steady_clock::now() - started)
                                               .count());
  return reply;
}

}  // namespace cleave::cloud
