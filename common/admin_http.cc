#include "common/admin_http.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>

#include <prometheus/text_serializer.h>

#include "common/logging.h"

namespace cleave {
namespace {

constexpr size_t kAdminWorkers = 4;

}  // namespace

AdminServer::AdminServer(std::string host, std::shared_ptr<prometheus::Registry> registry)
    : host_(std::move(host)),
      registry_(std::move(registry)),
      server_(std::make_unique<httplib::Server>()) {}

Result<std::unique_ptr<AdminServer>> AdminServer::Start(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return Status::InvalidArgument("admin address '" + address + "' is not host:port");
  }
  const std::string host = address.substr(0, colon);
  int port = 0;
  try {
    size_t used = 0;
    port = std::stoi(address.substr(colon + 1), &used);
    if (used != address.size() - colon - 1 || port < 0 || port > 65535) throw std::out_of_range("");
  } catch (const std::exception&) {
    return Status::InvalidArgument("admin address '" + address + "' has no valid port");
  }
  if (!registry) return Status::InvalidArgument("admin server needs a metrics registry");
  std::unique_ptr<AdminServer> admin(new AdminServer(host, std::move(registry)));
  AdminServer* self = admin.get();
  httplib::Server& server = *admin->server_;
  // httplib's default adds SO_REUSEPORT, which would let a second daemon share the port
  // silently; SO_REUSEADDR alone still allows a quick restart.
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  // A few workers are plenty for probes and scrapes (httplib's default is one per core);
  // a short keep-alive frees a worker that an idle scraper connection holds.
  server.new_task_queue = [] { return new httplib::ThreadPool(kAdminWorkers); };
  server.set_keep_alive_timeout(1);
  server.Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
    const prometheus::TextSerializer serializer;
    res.set_content(serializer.Serialize(self->registry_->Collect()),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  server.Get("/readyz", [self](const httplib::Request&, httplib::Response& res) {
    MutexLock lock(&self->mu_);
    if (self->ready_) {
      res.set_content("ready\n", "text/plain");
    } else {
      res.status = 503;
      res.set_content("not ready: " + self->not_ready_reason_ + "\n", "text/plain");
    }
  });
  int bound = -1;
  if (port == 0) {
    bound = server.bind_to_any_port(host);
  } else if (server.bind_to_port(host, port)) {
    bound = port;
  }
  if (bound <= 0) {
    return Status::IoError("cannot listen for admin HTTP on " + address);
  }
  admin->port_ = bound;
  admin->thread_ = std::thread([self] {
    self->server_->listen_after_bind();
    self->listen_returned_.store(true);
  });
  return admin;
}

AdminServer::~AdminServer() {
  if (thread_.joinable()) {
    // httplib's stop() does nothing until the accept loop runs, so a server destroyed right
    // after Start would never stop: wait for the loop to start (or to have given up).
    while (!server_->is_running() && !listen_returned_.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    server_->stop();
    thread_.join();
  }
}

std::string AdminServer::url() const { return "http://" + host_ + ":" + std::to_string(port_); }

void AdminServer::SetReady(bool ready, const std::string& reason) {
  MutexLock lock(&mu_);
  ready_ = ready;
  not_ready_reason_ = ready ? "" : (reason.empty() ? "not ready" : reason);
}

bool AdminServer::ready() const {
  MutexLock lock(&mu_);
  return ready_;
}

Result<std::unique_ptr<AdminServer>> StartAdminServer(
    const std::string& component, const std::string& key, const std::string& address,
    std::shared_ptr<prometheus::Registry> registry) {
  if (address.empty()) return std::unique_ptr<AdminServer>();
  Result<std::unique_ptr<AdminServer>> admin = AdminServer::Start(address, std::move(registry));
  if (!admin.ok()) return admin.status().WithContext(key);
  (*admin)->SetReady(false, "loading the model");
  GetLogger(component)->info("admin HTTP on {} (/metrics, /healthz, /readyz)", (*admin)->url());
  return admin;
}

}  // namespace cleave
