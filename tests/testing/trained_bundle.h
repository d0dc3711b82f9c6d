// Test support: trains a real (tiny) vision-split bundle with the quick pipeline on a
// synthetic, learnable dataset in a few seconds, for tests that need a trained bundle
// (training report, manifest training options) rather than tiny_bundle.h's random one.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <torch/torch.h>

#include "common/status.h"
#include "split/trainer.h"

namespace cleave::testing {

// Class c: a 14x14 patch of brightness (c + 0.5) / 10 plus noise - learnable by a tiny net
// whose classifier pools globally.
inline split::LabeledImages Synthetic(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  split::LabeledImages set;
  set.labels = torch::randint(0, 10, {n}, torch::kLong);
  const torch::Tensor level = (set.labels.to(torch::kFloat) + 0.5) / 10.0;
  set.images = torch::zeros({n, 1, 28, 28});
  set.images.narrow(2, 7, 14).narrow(3, 7, 14).copy_(
      level.view({n, 1, 1, 1}).expand({n, 1, 14, 14}) + 0.03 * torch::randn({n, 1, 14, 14}));
  set.images.clamp_(0.0, 1.0);
  return set;
}

// Trains the TinySplit model on Synthetic() data with the quick schedule into `dir`.
inline Result<split::TrainReport> TrainTinySplitBundle(const std::filesystem::path& dir) {
  split::TrainOptions options = split::TrainOptions::Quick();
  options.student_spec = split::VisionModelSpec::TinySplit();
  options.train_limit = 0;
  options.test_limit = 0;
  options.held_out = 256;
  options.batch_size = 64;
  options.epochs_teacher = 4;
  options.epochs_finetune = 3;
  options.int8_engine = "reference";
  options.threads = 1;
  options.progress_out = std::getenv("CLEAVE_TEST_VERBOSE") ? stderr : nullptr;
  split::TrainData data{Synthetic(2304, 1), Synthetic(256, 2), std::nullopt};
  return split::TrainVisionSplit(options, data, dir);
}

}  // namespace cleave::testing
