// TailServer: the cleave-cloud vision serving loop.
//
// Threads and ownership:
//  - The socket thread (the caller of Run) is the only one that touches the ROUTER socket.
//    It takes requests in bursts (RouterService, cloud/router_service.h) and admits each by
//    what it can see without decoding the payload (wire::PeekInferRequest): the protocol
//    version, the request id and deadline and, for version 2 features, the split point and
//    layout tag. It hands the burst to a DynamicBatcher (cloud/dynamic_batcher.h) under one
//    lock; the request's ZeroMQ frame moves along, never copied. A full queue gets an
//    `overloaded` reply at once; a request that is not a request (undecodable, another
//    version, a split point or layout this bundle does not have) gets an error reply naming
//    the problem at once.
//  - `workers` batcher threads compute batches. A worker decodes and validates each request of
//    its batch (wire::DecodeInferRequest; version 1: model name and feature shape) and its
//    features; a request that fails gets an error reply naming the problem from the worker
//    and the rest of the batch is computed. Feature requests go through decoder + tail, PNG
//    requests through the whole model. Requests already past their deadline when a batch is
//    formed get `deadlineExceeded` without being decoded or computed. Workers never send: they
//    encode their replies (into ZeroMQ messages) and post a batch's replies at once to the
//    RouterService (the ROUTER, a reply mailbox the socket thread polls together with it,
//    and the serving loop), and the socket thread sends them in a burst.
//  - split::CloudModel is not thread-safe. The server owns one or more model copies; worker w
//    uses models[w % models.size()] under that model's mutex, so one copy per worker computes
//    in parallel and fewer copies serialize the workers that share one.
//  - Hot reload: the copies form a model set held by std::shared_ptr. SwapModels (any thread,
//    e.g. a RepositoryPoller, cloud/model_repository.h) replaces the current set atomically.
//    Each accepted request keeps the set it was admitted against (split point and layout tag)
//    and is validated (model name, feature shape) and computed by it, so requests queued or
//    computing during a swap finish on the old version and no request fails because of a
//    swap; the old set is freed with its last request. New requests are admitted against and
//    computed by the new set.
// Nothing a peer sends can stop the loop or a worker. Run stops accepting when asked to stop,
// then drains: every accepted request is computed and answered before Run returns.
//
// Metrics (common/metrics.h, component "cloud"): every reply is counted by outcome (ok;
// overloaded; rejected for undecodable or invalid requests and those past their deadline; error
// when the model fails), wire bytes of every message received and every reply actually queued,
// queue and compute seconds, batch sizes, pending requests (accepted, not answered yet), and
// cleave_connected_edges as the peers seen in the last minute. Replies the ROUTER cannot route
// (ROUTER_MANDATORY: peer gone or its pipe full) are counted in stats().undeliverable.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cloud/dynamic_batcher.h"
#include "cloud/router_service.h"
#include "common/clock.h"
#include "common/inference_wire.h"
#include "common/metrics.h"
#include "common/mutex.h"
#include "common/status.h"
#include "common/transport.h"
#include "split/split_runtime.h"

namespace cleave::cloud {

struct TailServerOptions {
  std::string listen = "tcp://127.0.0.1:5560";
  int max_batch = 64;                 // most requests computed together (>= 1)
  int64_t max_queue_delay_us = 2000;  // longest the oldest request waits for a fuller batch
  // Hold requests for the delay even when no batch is being computed (false: an idle server
  // computes a lone request at once; DynamicBatcherOptions::hold_when_idle).
  bool hold_when_idle = false;
  size_t max_queue = 1024;  // most accepted requests waiting; beyond: `overloaded`
  // Most estimated queueing microseconds for a new request; beyond: `overloaded` (0 = no bound;
  // see DynamicBatcherOptions::max_queue_wait_us).
  int64_t max_queue_wait_us = 0;
  int workers = 1;           // compute threads (>= 1)
  int intra_op_threads = 0;  // torch::set_num_threads on each worker; 0 = leave as is
  SocketOptions socket;
  // Time for queueing and deadlines; null = SystemClock(). Must outlive the server.
  const Clock* clock = nullptr;
  // Test hook: runs on the worker before each batch is computed (e.g. to hold a worker).
  std::function<void(int worker)> before_compute;
  // Where the server's metrics go; null = a private registry nobody exports.
  std::shared_ptr<Metrics> metrics;
  // Version number of the models given to Create (from a model repository; 0 = none).
  uint64_t model_version = 0;
};

struct TailServerStats {
  uint64_t requests = 0;
  uint64_t replied_ok = 0;
  uint64_t replied_error = 0;
  uint64_t replied_deadline = 0;
  uint64_t replied_overloaded = 0;
  uint64_t batches = 0;
  uint64_t undeliverable = 0;  // replies the ROUTER could not route (peer gone)
  uint64_t model_version = 0;  // version new requests are served by (see SwapModels)
  uint64_t model_swaps = 0;    // successful SwapModels calls
};

class TailServer {
 public:
  // Binds `options.listen`. `context` must outlive the server. `models` are copies of the same
  // model (at least one; see the file comment for how workers share them). InvalidArgument for
  // bad options or no model.
  static Result<std::unique_ptr<TailServer>> Create(
      TransportContext& context, TailServerOptions options,
      std::vector<std::unique_ptr<split::CloudModel>> models);
  // One model shared by every worker (serialized).
  static Result<std::unique_ptr<TailServer>> Create(TransportContext& context,
                                                    TailServerOptions options,
                                                    std::unique_ptr<split::CloudModel> model);
  ~TailServer();
  TailServer(const TailServer&) = delete;
  TailServer& operator=(const TailServer&) = delete;

  const std::string& endpoint() const;

  // Runs one input of each kind (features, image) through every model copy so the first
  // request does not pay for lazy initialization. Call before Run, never concurrently with it.
  // The error of the model, if any (then the bundle cannot serve).
  Status WarmUp() EXCLUDES(models_mu_);

  // Makes `models` (warm copies of one version; at least one, none null) the set every request
  // accepted from now on is validated against and computed by. Requests already accepted
  // finish on the set they started with. Any thread, also while Run is serving.
  // InvalidArgument (and nothing changes) for an empty set or a null model.
  Status SwapModels(uint64_t version, std::vector<std::unique_ptr<split::CloudModel>> models)
      EXCLUDES(models_mu_);
  // The version new requests are served by. Any thread.
  uint64_t served_version() const { return served_version_.load(std::memory_order_acquire); }

  // Starts the workers and serves until `should_stop()` is true (checked at least every
  // 100 ms), then answers every accepted request and stops the workers. Call once.
  Status Run(const std::function<bool()>& should_stop) EXCLUDES(models_mu_);

  // Read only from the socket thread, or after Run returned.
  const TailServerStats& stats() const { return stats_; }
  // Requests accepted and waiting for a batch. Any thread.
  size_t queued_requests() const;

 private:
  struct Job;
  struct ModelSlot;
  struct ModelSet;
  struct Outbox;
  using Batcher = DynamicBatcher<Job>;

  TailServer(TailServerOptions options, std::shared_ptr<ModelSet> models);
  static Status CheckAdmissible(const ModelSet& set, const wire::InferRequestHeader& header);
  static Status CheckVersion1(const ModelSet& set, const wire::InferRequest& request);
  static Result<std::shared_ptr<ModelSet>> MakeSet(
      uint64_t version, std::vector<std::unique_ptr<split::CloudModel>> models);
  std::shared_ptr<ModelSet> CurrentModels() const EXCLUDES(models_mu_);
  // Socket thread.
  void Admit(std::vector<InboundMessage>& burst, int64_t received_us) EXCLUDES(models_mu_);
  void ReplyNow(const std::string& peer, uint64_t request_id, wire::ReplyStatus status,
                const std::string& error, Outcome outcome);
  void PublishStats();
  // Worker threads.
  void ComputeBatch(int worker, std::vector<Job>& jobs);
  void ComputeGroup(const ModelSet& set, ModelSlot& slot, std::vector<Job*>& group, int split,
                    Outbox& outbox);
  void Reject(Rejection why, Job& job);
  void PostError(Job& job, wire::ReplyStatus status, const std::string& error, Outcome outcome);

  TailServerOptions options_;
  const Clock& clock_;
  std::shared_ptr<Metrics> metrics_;
  const ServiceMetrics* m_ = nullptr;  // metrics_->Service("cloud")
  mutable Mutex models_mu_;
  std::shared_ptr<ModelSet> models_ GUARDED_BY(models_mu_);  // copied per accepted request
  std::atomic<uint64_t> served_version_{0};
  std::atomic<uint64_t> model_swaps_{0};
  std::unique_ptr<RouterService> service_;  // the socket, the reply mailbox and the loop
  std::unique_ptr<Batcher> batcher_;        // stopped by ~TailServer before anything else goes
  TailServerStats stats_;                   // socket thread
  std::atomic<uint64_t> batches_{0};        // workers
  // Socket thread: the burst being admitted, reused from burst to burst.
  std::vector<Job> admitting_;
  std::vector<int64_t> admitting_deadlines_;
  std::vector<SubmitResult> admitted_;
  std::string encoded_;  // ReplyNow's encoding buffer
  // Worker w's buffers (replies, decoded features), reused from batch to batch.
  std::vector<std::unique_ptr<Outbox>> outboxes_;
};

}  // namespace cleave::cloud
