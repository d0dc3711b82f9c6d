#include "edge/lm_router.h"

#include <cmath>

#include "split/torch_status.h"

namespace cleave::edge {

using lm_wire::LmReply;
using lm_wire::LmRequest;
using lm_wire::LmStatus;

LmRouter::LmRouter(split::SplitLm model, LmRouterOptions options, LmCloudLink* cloud)
    : model_(std::move(model)), options_(std::move(options)), cloud_(cloud) {
  model_->eval();
  cache_ = model_->NewEdgeCache();
}

wire::EncodedTensor LmRouter::RowsFrom(int64_t from) const {
  wire::EncodedTensor t;
  t.dtype = wire::DType::kUInt8;
  t.channel_axis = 0;
  const int64_t n = position_ - from;
  t.shape = {static_cast<uint32_t>(n), static_cast<uint32_t>(model_->spec().bottleneck)};
  for (int64_t p = from; p < position_; ++p) {
    const Row& row = window_[static_cast<size_t>(p - window_start_)];
    t.quant.scale.push_back(row.scale);
    t.quant.zero_point.push_back(row.zero_point);
    t.data += row.data;
  }
  return t;
}

std::string LmRouter::TokensFrom(int64_t from) const {
  std::string tokens;
  for (int64_t p = from; p < position_; ++p) {
    tokens += static_cast<char>(window_[static_cast<size_t>(p - window_start_)].token);
  }
  return tokens;
}

Result<std::vector<float>> LmRouter::CatchUpExit() {
  if (cache_.position < window_start_) {  // a gap: restart the cache from the window
    cache_ = model_->NewEdgeCache();
    cache_.position = window_start_;
  }
  const int64_t from = cache_.position;
  const int64_t n = position_ - from;
  if (n <= 0) return Status::Internal("edge cache is ahead of the context");
  const auto run = [&] {
    torch::NoGradGuard no_grad;
    torch::Tensor input = torch::empty({1, n}, torch::kLong);
    for (int64_t i = 0; i < n; ++i) {
      input.data_ptr<int64_t>()[i] = window_[static_cast<size_t>(from + i - window_start_)].token;
    }
    const torch::Tensor state = model_->EdgeLayers(input, &cache_).narrow(1, n - 1, 1);
    const torch::Tensor lp =
        torch::log_softmax(model_->ExitLogits(state).reshape({-1}), 0).contiguous();
    return std::vector<float>(lp.data_ptr<float>(), lp.data_ptr<float>() + lp.numel());
  };
  Result<std::vector<float>> log_probs =
      split::CallTorch(split::TorchSource::kOwnState, "edge layers failed", run);
  if (!log_probs.ok()) {
    cache_ = model_->NewEdgeCache();
    cache_.position = position_;  // unusable for these tokens; later ones still work
  }
  return log_probs;
}

Result<LmReply> LmRouter::Send(int64_t from, bool reset, bool predict, RouterStep& step) {
  LmRequest request;
  request.request_id = next_request_id_++;
  request.model = options_.model;
  request.session = options_.session;
  request.start = static_cast<uint64_t>(from);
  if (options_.mode == RouteMode::kCloudOnly) {
    request.tokens = TokensFrom(from);
  } else {
    request.states = RowsFrom(from);
  }
  request.predict = predict;
  request.reset_session = reset;
  const int64_t bytes = static_cast<int64_t>(lm_wire::EncodeLmRequest(request).size());
  ++stats_.requests;
  if (reset) ++stats_.resets;
  Result<LmReply> reply = cloud_->Call(request);
  if (reply.ok()) {  // counted once the cloud got it (it answered)
    step.bytes_sent += bytes;
    stats_.bytes_sent += bytes;
  }
  return reply;
}

Result<std::vector<float>> LmRouter::AskCloud(RouterStep& step) {
  for (int attempt = 0; attempt <= options_.max_resyncs; ++attempt) {
    // Continue the cloud's context when it holds everything before our window's end;
    // otherwise start it afresh from the window.
    const bool reset =
        !cloud_session_ || cloud_position_ < window_start_ || cloud_position_ > position_ - 1;
    const int64_t from = reset ? window_start_ : cloud_position_;
    CLEAVE_ASSIGN_OR_RETURN(LmReply reply, Send(from, reset, /*predict=*/true, step));
    switch (reply.status) {
      case LmStatus::kOk:
        if (reply.position != static_cast<uint64_t>(position_) ||
            reply.log_probs.size() != static_cast<size_t>(model_->spec().vocab)) {
          cloud_session_ = false;
          return Status::Internal("cloud reply does not match the request (position " +
                                  std::to_string(reply.position) + ", " +
                                  std::to_string(reply.log_probs.size()) + " log-probabilities)");
        }
        cloud_session_ = true;
        cloud_position_ = position_;
        stats_.cloud_macs += reply.macs;
        return std::move(reply.log_probs);
      case LmStatus::kResync:
        ++stats_.resyncs;
        cloud_session_ = reply.position > 0;
        cloud_position_ = static_cast<int64_t>(reply.position);
        continue;
      case LmStatus::kOverloaded: return Status::Unavailable("cloud overloaded: " + reply.error);
      case LmStatus::kDeadlineExceeded:
        return Status::DeadlineExceeded("cloud deadline: " + reply.error);
      default: cloud_session_ = false; return Status::Internal("cloud error: " + reply.error);
    }
  }
  return Status::Unavailable("cloud kept asking to resync (" +
                             std::to_string(options_.max_resyncs) + " times)");
}

Result<RouterStep> LmRouter::Feed(int token, bool need_prediction) {
  const split::LmSpec& spec = model_->spec();
  if (token < 0 || token >= spec.vocab) {
    return Status::InvalidArgument("token " + std::to_string(token) + " outside the vocabulary");
  }
  RouterStep step;
  std::vector<float> exit_log_probs;
  if (options_.mode == RouteMode::kCloudOnly) {
    window_.push_back({static_cast<uint8_t>(token), 0, 0, {}});
  } else {
    const auto run = [&] {
      torch::NoGradGuard no_grad;
      const torch::Tensor input = torch::full({1, 1}, token, torch::kLong);
      const torch::Tensor state = model_->EdgeLayers(input, &cache_);
      const torch::Tensor lp =
          torch::log_softmax(model_->ExitLogits(state).reshape({-1}), 0).contiguous();
      exit_log_probs.assign(lp.data_ptr<float>(), lp.data_ptr<float>() + lp.numel());
      step.exit_confidence = std::exp(lp.max().item<double>());
      const torch::Tensor code = model_->Encode(state).reshape({-1}).contiguous();
      CLEAVE_ASSIGN_OR_RETURN(
          wire::EncodedTensor row,
          wire::EncodeTensor(code.data_ptr<float>(), {1, static_cast<uint32_t>(spec.bottleneck)},
                             wire::DType::kUInt8, 0));
      window_.push_back({static_cast<uint8_t>(token), row.quant.scale[0], row.quant.zero_point[0],
                         std::move(row.data)});
      return Status::Ok();
    };
    CLEAVE_RETURN_IF_ERROR(
        split::CallTorch(split::TorchSource::kOwnState, "edge layers failed", run));
  }
  ++position_;
  ++stats_.tokens;
  while (static_cast<int64_t>(window_.size()) > spec.context) {
    window_.pop_front();
    ++window_start_;
  }
  const bool hard =
      need_prediction &&
      (options_.mode == RouteMode::kCloudOnly ||
       (options_.mode == RouteMode::kRouted && step.exit_confidence < options_.exit_threshold));
  if (!need_prediction) {  // a prompt byte: the exit's answer (none in cloud-only mode)
    step.log_probs = std::move(exit_log_probs);
    return step;
  }
  Result<std::vector<float>> cloud = Status::Unavailable("no cloud");
  if (hard && cloud_ != nullptr) cloud = AskCloud(step);
  if (cloud.ok()) {
    step.from_cloud = true;
    ++stats_.routed;
    step.log_probs = std::move(*cloud);
    return step;
  }
  if (hard) {
    step.degraded = true;
    ++stats_.degraded;
  }
  if (options_.mode == RouteMode::kCloudOnly) {
    CLEAVE_ASSIGN_OR_RETURN(exit_log_probs, CatchUpExit());
    float best = exit_log_probs.empty() ? 0.f : exit_log_probs[0];
    for (float v : exit_log_probs) best = std::max(best, v);
    step.exit_confidence = std::exp(static_cast<double>(best));
  }
  step.log_probs = std::move(exit_log_probs);
  return step;
}

void LmRouter::End() {
  if (cloud_ == nullptr || !cloud_session_) return;
  LmRequest request;
  request.request_id = next_request_id_++;
  request.model = options_.model;
  request.session = options_.session;
  request.start = static_cast<uint64_t>(position_);
  request.states.dtype = wire::DType::kUInt8;
  request.states.channel_axis = 0;
  request.states.shape = {0, static_cast<uint32_t>(model_->spec().bottleneck)};
  request.end_session = true;
  (void)cloud_->Call(request);
  cloud_session_ = false;
}

}  // namespace cleave::edge
