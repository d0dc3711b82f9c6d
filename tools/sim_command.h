// `cleave sim`: a federated-learning simulation of many virtual clients in one process,
// configured by a TOML file (`--config`) with every key also a flag (`--round.fraction 0.1`).
// Writes history.json, history.csv and accuracy.png to --out, prints a JSON summary to
// stdout and a progress bar per round to stderr. With sim.checkpoint set it checkpoints
// after every round and resumes from the checkpoint when started again (Ctrl-C is safe).
#pragma once

#include <CLI/CLI.hpp>

#include "common/status.h"
#include "federated/sim_config.h"
#include "federated/simulation.h"

namespace cleave::tools {

// Writes history.json, history.csv and accuracy.png (when any round was evaluated) into
// `dir` (created if missing).
Status WriteSimOutputs(const federated::SimResult& result, const nlohmann::json& options,
                       const std::string& dir);

// Adds `sim` to `app`; option storage is owned by the callback.
void RegisterSimCommand(CLI::App& app);

}  // namespace cleave::tools
