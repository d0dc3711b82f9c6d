// Image datasets of any size, channel count and class count, read on demand by index.
//
// A dataset is named by a spec string (`fashion-mnist`, `idx:DIR`, `cifar10:DIR`,
// `cifar100:DIR`, `cifar:DIR`, `folder:DIR`) and opened per split as an ImageDataSource,
// which hands out one image at a time so a dataset larger than memory need not fit in it:
//
//  - IDX (MNIST family): DIR holds {train,t10k}-images-idx3-ubyte and
//    {train,t10k}-labels-idx1-ubyte, each raw or `.gz` (raw wins when both exist). Raw image
//    files are read an image at a time; labels (a byte per image) are read at open; `.gz`
//    files are decompressed into memory at open (up to 16 GiB), so keep large IDX sets
//    uncompressed. One gray channel. Class names come from DIR/classes.txt
//    (one per line) when present, else "0".."K-1" with K = the train split's max label + 1,
//    the same for both splits.
//  - CIFAR binary: CIFAR-10 (`data_batch_1.bin`..`data_batch_5.bin` for train, `test_batch.bin`;
//    records of 1 label byte + 3072 pixel bytes) and CIFAR-100 (`train.bin`, `test.bin`;
//    coarse label byte, fine label byte, 3072 pixel bytes; the fine label is used). 3x32x32,
//    read a record at a time. Class names from `batches.meta.txt` / `fine_label_names.txt` when
//    present, else numbers. `cifar:DIR` picks 10 or 100 by which files DIR holds.
//  - Image folder (torchvision ImageFolder layout): DIR/train/<class>/<image> and
//    DIR/test/<class>/<image>, where an image is a .png, .jpg or .jpeg file (extension in any
//    case). Classes are the sorted sub-folder names of DIR/train; both splits use that class
//    list. Files are listed at open (sorted by class, then by name) and decoded on each Read
//    by their content, not their extension (common/image_codec.h: libpng or libjpeg-turbo).
//    The shape is that of the first train image; gray and color images (PNG of any bit
//    depth, palette, alpha dropped; baseline or progressive 8-bit JPEG, not CMYK) are
//    converted to its channel count, and an image of another width or height is refused at
//    Read (nothing is resized or cropped). Files with other extensions and hidden files are
//    ignored, as torchvision does.
//
// Files are hostile: every size is checked before it is trusted, and truncated, oversized or
// mismatched files give a clean error naming the file, never a crash; also a file that shrinks
// while open (common/random_access_file.h): its Read gives DataLoss.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/datasets.h"
#include "common/status.h"

namespace cleave {

// Pixels of one image: channels x height x width bytes, stored CHW (planar).
struct ImageShape {
  int channels = 0;
  int height = 0;
  int width = 0;
  // Bytes of one image (channels * height * width).
  int64_t bytes() const { return int64_t{channels} * height * width; }
};

// One split of a dataset. Every method may be called concurrently from any number of threads.
class ImageDataSource {
 public:
  virtual ~ImageDataSource() = default;

  // Number of images (at least 1: empty splits are refused at open).
  virtual int64_t size() const = 0;
  // Shape of every image Read returns.
  virtual ImageShape shape() const = 0;
  // Names of the classes; a label is an index into this list.
  virtual const std::vector<std::string>& class_names() const = 0;

  // Writes image `index` to `pixels` (shape().bytes() bytes, CHW, one byte per sample) and,
  // when `label` is not null, its class index to `*label`. Errors: InvalidArgument (index
  // outside [0, size()), null `pixels`; for image folders also an image whose size differs
  // from shape() or that does not decode, naming the file), NotFound / IoError (a file
  // that vanished or cannot be read), DataLoss (a label outside class_names(), naming the
  // file). On error the output buffers hold unspecified bytes.
  virtual Status Read(int64_t index, uint8_t* pixels, int32_t* label) const = 0;
  // The label of image `index` alone, without decoding its pixels where the format allows
  // (IDX labels are in memory, a CIFAR record's label is one byte, a folder's is its class
  // folder): what a reader that streams the pixels needs up front. Errors as Read.
  virtual Status ReadLabel(int64_t index, int32_t* label) const;
};

// A parsed dataset spec. `kind` is one of "fashion-mnist", "idx", "cifar10", "cifar100",
// "cifar", "folder"; `path` is the directory.
struct DataSpec {
  std::string kind;
  std::string path;
};

// Parses "fashion-mnist" (the Debian package's files in kFashionMnistDir, or
// "fashion-mnist:DIR"), "idx:DIR", "cifar10:DIR", "cifar100:DIR", "cifar:DIR" or
// "folder:DIR". InvalidArgument for anything else (unknown kind, missing directory), naming
// the accepted forms.
Result<DataSpec> ParseDataSpec(std::string_view spec);

// Opens one split of the dataset `spec` names (see the formats above). Checks every header,
// file size and class folder at open; pixels are read by ImageDataSource::Read. Errors:
// InvalidArgument (unknown kind, wrong magic, bad dimensions, an empty split or class folder,
// a test class missing from train, a bad class-names file), NotFound (a missing file or
// folder, naming it), DataLoss (truncated files, trailing bytes, partial CIFAR records,
// labels beyond the class list), IoError (the OS refused a file).
Result<std::unique_ptr<ImageDataSource>> OpenImageData(const DataSpec& spec, DatasetSplit split);

// The ten Fashion-MNIST class names, in label order.
const std::vector<std::string>& FashionMnistClassNames();

}  // namespace cleave
