#include "cloud/tail_server.h"

#include <algorithm>

#include "cloud/model_repository.h"
#include "common/feature_coding.h"
#include "common/logging.h"
#include "common/mutex.h"
#include "common/png_image.h"
#include "common/tensor_codec.h"
#include "split/compute_runtime.h"

namespace cleave::cloud {
namespace {

ReplyKind KindOf(wire::ReplyStatus status) {
  switch (status) {
    case wire::ReplyStatus::kOk: return ReplyKind::kOk;
    case wire::ReplyStatus::kOverloaded: return ReplyKind::kOverloaded;
    case wire::ReplyStatus::kDeadlineExceeded: return ReplyKind::kDeadlineExceeded;
    default: return ReplyKind::kError;
  }
}

RouterReply Encode(const std::string& peer, const wire::InferReply& reply, Outcome outcome) {
  return {peer, wire::EncodeInferReply(reply), reply.request_id, KindOf(reply.status), outcome};
}

}  // namespace

// An accepted request, owned by the batcher until a worker answers it.
struct TailServer::Job {
  std::string peer;
  wire::InferRequest request;
  int64_t received_us = 0;
  bool answered = false;  // a reply has been posted (worker side)
  // The model set the request was validated against; it is computed by the same set.
  std::shared_ptr<ModelSet> models;
};

struct TailServer::ModelSlot {
  Mutex mu;  // CloudModel serves one caller at a time
  std::unique_ptr<split::CloudModel> model PT_GUARDED_BY(mu);
  split::InputSpec input;  // the model's declared input (immutable copy: images are converted
                           // to it before the slot's mutex is taken)
};

// Copies of one model version; immutable after creation except through each slot's mutex.
struct TailServer::ModelSet {
  uint64_t version = 0;
  // The copies' name and, per split point, the feature layout and its tag, read by the socket
  // thread to validate requests and by the workers to decode them, without a slot's mutex.
  std::string model_name;
  std::vector<uint32_t> feature_shape;  // of split point 0 (version 1 requests)
  std::vector<wire::FeatureLayout> layouts;
  std::vector<uint16_t> layout_tags;
  std::vector<std::unique_ptr<ModelSlot>> slots;
};

TailServer::TailServer(TailServerOptions options, std::shared_ptr<ModelSet> models)
    : options_(std::move(options)),
      clock_(options_.clock ? *options_.clock : SystemClock()),
      metrics_(options_.metrics ? options_.metrics : std::make_shared<Metrics>()),
      m_(&metrics_->Service("cloud")),
      models_(std::move(models)),
      served_version_(models_->version) {
  stats_.model_version = models_->version;
  m_->model_version->Set(static_cast<double>(models_->version));
}

Result<std::shared_ptr<TailServer::ModelSet>> TailServer::MakeSet(
    uint64_t version, std::vector<std::unique_ptr<split::CloudModel>> models) {
  if (models.empty()) return Status::InvalidArgument("TailServer needs at least one model");
  auto set = std::make_shared<ModelSet>();
  set->version = version;
  for (auto& model : models) {
    if (!model) return Status::InvalidArgument("TailServer got a null model");
    if (set->slots.empty()) {
      set->model_name = model->model_name();
      set->feature_shape = model->feature_shape();
      for (int s = 0; s < model->num_splits(); ++s) {
        set->layouts.push_back(model->layout(s));
        set->layout_tags.push_back(model->layout_tag(s));
      }
    }
    set->slots.push_back(std::make_unique<ModelSlot>());
    set->slots.back()->input = model->info().input;
    set->slots.back()->model = std::move(model);
  }
  return set;
}

std::shared_ptr<TailServer::ModelSet> TailServer::CurrentModels() const {
  MutexLock lock(&models_mu_);
  return models_;
}

Status TailServer::SwapModels(uint64_t version,
                              std::vector<std::unique_ptr<split::CloudModel>> models) {
  CLEAVE_ASSIGN_OR_RETURN(std::shared_ptr<ModelSet> set, MakeSet(version, std::move(models)));
  const std::string name = set->model_name;
  uint64_t previous = 0;
  {
    MutexLock lock(&models_mu_);
    previous = models_->version;
    models_.swap(set);
  }
  // `set` now holds the old version; it is freed here or with its last in-flight request.
  served_version_.store(version, std::memory_order_release);
  model_swaps_.fetch_add(1, std::memory_order_relaxed);
  m_->model_version->Set(static_cast<double>(version));
  GetLogger("cloud")->info("now serving model '{}' version {} (was version {})", name, version,
                           previous);
  return Status::Ok();
}

TailServer::~TailServer() {
  if (batcher_) batcher_->Shutdown(Batcher::ShutdownMode::kFail);
}

Result<std::unique_ptr<TailServer>> TailServer::Create(TransportContext& context,
                                                       TailServerOptions options,
                                                       std::unique_ptr<split::CloudModel> model) {
  std::vector<std::unique_ptr<split::CloudModel>> models;
  models.push_back(std::move(model));
  return Create(context, std::move(options), std::move(models));
}

Result<std::unique_ptr<TailServer>> TailServer::Create(
    TransportContext& context, TailServerOptions options,
    std::vector<std::unique_ptr<split::CloudModel>> models) {
  DynamicBatcherOptions batching;
  batching.max_batch = options.max_batch;
  batching.max_queue_delay_us = options.max_queue_delay_us;
  batching.max_queue = options.max_queue;
  batching.max_queue_wait_us = options.max_queue_wait_us;
  batching.workers = options.workers;
  batching.hold_when_idle = options.hold_when_idle;
  CLEAVE_RETURN_IF_ERROR(batching.Validate());
  if (options.workers < 1) return Status::InvalidArgument("workers must be >= 1");
  CLEAVE_ASSIGN_OR_RETURN(std::shared_ptr<ModelSet> set,
                          MakeSet(options.model_version, std::move(models)));
  std::unique_ptr<TailServer> server(new TailServer(std::move(options), std::move(set)));
  CLEAVE_ASSIGN_OR_RETURN(
      server->service_,
      RouterService::Bind(context, server->options_.listen, server->options_.socket, server->clock_,
                          *server->metrics_, "cloud"));
  TailServer* self = server.get();
  const int threads = server->options_.intra_op_threads;
  server->batcher_ = std::make_unique<Batcher>(
      batching, server->clock_,
      [self](int worker, std::vector<Job>& jobs) { self->ComputeBatch(worker, jobs); },
      [self](Rejection why, Job& job) { self->Reject(why, job); },
      [threads](int) {
        if (threads > 0) split::SetComputeThreads(threads);  // per-thread OpenMP setting
      },
      [](const Job& job) { return job.answered; });
  return server;
}

const std::string& TailServer::endpoint() const { return service_->endpoint(); }

size_t TailServer::queued_requests() const { return batcher_->queued(); }

Status TailServer::WarmUp() {
  std::shared_ptr<ModelSet> set = CurrentModels();
  for (auto& slot : set->slots) {
    MutexLock lock(&slot->mu);
    CLEAVE_RETURN_IF_ERROR(WarmUpCloudModel(*slot->model));
  }
  return Status::Ok();
}

// ---- worker threads -------------------------------------------------------------------------

void TailServer::Post(const std::string& peer, wire::InferReply reply, Outcome outcome) {
  service_->Post(Encode(peer, reply, outcome));
}

void TailServer::PostError(Job& job, wire::ReplyStatus status, const std::string& error,
                           Outcome outcome) {
  job.answered = true;
  wire::InferReply reply;
  reply.request_id = job.request.request_id;
  reply.status = status;
  reply.error = error;
  Post(job.peer, std::move(reply), outcome);
}

void TailServer::Reject(Rejection why, Job& job) {
  switch (why) {
    case Rejection::kExpired:
      PostError(job, wire::ReplyStatus::kDeadlineExceeded, "deadline passed while queued",
                Outcome::kRejected);
      break;
    case Rejection::kComputeFailed:
      PostError(job, wire::ReplyStatus::kError,
                "the computation failed unexpectedly (an internal error of the cloud)",
                Outcome::kError);
      break;
    default:
      PostError(job, wire::ReplyStatus::kOverloaded, "the service is shutting down",
                Outcome::kOverloaded);
      break;
  }
}

void TailServer::ComputeBatch(int worker, std::vector<Job>& jobs) {
  if (options_.before_compute) options_.before_compute(worker);
  // Each job is computed by the set it was validated against; a batch formed across a swap
  // holds jobs of two sets and computes one group per set.
  std::vector<ModelSet*> sets;
  for (const Job& job : jobs) {
    if (std::find(sets.begin(), sets.end(), job.models.get()) == sets.end()) {
      sets.push_back(job.models.get());
    }
  }
  for (ModelSet* set : sets) {
    // One group per split point's features (split 0 also holds version 1 requests), one for
    // whole images.
    std::vector<std::vector<Job*>> feature_groups(set->layouts.size());
    std::vector<Job*> png_group;
    for (Job& job : jobs) {
      if (job.models.get() != set) continue;
      if (job.request.input == wire::InputKind::kPng) {
        png_group.push_back(&job);
      } else {
        feature_groups[job.request.split].push_back(&job);
      }
    }
    ModelSlot& slot = *set->slots[static_cast<size_t>(worker) % set->slots.size()];
    for (size_t s = 0; s < feature_groups.size(); ++s) {
      ComputeGroup(*set, slot, feature_groups[s], static_cast<int>(s));
    }
    ComputeGroup(*set, slot, png_group, /*split=*/-1);
  }
}

// Decodes one request's features (socket thread checked version 1 shapes and version 2 split
// indices and tags; decoding the bytes is the workers' job).
Result<torch::Tensor> TailServer::DecodeJobFeatures(const ModelSet& set, const Job& job) {
  const wire::InferRequest& r = job.request;
  const wire::FeatureLayout& layout = set.layouts[r.split];
  CLEAVE_ASSIGN_OR_RETURN(std::vector<float> values, wire::DecodeRequestFeatures(r, layout));
  std::vector<int64_t> sizes = {1};
  if (r.input == wire::InputKind::kFeatures) {
    sizes.assign(r.features.shape.begin(), r.features.shape.end());
  } else {
    sizes.insert(sizes.end(), layout.shape.begin(), layout.shape.end());
  }
  return torch::from_blob(values.data(), sizes, torch::kFloat32).clone();
}

void TailServer::ComputeGroup(const ModelSet& set, ModelSlot& slot, std::vector<Job*>& group,
                              int split) {
  if (group.empty()) return;
  const bool features = split >= 0;
  std::vector<torch::Tensor> inputs;
  std::vector<Job*> valid;
  // The socket thread checked the feature shape; decoding the bytes is the workers' job.
  try {
    for (Job* job : group) {
      if (features) {
        Result<torch::Tensor> decoded = DecodeJobFeatures(set, *job);
        if (!decoded.ok()) {
          PostError(*job, wire::ReplyStatus::kError, decoded.status().ToString(),
                    Outcome::kRejected);
          continue;
        }
        inputs.push_back(*std::move(decoded));
      } else {
        // An encoded PNG or JPEG of any size and colour, converted to the bundle's input.
        Result<torch::Tensor> image = split::DecodeImageTensor(job->request.png, slot.input);
        if (!image.ok()) {
          PostError(*job, wire::ReplyStatus::kError, image.status().ToString(), Outcome::kRejected);
          continue;
        }
        inputs.push_back(*std::move(image));
      }
      valid.push_back(job);
    }
    if (valid.empty()) return;
    MutexLock lock(&slot.mu);
    const int64_t start = clock_.NowMicros();
    for (Job* job : valid) {
      m_->queue_seconds->Observe(static_cast<double>(start - job->received_us) * 1e-6);
    }
    torch::Tensor batch = torch::cat(inputs, 0);
    Result<torch::Tensor> logits =
        features ? slot.model->RunTail(batch, split) : slot.model->RunFull(batch);
    if (!logits.ok()) {
      for (Job* job : valid) {
        PostError(*job, wire::ReplyStatus::kError, logits.status().ToString(), Outcome::kError);
      }
      return;
    }
    batches_.fetch_add(1, std::memory_order_relaxed);
    torch::Tensor out = logits->contiguous().to(torch::kFloat32);
    const int64_t classes = out.size(1);
    const uint64_t compute_us =
        static_cast<uint64_t>(std::max<int64_t>(0, clock_.NowMicros() - start));
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
      reply.queue_us = static_cast<uint64_t>(std::max<int64_t>(0, start - valid[i]->received_us));
      reply.compute_us = compute_us;
      Post(valid[i]->peer, std::move(reply), Outcome::kOk);
      valid[i]->answered = true;
    }
  } catch (const std::exception& e) {
    for (Job* job : group) {
      if (!job->answered)
        PostError(*job, wire::ReplyStatus::kError, std::string("compute failed: ") + e.what(),
                  Outcome::kError);
    }
  }
}

// ---- socket thread --------------------------------------------------------------------------

void TailServer::ReplyNow(const std::string& peer, uint64_t request_id, wire::ReplyStatus status,
                          const std::string& error, Outcome outcome) {
  wire::InferReply reply;
  reply.request_id = request_id;
  reply.status = status;
  reply.error = error;
  service_->Send(Encode(peer, reply, outcome));
}

void TailServer::PublishStats() {
  const RouterServiceStats& socket = service_->stats();
  stats_.requests = socket.received;
  stats_.replied_ok = socket.replied_ok;
  stats_.replied_error = socket.replied_error;
  stats_.replied_deadline = socket.replied_deadline;
  stats_.replied_overloaded = socket.replied_overloaded;
  stats_.undeliverable = socket.undeliverable;
  stats_.batches = batches_.load(std::memory_order_relaxed);
  stats_.model_version = served_version_.load(std::memory_order_acquire);
  stats_.model_swaps = model_swaps_.load(std::memory_order_relaxed);
}

void TailServer::Admit(Envelope env, int64_t received) {
  Result<wire::InferRequest> decoded = wire::DecodeInferRequest(env.body);
  if (!decoded.ok()) {
    ReplyNow(env.peer, wire::PeekRequestId(env.body), wire::ReplyStatus::kError,
             decoded.status().ToString(), Outcome::kRejected);
    return;
  }
  const wire::InferRequest& r = *decoded;
  std::shared_ptr<ModelSet> set = CurrentModels();
  if (r.protocol_version == wire::kCompactProtocolVersion) {
    const Status refused = CheckCompact(*set, r);
    if (!refused.ok()) {
      ReplyNow(env.peer, r.request_id, wire::ReplyStatus::kError, refused.message(),
               Outcome::kRejected);
      return;
    }
  } else if (r.model != set->model_name) {
    ReplyNow(env.peer, r.request_id, wire::ReplyStatus::kError,
             "model '" + r.model + "' is not served here (serving '" + set->model_name + "')",
             Outcome::kRejected);
    return;
  }
  if (r.input == wire::InputKind::kFeatures) {
    const wire::EncodedTensor& t = r.features;
    const std::vector<uint32_t>& want = set->feature_shape;
    // One image per request: shape [1, C, H, W] matching the tail's input.
    bool shape_ok = t.shape.size() == want.size() + 1 && t.shape[0] == 1;
    for (size_t i = 0; shape_ok && i < want.size(); ++i) shape_ok = t.shape[i + 1] == want[i];
    if (!shape_ok) {
      std::string got, expected = "[1";
      for (uint32_t d : t.shape) got += (got.empty() ? "[" : ",") + std::to_string(d);
      for (uint32_t d : want) expected += "," + std::to_string(d);
      ReplyNow(env.peer, r.request_id, wire::ReplyStatus::kError,
               "features have shape " + got + "] but model '" + set->model_name + "' expects " +
                   expected + "]",
               Outcome::kRejected);
      return;
    }
  }
  const uint64_t request_id = r.request_id;
  const int64_t deadline = r.deadline_ms > 0 ? received + int64_t{r.deadline_ms} * 1000 : 0;
  Job job{env.peer, std::move(decoded).value(), received, false, std::move(set)};
  const SubmitResult submitted = batcher_->Submit(std::move(job), deadline);
  if (submitted == SubmitResult::kAccepted) {
    service_->Accepted();
    return;
  }
  ReplyNow(env.peer, request_id, wire::ReplyStatus::kOverloaded,
           RefusalReason(submitted, options_.max_queue, batcher_->EstimatedWaitMicros(),
                         options_.max_queue_wait_us),
           Outcome::kOverloaded);
}

// A version 2 request names a split point this bundle has and carries features coded with
// the same layout (tag) as the bundle's; its image input needs neither.
Status TailServer::CheckCompact(const ModelSet& set, const wire::InferRequest& r) {
  if (r.input == wire::InputKind::kPng) return Status::Ok();
  if (r.split >= set.layouts.size()) {
    return Status::InvalidArgument("split point " + std::to_string(r.split) +
                                   " is not served here (model '" + set.model_name + "' has " +
                                   std::to_string(set.layouts.size()) + ")");
  }
  if (r.layout_tag != set.layout_tags[r.split]) {
    return Status::InvalidArgument("features coded for another bundle: layout tag " +
                                   std::to_string(r.layout_tag) + " of split point " +
                                   std::to_string(r.split) + ", but model '" + set.model_name +
                                   "' here has " + std::to_string(set.layout_tags[r.split]) +
                                   " (edge and cloud serve different bundle versions)");
  }
  return Status::Ok();
}

Status TailServer::Run(const std::function<bool()>& should_stop) {
  batcher_->Start();
  RouterService::Hooks hooks;
  hooks.admit = [this](Envelope env, int64_t received) { Admit(std::move(env), received); };
  hooks.after_turn = [this] { PublishStats(); };
  const Status result = service_->Serve(should_stop, hooks);
  // Drain: every accepted request is computed and its reply sent before we return.
  batcher_->Shutdown(Batcher::ShutdownMode::kDrain);
  service_->DeliverReplies();
  PublishStats();
  GetLogger("cloud")->info(
      "cloud server stopped: {} requests, {} ok, {} errors, {} past deadline, {} overloaded, "
      "{} batches, {} undeliverable; model version {} after {} swap(s)",
      stats_.requests, stats_.replied_ok, stats_.replied_error, stats_.replied_deadline,
      stats_.replied_overloaded, stats_.batches, stats_.undeliverable, stats_.model_version,
      stats_.model_swaps);
  return result;
}

}  // namespace cleave::cloud
