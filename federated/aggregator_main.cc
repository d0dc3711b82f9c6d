// cleave-aggregator: runs federated training rounds for cleave-edge daemons over ZeroMQ.
// See federated/aggregator_service.h for the protocol and the round life cycle, and
// common/cli/daemon.h for the start-up path.
#include <torch/torch.h>

#include <algorithm>
#include <iostream>

#include "common/cli/daemon.h"
#include "common/config.h"
#include "common/curve.h"
#include "common/datasets.h"
#include "common/logging.h"
#include "common/signing.h"
#include "federated/aggregator_service.h"
#include "federated/fl_config.h"
#include "federated/simulation.h"
#include "split/bundle.h"
#include "split/compute_runtime.h"
#include "split/vision_bundle.h"

namespace {

using cleave::ConfigType;
namespace federated = cleave::federated;

constexpr char kDescription[] =
    "cleave-aggregator: coordinates federated training rounds. cleave-edge daemons register "
    "over ZeroMQ, receive the global weights and what to train, and send updates; the "
    "aggregator validates them, aggregates with the configured strategy (FedAvg, FedProx, "
    "FedAdam/Yogi/Adagrad, median, trimmed mean, Krum), checkpoints after every round and "
    "resumes from the checkpoint after a restart.\n\nEvery key of the TOML config file can "
    "be given as a flag (--section.key value); flags win over the file.";

cleave::ConfigSchema AggregatorSchema() {
  cleave::ConfigSchema s;
  s.Add("aggregator.listen", ConfigType::kString, "tcp://127.0.0.1:5570",
        "ZeroMQ endpoint edges connect to (port 0 picks a free port)")
      .Add("aggregator.bundle", ConfigType::kString, "",
           "model bundle whose network is trained (its fp32 weights are the starting point); "
           "edges must serve a bundle of the same architecture")
      .Add("aggregator.bundle_public_key", ConfigType::kString, "",
           "Ed25519 public key file (cleave keys generate); when set, only bundles signed by it "
           "load")
      .Add("aggregator.signing_key", ConfigType::kString, "",
           "Ed25519 secret key file: published round bundles are signed with it")
      .Add("aggregator.curve_secret_key", ConfigType::kString, "",
           "CURVE key file of the aggregator; needs aggregator.curve_allow_list")
      .Add("aggregator.curve_allow_list", ConfigType::kString, "",
           "file of allowed edge CURVE public keys, one per line (`<key> id=<client-id>` binds a "
           "key to its client id); re-read on change or SIGHUP")
      .Add("aggregator.model", ConfigType::kString, "",
           "instead of a bundle: a built-in network trained from scratch (simple_cnn, "
           "default_split, tiny_split)")
      .Add("aggregator.rounds", ConfigType::kInt, "3", "rounds to run, then exit")
      .Add("aggregator.wait_for_clients", ConfigType::kInt, "0",
           "first round: wait for this many clients (0 = round.min_clients)")
      .Add("aggregator.start_timeout_ms", ConfigType::kInt, "60000",
           "...but start with round.min_clients after this long")
      .Add("aggregator.poll_interval_ms", ConfigType::kInt, "500", "client heartbeat period")
      .Add("aggregator.client_timeout_ms", ConfigType::kInt, "30000",
           "a sampled client silent this long (e.g. crashed) has failed; must exceed local "
           "training time")
      .Add("aggregator.max_clients", ConfigType::kInt, "10000",
           "registered clients at most (each CURVE key or, without CURVE, each connection "
           "holds one client id); registrations beyond it are refused and counted")
      .Add("aggregator.checkpoint", ConfigType::kString, "",
           "checkpoint file written after every round; resumed from at start")
      .Add("aggregator.publish_dir", ConfigType::kString, "",
           "write a model bundle per round to DIR/round-<k> (needs aggregator.bundle)")
      .Add("aggregator.summary_file", ConfigType::kString, "",
           "JSON history of the rounds, rewritten after every round")
      .Add("aggregator.eval_data_dir", ConfigType::kString, "",
           "Fashion-MNIST directory: evaluate the global model on its test set every round")
      .Add("aggregator.eval_limit", ConfigType::kInt, "0", "evaluate on the first N test images")
      .Add("aggregator.seed", ConfigType::kInt, "1", "client sampling seed")
      .Add("aggregator.threads", ConfigType::kInt, "1", "libtorch intra-op threads")
      .Add("aggregator.max_message_bytes", ConfigType::kInt, "268435456",
           "larger incoming messages are dropped by the transport")
      .Add("aggregator.admin_listen", ConfigType::kString, "",
           "host:port of the admin HTTP server (/metrics, /healthz, /readyz; port 0 picks a "
           "free port); empty = none")
      .Add("aggregator.ready_file", ConfigType::kString, "",
           "once bound, write {\"endpoint\":...,\"pid\":...,\"admin\":...} here (for "
           "supervisors/tests)")
      .Add("log.level", ConfigType::kString, "info", "trace|debug|info|warn|error|off");
  federated::AddRoundConfigKeys(s);
  return s;
}

cleave::Result<federated::AggregatorModel> LoadModel(const cleave::Config& c) {
  federated::AggregatorModel model;
  const std::string bundle_dir = c.GetString("aggregator.bundle");
  const std::string builtin = c.GetString("aggregator.model");
  if (bundle_dir.empty() == builtin.empty()) {
    return cleave::Status::InvalidArgument(
        "give exactly one of --aggregator.bundle DIR or --aggregator.model NAME");
  }
  if (!bundle_dir.empty()) {
    CLEAVE_ASSIGN_OR_RETURN(cleave::Bundle bundle, cleave::Bundle::Open(bundle_dir));
    CLEAVE_ASSIGN_OR_RETURN(cleave::split::VisionSplitModel m,
                            cleave::split::ReadVisionBundle(bundle, {}));
    model.spec = m.spec;
    model.initial = federated::GetWeights(*m.net);
    model.model_name = m.name;
    model.base_bundle = bundle_dir;
  } else {
    CLEAVE_ASSIGN_OR_RETURN(model.spec, federated::ModelSpecByName(builtin));
    torch::manual_seed(static_cast<uint64_t>(c.GetInt("aggregator.seed")));
    cleave::split::SplitVisionNet net(model.spec);
    model.initial = federated::GetWeights(*net);
    model.model_name = builtin;
  }
  const std::string eval_dir = c.GetString("aggregator.eval_data_dir");
  if (!eval_dir.empty()) {
    CLEAVE_ASSIGN_OR_RETURN(cleave::ImageDataset test,
                            cleave::LoadFashionMnist(cleave::DatasetSplit::kTest, eval_dir));
    CLEAVE_ASSIGN_OR_RETURN(model.eval_data, cleave::split::ToLabeledImages(test));
    const int64_t limit = c.GetInt("aggregator.eval_limit");
    if (limit > 0) model.eval_data = model.eval_data.Head(limit);
  }
  return model;
}

// What the rounds run with: the round keys (federated/fl_config.h) and the aggregator.* keys.
cleave::Result<federated::AggregatorOptions> ReadOptions(const cleave::cli::Daemon& daemon) {
  const cleave::Config& config = daemon.config();
  federated::AggregatorOptions options;
  options.listen = config.GetString("aggregator.listen");
  options.rounds = static_cast<int>(config.GetInt("aggregator.rounds"));
  CLEAVE_RETURN_IF_ERROR(federated::ReadRoundConfigKeys(config, options.engine, options.strategy,
                                                        options.compression));
  options.engine.seed = static_cast<uint64_t>(config.GetInt("aggregator.seed"));
  options.wait_for_clients = static_cast<int>(config.GetInt("aggregator.wait_for_clients"));
  options.start_timeout_ms = config.GetInt("aggregator.start_timeout_ms");
  options.poll_interval_ms = config.GetInt("aggregator.poll_interval_ms");
  options.client_timeout_ms = config.GetInt("aggregator.client_timeout_ms");
  options.max_clients = config.GetInt("aggregator.max_clients");
  options.checkpoint = config.GetString("aggregator.checkpoint");
  options.publish_dir = config.GetString("aggregator.publish_dir");
  if (const std::string key = config.GetString("aggregator.signing_key"); !key.empty()) {
    cleave::Result<std::string> pem = cleave::signing::ReadKeyFile(key, /*secret=*/true);
    if (!pem.ok()) return pem.status().WithContext("aggregator.signing_key");
    options.signing_key_pem = *pem;
  }
  options.summary_file = config.GetString("aggregator.summary_file");
  options.max_message_bytes = config.GetInt("aggregator.max_message_bytes");
  options.metrics = daemon.metrics();
  return options;
}

cleave::Status Serve(cleave::cli::Daemon& daemon) {
  const cleave::Config& config = daemon.config();
  CLEAVE_RETURN_IF_ERROR(
      cleave::TrustBundleKeyFile(config.GetString("aggregator.bundle_public_key")));
  CLEAVE_ASSIGN_OR_RETURN(federated::AggregatorOptions options, ReadOptions(daemon));
  CLEAVE_ASSIGN_OR_RETURN(federated::AggregatorModel model, LoadModel(config));
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
  spec.schema = AggregatorSchema();
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
