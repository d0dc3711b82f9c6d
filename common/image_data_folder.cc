// The image-folder format behind OpenImageData ("folder:DIR"): torchvision's ImageFolder
// layout, DIR/{train,test}/<class>/*.{png,jpg,jpeg}, listed at open and decoded per Read by
// content (common/image_codec.h: libpng or libjpeg-turbo).
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <system_error>
#include <utility>

#include "common/image_codec.h"
#include "common/image_convert.h"
#include "common/image_data.h"
#include "common/image_data_formats.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;

struct FolderImageEntry {
  std::string path;
  int32_t label;
};

std::string LowercaseExtension(const fs::path& path) {
  std::string ext = path.extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

// Whether a file name's extension (any case) marks an image the folder reader decodes.
bool HasFolderImageExtension(const std::string& name) {
  const std::string ext = LowercaseExtension(name);
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

bool IsHiddenName(const std::string& name) { return !name.empty() && name[0] == '.'; }

// Sorted names of the non-hidden entries of `dir` that are directories (want_dirs) or
// regular files (!want_dirs), following symlinks. IoError naming `dir` if it cannot be read.
Result<std::vector<std::string>> ListFolderEntries(const fs::path& dir, bool want_dirs) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  std::vector<std::string> names;
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (IsHiddenName(name)) continue;
    std::error_code type_ec;
    const bool matches = want_dirs ? it->is_directory(type_ec) : it->is_regular_file(type_ec);
    if (matches && !type_ec) names.push_back(name);
  }
  if (ec) return Status::IoError("cannot list '" + dir.string() + "': " + ec.message());
  std::sort(names.begin(), names.end());
  return names;
}

// The paths of the image files (.png, .jpg, .jpeg) of one class folder, sorted by name.
// InvalidArgument naming the folder if it holds none.
Result<std::vector<std::string>> ListClassFolder(const fs::path& folder) {
  CLEAVE_ASSIGN_OR_RETURN(std::vector<std::string> files, ListFolderEntries(folder, false));
  std::vector<std::string> image_paths;
  for (const std::string& name : files) {
    if (HasFolderImageExtension(name)) image_paths.push_back((folder / name).string());
  }
  if (image_paths.empty()) {
    return Status::InvalidArgument("class folder '" + folder.string() +
                                   "' holds no PNG or JPEG images (.png, .jpg, .jpeg)");
  }
  return image_paths;
}

Status CheckFolderExists(const fs::path& dir) {
  std::error_code ec;
  if (fs::is_directory(dir, ec)) return Status::Ok();
  return Status::NotFound("image folder '" + dir.string() +
                          "' not found (the layout is DIR/train/<class>/*.png and "
                          "DIR/test/<class>/*.png; .jpg and .jpeg too)");
}

class FolderImageSource final : public ImageDataSource {
 public:
  FolderImageSource(ImageShape shape, std::vector<std::string> class_names,
                    std::vector<FolderImageEntry> entries)
      : shape_(shape), class_names_(std::move(class_names)), entries_(std::move(entries)) {}

  int64_t size() const override { return static_cast<int64_t>(entries_.size()); }
  ImageShape shape() const override { return shape_; }
  const std::vector<std::string>& class_names() const override { return class_names_; }

  Status Read(int64_t index, uint8_t* pixels, int32_t* label) const override {
    CLEAVE_RETURN_IF_ERROR(CheckImageReadArguments(index, size(), pixels));
    const FolderImageEntry& entry = entries_[static_cast<size_t>(index)];
    CLEAVE_ASSIGN_OR_RETURN(const PixelImage image,
                            ReadImagePixelsFile(entry.path, shape_.channels));
    if (image.width != static_cast<uint32_t>(shape_.width) ||
        image.height != static_cast<uint32_t>(shape_.height)) {
      return Status::InvalidArgument(
          "'" + entry.path + "' is " + std::to_string(image.width) + "x" +
          std::to_string(image.height) + " but the dataset's images are " +
          std::to_string(shape_.width) + "x" + std::to_string(shape_.height) +
          " (the size of its first train image)");
    }
    CLEAVE_RETURN_IF_ERROR(PixelsHwcToChw(image, pixels));  // decoders give interleaved HWC
    if (label != nullptr) *label = entry.label;
    return Status::Ok();
  }

  Status ReadLabel(int64_t index, int32_t* label) const override {
    if (index < 0 || index >= size() || label == nullptr) {
      return Status::InvalidArgument("image index " + std::to_string(index) + " outside [0, " +
                                     std::to_string(size()) + ") or no label output");
    }
    *label = entries_[static_cast<size_t>(index)].label;
    return Status::Ok();
  }

 private:
  const ImageShape shape_;
  const std::vector<std::string> class_names_;
  const std::vector<FolderImageEntry> entries_;
};

}  // namespace

Result<std::unique_ptr<ImageDataSource>> OpenFolderImageData(const std::string& dir,
                                                             DatasetSplit split) {
  const fs::path train_dir = fs::path(dir) / "train";
  CLEAVE_RETURN_IF_ERROR(CheckFolderExists(train_dir));
  CLEAVE_ASSIGN_OR_RETURN(std::vector<std::string> class_names, ListFolderEntries(train_dir, true));
  if (class_names.empty()) {
    return Status::InvalidArgument("image folder '" + train_dir.string() +
                                   "' holds no class folders (expected <class>/*.png or *.jpg)");
  }

  // The shape of every split is that of the first train image, so train and test agree.
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<std::string> first_class,
                          ListClassFolder(train_dir / class_names[0]));
  CLEAVE_ASSIGN_OR_RETURN(const PixelImage first_image, ReadImagePixelsFile(first_class[0], 0));
  const ImageShape shape{static_cast<int>(first_image.channels),
                         static_cast<int>(first_image.height), static_cast<int>(first_image.width)};

  const fs::path split_dir = split == DatasetSplit::kTrain ? train_dir : fs::path(dir) / "test";
  CLEAVE_RETURN_IF_ERROR(CheckFolderExists(split_dir));
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<std::string> split_classes,
                          ListFolderEntries(split_dir, true));
  std::vector<FolderImageEntry> entries;
  for (const std::string& name : split_classes) {
    const auto found = std::lower_bound(class_names.begin(), class_names.end(), name);
    if (found == class_names.end() || *found != name) {
      return Status::InvalidArgument("class folder '" + (split_dir / name).string() +
                                     "' is not a class of '" + train_dir.string() +
                                     "'; the test split must use the train split's classes");
    }
    const int32_t label = static_cast<int32_t>(found - class_names.begin());
    CLEAVE_ASSIGN_OR_RETURN(std::vector<std::string> paths, ListClassFolder(split_dir / name));
    for (std::string& path : paths) entries.push_back({std::move(path), label});
  }
  if (entries.empty()) {
    return Status::InvalidArgument("image folder '" + split_dir.string() +
                                   "' holds no class folders with images");
  }
  return std::unique_ptr<ImageDataSource>(
      new FolderImageSource(shape, std::move(class_names), std::move(entries)));
}

}  // namespace cleave
