// Test support: the tiny split language model (split::LmSpec::Tiny) with fixed random
// weights, and a second handle on the same weights, for tests where the edge and the cloud
// side each own a model.
#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "split/lm_model.h"

namespace cleave::testing {

// A tiny untrained model in eval mode; the same `seed` gives the same weights.
inline split::SplitLm TinyLm(uint64_t seed = 11) {
  torch::manual_seed(seed);
  split::SplitLm lm(split::LmSpec::Tiny());
  lm->eval();
  return lm;
}

// A new model of `from`'s spec holding a copy of its weights (eval mode).
inline split::SplitLm CopyLm(const split::SplitLm& from) {
  split::SplitLm to(from->spec());
  torch::NoGradGuard no_grad;
  auto src = from->named_parameters();
  for (auto& p : to->named_parameters()) p.value().copy_(src[p.key()]);
  to->eval();
  return to;
}

}  // namespace cleave::testing
