// FederatedSetup: what cleave-edge needs to take part in federated rounds, read from the
// edge.aggregator / edge.client_id / edge.fl_* keys and prepared before serving, so that
// configuration and data errors stop the daemon at start-up rather than in the middle of
// serving.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/config.h"
#include "common/status.h"
#include "common/transport.h"
#include "edge/fl_client.h"
#include "federated/weights.h"
#include "split/bundle.h"
#include "split/train_data.h"
#include "split/trainable_net.h"

namespace cleave::edge {

struct FederatedSetup {
  FederatedClientOptions options;  // socket_configure is left to the caller (CURVE)
  // The training copy: the bundle's whole fp32 model (cleave's own or imported).
  std::unique_ptr<split::TrainableNet> net;
  federated::Weights initial;  // the bundle's fp32 weights
  split::LabeledImages data;   // this edge's share of the training set
  std::string share;           // "partition i of N (scheme, seed s, rows)" for logs
};

// nullopt when edge.aggregator is empty (federated learning off). Otherwise checks the
// edge.fl_* keys (InvalidArgument naming the key), the client id (edge.client_id, or
// edge-<hostname>-<pid> when empty), reads the bundle's fp32 model (either bundle kind) and
// loads this edge's partition of the training set of edge.fl_data (default: the bundle's
// dataset) converted to the bundle's input (FailedPrecondition when the partition is empty).
// `config` needs the keys of the cleave-edge schema.
Result<std::optional<FederatedSetup>> PrepareFederated(const Config& config, const Bundle& bundle);

// Starts taking part in rounds with what `setup` prepared, over CURVE when `config` names
// edge.curve_secret_key and edge.aggregator_curve_public_key (errors name the latter).
// Logs who and what takes part and sets *ready to it ({"aggregator", "client_id",
// "examples", "share"}) for the ready file. `context` must outlive the client.
Result<std::unique_ptr<FederatedClient>> StartFederatedClient(TransportContext& context,
                                                              const Config& config,
                                                              FederatedSetup setup,
                                                              nlohmann::json* ready);

// Ends participation: asks the client to stop, waits up to 5 s for its thread to say bye to
// the aggregator, logs what it did and joins it.
void StopFederatedClient(std::unique_ptr<FederatedClient> client);

}  // namespace cleave::edge
