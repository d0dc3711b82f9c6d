// Image datasets in the IDX format (MNIST, Fashion-MNIST), gzip-compressed or raw.
//
// Readers treat files as hostile: magic numbers and dimensions are checked before any
// pixel is stored, memory grows only as bytes actually arrive (a header that claims
// billions of images cannot force a huge allocation), and both truncation and trailing
// garbage are reported. Every function is safe to call concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace cleave {

// Images stored row-major, one byte per pixel, image i at images[i * rows * cols].
struct ImageDataset {
  uint32_t rows = 0, cols = 0;
  std::vector<uint8_t> images;  // N * rows * cols
  std::vector<uint8_t> labels;  // N, or empty for an images-only set
  // Number of images (N).
  size_t size() const { return rows * cols == 0 ? 0 : images.size() / (size_t{rows} * cols); }
  // Bytes per image (rows * cols).
  size_t image_bytes() const { return size_t{rows} * cols; }
};

// Loads an IDX image file (magic 0x00000803: uint8, 3 dims) and its IDX label file (magic
// 0x00000801) - each either gzip-compressed or plain, detected automatically. Errors:
// NotFound / IoError (file access), InvalidArgument (wrong magic, zero or oversized
// dimensions, image and label counts differ), DataLoss (truncated file, corrupt gzip
// stream, trailing bytes after the declared data).
Result<ImageDataset> LoadIdxPair(const std::string& images_gz_or_raw,
                                 const std::string& labels_gz_or_raw);

// Loads only an IDX image file (labels stay empty), e.g. for the edge's one-shot mode.
// Errors as for LoadIdxPair.
Result<ImageDataset> LoadIdxImagesOnly(const std::string& images_gz_or_raw);

enum class DatasetSplit { kTrain, kTest };

inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

// Loads Fashion-MNIST from `dir` ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]).
// NotFound says which files were looked for and that the Debian package
// dataset-fashion-mnist provides them. Also checks 28x28 images and labels < 10
// (DataLoss otherwise).
Result<ImageDataset> LoadFashionMnist(DatasetSplit split,
                                      const std::string& dir = kFashionMnistDir);

}  // namespace cleave
