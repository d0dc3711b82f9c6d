#include "federated/aggregator_config.h"

#include <filesystem>

#include <torch/torch.h>

#include "common/datasets.h"
#include "common/signing.h"
#include "federated/fl_config.h"
#include "federated/simulation.h"
#include "split/bundle.h"
#include "split/dataset.h"
#include "split/model_spec_file.h"
#include "split/torch_status.h"
#include "split/trainable_net.h"
#include "split/vision_bundle.h"

namespace cleave::federated {

using ConfigType = cleave::ConfigType;

ConfigSchema AggregatorSchema() {
  ConfigSchema s;
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
           "instead of a bundle: a network trained from scratch, built in (simple_cnn, "
           "default_split, residual_split, tiny_split) or a model spec file (.json or .toml)")
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
      .Add("aggregator.eval_data", ConfigType::kString, "",
           "dataset spec (fashion-mnist, idx:DIR, cifar:DIR, folder:DIR, ...): evaluate the "
           "global model on its test split every round, converted to the model's input; with "
           "aggregator.model, the built-in network is sized for this data")
      .Add("aggregator.eval_data_dir", ConfigType::kString, "",
           "Fashion-MNIST directory (older form of aggregator.eval_data fashion-mnist:DIR)")
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
  AddRoundConfigKeys(s);
  AddContinualStreamKeys(s, "aggregator.rounds",
                         "every round's config names its experience and the strategy; each "
                         "edge keeps its strategy's state (replay buffer, Fisher) in memory "
                         "across rounds; evaluation per experience needs "
                         "aggregator.eval_data_dir");
  return s;
}

Result<AggregatorModel> LoadAggregatorModel(const Config& c) {
  AggregatorModel model;
  const std::string bundle_dir = c.GetString("aggregator.bundle");
  const std::string builtin = c.GetString("aggregator.model");
  if (bundle_dir.empty() == builtin.empty()) {
    return Status::InvalidArgument(
        "give exactly one of --aggregator.bundle DIR or --aggregator.model NAME");
  }
  if (!bundle_dir.empty()) {
    CLEAVE_ASSIGN_OR_RETURN(Bundle bundle, Bundle::Open(bundle_dir));
    // Either kind: cleave's own (vision-split) or an imported model (torchscript-split).
    CLEAVE_ASSIGN_OR_RETURN(model.net, split::TrainableFromBundle(bundle));
    model.input = model.net->input();
    CLEAVE_ASSIGN_OR_RETURN(model.initial,
                            split::CallTorch(split::TorchSource::kOwnState, "aggregator model",
                                             [&] { return GetWeights(*model.net); }));
    const nlohmann::json& manifest_model = bundle.model();
    model.model_name = manifest_model.is_object() && manifest_model.contains("name") &&
                               manifest_model["name"].is_string()
                           ? manifest_model["name"].get<std::string>()
                           : std::filesystem::path(bundle_dir).filename().string();
    model.base_bundle = bundle_dir;
  } else {
    CLEAVE_ASSIGN_OR_RETURN(model.spec, ModelSpecByName(builtin));
    model.input = split::InputSpec::Legacy(model.spec);
    // A spec file's model is named by its file name without extension.
    model.model_name =
        split::IsModelSpecPath(builtin) ? std::filesystem::path(builtin).stem().string() : builtin;
  }
  std::string eval_spec = c.GetString("aggregator.eval_data");
  const std::string eval_dir = c.GetString("aggregator.eval_data_dir");
  if (!eval_dir.empty()) {
    if (!eval_spec.empty()) {
      return Status::InvalidArgument(
          "give aggregator.eval_data or aggregator.eval_data_dir, not both");
    }
    eval_spec = "fashion-mnist:" + eval_dir;
  }
  const int64_t limit = c.GetInt("aggregator.eval_limit");
  if (!eval_spec.empty() && !builtin.empty()) {
    // A built-in network sized for the evaluation data (normalized with the test split's
    // statistics, the only split the aggregator reads; Fashion-MNIST keeps its own).
    split::DatasetOptions load;
    load.test_limit = limit;
    load.load_train = false;
    CLEAVE_ASSIGN_OR_RETURN(split::LoadedDataset loaded, split::LoadDataset(eval_spec, load));
    if (loaded.input.height != loaded.input.width) {
      return Status::InvalidArgument(
          "aggregator.eval_data: cleave's own networks take square "
          "images");
    }
    auto [mean, std] = split::NormalizationFor(eval_spec, loaded.test);
    CLEAVE_ASSIGN_OR_RETURN(
        model.spec,
        model.spec.ForInput(loaded.input.channels, loaded.input.height,
                            static_cast<int>(loaded.input.class_names.size()), mean, std));
    model.input = loaded.input;
    model.eval_data = std::move(loaded.test);
  } else if (!eval_spec.empty()) {
    CLEAVE_ASSIGN_OR_RETURN(
        model.eval_data, split::LoadSplitFor(eval_spec, DatasetSplit::kTest, model.input, limit));
  }
  if (!builtin.empty()) {
    torch::manual_seed(static_cast<uint64_t>(c.GetInt("aggregator.seed")));
    split::SplitVisionNet net(model.spec);
    model.initial = GetWeights(*net);
  }
  return model;
}

Result<AggregatorOptions> AggregatorOptionsFromConfig(const Config& config) {
  AggregatorOptions options;
  options.listen = config.GetString("aggregator.listen");
  options.rounds = static_cast<int>(config.GetInt("aggregator.rounds"));
  CLEAVE_RETURN_IF_ERROR(
      ReadRoundConfigKeys(config, options.engine, options.strategy, options.compression));
  options.engine.seed = static_cast<uint64_t>(config.GetInt("aggregator.seed"));
  options.wait_for_clients = static_cast<int>(config.GetInt("aggregator.wait_for_clients"));
  options.start_timeout_ms = config.GetInt("aggregator.start_timeout_ms");
  options.poll_interval_ms = config.GetInt("aggregator.poll_interval_ms");
  options.client_timeout_ms = config.GetInt("aggregator.client_timeout_ms");
  options.max_clients = config.GetInt("aggregator.max_clients");
  options.checkpoint = config.GetString("aggregator.checkpoint");
  options.publish_dir = config.GetString("aggregator.publish_dir");
  if (const std::string key = config.GetString("aggregator.signing_key"); !key.empty()) {
    Result<std::string> pem = signing::ReadKeyFile(key, /*secret=*/true);
    if (!pem.ok()) return pem.status().WithContext("aggregator.signing_key");
    options.signing_key_pem = *pem;
  }
  options.summary_file = config.GetString("aggregator.summary_file");
  options.max_message_bytes = config.GetInt("aggregator.max_message_bytes");
  CLEAVE_ASSIGN_OR_RETURN(options.continual, ReadContinualStreamKeys(config));
  return options;
}

}  // namespace cleave::federated
