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

// Loads only an IDX label file (magic 0x00000801) into memory, gzip-compressed or plain.
// Errors as for LoadIdxPair.
Result<std::vector<uint8_t>> LoadIdxLabels(const std::string& labels_gz_or_raw);

// IDX header layout and checks, shared by every IDX reader (the loaders above and the
// on-demand source of common/image_data.h) so all refuse the same files the same way.
inline constexpr uint32_t kIdxImagesMagic = 0x00000803;  // unsigned byte, 3 dimensions
inline constexpr uint32_t kIdxLabelsMagic = 0x00000801;  // unsigned byte, 1 dimension
inline constexpr size_t kIdxImagesHeaderBytes = 16;      // magic, count, rows, cols
inline constexpr size_t kIdxLabelsHeaderBytes = 8;       // magic, count
// Largest single image (rows * cols bytes) an IDX reader accepts.
inline constexpr uint64_t kMaxIdxImageBytes = uint64_t{1} << 24;

// OK if `magic` is `expected`; else InvalidArgument naming `path`, the magic found and the
// one expected. `kind` is "image" or "label" (for the message).
Status CheckIdxMagic(const std::string& path, uint32_t magic, uint32_t expected, const char* kind);

// OK if both sides are non-zero and an image is at most kMaxIdxImageBytes; else
// InvalidArgument naming `path` and the declared size.
Status CheckIdxImageSize(const std::string& path, uint32_t rows, uint32_t cols);

// Reads the big-endian uint32 at `bytes` (4 bytes must be readable).
inline uint32_t ReadBigEndianU32(const uint8_t* bytes) {
  return (uint32_t{bytes[0]} << 24) | (uint32_t{bytes[1]} << 16) | (uint32_t{bytes[2]} << 8) |
         bytes[3];
}

enum class DatasetSplit { kTrain, kTest };

inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

// Loads Fashion-MNIST from `dir` ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]).
// NotFound says which files were looked for and that the Debian package
// dataset-fashion-mnist provides them. Also checks 28x28 images and labels < 10
// (DataLoss otherwise).
Result<ImageDataset> LoadFashionMnist(DatasetSplit split,
                                      const std::string& dir = kFashionMnistDir);

}  // namespace cleave
