// TailServer: the cleave-cloud serving loop.
//
// One thread owns a ROUTER socket. Each turn it takes every request already waiting (up to
// `max_batch`), validates each one (protocol version, model name, tensor shape), computes
// the valid feature requests as one batch through decoder + tail and the PNG requests
// through the whole model, and replies to each with its own row of class scores. A request
// that cannot be served gets an error reply naming the problem; requests whose deadline
// already passed while queued are answered `deadlineExceeded` without computing. Nothing a
// peer sends can stop the loop. Full dynamic batching (queue delay, overload replies under
// load) builds on this in a later issue.
//
// Metrics (common/metrics.h, component "cloud"): every reply is counted by outcome (ok;
// rejected for undecodable or invalid requests and those past their deadline; error when the
// model fails), wire bytes of every message received and every reply actually queued, queue
// and compute seconds, batch sizes, pending requests, and cleave_connected_edges as the
// peers seen in the last minute. The loop only increments pre-built children.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/metrics.h"
#include "common/status.h"
#include "common/transport.h"
#include "common/wire.h"
#include "split/split_runtime.h"

namespace cleave::cloud {

struct TailServerOptions {
  std::string listen = "tcp://127.0.0.1:5560";
  int max_batch = 64;
  SocketOptions socket;
  // Where the server's metrics go; null = a private registry nobody exports.
  std::shared_ptr<Metrics> metrics;
};

struct TailServerStats {
  uint64_t requests = 0;
  uint64_t replied_ok = 0;
  uint64_t replied_error = 0;
  uint64_t replied_deadline = 0;
  uint64_t batches = 0;
  uint64_t undeliverable = 0;  // replies the ROUTER could not route (peer gone)
};

class TailServer {
 public:
  // Binds `options.listen`. `context` must outlive the server.
  static Result<std::unique_ptr<TailServer>> Create(TransportContext& context,
                                                    TailServerOptions options,
                                                    std::unique_ptr<split::CloudModel> model);
  ~TailServer();
  TailServer(const TailServer&) = delete;
  TailServer& operator=(const TailServer&) = delete;

  const std::string& endpoint() const;

  // Runs one input of each kind (features, image) through the model so the first request
  // does not pay for lazy initialization. Call before Run, never concurrently with it (the
  // model is not thread-safe). The error of the model, if any (then the bundle cannot serve).
  Status WarmUp();

  // Serves until `should_stop()` is true (checked at least every 100 ms).
  Status Run(const std::function<bool()>& should_stop);

  const TailServerStats& stats() const { return stats_; }

 private:
  struct Queued {
    std::string peer;
    wire::InferRequest request;
    int64_t received_us = 0;
  };
  TailServer(TailServerOptions options, std::unique_ptr<split::CloudModel> model);
  void Serve(std::vector<Queued>& batch);
  void ComputeGroup(std::vector<Queued*>& group, bool features);
  void ReplyError(const std::string& peer, uint64_t request_id, wire::ReplyStatus status,
                  const std::string& error, Outcome outcome);
  void Send(const std::string& peer, const wire::InferReply& reply, Outcome outcome);

  TailServerOptions options_;
  std::unique_ptr<split::CloudModel> model_;
  std::unique_ptr<RouterServer> router_;
  TailServerStats stats_;
  std::shared_ptr<Metrics> metrics_;
  const ServiceMetrics* m_ = nullptr;       // metrics_->Service("cloud")
  prometheus::Gauge* connected_ = nullptr;  // cleave_connected_edges
  RecentPeers peers_;
};

}  // namespace cleave::cloud
