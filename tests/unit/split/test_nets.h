// Networks for the split unit tests: random weights with non-trivial BatchNorm statistics
// and affine parameters, in eval mode, so that folding BatchNorm actually matters.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "split/vision_model.h"

namespace cleave::split::test_nets {

inline SplitVisionNet MakeNetWithBatchNormStats(const VisionModelSpec& spec, uint64_t seed) {
  torch::manual_seed(seed);
  SplitVisionNet net(spec);
  torch::NoGradGuard no_grad;
  for (const auto& module : net->modules(/*include_self=*/false)) {
    if (auto* bn = dynamic_cast<torch::nn::BatchNorm2dImpl*>(module.get())) {
      const int64_t c = bn->running_mean.size(0);
      bn->running_mean.copy_(torch::randn({c}) * 0.2);
      bn->running_var.copy_(torch::rand({c}) + 0.5);
      bn->weight.copy_(torch::rand({c}) + 0.5);
      bn->bias.copy_(torch::randn({c}) * 0.2);
    }
  }
  net->eval();
  return net;
}

}  // namespace cleave::split::test_nets
