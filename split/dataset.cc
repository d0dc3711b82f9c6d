#include "split/dataset.h"

#include <algorithm>
#include <limits>

#include "split/image_rows.h"
#include "split/vision_model.h"

namespace cleave::split {

Result<InputSpec> InputSpecForData(const std::string& spec, const ImageDataSource& train,
                                   const DatasetOptions& options) {
  const ImageShape shape = train.shape();
  InputSpec input;
  input.channels = options.channels > 0 ? options.channels : shape.channels;
  if (options.image_size > 0) {
    input.height = input.width = options.image_size;
  } else if (shape.height == shape.width) {
    input.height = input.width = shape.height;
  } else {
    return Status::InvalidArgument(
        "the images of " + spec + " are " + std::to_string(shape.width) + "x" +
        std::to_string(shape.height) +
        " (not square); give the network's input size (--image-size) to resize them to");
  }
  input.class_names = train.class_names();
  input.data = spec;
  CLEAVE_RETURN_IF_ERROR(input.Validate().WithContext("dataset " + spec));
  return input;
}

Result<LoadedDataset> LoadDataset(const std::string& spec, const DatasetOptions& options) {
  CLEAVE_ASSIGN_OR_RETURN(const DataSpec parsed, ParseDataSpec(spec));
  Result<std::unique_ptr<ImageDataSource>> train = OpenImageData(parsed, DatasetSplit::kTrain);
  if (!train.ok()) return train.status().WithContext("dataset " + spec + " (train)");
  LoadedDataset out;
  CLEAVE_ASSIGN_OR_RETURN(out.input, InputSpecForData(spec, **train, options));
  LoadImagesOptions load;
  load.threads = options.threads;
  load.progress_out = options.progress_out;
  if (options.load_train) {
    load.limit = options.train_limit;
    load.label = "reading train images";
    Result<LabeledImages> images = LoadLabeledImages(**train, out.input, load);
    if (!images.ok()) return images.status().WithContext("dataset " + spec + " (train)");
    out.train = std::move(images).value();
  }
  if (options.load_test) {
    Result<LabeledImages> images =
        LoadSplitFor(spec, DatasetSplit::kTest, out.input, options.test_limit, options.threads,
                     options.progress_out);
    if (!images.ok()) return images.status();
    out.test = std::move(images).value();
  }
  return out;
}

Result<DatasetRows> OpenDatasetRows(const std::string& spec, const DatasetOptions& options,
                                    int64_t memory_budget_bytes) {
  CLEAVE_ASSIGN_OR_RETURN(const DataSpec parsed, ParseDataSpec(spec));
  const std::string where = "dataset " + spec + " (train)";
  Result<std::unique_ptr<ImageDataSource>> opened = OpenImageData(parsed, DatasetSplit::kTrain);
  if (!opened.ok()) return opened.status().WithContext(where);
  const std::shared_ptr<const ImageDataSource> train = std::move(opened).value();
  DatasetRows rows;
  CLEAVE_ASSIGN_OR_RETURN(rows.input, InputSpecForData(spec, *train, options));
  CLEAVE_ASSIGN_OR_RETURN(
      rows.train, OpenRows(train, where, DatasetSplit::kTrain, rows.input, options.train_limit,
                           memory_budget_bytes, options.threads, options.progress_out));
  CLEAVE_ASSIGN_OR_RETURN(rows.test,
                          OpenRows(spec, DatasetSplit::kTest, rows.input, options.test_limit,
                                   memory_budget_bytes, options.threads, options.progress_out));
  return rows;
}

Result<LabeledImages> LoadSplitFor(const std::string& spec, DatasetSplit split,
                                   const InputSpec& input, int64_t limit, int threads,
                                   std::FILE* progress_out) {
  // OpenRows with no memory limit holds the rows in memory; Load hands them over.
  CLEAVE_ASSIGN_OR_RETURN(const ImageRows rows,
                          OpenRows(spec, split, input, limit, std::numeric_limits<int64_t>::max(),
                                   threads, progress_out));
  return rows.Load();
}

bool IsDefaultFashionMnist(const std::string& spec) {
  Result<DataSpec> parsed = ParseDataSpec(spec);
  return parsed.ok() && parsed->kind == "fashion-mnist";
}

std::pair<std::vector<float>, std::vector<float>> NormalizationFor(const std::string& spec,
                                                                   const LabeledImages& train) {
  if (IsDefaultFashionMnist(spec) || train.size() == 0) {
    const VisionModelSpec defaults;
    return {defaults.input_mean, defaults.input_std};
  }
  return ChannelStats(train.images.narrow(0, 0, std::min<int64_t>(train.size(), 10000)));
}

Result<std::pair<std::vector<float>, std::vector<float>>> NormalizationForRows(
    const std::string& spec, const ImageRows& train) {
  if (IsDefaultFashionMnist(spec) || train.size() == 0) return NormalizationFor(spec, {});
  LabeledImages first;
  CLEAVE_ASSIGN_OR_RETURN(first.images, train.Slice(0, 10000));
  return ChannelStats(first.images);
}

}  // namespace cleave::split
