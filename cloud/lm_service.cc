#include "cloud/lm_service.h"

#include <chrono>

namespace cleave::cloud {

using lm_wire::LmReply;
using lm_wire::LmRequest;
using lm_wire::LmStatus;

LmTailService::LmTailService(std::string model_name, split::SplitLm model, LmContextOptions context,
                             Clock& clock)
    : model_name_(std::move(model_name)), model_(std::move(model)), contexts_(context, clock) {
  model_->eval();
}

LmReply LmTailService::Error(const LmRequest& request, const std::string& message) {
  ++stats_.errors;
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
  if (request.states.shape.size() != 2 ||
      request.states.shape[1] != static_cast<uint32_t>(spec.bottleneck)) {
    return Error(request, "states must be [tokens, " + std::to_string(spec.bottleneck) + "]");
  }
  LmReply reply;
  reply.request_id = request.request_id;
  if (request.end_session && request.states.shape[0] == 0) {
    contexts_.Remove(request.session);
    reply.position = 0;
    return reply;
  }
  split::KvCache* cache = nullptr;
  if (request.reset_session) {
    split::KvCache fresh = model_->NewCloudCache();
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
  }
  const uint32_t tokens = request.states.shape[0];
  if (tokens > 0) {
    Result<std::vector<float>> values = wire::DecodeTensor(request.states);
    if (!values.ok()) return Error(request, values.status().message());
    try {
      torch::NoGradGuard no_grad;
      const torch::Tensor code =
          torch::from_blob(values->data(), {1, tokens, spec.bottleneck}, torch::kFloat).clone();
      const torch::Tensor hidden = model_->CloudHidden(model_->Decode(code), cache);
      stats_.states += tokens;
      if (request.predict) {  // the head on the last position only
        const torch::Tensor logits = model_->FinalLogits(hidden.narrow(1, tokens - 1, 1));
        const torch::Tensor lp = torch::log_softmax(logits.reshape({-1}), 0).contiguous();
        reply.log_probs.assign(lp.data_ptr<float>(), lp.data_ptr<float>() + lp.numel());
        ++stats_.predictions;
      }
    } catch (const c10::Error& e) {
      contexts_.Remove(request.session);  // its cache may be half-updated
      return Error(request, std::string("cloud layers failed: ") + e.what_without_backtrace());
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
