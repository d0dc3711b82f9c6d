#include "common/png_image.h"

#include <png.h>

#include <cctype>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <new>

#include "common/file_util.h"

namespace cleave {
namespace {

// Image files larger than this are refused before reading (a 4096x4096 16-bit PGM is 32 MiB).
constexpr uint64_t kMaxImageFileBytes = 64ull << 20;
// Per-chunk allocation cap for ancillary chunks libpng keeps (iCCP, zTXt...).
constexpr png_alloc_size_t kMaxPngChunkBytes = 8u << 20;

// libpng reports errors by calling OnPngError, which records the message here and longjmps
// back to the setjmp in the Run* function below.
struct PngErrorState {
  char message[256] = "unknown libpng error";
};

void OnPngError(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngErrorState*>(png_get_error_ptr(png));
  std::snprintf(state->message, sizeof(state->message), "%s", message ? message : "?");
  png_longjmp(png, 1);
}

void OnPngWarning(png_structp, png_const_charp) {}  // warnings are not actionable here

struct MemorySource {
  const uint8_t* data = nullptr;
  size_t size = 0;
  size_t pos = 0;
};

void ReadFromMemory(png_structp png, png_bytep out, png_size_t length) {
  auto* source = static_cast<MemorySource*>(png_get_io_ptr(png));
  if (length > source->size - source->pos) png_error(png, "PNG data is truncated");
  std::memcpy(out, source->data + source->pos, length);
  source->pos += length;
}

void AppendToString(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<std::string*>(png_get_io_ptr(png));
  bool out_of_memory = false;
  try {
    out->append(reinterpret_cast<const char*>(data), length);
  } catch (const std::bad_alloc&) {
    out_of_memory = true;  // never unwind a C++ exception through libpng's C frames
  }
  if (out_of_memory) png_error(png, "out of memory while writing PNG");
}

void FlushNothing(png_structp) {}

// Owns a libpng read or write struct and its info struct.
class PngReadHandle {
 public:
  explicit PngReadHandle(PngErrorState* errors) {
    png_ = png_create_read_struct(PNG_LIBPNG_VER_STRING, errors, OnPngError, OnPngWarning);
    if (png_ != nullptr) info_ = png_create_info_struct(png_);
  }
  ~PngReadHandle() { png_destroy_read_struct(&png_, info_ ? &info_ : nullptr, nullptr); }
  PngReadHandle(const PngReadHandle&) = delete;
  PngReadHandle& operator=(const PngReadHandle&) = delete;
  bool ok() const { return png_ != nullptr && info_ != nullptr; }
  png_structp png() const { return png_; }
  png_infop info() const { return info_; }

 private:
  png_structp png_ = nullptr;
  png_infop info_ = nullptr;
};

class PngWriteHandle {
 public:
  explicit PngWriteHandle(PngErrorState* errors) {
    png_ = png_create_write_struct(PNG_LIBPNG_VER_STRING, errors, OnPngError, OnPngWarning);
    if (png_ != nullptr) info_ = png_create_info_struct(png_);
  }
  ~PngWriteHandle() { png_destroy_write_struct(&png_, info_ ? &info_ : nullptr); }
  PngWriteHandle(const PngWriteHandle&) = delete;
  PngWriteHandle& operator=(const PngWriteHandle&) = delete;
  bool ok() const { return png_ != nullptr && info_ != nullptr; }
  png_structp png() const { return png_; }
  png_infop info() const { return info_; }

 private:
  png_structp png_ = nullptr;
  png_infop info_ = nullptr;
};

// The setjmp frames. A longjmp out of libpng skips destructors of the frames it crosses, so
// these functions own no C++ objects: everything with a destructor lives in the caller.
// Return false after a libpng error (the message is in the PngErrorState).
bool RunPngRead(png_structp png, png_infop info, int channels, PixelImage* image,
                std::vector<png_bytep>* rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_chunk_malloc_max(png, kMaxPngChunkBytes);
  png_read_info(png, info);  // reads up to the first IDAT; allocates nothing image-sized

  const png_uint_32 width = png_get_image_width(png, info);
  const png_uint_32 height = png_get_image_height(png, info);
  if (width > kMaxImageDimension || height > kMaxImageDimension) {
    char message[96];
    std::snprintf(message, sizeof(message), "image is %ux%u; each side must be 1..%u",
                  static_cast<unsigned>(width), static_cast<unsigned>(height),
                  static_cast<unsigned>(kMaxImageDimension));
    png_error(png, message);
  }
  const int bit_depth = png_get_bit_depth(png, info);
  const int color_type = png_get_color_type(png, info);
  const bool color = (color_type & PNG_COLOR_MASK_COLOR) != 0;  // RGB, RGBA or palette
  const unsigned out_channels = channels == 0 ? (color ? 3u : 1u) : static_cast<unsigned>(channels);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (bit_depth == 16) png_set_scale_16(png);
  // Alpha from the color type or from a tRNS chunk expanded by palette_to_rgb is dropped.
  if ((color_type & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS)) {
    png_set_strip_alpha(png);
  }
  if (color && out_channels == 1) png_set_rgb_to_gray_fixed(png, PNG_ERROR_ACTION_NONE, -1, -1);
  if (!color && out_channels == 3) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_channels(png, info) != out_channels || png_get_bit_depth(png, info) != 8 ||
      png_get_rowbytes(png, info) != size_t{width} * out_channels) {
    png_error(png, "unexpected pixel layout after conversion to 8-bit samples");
  }

  image->width = width;
  image->height = height;
  image->channels = out_channels;
  const size_t row_bytes = size_t{width} * out_channels;
  image->pixels.resize(row_bytes * height);  // at most 48 MiB (checked above)
  rows->resize(height);
  for (png_uint_32 y = 0; y < height; ++y) (*rows)[y] = image->pixels.data() + y * row_bytes;
  png_read_image(png, rows->data());
  png_read_end(png, nullptr);
  return true;
}

bool RunPngWrite(png_structp png, png_infop info, const PixelImage& image, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_IHDR(png, info, image.width, image.height, 8,
               image.channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, nullptr);
  return true;
}

Status CheckDimensions(uint32_t width, uint32_t height, const char* what) {
  if (width == 0 || height == 0 || width > kMaxImageDimension || height > kMaxImageDimension) {
    return Status::InvalidArgument(std::string(what) + " is " + std::to_string(width) + "x" +
                                   std::to_string(height) + "; each side must be 1.." +
                                   std::to_string(kMaxImageDimension));
  }
  return Status::Ok();
}

// PGM header token reader: whitespace and '#' comments separate tokens.
bool SkipPgmSeparators(std::string_view bytes, size_t* pos) {
  const size_t start = *pos;
  while (*pos < bytes.size()) {
    const char c = bytes[*pos];
    if (c == '#') {
      while (*pos < bytes.size() && bytes[*pos] != '\n' && bytes[*pos] != '\r') ++*pos;
    } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') {
      ++*pos;
    } else {
      break;
    }
  }
  return *pos > start;
}

Result<uint32_t> ReadPgmNumber(std::string_view bytes, size_t* pos, const char* name,
                               uint32_t max) {
  if (!SkipPgmSeparators(bytes, pos)) {
    return Status::InvalidArgument(std::string("PGM header: expected whitespace before ") + name);
  }
  uint64_t value = 0;
  const size_t start = *pos;
  while (*pos < bytes.size() && bytes[*pos] >= '0' && bytes[*pos] <= '9') {
    value = value * 10 + static_cast<uint64_t>(bytes[*pos] - '0');
    if (value > max) {
      return Status::InvalidArgument(std::string("PGM header: ") + name + " exceeds " +
                                     std::to_string(max));
    }
    ++*pos;
  }
  if (*pos == start) {
    return Status::InvalidArgument(std::string("PGM header: ") + name +
                                   " is missing or not a number");
  }
  return static_cast<uint32_t>(value);
}

Result<GrayImage> DecodePgm(std::string_view bytes) {
  size_t pos = 2;  // after "P5"
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t width,
                          ReadPgmNumber(bytes, &pos, "width", kMaxImageDimension));
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t height,
                          ReadPgmNumber(bytes, &pos, "height", kMaxImageDimension));
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t maxval, ReadPgmNumber(bytes, &pos, "maxval", 65535));
  CLEAVE_RETURN_IF_ERROR(CheckDimensions(width, height, "PGM image"));
  if (maxval == 0) return Status::InvalidArgument("PGM header: maxval must be 1..65535, got 0");
  if (pos >= bytes.size() || !std::isspace(static_cast<unsigned char>(bytes[pos]))) {
    return Status::InvalidArgument("PGM header: expected one whitespace byte after maxval");
  }
  ++pos;
  const size_t bytes_per_sample = maxval < 256 ? 1 : 2;
  const size_t count = size_t{width} * height;
  const size_t needed = count * bytes_per_sample;
  if (bytes.size() - pos < needed) {  // trailing bytes (a further image) are allowed
    return Status::InvalidArgument("PGM data is truncated: " + std::to_string(bytes.size() - pos) +
                                   " pixel bytes but " + std::to_string(width) + "x" +
                                   std::to_string(height) + " needs " + std::to_string(needed));
  }
  GrayImage image;
  image.width = width;
  image.height = height;
  image.pixels.resize(count);
  const auto* in = reinterpret_cast<const uint8_t*>(bytes.data() + pos);
  for (size_t i = 0; i < count; ++i) {
    uint32_t sample = bytes_per_sample == 1 ? in[i] : (uint32_t{in[2 * i]} << 8) | in[2 * i + 1];
    if (sample > maxval) sample = maxval;  // out-of-range samples saturate
    image.pixels[i] = static_cast<uint8_t>((sample * 255 + maxval / 2) / maxval);
  }
  return image;
}

}  // namespace

Result<std::string> EncodePngPixels(const PixelImage& image) {
  CLEAVE_RETURN_IF_ERROR(CheckDimensions(image.width, image.height, "image"));
  if (image.channels != 1 && image.channels != 3) {
    return Status::InvalidArgument("image has " + std::to_string(image.channels) +
                                   " channels; PNG encoding takes 1 (gray) or 3 (RGB)");
  }
  const size_t row_bytes = size_t{image.width} * image.channels;
  if (image.pixels.size() != row_bytes * image.height) {
    return Status::InvalidArgument(
        "image has " + std::to_string(image.pixels.size()) + " pixel bytes but " +
        std::to_string(image.width) + "x" + std::to_string(image.height) + "x" +
        std::to_string(image.channels) + " needs " + std::to_string(row_bytes * image.height));
  }
  PngErrorState errors;
  PngWriteHandle handle(&errors);
  if (!handle.ok()) return Status::ResourceExhausted("cannot create libpng write struct");
  std::string out;
  std::vector<png_bytep> rows(image.height);
  for (uint32_t y = 0; y < image.height; ++y) {
    // libpng's API is not const-correct; it only reads the rows.
    rows[y] = const_cast<png_bytep>(image.pixels.data() + y * row_bytes);
  }
  png_set_write_fn(handle.png(), &out, AppendToString, FlushNothing);
  if (!RunPngWrite(handle.png(), handle.info(), image, rows.data())) {
    return Status::Internal(std::string("PNG encoding failed: ") + errors.message);
  }
  return out;
}

Result<std::string> EncodePngGray8(const GrayImage& image) {
  CLEAVE_RETURN_IF_ERROR(CheckDimensions(image.width, image.height, "image"));
  if (image.pixels.size() != size_t{image.width} * image.height) {
    return Status::InvalidArgument("image has " + std::to_string(image.pixels.size()) +
                                   " pixels but " + std::to_string(image.width) + "x" +
                                   std::to_string(image.height) + " needs " +
                                   std::to_string(size_t{image.width} * image.height));
  }
  // The copy keeps GrayImage's API; the cost is one image-sized memcpy per encode.
  return EncodePngPixels(PixelImage{image.width, image.height, 1, image.pixels});
}

Result<PixelImage> DecodePngPixels(std::string_view bytes, int channels) {
  if (channels != 0 && channels != 1 && channels != 3) {
    return Status::InvalidArgument("cannot decode a PNG to " + std::to_string(channels) +
                                   " channels; use 0 (its own), 1 (gray) or 3 (RGB)");
  }
  if (bytes.size() < 8 || png_sig_cmp(reinterpret_cast<png_const_bytep>(bytes.data()), 0, 8) != 0) {
    return Status::InvalidArgument("not a PNG: missing the 8-byte PNG signature");
  }
  PngErrorState errors;
  PngReadHandle handle(&errors);
  if (!handle.ok()) return Status::ResourceExhausted("cannot create libpng read struct");
  MemorySource source{reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 0};
  png_set_read_fn(handle.png(), &source, ReadFromMemory);
  PixelImage image;
  std::vector<png_bytep> rows;
  try {
    if (!RunPngRead(handle.png(), handle.info(), channels, &image, &rows)) {
      return Status::InvalidArgument(std::string("invalid PNG: ") + errors.message);
    }
  } catch (const std::bad_alloc&) {
    return Status::ResourceExhausted("out of memory decoding PNG");
  }
  return image;
}

Result<GrayImage> DecodePng(std::string_view bytes) {
  CLEAVE_ASSIGN_OR_RETURN(PixelImage image, DecodePngPixels(bytes, 1));
  return GrayImage{image.width, image.height, std::move(image.pixels)};
}

Result<PixelImage> ReadPngFile(const std::string& path, int channels) {
  CLEAVE_ASSIGN_OR_RETURN(const std::string bytes,
                          ReadFileToStringBounded(path, kMaxImageFileBytes));
  Result<PixelImage> image = DecodePngPixels(bytes, channels);
  if (!image.ok()) return image.status().WithContext(path);
  return image;
}

Result<GrayImage> ReadImageFile(const std::string& path) {
  CLEAVE_ASSIGN_OR_RETURN(const std::string bytes,
                          ReadFileToStringBounded(path, kMaxImageFileBytes));
  if (bytes.size() >= 8 &&
      png_sig_cmp(reinterpret_cast<png_const_bytep>(bytes.data()), 0, 8) == 0) {
    Result<GrayImage> image = DecodePng(bytes);
    if (!image.ok()) return image.status().WithContext(path);
    return image;
  }
  if (bytes.size() >= 2 && bytes[0] == 'P' && bytes[1] == '5') {
    Result<GrayImage> image = DecodePgm(bytes);
    if (!image.ok()) return image.status().WithContext(path);
    return image;
  }
  return Status::InvalidArgument(path +
                                 ": unsupported image format (expected PNG or binary PGM 'P5')");
}

}  // namespace cleave
