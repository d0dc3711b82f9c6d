#include "common/image_data.h"

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <vector>

#include "common/file_util.h"
#include "common/image_data_formats.h"

namespace cleave {

Status ImageDataSource::ReadLabel(int64_t index, int32_t* label) const {
  std::vector<uint8_t> pixels(static_cast<size_t>(std::max<int64_t>(1, shape().bytes())));
  return Read(index, pixels.data(), label);
}
namespace {

constexpr uintmax_t kMaxClassNamesFileBytes = uintmax_t{1} << 20;
constexpr char kAcceptedDataSpecs[] =
    "accepted: fashion-mnist, fashion-mnist:DIR, idx:DIR, cifar10:DIR, cifar100:DIR, "
    "cifar:DIR, folder:DIR";

}  // namespace

Result<DataSpec> ParseDataSpec(std::string_view spec) {
  const size_t colon = spec.find(':');
  const std::string kind(spec.substr(0, colon));
  const std::string path =
      colon == std::string_view::npos ? "" : std::string(spec.substr(colon + 1));
  const bool known = kind == "fashion-mnist" || kind == "idx" || kind == "cifar10" ||
                     kind == "cifar100" || kind == "cifar" || kind == "folder";
  if (!known) {
    return Status::InvalidArgument("unknown dataset spec '" + std::string(spec) + "' (" +
                                   kAcceptedDataSpecs + ")");
  }
  if (kind == "fashion-mnist" && colon == std::string_view::npos) {
    return DataSpec{kind, kFashionMnistDir};
  }
  if (path.empty()) {
    return Status::InvalidArgument("dataset spec '" + std::string(spec) +
                                   "' names no directory; write " + kind + ":DIR (" +
                                   kAcceptedDataSpecs + ")");
  }
  return DataSpec{kind, path};
}

Result<std::unique_ptr<ImageDataSource>> OpenImageData(const DataSpec& spec, DatasetSplit split) {
  if (spec.kind == "fashion-mnist") {
    return OpenIdxImageData(spec.path, split, &FashionMnistClassNames(),
                            "; the Debian package dataset-fashion-mnist provides them "
                            "(apt-get install dataset-fashion-mnist)");
  }
  if (spec.kind == "idx") return OpenIdxImageData(spec.path, split, nullptr, "");
  if (spec.kind == "cifar10") return OpenCifarImageData(spec.path, split, 10);
  if (spec.kind == "cifar100") return OpenCifarImageData(spec.path, split, 100);
  if (spec.kind == "cifar") return OpenCifarImageData(spec.path, split, 0);
  if (spec.kind == "folder") return OpenFolderImageData(spec.path, split);
  return Status::InvalidArgument("unknown dataset kind '" + spec.kind + "' (" + kAcceptedDataSpecs +
                                 ")");
}

const std::vector<std::string>& FashionMnistClassNames() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser",   "Pullover", "Dress",
                                                 "Coat",        "Sandal",    "Shirt",    "Sneaker",
                                                 "Bag",         "Ankle boot"};
  return names;
}

Result<std::vector<std::string>> ReadClassNamesFile(const std::string& path, size_t max_names) {
  std::error_code ec;
  const uintmax_t file_bytes = std::filesystem::file_size(path, ec);
  if (!ec && file_bytes > kMaxClassNamesFileBytes) {
    return Status::InvalidArgument("class-names file '" + path + "' is larger than " +
                                   std::to_string(kMaxClassNamesFileBytes) + " bytes");
  }
  CLEAVE_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  if (text.size() > kMaxClassNamesFileBytes) {  // it grew after the size check
    return Status::InvalidArgument("class-names file '" + path + "' is larger than " +
                                   std::to_string(kMaxClassNamesFileBytes) + " bytes");
  }
  std::vector<std::string> names;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string name = text.substr(start, end - start);
    while (!name.empty() && (name.back() == '\r' || name.back() == ' ' || name.back() == '\t')) {
      name.pop_back();
    }
    names.push_back(std::move(name));
    start = end + 1;
  }
  while (!names.empty() && names.back().empty()) names.pop_back();
  if (names.empty()) {
    return Status::InvalidArgument("class-names file '" + path + "' holds no names");
  }
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i].empty()) {
      return Status::InvalidArgument("class-names file '" + path + "' has a blank name on line " +
                                     std::to_string(i + 1));
    }
  }
  if (names.size() > max_names) {
    return Status::InvalidArgument("class-names file '" + path + "' holds " +
                                   std::to_string(names.size()) + " names; at most " +
                                   std::to_string(max_names) + " are allowed here");
  }
  return names;
}

std::vector<std::string> NumberedClassNames(size_t count) {
  std::vector<std::string> names;
  names.reserve(count);
  for (size_t i = 0; i < count; ++i) names.push_back(std::to_string(i));
  return names;
}

Status CheckImageReadArguments(int64_t index, int64_t size, const uint8_t* pixels) {
  if (index < 0 || index >= size) {
    return Status::InvalidArgument("image index " + std::to_string(index) +
                                   " is outside the dataset's [0, " + std::to_string(size) + ")");
  }
  if (pixels == nullptr) return Status::InvalidArgument("no pixel buffer given to Read");
  return Status::Ok();
}

}  // namespace cleave
