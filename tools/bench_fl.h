// Federated-learning benchmarks of `cleave bench` (commands that print JSON, never timed
// tests):
//   bench fl         FedAvg and FedProx in the setting of Li et al., "Federated Learning on
//                    Non-IID Data Silos" (NIID-Bench, ICDE 2022): Fashion-MNIST, 10 clients,
//                    Dirichlet(0.5) label skew, every client every round, 50 rounds, 10 local
//                    epochs, batch 64, SGD lr 0.01 momentum 0.9, their simple CNN;
//                    --quick is a short preset (< 10 min on 2 cores).
//   bench privacy    secure aggregation, DP, robustness, compression (tools/bench_privacy.h).
//   bench sim-scale  peak RSS and per-round overhead of `cleave sim` at populations of 1,000
//                    and 100,000 virtual clients (each population in its own process, so
//                    peak RSS is per population).
//   bench aggregate  streaming FedAvg throughput over 100 updates of a 1M-parameter model
//                    next to a plain memcpy bandwidth measured in the same run.
#pragma once

#include <CLI/CLI.hpp>

namespace cleave::tools {

// Adds `fl`, `privacy`, `sim-scale` and `aggregate` to the `bench` subcommand.
void RegisterFederatedBenchCommands(CLI::App& bench);

}  // namespace cleave::tools
