// `cleave bench privacy`: private and robust federated learning measured in one run, with the
// simulator (`cleave sim`'s engine, strategies and secure-aggregation code). Fashion-MNIST,
// 100 clients with Dirichlet(0.5) label skew, 20 sampled per round, the simple CNN:
//   secagg       the same FedAvg run with and without secure aggregation (accuracies must match
//                within 0.2 points), their round times, and a round in which 30 % of the 20
//                clients drop after masking that must still yield exactly the modular sum of
//                the survivors' encoded updates (`dropout_exact`).
//   dp           client-level DP-FedAvg at two noise multipliers: accuracy and the final
//                (epsilon, delta = 1e-5) of the RDP accountant; and the same mechanism with
//                secure aggregation and distributed (client-side) noise.
//   byzantine    20 % of the population sends sign-flipped x10 updates: FedAvg against median,
//                trimmed mean and Multi-Krum, next to clean FedAvg.
//   compression  uplink bytes per round and accuracy with none / int8 / top-k 1 %.
// The clean FedAvg run serves as secagg's plain run, byzantine's clean run and compression's
// `none`. --quick is the short preset (< 10 minutes on 2 cores).
#pragma once

#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::tools {

struct BenchPrivacyOptions {
  std::string json_out;      // "" = stdout only
  std::string markdown_out;  // tables for docs/benchmarks.md ("" = none)
  std::string data_dir;      // Fashion-MNIST; "" = the Debian package's directory
  bool quick = false;
  int rounds = 0;        // 0 = the preset's (quick 20, full 50)
  int local_epochs = 0;  // 0 = the preset's (quick 1, full 2)
  int workers = 0;       // 0 = one per core
  uint64_t seed = 1;
};

Result<nlohmann::json> RunBenchPrivacy(const BenchPrivacyOptions& options);
std::string BenchPrivacyMarkdown(const nlohmann::json& report);

// Adds `privacy` to the `bench` subcommand.
void RegisterBenchPrivacyCommand(CLI::App& bench);

}  // namespace cleave::tools
