// The rows of a dataset split as a network takes them (InputSpec::PrepareChw, float in
// [0, 1]), held in memory or read from the dataset a batch at a time, so a dataset larger
// than memory can be trained on: a streamed set keeps only its labels (8 bytes a row) and
// the rows' source indices in memory, and reads, decodes and converts a batch when asked
// (common/image_data.h reads an image at a time from raw IDX files, CIFAR records and image
// folders). OpenRows picks in-memory when the converted images fit a memory budget.
//
// Both kinds answer the same calls with the same values: a streamed set gives exactly the
// tensors LoadLabeledImages would (the same conversion, row for row).
//
// Thread-safety: const methods may be called concurrently (a training loop reads the next
// batch on another thread while it computes).
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "common/image_data.h"
#include "common/status.h"
#include "split/input_spec.h"
#include "split/train_data.h"

namespace cleave::split {

class ImageRows {
 public:
  ImageRows() = default;
  // In memory. Implicit on purpose: every function that trains or evaluates on rows takes
  // `const ImageRows&`, and a caller with tensors in hand passes its LabeledImages as they are.
  ImageRows(LabeledImages data) : ImageRows(InMemory(std::move(data))) {}  // NOLINT
  // `data` as it is (images float [N, C, H, W], labels int64 [N]).
  static ImageRows InMemory(LabeledImages data);
  // The first `limit` rows of `source` (0 = all) converted to `input`, read on demand with up
  // to `threads` readers per batch. Reads every label now (ImageDataSource::ReadLabel):
  // InvalidArgument naming the row for one outside input's classes, the source's errors
  // otherwise.
  static Result<ImageRows> Streamed(std::shared_ptr<const ImageDataSource> source,
                                    const InputSpec& input, int64_t limit, int threads = 2);

  int64_t size() const { return labels_.defined() ? labels_.size(0) : 0; }
  bool streamed() const { return source_ != nullptr; }
  const torch::Tensor& labels() const { return labels_; }
  // The tensors of an in-memory set (for callers with a faster path on them); null when
  // streamed.
  const LabeledImages* in_memory() const { return streamed() ? nullptr : &data_; }

  // Images of rows `index` (int64 [K], rows of this set) as float [K, C, H, W]. Errors: those
  // of reading and converting the rows (naming the source row), InvalidArgument for an index
  // outside [0, size()).
  Result<torch::Tensor> Images(const torch::Tensor& index) const;
  // Images of rows [begin, begin + count) (clamped to the set).
  Result<torch::Tensor> Slice(int64_t begin, int64_t count) const;
  // Rows `index` as a set of the same kind (a streamed set stays streamed).
  ImageRows Select(const torch::Tensor& index) const;
  // The first `n` rows (all when n >= size()).
  ImageRows Head(int64_t n) const;
  // Every row in memory.
  Result<LabeledImages> Load() const;

 private:
  LabeledImages data_;                             // in memory
  std::shared_ptr<const ImageDataSource> source_;  // streamed
  InputSpec input_;
  std::vector<int64_t> source_rows_;  // row i of this set is source row source_rows_[i]
  int threads_ = 2;
  torch::Tensor labels_;
};

// One epoch's mini-batches of `rows` in `order` (int64 [N], a permutation of the rows),
// `batch` rows each (the ragged last batch is dropped), read one ahead: for a streamed set
// the next batch is read on another thread while the caller trains on this one.
class EpochBatches {
 public:
  EpochBatches(const ImageRows& rows, torch::Tensor order, int64_t batch);
  ~EpochBatches();  // waits for a read in flight
  EpochBatches(const EpochBatches&) = delete;
  EpochBatches& operator=(const EpochBatches&) = delete;

  int64_t steps() const { return steps_; }
  // Row numbers of step `s`.
  torch::Tensor Index(int64_t s) const { return order_.narrow(0, s * batch_, batch_); }
  // Images of the next step (0, 1, ...; at most steps() calls).
  Result<torch::Tensor> Next();

 private:
  std::future<Result<torch::Tensor>> Fetch(int64_t s) const;

  const ImageRows& rows_;
  torch::Tensor order_;
  int64_t batch_ = 1, steps_ = 0, next_step_ = 0;
  std::future<Result<torch::Tensor>> pending_;
};

// Runs `fn` over the rows' images in batches of `batch` (no grad) and concatenates the
// results along dim 0, as Batched does for a tensor; reading errors are returned.
Result<torch::Tensor> BatchedRows(const ImageRows& rows, int64_t batch,
                                  const std::function<torch::Tensor(const torch::Tensor&)>& fn);

// Splits `all` into (train, held_out) exactly as HoldOut(LabeledImages) does with the same
// seed (the same rows on each side, in the same order).
Result<std::pair<ImageRows, ImageRows>> HoldOut(const ImageRows& all, int64_t held_out,
                                                uint64_t seed);

// One split of dataset `spec` converted to `input` (an existing model's, or one
// InputSpecForData derived): the first `limit` rows (0 = all), in memory when their images
// take at most `memory_budget_bytes` as float32, else streamed. InvalidArgument when the
// dataset's class count differs from the input's; the dataset's errors with the spec as
// context.
Result<ImageRows> OpenRows(const std::string& spec, DatasetSplit split, const InputSpec& input,
                           int64_t limit, int64_t memory_budget_bytes, int threads = 2,
                           std::FILE* progress_out = nullptr);
// The same on a split the caller opened already (to derive the input from it, say), so a
// folder is listed once; `where` names it in errors ("dataset SPEC (train)").
Result<ImageRows> OpenRows(std::shared_ptr<const ImageDataSource> source, const std::string& where,
                           DatasetSplit split, const InputSpec& input, int64_t limit,
                           int64_t memory_budget_bytes, int threads = 2,
                           std::FILE* progress_out = nullptr);

}  // namespace cleave::split
