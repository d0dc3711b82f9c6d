// Internal to common/image_data*.cc: the per-format openers behind OpenImageData and the
// helpers they share. Not a public API; include common/image_data.h instead.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/image_data.h"

namespace cleave {

// Opens an IDX split in `dir`. `fixed_class_names`, when not null, replaces the class list
// that would be derived from the labels (Fashion-MNIST), and `missing_files_hint` is
// appended to the NotFound message for missing files. Errors as for OpenImageData.
Result<std::unique_ptr<ImageDataSource>> OpenIdxImageData(
    const std::string& dir, DatasetSplit split, const std::vector<std::string>* fixed_class_names,
    const std::string& missing_files_hint);

// Opens a CIFAR split in `dir`; `classes` is 10, 100, or 0 to pick by the files present.
Result<std::unique_ptr<ImageDataSource>> OpenCifarImageData(const std::string& dir,
                                                            DatasetSplit split, int classes);

// Opens an image-folder split under `dir` (DIR/train, DIR/test).
Result<std::unique_ptr<ImageDataSource>> OpenFolderImageData(const std::string& dir,
                                                             DatasetSplit split);

// Reads a class-names file: one name per line ('\r' and trailing blanks stripped, blank
// lines at the end ignored), at most `max_names` names and 1 MiB. Errors: NotFound /
// IoError (file access), InvalidArgument (empty, a blank name in the middle, too many names,
// too large), each naming the file.
Result<std::vector<std::string>> ReadClassNamesFile(const std::string& path, size_t max_names);

// "0", "1", ..., "count-1".
std::vector<std::string> NumberedClassNames(size_t count);

// The argument checks every Read starts with: InvalidArgument for an index outside
// [0, size) or a null `pixels`.
Status CheckImageReadArguments(int64_t index, int64_t size, const uint8_t* pixels);

}  // namespace cleave
