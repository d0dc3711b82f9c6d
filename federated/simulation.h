// The many-client simulation engine behind `cleave sim` and `cleave bench fl|sim-scale`.
//
// One process simulates a population of virtual clients with exactly the code the service
// uses: the same RoundEngine, Strategy and TrainLocally. A client exists only as a row of
// the partition (its sample indices) until it is sampled; then a worker materializes its
// data, trains the worker's own network from the global weights and hands the update to
// the engine, so memory grows with the number of workers, not with the population.
//
// Time is simulated: each client has a fixed speed factor (uniform in [speed_min,
// speed_max], drawn from the seed and its id) and a sampled client needs
// steps x step_seconds x speed of virtual time. The engine runs on a virtual clock, so the
// round deadline, over-commitment and dropouts (each sampled client drops with probability
// `dropout`) decide who is on time exactly as they would in the service, without anyone
// sleeping. Clients that would arrive after the deadline or after the round reached its
// target are not trained at all (they are counted late); that is where most of a large
// simulation's time would otherwise go.
//
// Deterministic given the options: every random choice is seeded from (seed, round,
// client), updates are submitted in arrival order regardless of which worker finishes
// first, and each worker uses one libtorch thread.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "federated/attack.h"
#include "federated/continual.h"
#include "federated/continual_metrics.h"
#include "federated/continual_stream.h"
#include "federated/partition.h"
#include "federated/round_engine.h"
#include "federated/strategy.h"
#include "federated/update_compression.h"
#include "split/image_rows.h"
#include "split/input_spec.h"
#include "split/train_data.h"
#include "split/trainable_net.h"
#include "split/vision_model.h"

namespace cleave::federated {

// "simple_cnn" (VisionModelSpec::SimpleCnn), "default_split", "residual_split",
// "tiny_split", or a model spec file (a name ending in .json or .toml, read by
// split::LoadVisionModelSpecFile; its errors name the file and the field).
Result<split::VisionModelSpec> ModelSpecByName(const std::string& name);

// The dataset a simulation draws from: training rows (partitioned among clients) and the
// test rows the server evaluates on.
struct SimData {
  // In memory, or streamed when larger than the memory budget (split/image_rows.h): a
  // client's rows are then read when it trains.
  split::ImageRows train, test;
  std::vector<uint8_t> train_labels;  // for the partitioner
  // The data's input and normalization; when set, the model is re-seated for it
  // (VisionModelSpec::ForInput). Unset: the named model as it is (28x28 gray, 10 classes).
  std::optional<split::InputSpec> input;
  std::vector<float> mean, std;
};
// Loads the dataset `spec` (split/dataset.h: "fashion-mnist", "idx:DIR", "cifar:DIR",
// "folder:DIR", ...; a plain directory means fashion-mnist:DIR); `train_limit`/`test_limit`
// keep the first rows (0 = all). `image_size` > 0 resizes the images to that side.
// InvalidArgument for more than 256 classes (the partitioners' limit).
Result<SimData> LoadSimData(const std::string& spec, int64_t train_limit = 0,
                            int64_t test_limit = 0, int image_size = 0, int64_t memory_mb = 4096);
// The simulated model: ModelSpecByName(name), re-seated for data.input when it is set.
Result<split::VisionModelSpec> SimModelSpec(const std::string& name, const SimData& data);
// The simulated network with its initial weights: cleave's own (a built-in name or a model
// spec file: SimModelSpec, initialized from `seed`), or a user's TorchScript model (a name
// ending in .pt/.pth/.ptc: split::LoadTorchScriptTrainable on data.input, its weights as
// exported), which must map the data's images to its classes.
Result<std::unique_ptr<split::TrainableNet>> MakeSimModel(const std::string& name,
                                                          const SimData& data, uint64_t seed);

// Federated continual learning (`cleave sim --continual`). The clients' data arrive as a
// stream of `experiences` spread evenly over the rounds (round r, from 1, is in experience
// (r - 1) x experiences / rounds):
//   class   class-incremental: experience e holds the classes c with
//           c x experiences / classes == e; a client trains on its rows of those classes
//           (clients without any are not sampled in that experience);
//   domain  domain-incremental: a client's rows are cut into `experiences` consecutive
//           chunks, and chunk e is seen through the pixel permutation of experience e
//           (experience 0 unpermuted; Permuted MNIST, Goodfellow et al. 2013).
// Each client keeps its strategy (federated/continual.h: its replay buffer, EWC's Fisher,
// LwF's teacher) across rounds, and consolidates when it first trains in a new experience:
// O(participants x buffer) memory; not checkpointed (a resumed run starts them empty, as
// compression residuals). After every round the global model is evaluated on every
// experience's test data (the test rows of its classes, or all test rows through its
// permutation): the round record's extra["continual"], the accuracy matrix and the metrics
// of federated/continual_metrics.h in SimResult::continual.
// The stream is cut by federated/continual_stream.h, as the aggregator and the edges cut it.
using ContinualSimOptions = ContinualStreamOptions;

struct SimOptions {
  std::string model = "simple_cnn";
  int num_clients = 100;
  PartitionSpec partition;  // default iid
  int rounds = 10;
  EngineOptions engine;
  StrategyConfig strategy;
  // Uplink compression of every client's delta (federated/update_compression.h). When not
  // "none" each update is encoded, counted (the round's extra["bytes_up"]), decoded, and
  // global + decoded delta goes to the engine. Error-feedback residuals are kept per client
  // that has trained, O(participants x trainable model) memory, and are not checkpointed (a
  // resumed run starts them at zero).
  CompressionConfig compression;
  // Byzantine clients (federated/attack.h): floor(fraction x num_clients) of the population,
  // chosen from the seed, attack in every round they are sampled (before any compression).
  // Each round's extra["attack"] counts the malicious clients among the sampled.
  AttackOptions attack;
  ContinualSimOptions continual;
  int workers = 0;             // 0 = one per core
  double step_seconds = 0.05;  // virtual time of one local step at speed factor 1
  double speed_min = 1.0, speed_max = 1.0;
  double dropout = 0.0;              // probability that a sampled client drops out of a round
  int eval_every = 1;                // evaluate on the test set every k rounds (0 = only the last)
  uint64_t seed = 1;                 // partition, model initialization, training, dropouts, speeds
  std::string checkpoint;            // when set: written after every round, resumed from if present
  std::FILE* progress_out = stderr;  // a progress bar per round; null = silent
  std::function<bool()> cancelled;   // polled between clients and rounds
  // Called after every finished round (e.g. to write the history so far).
  std::function<void(const RoundRecord&)> on_round;

  nlohmann::json ToJson() const;
  Status Validate() const;
};

struct SimResult {
  std::vector<RoundRecord> history;  // every round, including ones before a resume
  Weights global;
  double best_accuracy = 0, final_accuracy = 0;
  double wall_seconds = 0;  // this invocation
  int64_t peak_rss_bytes = 0;
  int resumed_from_round = 0;  // 0 = fresh start
  // Continual runs: {"scenario", "experiences", "strategy", "matrix", "metrics": {"acc",
  // "bwt", "forgetting", "min_acc"}}; null otherwise.
  nlohmann::json continual;
  nlohmann::json ToJson() const;  // {"options"?, "rounds": [...], "best_accuracy", ...}
};

// Runs the simulation on `data`. InvalidArgument for bad options, FailedPrecondition when
// cancelled (the checkpoint of the last finished round stays), DataLoss/InvalidArgument
// for an unusable checkpoint (never silently restarting from scratch).
Result<SimResult> RunSimulation(const SimOptions& options, const SimData& data);

// Writes the history as CSV (one row per round) to `path` atomically.
Status WriteHistoryCsv(const std::vector<RoundRecord>& history, const std::string& path);

}  // namespace cleave::federated
