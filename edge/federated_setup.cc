#include "edge/federated_setup.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/curve.h"
#include "common/datasets.h"
#include "common/fl_wire.h"
#include "common/logging.h"
#include "federated/partition.h"
#include "split/dataset.h"
#include "split/image_rows.h"
#include "split/torch_status.h"
#include "split/trainable_net.h"

namespace cleave::edge {
namespace {

// edge-<hostname>-<pid>, reduced to the characters a client id may hold.
std::string DefaultClientId() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::strcpy(host, "host");
  const std::string pid = std::to_string(::getpid());
  std::string name(host);
  const size_t room = wire::fl::kMaxClientIdBytes - std::strlen("edge--") - pid.size();
  if (name.size() > room) name.resize(room);
  std::string id = "edge-" + name + "-" + pid;
  for (char& c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && !std::strchr("._:@-", c)) c = '-';
  }
  return id;
}

// This edge's rows of the training set of edge.fl_data (default: the bundle's dataset),
// converted to the bundle's input: the first edge.fl_train_limit rows, partitioned among
// edge.fl_partitions edges exactly as every other edge with the same settings partitions them
// (MakePartition is deterministic), keeping only our share.
Result<split::LabeledImages> LoadFederatedShare(const Config& config, const split::InputSpec& input,
                                                std::string* share) {
  const int64_t partitions = config.GetInt("edge.fl_partitions");
  const int64_t index = config.GetInt("edge.fl_partition_index");
  const int64_t limit = config.GetInt("edge.fl_train_limit");
  Result<federated::PartitionSpec> parsed =
      federated::PartitionSpec::Parse(config.GetString("edge.fl_partition"));
  if (!parsed.ok()) return parsed.status().WithContext("edge.fl_partition");
  federated::PartitionSpec spec = *parsed;
  spec.seed = static_cast<uint64_t>(config.GetInt("edge.fl_seed"));
  std::string data = config.GetString("edge.fl_data");
  const std::string dir = config.GetString("edge.fl_data_dir");
  if (!dir.empty()) {
    if (!data.empty()) {
      return Status::InvalidArgument("give edge.fl_data or edge.fl_data_dir, not both");
    }
    data = "fashion-mnist:" + dir;
  }
  if (data.empty()) data = input.data.empty() ? "fashion-mnist" : input.data;
  // Labels first: only this edge's rows are read in full (the rest of a large training set
  // never enters memory; split/image_rows.h).
  Result<split::ImageRows> all = split::OpenRows(data, DatasetSplit::kTrain, input, limit,
                                                 /*memory_budget_bytes=*/0, /*threads=*/1);
  if (!all.ok()) return all.status().WithContext("edge.fl_data " + data);
  if (input.class_names.size() > 256) {
    return Status::InvalidArgument("edge.fl_data: the partitioners take at most 256 classes");
  }
  const torch::Tensor label_bytes = all->labels().to(torch::kUInt8).contiguous();
  const std::vector<uint8_t> labels(label_bytes.data_ptr<uint8_t>(),
                                    label_bytes.data_ptr<uint8_t>() + label_bytes.numel());
  Result<federated::Partition> partition = federated::MakePartition(
      labels, static_cast<int>(input.class_names.size()), static_cast<int>(partitions), spec);
  if (!partition.ok()) return partition.status().WithContext("partitioning the training set");
  const std::vector<int64_t> mine = partition->ClientIndices(static_cast<int>(index));
  *share = "partition " + std::to_string(index) + " of " + std::to_string(partitions) + " (" +
           spec.ToString() + ", seed " + std::to_string(spec.seed) + ", " +
           std::to_string(labels.size()) + " rows of " + data + ")";
  if (mine.empty()) {
    return Status::FailedPrecondition(
        *share +
        " holds no training rows; use fewer partitions, another scheme or seed, or "
        "a larger edge.fl_train_limit");
  }
  return all->Select(torch::tensor(mine, torch::kLong)).Load();
}

}  // namespace

Result<std::optional<FederatedSetup>> PrepareFederated(const Config& config, const Bundle& bundle) {
  const std::string aggregator = config.GetString("edge.aggregator");
  if (aggregator.empty()) return std::optional<FederatedSetup>();
  const int64_t partitions = config.GetInt("edge.fl_partitions");
  const int64_t index = config.GetInt("edge.fl_partition_index");
  if (partitions < 1 || partitions > 1000000) {
    return Status::InvalidArgument("edge.fl_partitions must be in [1, 1000000], got " +
                                   std::to_string(partitions));
  }
  if (index < 0 || index >= partitions) {
    return Status::InvalidArgument("edge.fl_partition_index must be in [0, " +
                                   std::to_string(partitions) + ") (edge.fl_partitions), got " +
                                   std::to_string(index));
  }
  for (const char* key : {"edge.fl_seed", "edge.fl_train_limit", "edge.fl_max_steps",
                          "edge.fl_time_budget_ms", "edge.fl_secure_drop_round"}) {
    if (config.GetInt(key) < 0) {
      return Status::InvalidArgument(std::string(key) + " must be >= 0, got " +
                                     std::to_string(config.GetInt(key)));
    }
  }
  FederatedSetup setup;
  setup.options.aggregator = aggregator;
  setup.options.client_id = config.GetString("edge.client_id");
  if (setup.options.client_id.empty()) setup.options.client_id = DefaultClientId();
  CLEAVE_RETURN_IF_ERROR(
      wire::fl::ValidateClientId(setup.options.client_id).WithContext("edge.client_id"));
  setup.options.max_steps = config.GetInt("edge.fl_max_steps");
  setup.options.time_budget_ms = config.GetInt("edge.fl_time_budget_ms");
  setup.options.secure_drop_round = static_cast<uint32_t>(
      std::min<int64_t>(config.GetInt("edge.fl_secure_drop_round"), UINT32_MAX));

  // The training copy: the bundle's whole fp32 network (the serving head is separate).
  Result<std::unique_ptr<split::TrainableNet>> net = split::TrainableFromBundle(bundle);
  if (!net.ok())
    return net.status().WithContext("federated learning needs the bundle's fp32 model");
  setup.net = std::move(net).value();
  const nlohmann::json& manifest_model = bundle.model();
  const std::string name = manifest_model.is_object() && manifest_model.contains("name") &&
                                   manifest_model["name"].is_string()
                               ? manifest_model["name"].get<std::string>()
                               : std::string();
  setup.options.model_name = name.empty() ? "model" : name;
  CLEAVE_ASSIGN_OR_RETURN(setup.initial,
                          split::CallTorch(split::TorchSource::kOwnState, "federated client",
                                           [&] { return federated::GetWeights(*setup.net); }));
  CLEAVE_ASSIGN_OR_RETURN(setup.data, LoadFederatedShare(config, setup.net->input(), &setup.share));
  return std::optional<FederatedSetup>(std::move(setup));
}

Result<std::unique_ptr<FederatedClient>> StartFederatedClient(TransportContext& context,
                                                              const Config& config,
                                                              FederatedSetup setup,
                                                              nlohmann::json* ready) {
  SocketOptions socket;
  CLEAVE_RETURN_IF_ERROR(SetUpCurveClient(config.GetString("edge.curve_secret_key"),
                                          config.GetString("edge.aggregator_curve_public_key"),
                                          socket)
                             .WithContext("edge.aggregator_curve_public_key"));
  setup.options.socket_configure = socket.configure;
  Result<std::unique_ptr<FederatedClient>> client = FederatedClient::Start(
      context, setup.options, std::move(setup.net), setup.initial, std::move(setup.data));
  if (!client.ok()) return client.status().WithContext("federated client");
  GetLogger("edge")->info("federated learning with {} as '{}': {} local examples, {}",
                          setup.options.aggregator, setup.options.client_id,
                          (*client)->num_examples(), setup.share);
  *ready = {{"aggregator", setup.options.aggregator},
            {"client_id", setup.options.client_id},
            {"examples", (*client)->num_examples()},
            {"share", setup.share}};
  return client;
}

void StopFederatedClient(std::unique_ptr<FederatedClient> client) {
  client->Stop();
  client->WaitFor([](const FederatedClientStats& s) { return !s.running; }, 5000);
  GetLogger("edge")->info("federated participation: {}", client->stats().ToJson().dump());
  client.reset();  // joins; the thread said bye to the aggregator
}

}  // namespace cleave::edge
