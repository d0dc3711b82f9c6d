// Synthetic data for simulator tests: random images with labels cycling 0..9. Enough for the
// engine's bookkeeping; accuracy itself is not the point.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "federated/simulation.h"

namespace cleave::federated {

inline SimData SyntheticSimData(int64_t train_rows, int64_t test_rows, uint64_t seed) {
  torch::manual_seed(seed);
  SimData d;
  d.train = split::LabeledImages{torch::rand({train_rows, 1, 28, 28}),
                                 torch::arange(train_rows, torch::kLong).remainder(10)};
  d.test = split::LabeledImages{torch::rand({test_rows, 1, 28, 28}),
                                torch::arange(test_rows, torch::kLong).remainder(10)};
  for (int64_t i = 0; i < train_rows; ++i) d.train_labels.push_back(static_cast<uint8_t>(i % 10));
  return d;
}

}  // namespace cleave::federated
