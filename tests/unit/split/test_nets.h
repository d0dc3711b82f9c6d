// Networks for the split unit tests: random weights with non-trivial BatchNorm statistics
// and affine parameters, in eval mode, so that folding BatchNorm actually matters.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "split/vision_model.h"

namespace cleave::split::test_nets {

// Non-trivial BatchNorm statistics and affine parameters for every BatchNorm of `module`.
inline void RandomizeBatchNorms(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (const auto& child : module.modules(/*include_self=*/false)) {
    if (auto* bn = dynamic_cast<torch::nn::BatchNorm2dImpl*>(child.get())) {
      const int64_t c = bn->running_mean.size(0);
      bn->running_mean.copy_(torch::randn({c}) * 0.2);
      bn->running_var.copy_(torch::rand({c}) + 0.5);
      bn->weight.copy_(torch::rand({c}) + 0.5);
      bn->bias.copy_(torch::randn({c}) * 0.2);
    }
  }
}

inline SplitVisionNet MakeNetWithBatchNormStats(const VisionModelSpec& spec, uint64_t seed) {
  torch::manual_seed(seed);
  SplitVisionNet net(spec);
  RandomizeBatchNorms(*net);
  net->eval();
  return net;
}

}  // namespace cleave::split::test_nets
