#include "split/image_rows.h"

#include <algorithm>

#include "split/torch_status.h"

namespace cleave::split {

ImageRows ImageRows::InMemory(LabeledImages data) {
  ImageRows rows;
  rows.labels_ = data.labels;
  rows.data_ = std::move(data);
  return rows;
}

Result<ImageRows> ImageRows::Streamed(std::shared_ptr<const ImageDataSource> source,
                                      const InputSpec& input, int64_t limit, int threads) {
  if (!source) return Status::InvalidArgument("streamed rows need a dataset");
  CLEAVE_RETURN_IF_ERROR(input.Validate());
  const int64_t n = limit > 0 ? std::min(limit, source->size()) : source->size();
  if (n < 1) return Status::InvalidArgument("the dataset has no images");
  const int64_t classes = static_cast<int64_t>(input.class_names.size());
  ImageRows rows;
  rows.source_rows_.resize(static_cast<size_t>(n));
  CLEAVE_ASSIGN_OR_RETURN(rows.labels_, CallTorch(TorchSource::kOwnState, "streamed rows: labels",
                                                  [&] { return torch::empty({n}, torch::kLong); }));
  int64_t* labels = rows.labels_.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    int32_t label = -1;
    CLEAVE_RETURN_IF_ERROR(source->ReadLabel(i, &label).WithContext("image " + std::to_string(i)));
    if (label < 0 || label >= classes) {
      return Status::InvalidArgument("image " + std::to_string(i) + ": label " +
                                     std::to_string(label) + " is outside the " +
                                     std::to_string(classes) + " classes");
    }
    labels[i] = label;
    rows.source_rows_[static_cast<size_t>(i)] = i;
  }
  rows.source_ = std::move(source);
  rows.input_ = input;
  rows.threads_ = std::max(1, threads);
  return rows;
}

Result<torch::Tensor> ImageRows::Images(const torch::Tensor& index) const {
  if (!index.defined() || index.dim() != 1 || index.scalar_type() != torch::kLong) {
    return Status::InvalidArgument("row index must be int64 [K]");
  }
  const torch::Tensor idx = index.contiguous();
  const int64_t k = idx.size(0);
  const int64_t* p = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < k; ++i) {
    if (p[i] < 0 || p[i] >= size()) {
      return Status::InvalidArgument("row " + std::to_string(p[i]) + " outside [0, " +
                                     std::to_string(size()) + ")");
    }
  }
  if (!streamed()) {
    return CallTorch(TorchSource::kOwnState, "selecting rows",
                     [&] { return data_.images.index_select(0, idx); });
  }
  if (k == 0) {
    return CallTorch(TorchSource::kOwnState, "selecting rows", [&] {
      return torch::empty({0, input_.channels, input_.height, input_.width}, torch::kFloat);
    });
  }
  LoadImagesOptions load;
  load.threads = threads_;
  load.rows.reserve(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) load.rows.push_back(source_rows_[static_cast<size_t>(p[i])]);
  CLEAVE_ASSIGN_OR_RETURN(LabeledImages batch, LoadLabeledImages(*source_, input_, load));
  return batch.images;
}

Result<torch::Tensor> ImageRows::Slice(int64_t begin, int64_t count) const {
  begin = std::clamp<int64_t>(begin, 0, size());
  count = std::clamp<int64_t>(count, 0, size() - begin);
  if (!streamed()) {
    return CallTorch(TorchSource::kOwnState, "selecting rows",
                     [&] { return data_.images.narrow(0, begin, count); });
  }
  CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor index,
                          CallTorch(TorchSource::kOwnState, "selecting rows", [&] {
                            return torch::arange(begin, begin + count, torch::kLong);
                          }));
  return Images(index);
}

ImageRows ImageRows::Select(const torch::Tensor& index) const {
  ImageRows out;
  if (!streamed()) {
    out.data_ = data_.Select(index);
    out.labels_ = out.data_.labels;
    return out;
  }
  const torch::Tensor idx = index.contiguous();
  const int64_t* p = idx.data_ptr<int64_t>();
  out.source_ = source_;
  out.input_ = input_;
  out.threads_ = threads_;
  out.source_rows_.reserve(static_cast<size_t>(idx.size(0)));
  for (int64_t i = 0; i < idx.size(0); ++i) {
    out.source_rows_.push_back(source_rows_[static_cast<size_t>(p[i])]);
  }
  out.labels_ = labels_.index_select(0, idx);
  return out;
}

ImageRows ImageRows::Head(int64_t n) const {
  if (n >= size()) return *this;
  return Select(torch::arange(std::max<int64_t>(0, n), torch::kLong));
}

EpochBatches::EpochBatches(const ImageRows& rows, torch::Tensor order, int64_t batch)
    : rows_(rows), order_(std::move(order)), batch_(std::max<int64_t>(1, batch)) {
  steps_ = order_.size(0) / batch_;
  if (steps_ > 0) pending_ = Fetch(0);
}

EpochBatches::~EpochBatches() {
  if (pending_.valid()) pending_.wait();
}

std::future<Result<torch::Tensor>> EpochBatches::Fetch(int64_t s) const {
  const torch::Tensor index = Index(s);
  return std::async(rows_.streamed() ? std::launch::async : std::launch::deferred,
                    [this, index] { return rows_.Images(index); });
}

Result<torch::Tensor> EpochBatches::Next() {
  if (next_step_ >= steps_ || !pending_.valid()) {
    return Status::FailedPrecondition("no more batches in this epoch");
  }
  Result<torch::Tensor> images = pending_.get();
  if (++next_step_ < steps_) pending_ = Fetch(next_step_);
  return images;
}

Result<torch::Tensor> BatchedRows(const ImageRows& rows, int64_t batch,
                                  const std::function<torch::Tensor(const torch::Tensor&)>& fn) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for (int64_t begin = 0; begin < rows.size(); begin += batch) {
    CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor x, rows.Slice(begin, batch));
    parts.push_back(fn(x));
  }
  if (parts.empty()) return Status::InvalidArgument("no rows to run");
  return torch::cat(parts, 0);
}

Result<LabeledImages> ImageRows::Load() const {
  if (!streamed()) return data_;
  LabeledImages out;
  CLEAVE_ASSIGN_OR_RETURN(out.images, Slice(0, size()));
  out.labels = labels_;
  return out;
}

Result<std::pair<ImageRows, ImageRows>> HoldOut(const ImageRows& all, int64_t held_out,
                                                uint64_t seed) {
  CLEAVE_ASSIGN_OR_RETURN(auto rows, HoldOutRows(all.size(), held_out, seed));
  return CallTorch(TorchSource::kOwnState, "held-out split",
                   [&] { return std::make_pair(all.Select(rows.first), all.Select(rows.second)); });
}

Result<ImageRows> OpenRows(const std::string& spec, DatasetSplit split, const InputSpec& input,
                           int64_t limit, int64_t memory_budget_bytes, int threads,
                           std::FILE* progress_out) {
  const std::string where =
      "dataset " + spec + (split == DatasetSplit::kTrain ? " (train)" : " (test)");
  CLEAVE_ASSIGN_OR_RETURN(const DataSpec parsed, ParseDataSpec(spec));
  Result<std::unique_ptr<ImageDataSource>> opened = OpenImageData(parsed, split);
  if (!opened.ok()) return opened.status().WithContext(where);
  return OpenRows(std::move(opened).value(), where, split, input, limit, memory_budget_bytes,
                  threads, progress_out);
}

Result<ImageRows> OpenRows(std::shared_ptr<const ImageDataSource> source, const std::string& where,
                           DatasetSplit split, const InputSpec& input, int64_t limit,
                           int64_t memory_budget_bytes, int threads, std::FILE* progress_out) {
  if (!source) return Status::InvalidArgument(where + ": no dataset");
  if (source->class_names().size() != input.class_names.size()) {
    return Status::InvalidArgument(where + " has " + std::to_string(source->class_names().size()) +
                                   " classes but the model has " +
                                   std::to_string(input.class_names.size()));
  }
  const int64_t n = limit > 0 ? std::min(limit, source->size()) : source->size();
  const int64_t float_bytes = 4 * n * input.bytes();
  if (float_bytes > memory_budget_bytes) {
    Result<ImageRows> rows = ImageRows::Streamed(source, input, n, threads);
    if (!rows.ok()) return rows.status().WithContext(where);
    return rows;
  }
  LoadImagesOptions load;
  load.limit = n;
  load.threads = threads;
  load.progress_out = progress_out;
  load.label = split == DatasetSplit::kTrain ? "reading train images" : "reading test images";
  Result<LabeledImages> images = LoadLabeledImages(*source, input, load);
  if (!images.ok()) return images.status().WithContext(where);
  return ImageRows::InMemory(std::move(images).value());
}

}  // namespace cleave::split
