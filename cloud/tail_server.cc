#include "cloud/tail_server.h"

#include <algorithm>
#include <array>

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

// `reply` encoded (through `buffer`, reused) into a message for `peer`.
RouterReply EncodeTailReply(const std::string& peer, const wire::InferReply& reply, Outcome outcome,
                            std::string* buffer) {
  wire::EncodeInferReply(reply, buffer);
  return RouterReply::Of(peer, *buffer, reply.request_id, KindOf(reply.status), outcome);
}

std::string ShapeText(const std::vector<uint32_t>& dims, const char* first) {
  std::string text = first;
  for (uint32_t d : dims) text += (text.size() > 1 ? "," : "") + std::to_string(d);
  return text + "]";
}

}  // namespace

// An accepted request, owned by the batcher until a worker answers it.
struct TailServer::Job {
  std::string peer;
  zmq::message_t body;              // the request as received; the worker decodes it
  wire::InferRequestHeader header;  // what the socket thread admitted it by
  int64_t received_us = 0;
  bool answered = false;  // a reply has been posted (worker side)
  // The model set the request was admitted against; it is validated and computed by the same
  // set.
  std::shared_ptr<ModelSet> models;
  wire::InferRequest* request = nullptr;  // decoded by the worker, in its Outbox

  std::string_view bytes() const {
    return std::string_view(static_cast<const char*>(body.data()), body.size());
  }
};

// A worker's replies on their way to the socket thread, and its buffers. The replies of a
// group go out together (RouterService::PostAll); a job counts as answered only once its reply
// was handed over, so a throw before that leaves it to the batcher's kComputeFailed.
struct TailServer::Outbox {
  std::vector<RouterReply> replies;
  std::vector<Job*> jobs;  // replies[i] answers jobs[i]
  std::string encoded;
  wire::InferReply reply;
  std::vector<wire::InferRequest> requests;  // the batch's decoded requests
  std::vector<float> features;               // a group's decoded features, row after row

  void Add(Job& job, const wire::InferReply& r, Outcome outcome) {
    replies.push_back(EncodeTailReply(job.peer, r, outcome, &encoded));
    jobs.push_back(&job);
  }
  void AddError(Job& job, wire::ReplyStatus status, const std::string& error, Outcome outcome) {
    wire::InferReply r;
    r.request_id = job.header.request_id;
    r.status = status;
    r.error = error;
    Add(job, r, outcome);
  }
  void Flush(RouterService& service) {
    if (replies.empty()) return;
    service.PostAll(replies);
    for (Job* job : jobs) job->answered = true;
    jobs.clear();
  }
  void Discard() {
    replies.clear();
    jobs.clear();
  }
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
  // thread to admit requests (split point, tag) and by the workers to validate and decode
  // them, without a slot's mutex.
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
  for (int w = 0; w < server->options_.workers; ++w) {
    server->outboxes_.push_back(std::make_unique<Outbox>());
  }
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

void TailServer::PostError(Job& job, wire::ReplyStatus status, const std::string& error,
                           Outcome outcome) {
  Outbox one;
  one.AddError(job, status, error, outcome);
  one.Flush(*service_);
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

// What the socket thread could not check without decoding: a version 1 request names this
// model and carries features of its shape, one image per request ([1, C, H, W]).
Status TailServer::CheckVersion1(const ModelSet& set, const wire::InferRequest& r) {
  if (r.model != set.model_name) {
    return Status::InvalidArgument("model '" + r.model + "' is not served here (serving '" +
                                   set.model_name + "')");
  }
  if (r.input != wire::InputKind::kFeatures) return Status::Ok();
  const std::vector<uint32_t>& got = r.features.shape;
  const std::vector<uint32_t>& want = set.feature_shape;
  bool shape_ok = got.size() == want.size() + 1 && got[0] == 1;
  for (size_t i = 0; shape_ok && i < want.size(); ++i) shape_ok = got[i + 1] == want[i];
  if (shape_ok) return Status::Ok();
  return Status::InvalidArgument("features have shape " + ShapeText(got, "[") + " but model '" +
                                 set.model_name + "' expects " + ShapeText(want, "[1"));
}

void TailServer::ComputeBatch(int worker, std::vector<Job>& jobs) {
  if (options_.before_compute) options_.before_compute(worker);
  Outbox& outbox = *outboxes_[static_cast<size_t>(worker) % outboxes_.size()];
  outbox.Discard();
  // Decode and validate each request here, off the socket thread; a request that fails is
  // answered now and left out of the groups.
  std::vector<Job*> valid;
  valid.reserve(jobs.size());
  outbox.requests.resize(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) {
    Job& job = jobs[i];
    Result<wire::InferRequest> request = wire::DecodeInferRequest(job.bytes());
    Status refused = request.ok() ? Status::Ok() : request.status();
    if (refused.ok() && request->protocol_version == wire::kProtocolVersion) {
      refused = CheckVersion1(*job.models, *request);
    }
    if (!refused.ok()) {
      outbox.AddError(job, wire::ReplyStatus::kError,
                      request.ok() ? refused.message() : refused.ToString(), Outcome::kRejected);
      continue;
    }
    outbox.requests[i] = std::move(request).value();
    job.request = &outbox.requests[i];
    valid.push_back(&job);
  }
  outbox.Flush(*service_);
  // Each job is computed by the set it was admitted against; a batch formed across a swap
  // holds jobs of two sets and computes one group per set.
  std::vector<ModelSet*> sets;
  for (const Job* job : valid) {
    if (std::find(sets.begin(), sets.end(), job->models.get()) == sets.end()) {
      sets.push_back(job->models.get());
    }
  }
  for (ModelSet* set : sets) {
    // One group per split point's features (split 0 also holds version 1 requests), one for
    // whole images.
    std::vector<std::vector<Job*>> feature_groups(set->layouts.size());
    std::vector<Job*> png_group;
    for (Job* job : valid) {
      if (job->models.get() != set) continue;
      if (job->request->input == wire::InputKind::kPng) {
        png_group.push_back(job);
      } else {
        feature_groups[job->request->split].push_back(job);
      }
    }
    ModelSlot& slot = *set->slots[static_cast<size_t>(worker) % set->slots.size()];
    for (size_t s = 0; s < feature_groups.size(); ++s) {
      ComputeGroup(*set, slot, feature_groups[s], static_cast<int>(s), outbox);
    }
    ComputeGroup(*set, slot, png_group, /*split=*/-1, outbox);
  }
}

void TailServer::ComputeGroup(const ModelSet& set, ModelSlot& slot, std::vector<Job*>& group,
                              int split, Outbox& outbox) {
  if (group.empty()) return;
  const bool features = split >= 0;
  std::vector<torch::Tensor> images;
  std::vector<Job*> valid;
  try {
    // Features are decoded straight into one batch buffer, row after row.
    const wire::FeatureLayout* layout =
        features ? &set.layouts[static_cast<size_t>(split)] : nullptr;
    // Version 1 requests (split 0) were checked against feature_shape.
    const std::vector<uint32_t>& row_shape = !features    ? set.feature_shape
                                             : split == 0 ? set.feature_shape
                                                          : layout->shape;
    int64_t row_elements = 1;
    for (uint32_t d : row_shape) row_elements *= d;
    outbox.features.clear();
    for (Job* job : group) {
      if (features) {
        Result<std::vector<float>> decoded = wire::DecodeRequestFeatures(*job->request, *layout);
        if (decoded.ok() && static_cast<int64_t>(decoded->size()) != row_elements) {
          decoded =
              Status::InvalidArgument("features decode to " + std::to_string(decoded->size()) +
                                      " values, not " + std::to_string(row_elements));
        }
        if (!decoded.ok()) {
          outbox.AddError(*job, wire::ReplyStatus::kError, decoded.status().ToString(),
                          Outcome::kRejected);
          continue;
        }
        outbox.features.insert(outbox.features.end(), decoded->begin(), decoded->end());
      } else {
        // An encoded PNG or JPEG of any size and colour, converted to the bundle's input.
        Result<torch::Tensor> image = split::DecodeImageTensor(job->request->png, slot.input);
        if (!image.ok()) {
          outbox.AddError(*job, wire::ReplyStatus::kError, image.status().ToString(),
                          Outcome::kRejected);
          continue;
        }
        images.push_back(*std::move(image));
      }
      valid.push_back(job);
    }
    outbox.Flush(*service_);  // the refusals are final
    if (valid.empty()) return;
    torch::Tensor batch;
    if (features) {
      std::vector<int64_t> sizes = {static_cast<int64_t>(valid.size())};
      sizes.insert(sizes.end(), row_shape.begin(), row_shape.end());
      // Borrows outbox.features, which outlives the computation.
      batch = torch::from_blob(outbox.features.data(), sizes, torch::kFloat32);
    } else {
      batch = torch::cat(images, 0);
    }
    MutexLock lock(&slot.mu);
    const int64_t start = clock_.NowMicros();
    for (Job* job : valid) {
      m_->queue_seconds->Observe(static_cast<double>(start - job->received_us) * 1e-6);
    }
    Result<torch::Tensor> logits =
        features ? slot.model->RunTail(batch, split) : slot.model->RunFull(batch);
    if (!logits.ok()) {
      for (Job* job : valid) {
        outbox.AddError(*job, wire::ReplyStatus::kError, logits.status().ToString(),
                        Outcome::kError);
      }
      outbox.Flush(*service_);
      return;
    }
    batches_.fetch_add(1, std::memory_order_relaxed);
    torch::Tensor out = logits->contiguous().to(torch::kFloat32);
    const int64_t classes = out.size(1);
    const uint64_t compute_us =
        static_cast<uint64_t>(std::max<int64_t>(0, clock_.NowMicros() - start));
    m_->compute_seconds->Observe(static_cast<double>(compute_us) * 1e-6);
    m_->batch_size->Observe(static_cast<double>(valid.size()));
    wire::InferReply& reply = outbox.reply;
    reply.status = wire::ReplyStatus::kOk;
    reply.error.clear();
    reply.num_classes = static_cast<uint32_t>(classes);
    reply.batch_size = static_cast<uint32_t>(valid.size());
    reply.compute_us = compute_us;
    const float* rows = out.data_ptr<float>();
    for (size_t i = 0; i < valid.size(); ++i) {
      reply.request_id = valid[i]->header.request_id;
      reply.scores.assign(rows + i * classes, rows + (i + 1) * classes);
      reply.queue_us = static_cast<uint64_t>(std::max<int64_t>(0, start - valid[i]->received_us));
      outbox.Add(*valid[i], reply, Outcome::kOk);
    }
    outbox.Flush(*service_);
  } catch (const std::exception& e) {
    // Replies not handed over yet are dropped; their jobs get this error instead.
    outbox.Discard();
    for (Job* job : group) {
      if (!job->answered) {
        outbox.AddError(*job, wire::ReplyStatus::kError, std::string("compute failed: ") + e.what(),
                        Outcome::kError);
      }
    }
    outbox.Flush(*service_);
  }
}

// ---- socket thread --------------------------------------------------------------------------

void TailServer::ReplyNow(const std::string& peer, uint64_t request_id, wire::ReplyStatus status,
                          const std::string& error, Outcome outcome) {
  wire::InferReply reply;
  reply.request_id = request_id;
  reply.status = status;
  reply.error = error;
  RouterReply encoded = EncodeTailReply(peer, reply, outcome, &encoded_);
  service_->Send(encoded);
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

// Admits a burst by each request's header alone (wire::PeekInferRequest: no payload is copied
// or decoded here) and hands the admitted ones to the batcher together, each with its frame.
void TailServer::Admit(std::vector<InboundMessage>& burst, int64_t received) {
  // One model set for the burst: a swap takes effect from the next one.
  const std::shared_ptr<ModelSet> set = CurrentModels();
  admitting_.clear();
  admitting_deadlines_.clear();
  for (InboundMessage& message : burst) {
    Result<wire::InferRequestHeader> header = wire::PeekInferRequest(message.bytes());
    if (!header.ok()) {
      ReplyNow(message.peer, wire::PeekRequestId(message.bytes()), wire::ReplyStatus::kError,
               header.status().ToString(), Outcome::kRejected);
      continue;
    }
    const Status refused = CheckAdmissible(*set, *header);
    if (!refused.ok()) {
      ReplyNow(message.peer, header->request_id, wire::ReplyStatus::kError, refused.message(),
               Outcome::kRejected);
      continue;
    }
    admitting_deadlines_.push_back(
        header->deadline_ms > 0 ? received + int64_t{header->deadline_ms} * 1000 : 0);
    Job& job = admitting_.emplace_back();
    job.peer = std::move(message.peer);
    job.body = std::move(message.body);
    job.header = *header;
    job.received_us = received;
    job.models = set;
  }
  if (admitting_.empty()) return;
  batcher_->SubmitAll(admitting_, admitting_deadlines_, &admitted_);
  std::array<std::string, 4> refusals;  // by SubmitResult, made once per burst
  for (size_t i = 0; i < admitting_.size(); ++i) {
    const SubmitResult result = admitted_[i];
    if (result == SubmitResult::kAccepted) {
      service_->Accepted();
      continue;
    }
    std::string& refusal = refusals[static_cast<size_t>(result) % refusals.size()];
    if (refusal.empty()) {
      refusal = RefusalReason(result, options_.max_queue, batcher_->EstimatedWaitMicros(),
                              options_.max_queue_wait_us);
    }
    ReplyNow(admitting_[i].peer, admitting_[i].header.request_id, wire::ReplyStatus::kOverloaded,
             refusal, Outcome::kOverloaded);
  }
  admitting_.clear();
}

// What admission checks without decoding: a version 2 request names a split point this bundle
// has and carries features coded with the same layout (tag) as the bundle's; its image input
// needs neither. Version 1 requests are validated by the worker (CheckVersion1).
Status TailServer::CheckAdmissible(const ModelSet& set, const wire::InferRequestHeader& r) {
  if (r.protocol_version != wire::kCompactProtocolVersion) return Status::Ok();
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
  hooks.admit = [this](std::vector<InboundMessage>& burst, int64_t received) {
    Admit(burst, received);
  };
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
