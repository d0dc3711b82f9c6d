#include "split/dataset.h"

#include <algorithm>

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

Result<LabeledImages> LoadSplitFor(const std::string& spec, DatasetSplit split,
                                   const InputSpec& input, int64_t limit, int threads,
                                   std::FILE* progress_out) {
  const std::string where =
      "dataset " + spec + (split == DatasetSplit::kTrain ? " (train)" : " (test)");
  CLEAVE_ASSIGN_OR_RETURN(const DataSpec parsed, ParseDataSpec(spec));
  Result<std::unique_ptr<ImageDataSource>> source = OpenImageData(parsed, split);
  if (!source.ok()) return source.status().WithContext(where);
  const size_t classes = (*source)->class_names().size();
  if (classes != input.class_names.size()) {
    return Status::InvalidArgument(where + " has " + std::to_string(classes) +
                                   " classes but the model has " +
                                   std::to_string(input.class_names.size()));
  }
  LoadImagesOptions load;
  load.limit = limit;
  load.threads = threads;
  load.progress_out = progress_out;
  load.label = split == DatasetSplit::kTrain ? "reading train images" : "reading test images";
  Result<LabeledImages> images = LoadLabeledImages(**source, input, load);
  if (!images.ok()) return images.status().WithContext(where);
  return images;
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

}  // namespace cleave::split
