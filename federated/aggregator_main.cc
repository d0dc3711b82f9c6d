// cleave-aggregator: runs federated training rounds for cleave-edge daemons over ZeroMQ.
// See federated/aggregator_service.h for the protocol and the round life cycle, and
// common/cli/daemon.h for the start-up path.
#include <torch/torch.h>

#include <algorithm>
#include <iostream>

#include "common/cli/daemon.h"
#include "common/config.h"
#include "common/curve.h"
#include "common/logging.h"
#include "common/signing.h"
#include "federated/aggregator_config.h"
#include "federated/aggregator_service.h"
#include "split/bundle.h"
#include "split/compute_runtime.h"

namespace {

namespace federated = cleave::federated;

constexpr char kDescription[] =
    "cleave-aggregator: coordinates federated training rounds. cleave-edge daemons register "
    "over ZeroMQ, receive the global weights and what to train, and send updates; the "
    "aggregator validates them, aggregates with the configured strategy (FedAvg, FedProx, "
    "FedAdam/Yogi/Adagrad, median, trimmed mean, Krum), checkpoints after every round and "
    "resumes from the checkpoint after a restart.\n\nEvery key of the TOML config file can "
    "be given as a flag (--section.key value); flags win over the file.";

cleave::Status Serve(cleave::cli::Daemon& daemon) {
  const cleave::Config& config = daemon.config();
  CLEAVE_RETURN_IF_ERROR(
      cleave::TrustBundleKeyFile(config.GetString("aggregator.bundle_public_key")));
  CLEAVE_ASSIGN_OR_RETURN(federated::AggregatorOptions options,
                          federated::AggregatorOptionsFromConfig(config));
  options.metrics = daemon.metrics();
  CLEAVE_ASSIGN_OR_RETURN(federated::AggregatorModel model, federated::LoadAggregatorModel(config));
  cleave::TransportContext context;
  cleave::SocketOptions socket;
  CLEAVE_ASSIGN_OR_RETURN(
      auto zap, cleave::SetUpCurveServer(context, config.GetString("aggregator.curve_secret_key"),
                                         config.GetString("aggregator.curve_allow_list"), socket,
                                         &daemon.metrics()->CurveRefused("aggregator")));
  options.socket_configure = socket.configure;
  if (zap) options.curve_client_ids = zap->ClientIds();  // the allow list's key -> id bindings
  CLEAVE_ASSIGN_OR_RETURN(auto service,
                          federated::AggregatorService::Create(options, std::move(model), context));
  // Model loaded (and evaluated), checkpoint restored: /readyz 200, then the ready file.
  CLEAVE_RETURN_IF_ERROR(daemon.BecomeReady(service->endpoint()));
  cleave::GetLogger("aggregator")
      ->info("serving {} rounds of {} on {}", options.rounds, options.strategy.name,
             service->endpoint());
  cleave::Status run = service->Run(&cleave::cli::Daemon::StopRequested);
  daemon.SetNotReady(run.ok() ? "all rounds done" : "shutting down");
  CLEAVE_RETURN_IF_ERROR(run);
  std::cout << service->Summary().dump(2) << std::endl;
  return cleave::Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  cleave::split::TuneAllocatorForServing();
  cleave::cli::DaemonSpec spec;
  spec.component = "aggregator";
  spec.schema = federated::AggregatorSchema();
  spec.prepare = [](const cleave::Config& config) {
    cleave::split::SetComputeThreads(
        static_cast<int>(std::max<int64_t>(1, config.GetInt("aggregator.threads"))));
    return cleave::Status::Ok();
  };
  spec.declare_metrics = [](cleave::Metrics& metrics) {
    metrics.Federated();
    metrics.ConnectedEdges();
    metrics.CurveRefused("aggregator");
  };
  spec.run = Serve;
  return cleave::cli::RunDaemonMain(argc, argv, "cleave-aggregator", kDescription, std::move(spec));
}
