// One admin HTTP port per daemon (docs/design.md, "Observability"): /metrics in the Prometheus
// text format (prometheus-cpp's TextSerializer over the daemon's registry), /healthz (200
// while the process serves HTTP at all: liveness) and /readyz (200 only once the daemon
// says it is ready - models loaded and warm -, else 503 with the reason: readiness).
// Served by cpp-httplib on its own threads (one accepting, four answering); everything else
// answers 404.
//
// Thread-safe: SetReady may be called from any thread; metrics are prometheus-cpp's
// thread-safe counters, gauges and histograms.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <prometheus/registry.h>

#include "common/mutex.h"
#include "common/status.h"
#include "common/thread_annotations.h"

namespace httplib {
class Server;
}

namespace cleave {

class AdminServer {
 public:
  // Listens on `address` ("host:port"; port 0 picks a free one). InvalidArgument for a
  // malformed address, IoError when the port cannot be bound.
  static Result<std::unique_ptr<AdminServer>> Start(const std::string& address,
                                                    std::shared_ptr<prometheus::Registry> registry);
  ~AdminServer();  // stops serving and joins the thread
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  int port() const { return port_; }
  // "http://host:port", for logs and ready files.
  std::string url() const;
  void SetReady(bool ready, const std::string& reason = "") EXCLUDES(mu_);
  bool ready() const EXCLUDES(mu_);

 private:
  AdminServer(std::string host, std::shared_ptr<prometheus::Registry> registry);

  std::string host_;
  int port_ = 0;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::atomic<bool> listen_returned_{false};
  // Readiness: written by SetReady on the daemon's threads, read by /readyz handlers.
  mutable Mutex mu_;
  bool ready_ GUARDED_BY(mu_) = false;
  std::string not_ready_reason_ GUARDED_BY(mu_) = "starting";
};

// Daemon wiring for the `<component>.admin_listen` config key: null when `address` is empty
// (no admin port); otherwise a server that is not ready ("loading the model") until the
// daemon says so, its URL logged on `component`'s logger ("admin HTTP on http://..."). A
// configured address that cannot be served is an error naming `key`: a daemon that cannot
// be probed or scraped must not start as if it could.
Result<std::unique_ptr<AdminServer>> StartAdminServer(
    const std::string& component, const std::string& key, const std::string& address,
    std::shared_ptr<prometheus::Registry> registry);

}  // namespace cleave
