#include "common/jpeg_image.h"

#include <turbojpeg.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <new>

namespace cleave {
namespace {

// Owns a TurboJPEG compressor or decompressor handle (tjhandle is a void*).
struct TurboJpegHandleDeleter {
  void operator()(void* handle) const { tjDestroy(handle); }
};
using TurboJpegHandle = std::unique_ptr<void, TurboJpegHandleDeleter>;

// Owns a buffer TurboJPEG allocated (tjCompress2's output).
struct TurboJpegBufferDeleter {
  void operator()(unsigned char* buffer) const { tjFree(buffer); }
};

// TurboJPEG's message for the last error on `handle` (or, for a null handle, this thread's
// last handle-creation error).
std::string TurboJpegErrorText(void* handle) {
  const char* text = tjGetErrorStr2(handle);
  return text != nullptr && text[0] != '\0' ? text : "unknown libjpeg-turbo error";
}

Status CheckJpegSides(long width, long height, const char* what) {
  if (width < 1 || height < 1 || width > static_cast<long>(kMaxImageDimension) ||
      height > static_cast<long>(kMaxImageDimension)) {
    return Status::InvalidArgument(std::string(what) + " is " + std::to_string(width) + "x" +
                                   std::to_string(height) + "; each side must be 1.." +
                                   std::to_string(kMaxImageDimension));
  }
  return Status::Ok();
}

// The channel count a decode of a JPEG with this TurboJPEG colorspace produces for
// channels == 0, or InvalidArgument for a colorspace this decoder does not convert.
Result<int> OwnJpegChannels(int colorspace) {
  switch (colorspace) {
    case TJCS_GRAY: return 1;
    case TJCS_YCbCr:
    case TJCS_RGB: return 3;
    case TJCS_CMYK:
    case TJCS_YCCK:
      return Status::InvalidArgument(
          "JPEG is CMYK/YCCK (4 components); only grayscale and color (YCbCr or RGB) JPEGs "
          "are supported");
    default:
      return Status::InvalidArgument("JPEG has an unknown colorspace (" +
                                     std::to_string(colorspace) + ")");
  }
}

}  // namespace

bool HasJpegSignature(std::string_view bytes) {
  return bytes.size() >= 3 && static_cast<uint8_t>(bytes[0]) == 0xFF &&
         static_cast<uint8_t>(bytes[1]) == 0xD8 && static_cast<uint8_t>(bytes[2]) == 0xFF;
}

Result<std::string> EncodeJpegPixels(const PixelImage& image, int quality) {
  CLEAVE_RETURN_IF_ERROR(CheckJpegSides(image.width, image.height, "image"));
  if (image.channels != 1 && image.channels != 3) {
    return Status::InvalidArgument("image has " + std::to_string(image.channels) +
                                   " channels; JPEG encoding takes 1 (gray) or 3 (RGB)");
  }
  const size_t row_bytes = size_t{image.width} * image.channels;
  if (image.pixels.size() != row_bytes * image.height) {
    return Status::InvalidArgument(
        "image has " + std::to_string(image.pixels.size()) + " pixel bytes but " +
        std::to_string(image.width) + "x" + std::to_string(image.height) + "x" +
        std::to_string(image.channels) + " needs " + std::to_string(row_bytes * image.height));
  }
  if (quality < 1 || quality > 100) {
    return Status::InvalidArgument("JPEG quality must be 1..100, got " + std::to_string(quality));
  }
  TurboJpegHandle handle(tjInitCompress());
  if (!handle) {
    return Status::ResourceExhausted("cannot create a JPEG compressor: " +
                                     TurboJpegErrorText(nullptr));
  }
  const bool rgb = image.channels == 3;
  unsigned char* out = nullptr;  // allocated by TurboJPEG
  unsigned long out_size = 0;
  const int rc = tjCompress2(handle.get(), image.pixels.data(), static_cast<int>(image.width),
                             static_cast<int>(row_bytes), static_cast<int>(image.height),
                             rgb ? TJPF_RGB : TJPF_GRAY, &out, &out_size,
                             rgb ? TJSAMP_420 : TJSAMP_GRAY, quality, TJFLAG_ACCURATEDCT);
  const std::unique_ptr<unsigned char, TurboJpegBufferDeleter> owned(out);
  if (rc != 0) {
    // The arguments were checked above, so what is left is memory.
    return Status::ResourceExhausted("JPEG encoding failed: " + TurboJpegErrorText(handle.get()));
  }
  try {
    return std::string(reinterpret_cast<const char*>(out), out_size);
  } catch (const std::bad_alloc&) {
    return Status::ResourceExhausted("out of memory copying an encoded JPEG");
  }
}

Result<PixelImage> DecodeJpegPixels(std::string_view bytes, int channels) {
  if (channels != 0 && channels != 1 && channels != 3) {
    return Status::InvalidArgument("cannot decode a JPEG to " + std::to_string(channels) +
                                   " channels; use 0 (its own), 1 (gray) or 3 (RGB)");
  }
  if (!HasJpegSignature(bytes)) {
    return Status::InvalidArgument("not a JPEG: missing the FF D8 FF start-of-image marker");
  }
  if (bytes.size() > std::numeric_limits<unsigned long>::max()) {
    return Status::InvalidArgument("JPEG data is too large to decode");
  }
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto size = static_cast<unsigned long>(bytes.size());

  TurboJpegHandle handle(tjInitDecompress());
  if (!handle) {
    return Status::ResourceExhausted("cannot create a JPEG decompressor: " +
                                     TurboJpegErrorText(nullptr));
  }
  // The header alone: dimensions and colorspace, before any pixel buffer exists.
  int width = 0, height = 0, subsampling = 0, colorspace = 0;
  if (tjDecompressHeader3(handle.get(), data, size, &width, &height, &subsampling, &colorspace) !=
      0) {
    return Status::InvalidArgument("invalid JPEG header: " + TurboJpegErrorText(handle.get()));
  }
  if (width == 0 || height == 0) {
    // TurboJPEG reports success without a size when the data ends before the frame header
    // (it takes that for an abbreviated, tables-only stream).
    return Status::InvalidArgument(
        "invalid JPEG: no frame header (truncated data or a tables-only stream)");
  }
  CLEAVE_RETURN_IF_ERROR(CheckJpegSides(width, height, "JPEG image"));
  CLEAVE_ASSIGN_OR_RETURN(const int own_channels, OwnJpegChannels(colorspace));
  const int out_channels = channels == 0 ? own_channels : channels;

  PixelImage image;
  image.width = static_cast<uint32_t>(width);
  image.height = static_cast<uint32_t>(height);
  image.channels = static_cast<uint32_t>(out_channels);
  const size_t row_bytes = size_t{image.width} * image.channels;
  try {
    image.pixels.resize(row_bytes * image.height);  // at most 48 MiB (checked above)
  } catch (const std::bad_alloc&) {
    return Status::ResourceExhausted("out of memory decoding a JPEG");
  }
  // STOPONWARNING: libjpeg's warnings are all about damaged data; LIMITSCANS: refuse
  // progressive JPEGs built to take unbounded time (more than 500 scans).
  const int flags = TJFLAG_ACCURATEDCT | TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS;
  if (tjDecompress2(handle.get(), data, size, image.pixels.data(), width,
                    static_cast<int>(row_bytes), height, out_channels == 3 ? TJPF_RGB : TJPF_GRAY,
                    flags) != 0) {
    return Status::InvalidArgument("invalid JPEG: " + TurboJpegErrorText(handle.get()));
  }
  return image;
}

}  // namespace cleave
