// cleave-edge: the edge daemon for IoT gateways.
//   cleave-edge serve    — serve local applications over ZeroMQ (the daemon)
//   cleave-edge classify — one-shot: classify image files or an IDX file and exit
//   cleave-edge generate — one-shot: generate text with an lm-split bundle
// Start-up (flags, config, logging, signals, admin port, ready file) is common/cli/daemon.h.
#include <torch/torch.h>

#include <memory>
#include <optional>

#include <nlohmann/json.hpp>

#include "common/cli/daemon.h"
#include "common/curve.h"
#include "common/logging.h"
#include "edge/cli/classify_command.h"
#include "edge/cli/generate_command.h"
#include "edge/edge_config.h"
#include "edge/edge_server.h"
#include "edge/federated_setup.h"
#include "edge/model_repository.h"
#include "edge/stream_config.h"
#include "edge/stream_feeder.h"
#include "split/compute_runtime.h"

namespace {

namespace edge = cleave::edge;
using cleave::Status;

constexpr char kDescription[] =
    "cleave-edge: the edge daemon. Runs the compressed head of a split model with its early "
    "exits; confident inputs are answered on the gateway, hard ones send a few dozen bytes "
    "of quantized bottleneck features to cleave-cloud. If the cloud does not answer within "
    "a request's deadline, the best local exit answers, marked degraded. `generate` does the "
    "same for language models (hard-token routing).\n\n`serve --edge.source SOURCE` also "
    "classifies a stream of frames (zmq-pull://, zmq-sub://, dir:PATH, stdin) with at most "
    "--edge.stream_window requests in flight per stream; while the window is full a newer "
    "frame replaces the waiting one (latest frame wins, counted as dropped). One JSON line per "
    "frame (answer or drop) goes to --edge.stream_results.\n\nEvery key of the "
    "TOML config file can be given as a flag (--section.key value); flags win over the file.";

// The application endpoint, its link to the cloud and the head it starts with.
cleave::Result<std::unique_ptr<edge::EdgeServer>> CreateServer(
    cleave::TransportContext& context, const cleave::cli::Daemon& daemon,
    std::unique_ptr<edge::EdgeEngine> engine) {
  const cleave::Config& config = daemon.config();
  edge::EdgeServerOptions options;
  options.listen = config.GetString("edge.listen");
  options.cloud = config.GetString("edge.cloud");
  options.default_deadline_ms = static_cast<uint32_t>(config.GetInt("edge.deadline_ms"));
  options.max_batch = static_cast<int>(config.GetInt("edge.max_batch"));
  options.max_pending = static_cast<size_t>(config.GetInt("edge.max_pending"));
  CLEAVE_RETURN_IF_ERROR(edge::ReadOffloadOptions(config, options));
  options.metrics = daemon.metrics();
  cleave::SocketOptions cloud_socket;
  CLEAVE_RETURN_IF_ERROR(cleave::SetUpCurveClient(config.GetString("edge.curve_secret_key"),
                                                  config.GetString("edge.cloud_curve_public_key"),
                                                  cloud_socket)
                             .WithContext("edge.cloud_curve_public_key"));
  options.cloud_configure = cloud_socket.configure;
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<edge::EdgeServer> server,
                          edge::EdgeServer::Create(context, options, std::move(engine)));
  CLEAVE_RETURN_IF_ERROR(server->WarmUp());
  cleave::GetLogger("edge")->info("serving applications on {}; cloud at {}", server->endpoint(),
                                  options.cloud.empty() ? "(none)" : options.cloud);
  return server;
}

// Hot swap: new versions load, verify and warm up on the poller's thread while the old one
// serves, then replace it.
cleave::Result<std::unique_ptr<edge::RepositoryPoller>> WatchRepository(
    const cleave::Config& config, edge::ModelRepository& repository, edge::EdgeServer& server,
    std::shared_ptr<edge::EdgeLearner> learner) {
  server.set_initial_version(repository.current_version());
  const int64_t interval_ms = config.GetInt("edge.reload_interval_ms");
  if (interval_ms < 1) {
    return Status::InvalidArgument("edge.reload_interval_ms must be >= 1, got " +
                                   std::to_string(interval_ms));
  }
  return std::make_unique<edge::RepositoryPoller>(
      repository, interval_ms, [&server, learner](std::unique_ptr<edge::ServableEngine> next) {
        if (learner) {
          // Later adaptation starts from the new version's head; a version the learner
          // cannot take pauses it (EdgeLearner::Rebase).
          if (Status s = learner->Rebase(next->bundle); !s.ok()) {
            cleave::GetLogger("edge")->warn("adaptation paused: {}", s.ToString());
          }
        }
        (void)server.SwapEngine(next->version, std::move(next->engine));
      });
}

// Checks made before anything loads: values a bad config would otherwise trip over later.
Status CheckServeConfig(const cleave::Config& config) {
  const int64_t max_pending = config.GetInt("edge.max_pending");
  if (max_pending < 1) {
    return Status::InvalidArgument("edge.max_pending must be >= 1, got " +
                                   std::to_string(max_pending));
  }
  edge::EdgeServerOptions offload;
  CLEAVE_RETURN_IF_ERROR(edge::ReadOffloadOptions(config, offload));
  return edge::StreamSetupFromConfig(config).status();
}

// edge.source: frames from the source go through the server's application endpoint.
cleave::Result<std::unique_ptr<edge::StreamFeeder>> StartStream(cleave::TransportContext& context,
                                                                const cleave::cli::Daemon& daemon,
                                                                const edge::EdgeServer& server) {
  CLEAVE_ASSIGN_OR_RETURN(std::optional<edge::StreamSetup> setup,
                          edge::StreamSetupFromConfig(daemon.config()));
  if (!setup) return std::unique_ptr<edge::StreamFeeder>();
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<edge::FrameSource> source,
                          edge::OpenFrameSource(context, setup->spec, setup->source));
  setup->feeder.daemon = server.endpoint();
  setup->feeder.metrics = daemon.metrics();
  return edge::StreamFeeder::Start(context, std::move(setup->feeder), std::move(source));
}

Status Serve(cleave::cli::Daemon& daemon) {
  const cleave::Config& config = daemon.config();
  std::unique_ptr<edge::ModelRepository> repository;
  CLEAVE_ASSIGN_OR_RETURN(edge::ServableEngine loaded,
                          edge::LoadConfiguredEngine(config, &repository));
  CLEAVE_ASSIGN_OR_RETURN(std::optional<edge::FederatedSetup> federated,
                          edge::PrepareFederated(config, loaded.bundle));
  cleave::TransportContext context;
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<edge::EdgeServer> server,
                          CreateServer(context, daemon, std::move(loaded.engine)));
  // On-gateway learning: adapted heads go through the same hot swap as new versions.
  CLEAVE_ASSIGN_OR_RETURN(edge::AdaptOptions adapt, edge::AdaptOptionsFromConfig(config));
  std::shared_ptr<edge::EdgeLearner> learner;
  if (adapt.enabled) {
    edge::EdgeServer* raw = server.get();
    CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<edge::EdgeLearner> created,
                            edge::EdgeLearner::Create(
                                std::move(adapt), loaded.bundle, edge::HeadOptions(config),
                                [raw](std::unique_ptr<edge::EdgeEngine> engine) {
                                  (void)raw->SwapEngine(raw->served_version(), std::move(engine));
                                },
                                daemon.metrics()));
    learner = std::move(created);
    server->set_learner(learner);
  }
  std::unique_ptr<edge::RepositoryPoller> poller;
  if (repository) {
    CLEAVE_ASSIGN_OR_RETURN(poller, WatchRepository(config, *repository, *server, learner));
  }
  // Declared after the server, so it is stopped and joined first (and before `context`).
  std::unique_ptr<edge::FederatedClient> fl_client;
  nlohmann::json ready = nlohmann::json::object();
  if (federated) {
    nlohmann::json fl_ready;
    CLEAVE_ASSIGN_OR_RETURN(
        fl_client, edge::StartFederatedClient(context, config, std::move(*federated), &fl_ready));
    ready["federated"] = fl_ready;
  }
  if (repository) ready["model_version"] = server->served_version();
  // Declared after the server: its thread is joined before the server goes.
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<edge::StreamFeeder> stream,
                          StartStream(context, daemon, *server));
  if (stream) {
    ready["stream_source"] = stream->source_description();
    if (!stream->publish_endpoint().empty()) ready["stream_publish"] = stream->publish_endpoint();
  }
  CLEAVE_RETURN_IF_ERROR(daemon.BecomeReady(server->endpoint(), ready));
  // On shutdown the server keeps answering until the stream has drained its requests in
  // flight; a stream whose source failed stops the daemon with that error.
  Status run = server->Run([&stream] {
    if (!stream) return cleave::cli::Daemon::StopRequested();
    if (stream->done() && !stream->status().ok()) return true;
    if (!cleave::cli::Daemon::StopRequested()) return false;
    stream->RequestStop();
    return stream->done();
  });
  if (stream) {
    Status streamed = stream->status();
    stream.reset();
    if (run.ok() && !streamed.ok()) run = streamed;
  }
  poller.reset();  // joins a load in progress before the server goes
  server->set_learner(nullptr);
  learner.reset();  // stops the learner (it saves its rows) before the server goes
  daemon.SetNotReady("shutting down");
  if (fl_client) edge::StopFederatedClient(std::move(fl_client));
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  cleave::split::TuneAllocatorForServing();
  cleave::cli::DaemonCli cli("cleave-edge", kDescription);
  cli.app().require_subcommand(1);
  const cleave::ConfigSchema schema = edge::EdgeSchema();
  CLI::App* serve = cli.app().add_subcommand(
      "serve", "serve local applications (ClassifyRequest over ZeroMQ, see common/edge_api.capnp)");
  cli.AddDaemon(*serve, {"edge", schema, CheckServeConfig, nullptr, Serve});
  edge::AddClassifyCommand(cli, schema);
  edge::AddGenerateCommand(cli.app());
  return cli.Main(argc, argv);
}
