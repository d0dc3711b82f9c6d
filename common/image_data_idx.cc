// The IDX format behind OpenImageData ("idx:DIR", "fashion-mnist"): raw image files are read
// an image at a time (common/random_access_file.h); labels (a byte per image) and .gz files
// are read into memory at open, .gz by the loaders of common/datasets.h.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "common/datasets.h"
#include "common/image_data.h"
#include "common/image_data_formats.h"
#include "common/random_access_file.h"

namespace cleave {
namespace {

// The data of one IDX file after its header: in memory (labels, .gz files), or read on demand
// from `file` at `data_offset` (raw image files).
struct IdxFileBody {
  std::string path;
  RandomAccessFile file;           // raw image files
  uint64_t data_offset = 0;        // in `file`: the first byte after the header
  std::vector<uint8_t> in_memory;  // labels, and the images of .gz files
  uint64_t count = 0;              // images or labels
  uint32_t rows = 0, cols = 0;     // images only
};

bool IsGzipPath(const std::string& path) {
  return path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
}

// dir/base if it exists (raw files are read on demand, so they win), else dir/base.gz, else "".
std::string FindIdxDataFile(const std::string& dir, const std::string& base) {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (const fs::path& candidate : {fs::path(dir) / base, fs::path(dir) / (base + ".gz")}) {
    if (fs::exists(candidate, ec)) return candidate.string();
  }
  return "";
}

// Checks that a raw IDX file is exactly its header plus `body_bytes_per_item * count`.
Status CheckIdxFileLength(const RandomAccessFile& file, size_t header_bytes, uint64_t count,
                          uint64_t item_bytes, const std::string& what) {
  const uint64_t body = file.size() - header_bytes;
  if (item_bytes != 0 && body / item_bytes < count) {
    return Status::DataLoss("'" + file.path() + "' is truncated: header declares " +
                            std::to_string(count) + " " + what + " (" +
                            std::to_string(count * item_bytes) + " bytes) but only " +
                            std::to_string(body) + " bytes follow");
  }
  if (body != count * item_bytes) {
    return Status::DataLoss("'" + file.path() + "' has unexpected bytes after the " +
                            std::to_string(count) + " " + what + " declared in its header");
  }
  return Status::Ok();
}

// Opens a raw IDX file and checks its magic, its length and, for images, its dimensions;
// labels are read into memory.
Result<IdxFileBody> OpenRawIdxFile(const std::string& path, bool images) {
  IdxFileBody body;
  body.path = path;
  CLEAVE_ASSIGN_OR_RETURN(body.file, RandomAccessFile::Open(path));
  const uint64_t size = body.file.size();
  const size_t header_bytes = images ? kIdxImagesHeaderBytes : kIdxLabelsHeaderBytes;
  uint8_t bytes[kIdxImagesHeaderBytes] = {};
  CLEAVE_RETURN_IF_ERROR(
      body.file.ReadAt(0, static_cast<size_t>(std::min<uint64_t>(size, header_bytes)), bytes));
  if (size >= 4) {
    CLEAVE_RETURN_IF_ERROR(CheckIdxMagic(path, ReadBigEndianU32(bytes),
                                         images ? kIdxImagesMagic : kIdxLabelsMagic,
                                         images ? "image" : "label"));
  }
  if (size < header_bytes) {
    return Status::DataLoss("'" + path + "' is truncated: the file ends inside its " +
                            std::to_string(header_bytes) + "-byte IDX header");
  }
  body.count = ReadBigEndianU32(bytes + 4);
  body.data_offset = header_bytes;
  if (!images) {
    CLEAVE_RETURN_IF_ERROR(CheckIdxFileLength(body.file, header_bytes, body.count, 1, "labels"));
    body.in_memory.resize(static_cast<size_t>(body.count));
    CLEAVE_RETURN_IF_ERROR(
        body.file.ReadAt(header_bytes, body.in_memory.size(), body.in_memory.data()));
    body.file = RandomAccessFile();
    return body;
  }
  body.rows = ReadBigEndianU32(bytes + 8);
  body.cols = ReadBigEndianU32(bytes + 12);
  CLEAVE_RETURN_IF_ERROR(CheckIdxImageSize(path, body.rows, body.cols));
  CLEAVE_RETURN_IF_ERROR(CheckIdxFileLength(body.file, header_bytes, body.count,
                                            uint64_t{body.rows} * body.cols, "images"));
  return body;
}

Result<IdxFileBody> OpenIdxFile(const std::string& path, bool images) {
  if (!IsGzipPath(path)) return OpenRawIdxFile(path, images);
  IdxFileBody body;
  body.path = path;
  if (images) {
    CLEAVE_ASSIGN_OR_RETURN(ImageDataset dataset, LoadIdxImagesOnly(path));
    body.count = dataset.size();
    body.rows = dataset.rows;
    body.cols = dataset.cols;
    body.in_memory = std::move(dataset.images);
  } else {
    CLEAVE_ASSIGN_OR_RETURN(body.in_memory, LoadIdxLabels(path));
    body.count = body.in_memory.size();
  }
  return body;
}

class IdxImageSource final : public ImageDataSource {
 public:
  IdxImageSource(IdxFileBody images, IdxFileBody labels, std::vector<std::string> class_names)
      : images_(std::move(images)),
        labels_(std::move(labels)),
        class_names_(std::move(class_names)),
        image_bytes_(size_t{images_.rows} * images_.cols) {}

  int64_t size() const override { return static_cast<int64_t>(images_.count); }
  ImageShape shape() const override {
    return {1, static_cast<int>(images_.rows), static_cast<int>(images_.cols)};
  }
  const std::vector<std::string>& class_names() const override { return class_names_; }

  Status Read(int64_t index, uint8_t* pixels, int32_t* label) const override {
    CLEAVE_RETURN_IF_ERROR(CheckImageReadArguments(index, size(), pixels));
    const uint64_t at = static_cast<uint64_t>(index) * image_bytes_;
    if (images_.file.is_open()) {
      CLEAVE_RETURN_IF_ERROR(images_.file.ReadAt(images_.data_offset + at, image_bytes_, pixels));
    } else {
      std::memcpy(pixels, images_.in_memory.data() + at, image_bytes_);
    }
    if (label != nullptr) *label = labels_.in_memory[index];  // checked against the classes at open
    return Status::Ok();
  }

  Status ReadLabel(int64_t index, int32_t* label) const override {
    if (index < 0 || index >= size() || label == nullptr) {
      return Status::InvalidArgument("image index " + std::to_string(index) + " outside [0, " +
                                     std::to_string(size()) + ") or no label output");
    }
    *label = labels_.in_memory[index];
    return Status::Ok();
  }

 private:
  const IdxFileBody images_;
  const IdxFileBody labels_;
  const std::vector<std::string> class_names_;
  const size_t image_bytes_;
};

uint8_t MaxIdxLabel(const IdxFileBody& labels) {
  return labels.in_memory.empty()
             ? 0
             : *std::max_element(labels.in_memory.begin(), labels.in_memory.end());
}

std::string IdxPrefix(DatasetSplit split) {
  return split == DatasetSplit::kTrain ? "train" : "t10k";
}

std::string FindIdxLabelsFile(const std::string& dir, DatasetSplit split) {
  return FindIdxDataFile(dir, IdxPrefix(split) + "-labels-idx1-ubyte");
}

// The class list of an IDX directory: classes.txt, else "0".."K-1" with K from the train
// labels (so both splits agree).
Result<std::vector<std::string>> IdxClassNames(const std::string& dir, DatasetSplit split,
                                               const IdxFileBody& split_labels) {
  namespace fs = std::filesystem;
  const std::string names_path = (fs::path(dir) / "classes.txt").string();
  std::error_code ec;
  if (fs::exists(names_path, ec)) return ReadClassNamesFile(names_path, 256);
  if (split == DatasetSplit::kTrain) return NumberedClassNames(MaxIdxLabel(split_labels) + 1u);
  const std::string train_labels_path = FindIdxLabelsFile(dir, DatasetSplit::kTrain);
  if (train_labels_path.empty()) {
    return Status::NotFound("IDX train labels not found in '" + dir +
                            "' (looked for train-labels-idx1-ubyte[.gz]); the test split takes "
                            "its class count from them, or from a classes.txt there");
  }
  CLEAVE_ASSIGN_OR_RETURN(IdxFileBody train_labels, OpenIdxFile(train_labels_path, false));
  return NumberedClassNames(MaxIdxLabel(train_labels) + 1u);
}

}  // namespace

Result<std::unique_ptr<ImageDataSource>> OpenIdxImageData(
    const std::string& dir, DatasetSplit split, const std::vector<std::string>* fixed_class_names,
    const std::string& missing_files_hint) {
  const std::string images_base = IdxPrefix(split) + "-images-idx3-ubyte";
  const std::string labels_base = IdxPrefix(split) + "-labels-idx1-ubyte";
  const std::string images_path = FindIdxDataFile(dir, images_base);
  const std::string labels_path = FindIdxLabelsFile(dir, split);
  if (images_path.empty() || labels_path.empty()) {
    return Status::NotFound("IDX " + IdxPrefix(split) + " files not found in '" + dir +
                            "' (looked for " + images_base + "[.gz] and " + labels_base + "[.gz])" +
                            missing_files_hint);
  }
  CLEAVE_ASSIGN_OR_RETURN(IdxFileBody images, OpenIdxFile(images_path, true));
  CLEAVE_ASSIGN_OR_RETURN(IdxFileBody labels, OpenIdxFile(labels_path, false));
  if (images.count != labels.count) {
    return Status::InvalidArgument("'" + images_path + "' holds " + std::to_string(images.count) +
                                   " images but '" + labels_path + "' holds " +
                                   std::to_string(labels.count) + " labels");
  }
  if (images.count == 0) {
    return Status::InvalidArgument("'" + images_path + "' holds no images");
  }
  std::vector<std::string> class_names;
  if (fixed_class_names != nullptr) {
    class_names = *fixed_class_names;
  } else {
    CLEAVE_ASSIGN_OR_RETURN(class_names, IdxClassNames(dir, split, labels));
  }
  for (uint64_t i = 0; i < labels.count; ++i) {
    if (labels.in_memory[i] >= class_names.size()) {
      return Status::DataLoss("'" + labels_path + "' has label " +
                              std::to_string(labels.in_memory[i]) + " at index " +
                              std::to_string(i) + " but the dataset has " +
                              std::to_string(class_names.size()) + " classes");
    }
  }
  return std::unique_ptr<ImageDataSource>(
      new IdxImageSource(std::move(images), std::move(labels), std::move(class_names)));
}

}  // namespace cleave
