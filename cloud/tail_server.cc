#include "cloud/tail_server.h"

#include <chrono>

#include "common/logging.h"
#include "common/png_image.h"
#include "common/tensor_codec.h"

namespace cleave::cloud {
namespace {

int64_t SteadyMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

TailServer::TailServer(TailServerOptions options, std::unique_ptr<split::CloudModel> model)
    : options_(std::move(options)),
      model_(std::move(model)),
      metrics_(options_.metrics ? options_.metrics : std::make_shared<Metrics>()),
      m_(&metrics_->Service("cloud")),
      connected_(&metrics_->ConnectedEdges()) {}

TailServer::~TailServer() = default;

Result<std::unique_ptr<TailServer>> TailServer::Create(TransportContext& context,
                                                       TailServerOptions options,
                                                       std::unique_ptr<split::CloudModel> model) {
  if (options.max_batch < 1) return Status::InvalidArgument("max_batch must be >= 1");
  std::unique_ptr<TailServer> server(new TailServer(options, std::move(model)));
  CLEAVE_ASSIGN_OR_RETURN(server->router_,
                          RouterServer::Bind(context, options.listen, options.socket));
  return server;
}

const std::string& TailServer::endpoint() const { return router_->endpoint(); }

Status TailServer::WarmUp() {
  const std::vector<uint32_t>& shape = model_->feature_shape();
  std::vector<int64_t> sizes = {1};
  sizes.insert(sizes.end(), shape.begin(), shape.end());
  CLEAVE_RETURN_IF_ERROR(model_->RunTail(torch::zeros(sizes)).status().WithContext("warm-up"));
  return model_->RunFull(torch::zeros({1, 1, 28, 28})).status().WithContext("warm-up");
}

void TailServer::Send(const std::string& peer, const wire::InferReply& reply, Outcome outcome) {
  switch (reply.status) {
    case wire::ReplyStatus::kOk: ++stats_.replied_ok; break;
    case wire::ReplyStatus::kDeadlineExceeded: ++stats_.replied_deadline; break;
    default: ++stats_.replied_error; break;
  }
  m_->Count(outcome);
  const std::string bytes = wire::EncodeInferReply(reply);
  Status sent = router_->Send(peer, bytes);
  if (!sent.ok()) {
    ++stats_.undeliverable;
    GetLogger("cloud")->debug("reply {} not delivered: {}", reply.request_id, sent.ToString());
  } else {
    m_->wire_bytes_sent->Increment(static_cast<double>(WireBytes(bytes.size())));
  }
}

void TailServer::ReplyError(const std::string& peer, uint64_t request_id, wire::ReplyStatus status,
                            const std::string& error, Outcome outcome) {
  wire::InferReply reply;
  reply.request_id = request_id;
  reply.status = status;
  reply.error = error;
  Send(peer, reply, outcome);
}

void TailServer::ComputeGroup(std::vector<Queued*>& group, bool features) {
  if (group.empty()) return;
  const int64_t start = SteadyMicros();
  std::vector<torch::Tensor> inputs;
  std::vector<Queued*> valid;
  const std::vector<uint32_t>& want = model_->feature_shape();
  for (Queued* q : group) {
    if (features) {
      const wire::EncodedTensor& t = q->request.features;
      // One image per request: shape [1, C, H, W] matching the tail's input.
      bool shape_ok = t.shape.size() == want.size() + 1 && t.shape[0] == 1;
      for (size_t i = 0; shape_ok && i < want.size(); ++i) shape_ok = t.shape[i + 1] == want[i];
      if (!shape_ok) {
        std::string got, expected = "[1";
        for (uint32_t d : t.shape) got += (got.empty() ? "[" : ",") + std::to_string(d);
        for (uint32_t d : want) expected += "," + std::to_string(d);
        ReplyError(q->peer, q->request.request_id, wire::ReplyStatus::kError,
                   "features have shape " + got + "] but model '" + model_->model_name() +
                       "' expects " + expected + "]",
                   Outcome::kRejected);
        continue;
      }
      Result<std::vector<float>> values = wire::DecodeTensor(t);
      if (!values.ok()) {
        ReplyError(q->peer, q->request.request_id, wire::ReplyStatus::kError,
                   values.status().ToString(), Outcome::kRejected);
        continue;
      }
      std::vector<int64_t> sizes(t.shape.begin(), t.shape.end());
      inputs.push_back(torch::from_blob(values->data(), sizes, torch::kFloat32).clone());
    } else {
      Result<GrayImage> image = DecodePng(q->request.png);
      if (!image.ok()) {
        ReplyError(q->peer, q->request.request_id, wire::ReplyStatus::kError,
                   image.status().ToString(), Outcome::kRejected);
        continue;
      }
      if (image->width != 28 || image->height != 28) {
        ReplyError(q->peer, q->request.request_id, wire::ReplyStatus::kError,
                   "image is " + std::to_string(image->width) + "x" +
                       std::to_string(image->height) + "; the model expects 28x28",
                   Outcome::kRejected);
        continue;
      }
      inputs.push_back(split::ImagesToTensor(image->pixels.data(), 1, 28, 28));
    }
    valid.push_back(q);
  }
  if (valid.empty()) return;
  for (Queued* q : valid) {
    m_->queue_seconds->Observe(static_cast<double>(start - q->received_us) * 1e-6);
  }
  torch::Tensor batch = torch::cat(inputs, 0);
  Result<torch::Tensor> logits = features ? model_->RunTail(batch) : model_->RunFull(batch);
  if (!logits.ok()) {
    for (Queued* q : valid) {
      ReplyError(q->peer, q->request.request_id, wire::ReplyStatus::kError,
                 logits.status().ToString(), Outcome::kError);
    }
    return;
  }
  ++stats_.batches;
  torch::Tensor out = logits->contiguous().to(torch::kFloat32);
  const int64_t classes = out.size(1);
  const uint64_t compute_us = static_cast<uint64_t>(SteadyMicros() - start);
  m_->compute_seconds->Observe(static_cast<double>(compute_us) * 1e-6);
  m_->batch_size->Observe(static_cast<double>(valid.size()));
  for (size_t i = 0; i < valid.size(); ++i) {
    wire::InferReply reply;
    reply.request_id = valid[i]->request.request_id;
    reply.status = wire::ReplyStatus::kOk;
    const float* row = out.data_ptr<float>() + i * classes;
    reply.scores.assign(row, row + classes);
    reply.num_classes = static_cast<uint32_t>(classes);
    reply.batch_size = static_cast<uint32_t>(valid.size());
    reply.queue_us = static_cast<uint64_t>(start - valid[i]->received_us);
    reply.compute_us = compute_us;
    Send(valid[i]->peer, reply, Outcome::kOk);
  }
}

void TailServer::Serve(std::vector<Queued>& batch) {
  const int64_t now = SteadyMicros();
  std::vector<Queued*> feature_group, png_group;
  for (Queued& q : batch) {
    const wire::InferRequest& r = q.request;
    if (r.model != model_->model_name()) {
      ReplyError(
          q.peer, r.request_id, wire::ReplyStatus::kError,
          "model '" + r.model + "' is not served here (serving '" + model_->model_name() + "')",
          Outcome::kRejected);
      continue;
    }
    if (r.deadline_ms > 0 && now - q.received_us > int64_t{r.deadline_ms} * 1000) {
      ReplyError(q.peer, r.request_id, wire::ReplyStatus::kDeadlineExceeded,
                 "deadline passed while queued", Outcome::kRejected);
      continue;
    }
    (r.input == wire::InputKind::kFeatures ? feature_group : png_group).push_back(&q);
  }
  ComputeGroup(feature_group, /*features=*/true);
  ComputeGroup(png_group, /*features=*/false);
}

Status TailServer::Run(const std::function<bool()>& should_stop) {
  auto log = GetLogger("cloud");
  std::vector<Queued> batch;
  int64_t last_sweep = SteadyMicros();
  while (!should_stop()) {
    if (const int64_t now = SteadyMicros(); now - last_sweep > 1'000'000) {
      connected_->Set(static_cast<double>(peers_.Expire(now)));
      last_sweep = now;
    }
    Result<std::optional<Envelope>> first = router_->Receive(100);
    if (!first.ok()) {
      log->warn("receive failed: {}", first.status().ToString());
      continue;
    }
    if (!first->has_value()) continue;
    batch.clear();
    std::optional<Envelope> next = std::move(*first);
    while (next.has_value()) {
      ++stats_.requests;
      Envelope env = std::move(*next);
      next.reset();
      const int64_t received = SteadyMicros();
      m_->wire_bytes_received->Increment(static_cast<double>(WireBytes(env.body.size())));
      peers_.Seen(env.peer, received);
      Result<wire::InferRequest> request = wire::DecodeInferRequest(env.body);
      if (!request.ok()) {
        ReplyError(env.peer, wire::PeekRequestId(env.body), wire::ReplyStatus::kError,
                   request.status().ToString(), Outcome::kRejected);
      } else {
        batch.push_back({std::move(env.peer), std::move(request).value(), received});
      }
      if (static_cast<int>(batch.size()) >= options_.max_batch) break;
      Result<std::optional<Envelope>> more = router_->Receive(0);
      if (more.ok() && more->has_value()) next = std::move(*more);
    }
    m_->pending_requests->Set(static_cast<double>(batch.size()));
    Serve(batch);
    m_->pending_requests->Set(0);
  }
  log->info("cloud server stopped: {} requests, {} ok, {} errors, {} past deadline, {} batches",
            stats_.requests, stats_.replied_ok, stats_.replied_error, stats_.replied_deadline,
            stats_.batches);
  return Status::Ok();
}

}  // namespace cleave::cloud
