// The configuration of a federated simulation (`cleave sim`, and anything else that runs
// SimOptions from a config file): every key, its default and help, and the validated
// SimOptions a loaded config gives.
#pragma once

#include <cstdint>
#include <string>

#include "common/config.h"
#include "common/status.h"
#include "federated/simulation.h"

namespace cleave::federated {

// Every key `cleave sim` accepts, with defaults and help (shown by --help).
ConfigSchema SimSchema();
// SimOptions from a loaded config (validated); also returns the data limits and paths.
struct SimSetup {
  SimOptions options;
  std::string data = "fashion-mnist";  // dataset spec (split/dataset.h)
  int image_size = 0;
  int64_t train_limit = 0, test_limit = 0;
  int64_t memory_mb = 4096;  // sim.memory_mb
};
Result<SimSetup> SimSetupFromConfig(const Config& config);

}  // namespace cleave::federated
