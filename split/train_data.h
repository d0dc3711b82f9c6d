// Training data plumbing for the vision pipeline: image tensors, a fixed-seed held-out split,
// light augmentation, mini-batch order, a warm-up + cosine learning-rate schedule and batched
// evaluation. Kept apart from the training stages so tests and the `split` command reuse it.
// All functions are deterministic given their seed/generator and single-threaded apart
// from libtorch's own intra-op threads.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "common/datasets.h"
#include "common/image_data.h"
#include "common/status.h"
#include "split/input_spec.h"

namespace cleave::split {

// Images [N, C, H, W] float in [0, 1] and labels [N] int64.
struct LabeledImages {
  torch::Tensor images;
  torch::Tensor labels;
  int64_t size() const { return images.defined() ? images.size(0) : 0; }
  // Rows `index` ([K] int64) as a new set.
  LabeledImages Select(const torch::Tensor& index) const;
  // The first `n` rows (all when n >= size()).
  LabeledImages Head(int64_t n) const;
};

// ImageDataset (uint8 pixels, labels) -> tensors. InvalidArgument when labels are missing
// or their count differs from the image count.
Result<LabeledImages> ToLabeledImages(const ImageDataset& dataset);

struct LoadImagesOptions {
  int64_t limit = 0;  // read at most this many images (the first ones); 0 = all
  // When not empty: read exactly these source rows, in this order (`limit` is ignored). Error
  // messages name the source row.
  std::vector<int64_t> rows;
  int threads = 2;                    // readers (decoding folder images is the slow part)
  std::FILE* progress_out = nullptr;  // a progress bar for large sets; null = silent
  std::string label = "images";       // what the progress bar names
};

// Reads `source` (common/image_data.h) into tensors, each image passed through
// `input.PrepareChw` (channel conversion, resize/crop to the network's input), so training
// sees exactly what the edge will. Labels must lie in [0, input.class_names.size()).
// Errors name the image index: those of ImageDataSource::Read and of the conversion, and
// InvalidArgument for a label outside the class list.
Result<LabeledImages> LoadLabeledImages(const ImageDataSource& source, const InputSpec& input,
                                        const LoadImagesOptions& options);

// Per-channel mean and standard deviation of images [N, C, H, W] (over N, H, W), as
// VisionModelSpec input_mean/input_std take them. Standard deviations are at least 1e-3.
std::pair<std::vector<float>, std::vector<float>> ChannelStats(const torch::Tensor& images);

// Splits `all` into (train, held_out) with `held_out` rows chosen by a permutation seeded
// with `seed`: the same seed always gives the same split, so `cleave split` can recover the
// calibration set of a bundle trained earlier. InvalidArgument if held_out >= all.size().
Result<std::pair<LabeledImages, LabeledImages>> HoldOut(const LabeledImages& all, int64_t held_out,
                                                        uint64_t seed);
// The rows of that split for a set of `n` rows: (rest, held), each sorted, int64.
Result<std::pair<torch::Tensor, torch::Tensor>> HoldOutRows(int64_t n, int64_t held_out,
                                                            uint64_t seed);

struct AugmentOptions {
  int crop_padding = 2;  // random translation by up to this many pixels (zero padding)
  bool hflip = true;     // horizontal flip with probability 1/2
};

// Returns an augmented copy of `images` [N, C, H, W] (the input is not modified).
torch::Tensor Augment(const torch::Tensor& images, const AugmentOptions& options);

// Learning rate at `step` of `total`: linear warm-up from 10% over `warmup` of the steps,
// then cosine decay to ~0 (a one-cycle-like schedule that suits short runs).
double WarmupCosineLr(double peak, int64_t step, int64_t total, double warmup = 0.15);

// Sets the learning rate of every parameter group of an SGD or AdamW optimizer.
void SetLearningRate(torch::optim::Optimizer& optimizer, double lr);

// Runs `fn` over `inputs` in batches of `batch` rows (no grad) and concatenates the results
// along dim 0. `fn` must return one row per input row.
torch::Tensor Batched(const torch::Tensor& inputs, int64_t batch,
                      const std::function<torch::Tensor(const torch::Tensor&)>& fn);

// Fraction of rows where argmax(logits) == labels.
double Accuracy(const torch::Tensor& logits, const torch::Tensor& labels);

}  // namespace cleave::split
