// The CIFAR-10/100 binary format behind OpenImageData ("cifar10:DIR", "cifar100:DIR",
// "cifar:DIR"): fixed-size records in batch files, read one record at a time
// (common/random_access_file.h).
#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "common/image_data.h"
#include "common/image_data_formats.h"
#include "common/random_access_file.h"

namespace cleave {
namespace {

constexpr int kCifarSide = 32;
constexpr size_t kCifarPixelBytes = 3 * kCifarSide * kCifarSide;  // CHW, 3072

// How one CIFAR variant lays out its directory and records.
struct CifarLayout {
  int classes;
  size_t label_bytes;   // bytes before the pixels: 1 (CIFAR-10) or 2 (coarse, fine)
  size_t label_offset;  // which of them is the label used: 0, or 1 (CIFAR-100's fine label)
  const char* names_file;
  std::vector<std::string> train_files, test_files;
  const char* display_name;
};

CifarLayout Cifar10Layout() {
  return {10,
          1,
          0,
          "batches.meta.txt",
          {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
           "data_batch_5.bin"},
          {"test_batch.bin"},
          "CIFAR-10"};
}

CifarLayout Cifar100Layout() {
  return {100, 2, 1, "fine_label_names.txt", {"train.bin"}, {"test.bin"}, "CIFAR-100"};
}

class CifarImageSource final : public ImageDataSource {
 public:
  CifarImageSource(CifarLayout layout, std::vector<RandomAccessFile> files,
                   std::vector<int64_t> file_starts, std::vector<std::string> class_names)
      : layout_(std::move(layout)),
        files_(std::move(files)),
        file_starts_(std::move(file_starts)),
        class_names_(std::move(class_names)) {}

  int64_t size() const override { return file_starts_.back(); }
  ImageShape shape() const override { return {3, kCifarSide, kCifarSide}; }
  const std::vector<std::string>& class_names() const override { return class_names_; }

  Status ReadLabel(int64_t index, int32_t* label) const override {
    if (index < 0 || index >= size() || label == nullptr) {
      return Status::InvalidArgument("image index " + std::to_string(index) + " outside [0, " +
                                     std::to_string(size()) + ") or no label output");
    }
    const auto [file, record] = Locate(index);
    const size_t record_bytes = layout_.label_bytes + kCifarPixelBytes;
    uint8_t value = 0;
    CLEAVE_RETURN_IF_ERROR(files_[file].ReadAt(
        static_cast<uint64_t>(record) * record_bytes + layout_.label_offset, 1, &value));
    if (value >= class_names_.size()) {
      return Status::DataLoss("'" + files_[file].path() + "' has label " + std::to_string(value) +
                              " in record " + std::to_string(record) + "; " + layout_.display_name +
                              " has " + std::to_string(class_names_.size()) + " classes");
    }
    *label = value;
    return Status::Ok();
  }

  Status Read(int64_t index, uint8_t* pixels, int32_t* label) const override {
    CLEAVE_RETURN_IF_ERROR(CheckImageReadArguments(index, size(), pixels));
    const auto [file, record] = Locate(index);
    const size_t record_bytes = layout_.label_bytes + kCifarPixelBytes;
    std::array<uint8_t, 2 + kCifarPixelBytes> bytes;  // the longest record: CIFAR-100's
    CLEAVE_RETURN_IF_ERROR(files_[file].ReadAt(static_cast<uint64_t>(record) * record_bytes,
                                               record_bytes, bytes.data()));
    const uint8_t value = bytes[layout_.label_offset];
    if (value >= class_names_.size()) {
      return Status::DataLoss("'" + files_[file].path() + "' has label " + std::to_string(value) +
                              " in record " + std::to_string(record) + "; " + layout_.display_name +
                              " has " + std::to_string(class_names_.size()) + " classes");
    }
    std::memcpy(pixels, bytes.data() + layout_.label_bytes, kCifarPixelBytes);
    if (label != nullptr) *label = value;
    return Status::Ok();
  }

 private:
  // The file holding image `index` and its record there. file_starts_ = {0, n0, n0+n1, ...,
  // size()}: the file is the last start not above `index`.
  std::pair<size_t, int64_t> Locate(int64_t index) const {
    const size_t file =
        static_cast<size_t>(std::upper_bound(file_starts_.begin(), file_starts_.end(), index) -
                            file_starts_.begin() - 1);
    return {file, index - file_starts_[file]};
  }

  const CifarLayout layout_;
  const std::vector<RandomAccessFile> files_;
  const std::vector<int64_t> file_starts_;
  const std::vector<std::string> class_names_;
};

bool CifarFileExists(const std::string& dir, const std::string& name) {
  std::error_code ec;
  return std::filesystem::exists(std::filesystem::path(dir) / name, ec);
}

}  // namespace

Result<std::unique_ptr<ImageDataSource>> OpenCifarImageData(const std::string& dir,
                                                            DatasetSplit split, int classes) {
  if (classes == 0) {
    if (CifarFileExists(dir, "data_batch_1.bin") || CifarFileExists(dir, "test_batch.bin")) {
      classes = 10;
    } else if (CifarFileExists(dir, "train.bin") || CifarFileExists(dir, "test.bin")) {
      classes = 100;
    } else {
      return Status::NotFound("no CIFAR files in '" + dir +
                              "' (looked for data_batch_1.bin or test_batch.bin of CIFAR-10, "
                              "train.bin or test.bin of CIFAR-100)");
    }
  }
  const CifarLayout layout = classes == 10 ? Cifar10Layout() : Cifar100Layout();
  const size_t record_bytes = layout.label_bytes + kCifarPixelBytes;
  const std::vector<std::string>& names =
      split == DatasetSplit::kTrain ? layout.train_files : layout.test_files;
  std::vector<RandomAccessFile> files;
  std::vector<int64_t> file_starts = {0};
  for (const std::string& name : names) {
    const std::string path = (std::filesystem::path(dir) / name).string();
    Result<RandomAccessFile> file = RandomAccessFile::Open(path);
    if (!file.ok()) {
      return file.status().WithContext(std::string(layout.display_name) + " " +
                                       (split == DatasetSplit::kTrain ? "train" : "test") +
                                       " split");
    }
    if (file->size() % record_bytes != 0) {
      return Status::DataLoss("'" + path + "' is " + std::to_string(file->size()) +
                              " bytes, not a whole number of " + std::to_string(record_bytes) +
                              "-byte " + layout.display_name + " records (a partial record at " +
                              "the end: truncated or not a " + layout.display_name + " file)");
    }
    file_starts.push_back(file_starts.back() + static_cast<int64_t>(file->size() / record_bytes));
    files.push_back(std::move(file).value());
  }
  if (file_starts.back() == 0) {
    return Status::InvalidArgument(std::string(layout.display_name) + " files in '" + dir +
                                   "' hold no images for this split");
  }
  std::vector<std::string> class_names = NumberedClassNames(static_cast<size_t>(layout.classes));
  if (CifarFileExists(dir, layout.names_file)) {
    const std::string names_path = (std::filesystem::path(dir) / layout.names_file).string();
    CLEAVE_ASSIGN_OR_RETURN(class_names,
                            ReadClassNamesFile(names_path, static_cast<size_t>(layout.classes)));
    if (class_names.size() != static_cast<size_t>(layout.classes)) {
      return Status::InvalidArgument(
          "class-names file '" + names_path + "' holds " + std::to_string(class_names.size()) +
          " names; " + layout.display_name + " has " + std::to_string(layout.classes));
    }
  }
  return std::unique_ptr<ImageDataSource>(new CifarImageSource(
      layout, std::move(files), std::move(file_starts), std::move(class_names)));
}

}  // namespace cleave
