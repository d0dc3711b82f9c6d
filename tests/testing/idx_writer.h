// Test support: writes an uncompressed IDX image/label pair (the MNIST family's format,
// common/image_data.h) so dataset tests need no files from outside.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "common/file_util.h"
#include "common/status.h"

namespace cleave::testing {

// DIR/<prefix>-images-idx3-ubyte and DIR/<prefix>-labels-idx1-ubyte: `count` images of
// side x side bytes, pixel(i, p) for pixel p of image i (called in order), label(i).
inline Status WriteIdxPair(const std::filesystem::path& dir, const std::string& prefix, int count,
                           int side, const std::function<uint8_t(int, int)>& pixel,
                           const std::function<uint8_t(int)>& label) {
  std::string images, labels;
  const auto put = [](std::string& out, uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      out.push_back(static_cast<char>((v >> shift) & 0xff));
    }
  };
  put(images, 0x00000803);
  put(images, static_cast<uint32_t>(count));
  put(images, static_cast<uint32_t>(side));
  put(images, static_cast<uint32_t>(side));
  put(labels, 0x00000801);
  put(labels, static_cast<uint32_t>(count));
  for (int i = 0; i < count; ++i) {
    labels.push_back(static_cast<char>(label(i)));
    for (int p = 0; p < side * side; ++p) images.push_back(static_cast<char>(pixel(i, p)));
  }
  CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(dir / (prefix + "-images-idx3-ubyte"), images));
  return WriteFileAtomic(dir / (prefix + "-labels-idx1-ubyte"), labels);
}

}  // namespace cleave::testing
