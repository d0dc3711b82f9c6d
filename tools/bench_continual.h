// `cleave bench continual`: continual learning measured as the field measures it (a command
// that prints JSON, never a timed test).
//   class_incremental  Split Fashion-MNIST, class-incremental: 5 experiences of 2 classes, one
//                      10-way head, the simple CNN of `bench fl`, 1 epoch per experience,
//                      batch 64, SGD lr 0.01 momentum 0.9; naive, EWC, LwF, ER-200, ER-500,
//                      DER++-500 and the joint (offline) upper bound, each over two seeds,
//                      with the accuracy matrix, ACC, BWT, forgetting and min-ACC
//                      (federated/continual_metrics.h). Anchor: van de Ven & Tolias,
//                      "Three scenarios for continual learning" (2019), on Split-MNIST.
//   federated          10 clients, Dirichlet(0.5), the same experiences spread over 25 FedAvg
//                      rounds (5 per experience), every client every round: each client's
//                      ER-500 against naive local fine-tuning, ACC and forgetting.
// Writes JSON (and a heat map PNG of each method's accuracy matrix beside it).
#pragma once

#include <CLI/CLI.hpp>

namespace cleave::tools {

void RegisterBenchContinualCommand(CLI::App& bench);

}  // namespace cleave::tools
