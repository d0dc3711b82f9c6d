// Datasets for every training and evaluation path (`cleave train`, `cleave sim`, the
// aggregator's evaluation, the edge's federated client, `cleave bench split`, the demo):
// a dataset spec string (common/image_data.h: "fashion-mnist", "idx:DIR", "cifar:DIR",
// "folder:DIR", ...) opened, converted to the network's input (split/input_spec.h) and
// loaded as tensors.
//
// Two cases:
//  - a new model (training, simulation from scratch): InputSpecForData derives the input
//    from the data (its channels, its square size or `image_size`, its class names), and
//    NormalizationFor gives the per-channel mean/std the model normalizes with;
//  - an existing model (a bundle, a federated global model): LoadSplitFor converts the data
//    to the input the model declares, and refuses data with another class count.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common/image_data.h"
#include "common/status.h"
#include "split/image_rows.h"
#include "split/input_spec.h"
#include "split/train_data.h"

namespace cleave::split {

struct DatasetOptions {
  int64_t train_limit = 0;  // the first N training images (0 = all)
  int64_t test_limit = 0;   // the first N test images (0 = all)
  int image_size = 0;       // the network's input side; 0 = the data's own (square images)
  int channels = 0;         // 1 or 3; 0 = the data's own
  bool load_train = true;
  bool load_test = true;
  int threads = 2;
  std::FILE* progress_out = nullptr;
};

// The input a new model for `data` takes (spec string `spec`, train split `train`).
// InvalidArgument for non-square images without options.image_size, or bad options.
Result<InputSpec> InputSpecForData(const std::string& spec, const ImageDataSource& train,
                                   const DatasetOptions& options);

struct LoadedDataset {
  InputSpec input;
  LabeledImages train;  // empty unless options.load_train
  LabeledImages test;   // empty unless options.load_test
};

// Opens `spec`, derives the input (InputSpecForData) and loads the splits asked for.
// Errors of ParseDataSpec / OpenImageData / LoadLabeledImages, with the spec as context.
Result<LoadedDataset> LoadDataset(const std::string& spec, const DatasetOptions& options);

// A new model's dataset as rows (split/image_rows.h): the input derived from the train
// split (InputSpecForData with `options`), and both splits' first train_limit/test_limit rows,
// each held in memory or streamed by `memory_budget_bytes` (OpenRows). The train split is
// opened (a folder listed) once.
struct DatasetRows {
  InputSpec input;
  ImageRows train, test;
};
Result<DatasetRows> OpenDatasetRows(const std::string& spec, const DatasetOptions& options,
                                    int64_t memory_budget_bytes);

// Loads one split of `spec` converted to `input` (an existing model's). InvalidArgument
// when the dataset's class count differs from the model's.
Result<LabeledImages> LoadSplitFor(const std::string& spec, DatasetSplit split,
                                   const InputSpec& input, int64_t limit, int threads = 2,
                                   std::FILE* progress_out = nullptr);

// Per-channel normalization of a new model for this data: Fashion-MNIST's published
// training-set statistics for the embedded default (so its models stay as they were), else
// ChannelStats over the first 10,000 rows of `train`.
std::pair<std::vector<float>, std::vector<float>> NormalizationFor(const std::string& spec,
                                                                   const LabeledImages& train);

// The same for rows that may be streamed (reads the first 10,000).
Result<std::pair<std::vector<float>, std::vector<float>>> NormalizationForRows(
    const std::string& spec, const ImageRows& train);
// True when `spec` names the embedded default, Fashion-MNIST from the Debian package.
bool IsDefaultFashionMnist(const std::string& spec);

}  // namespace cleave::split
