#include "common/datasets.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include <zlib.h>

namespace cleave {
namespace {

constexpr uint64_t kMaxTotalBytes = uint64_t{1} << 34;
constexpr size_t kReadChunk = size_t{1} << 20;

std::string Quoted(const std::string& s) { return "'" + s + "'"; }

std::string Hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

struct GzFileCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};

// Sequential reader over a gzip or plain file (zlib passes plain files through unchanged).
class IdxReader {
 public:
  static Result<IdxReader> Open(const std::string& path) {
    int fd;
    do {
      fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      std::string message = "cannot open " + Quoted(path) + ": " + std::strerror(errno);
      return errno == ENOENT ? Status::NotFound(message) : Status::IoError(message);
    }
    gzFile f = gzdopen(fd, "rb");
    if (f == nullptr) {
      ::close(fd);
      return Status::ResourceExhausted("zlib could not allocate a reader for " + Quoted(path));
    }
    gzbuffer(f, 1 << 17);
    return IdxReader(path, f);
  }

  // Reads up to `size` bytes; fewer only at end of file. Errors: DataLoss (corrupt or
  // truncated gzip stream), IoError.
  Result<size_t> Read(uint8_t* out, size_t size) {
    size_t total = 0;
    while (total < size) {
      unsigned chunk = static_cast<unsigned>(std::min<size_t>(size - total, INT_MAX / 2));
      int n = gzread(file_.get(), out + total, chunk);
      int code = Z_OK;
      const char* message = gzerror(file_.get(), &code);
      if (n < 0 || (code != Z_OK && code != Z_STREAM_END)) {
        if (code == Z_ERRNO) {
          return Status::IoError("cannot read " + Quoted(path_) + ": " + std::strerror(errno));
        }
        return Status::DataLoss(Quoted(path_) + " is corrupt: " + message);
      }
      if (n == 0) break;
      total += static_cast<size_t>(n);
    }
    return total;
  }

  // Reads a big-endian uint32; DataLoss if the file ends first.
  Result<uint32_t> ReadU32(const char* field) {
    uint8_t b[4];
    CLEAVE_ASSIGN_OR_RETURN(size_t n, Read(b, sizeof(b)));
    if (n != sizeof(b)) {
      return Status::DataLoss(Quoted(path_) + " is truncated: header ends before " + field);
    }
    return ReadBigEndianU32(b);
  }

  // Appends exactly `bytes` bytes to `out`, growing it as data arrives, then checks that
  // the file ends there.
  Status ReadBody(uint64_t bytes, const std::string& what, std::vector<uint8_t>* out) {
    uint64_t done = 0;
    while (done < bytes) {
      size_t chunk = static_cast<size_t>(std::min<uint64_t>(bytes - done, kReadChunk));
      size_t old_size = out->size();
      out->resize(old_size + chunk);
      CLEAVE_ASSIGN_OR_RETURN(size_t n, Read(out->data() + old_size, chunk));
      done += n;
      if (n < chunk) {
        out->resize(old_size + n);
        return Status::DataLoss(Quoted(path_) + " is truncated: header declares " + what + " (" +
                                std::to_string(bytes) + " bytes) but only " + std::to_string(done) +
                                " bytes follow");
      }
    }
    uint8_t extra[64];
    CLEAVE_ASSIGN_OR_RETURN(size_t trailing, Read(extra, sizeof(extra)));
    if (trailing > 0) {
      return Status::DataLoss(Quoted(path_) + " has unexpected bytes after the " + what +
                              " declared in its header");
    }
    return Status::Ok();
  }

  const std::string& path() const { return path_; }

 private:
  IdxReader(std::string path, gzFile f) : path_(std::move(path)), file_(f) {}
  std::string path_;
  std::unique_ptr<gzFile_s, GzFileCloser> file_;
};

Status ReadImages(const std::string& path, ImageDataset* dataset) {
  CLEAVE_ASSIGN_OR_RETURN(IdxReader reader, IdxReader::Open(path));
  CLEAVE_ASSIGN_OR_RETURN(uint32_t magic, reader.ReadU32("the magic number"));
  CLEAVE_RETURN_IF_ERROR(CheckIdxMagic(path, magic, kIdxImagesMagic, "image"));
  CLEAVE_ASSIGN_OR_RETURN(uint32_t count, reader.ReadU32("the image count"));
  CLEAVE_ASSIGN_OR_RETURN(uint32_t rows, reader.ReadU32("the row count"));
  CLEAVE_ASSIGN_OR_RETURN(uint32_t cols, reader.ReadU32("the column count"));
  CLEAVE_RETURN_IF_ERROR(CheckIdxImageSize(path, rows, cols));
  const uint64_t image_bytes = uint64_t{rows} * cols;
  const uint64_t total = image_bytes * count;
  if (total > kMaxTotalBytes) {
    return Status::InvalidArgument(Quoted(path) + " declares " + std::to_string(total) +
                                   " bytes of images, over the limit of " +
                                   std::to_string(kMaxTotalBytes));
  }
  dataset->rows = rows;
  dataset->cols = cols;
  dataset->images.clear();
  return reader.ReadBody(total, std::to_string(count) + " images", &dataset->images);
}

Status ReadLabels(const std::string& path, std::vector<uint8_t>* labels) {
  CLEAVE_ASSIGN_OR_RETURN(IdxReader reader, IdxReader::Open(path));
  CLEAVE_ASSIGN_OR_RETURN(uint32_t magic, reader.ReadU32("the magic number"));
  CLEAVE_RETURN_IF_ERROR(CheckIdxMagic(path, magic, kIdxLabelsMagic, "label"));
  CLEAVE_ASSIGN_OR_RETURN(uint32_t count, reader.ReadU32("the label count"));
  labels->clear();
  return reader.ReadBody(count, std::to_string(count) + " labels", labels);
}

// dir/base.gz if it exists, else dir/base if it exists, else "".
std::string FindFile(const std::string& dir, const std::string& base) {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (const fs::path& candidate : {fs::path(dir) / (base + ".gz"), fs::path(dir) / base}) {
    if (fs::exists(candidate, ec)) return candidate.string();
  }
  return "";
}

}  // namespace

Status CheckIdxMagic(const std::string& path, uint32_t magic, uint32_t expected, const char* kind) {
  if (magic == expected) return Status::Ok();
  return Status::InvalidArgument(Quoted(path) + " is not an IDX " + kind + " file: magic " +
                                 Hex32(magic) + ", expected " + Hex32(expected));
}

Status CheckIdxImageSize(const std::string& path, uint32_t rows, uint32_t cols) {
  if (rows != 0 && cols != 0 && uint64_t{rows} * cols <= kMaxIdxImageBytes) return Status::Ok();
  return Status::InvalidArgument(Quoted(path) + " declares " + std::to_string(rows) + "x" +
                                 std::to_string(cols) + " images; each side must be non-zero " +
                                 "and an image at most " + std::to_string(kMaxIdxImageBytes) +
                                 " bytes");
}

Result<std::vector<uint8_t>> LoadIdxLabels(const std::string& labels_gz_or_raw) {
  std::vector<uint8_t> labels;
  CLEAVE_RETURN_IF_ERROR(ReadLabels(labels_gz_or_raw, &labels));
  return labels;
}

Result<ImageDataset> LoadIdxImagesOnly(const std::string& images_gz_or_raw) {
  ImageDataset dataset;
  CLEAVE_RETURN_IF_ERROR(ReadImages(images_gz_or_raw, &dataset));
  return dataset;
}

Result<ImageDataset> LoadIdxPair(const std::string& images_gz_or_raw,
                                 const std::string& labels_gz_or_raw) {
  ImageDataset dataset;
  CLEAVE_RETURN_IF_ERROR(ReadImages(images_gz_or_raw, &dataset));
  CLEAVE_RETURN_IF_ERROR(ReadLabels(labels_gz_or_raw, &dataset.labels));
  if (dataset.labels.size() != dataset.size()) {
    return Status::InvalidArgument(
        Quoted(images_gz_or_raw) + " holds " + std::to_string(dataset.size()) + " images but " +
        Quoted(labels_gz_or_raw) + " holds " + std::to_string(dataset.labels.size()) + " labels");
  }
  return dataset;
}

Result<ImageDataset> LoadFashionMnist(DatasetSplit split, const std::string& dir) {
  const std::string prefix = split == DatasetSplit::kTrain ? "train" : "t10k";
  const std::string images_base = prefix + "-images-idx3-ubyte";
  const std::string labels_base = prefix + "-labels-idx1-ubyte";
  const std::string images = FindFile(dir, images_base);
  const std::string labels = FindFile(dir, labels_base);
  if (images.empty() || labels.empty()) {
    return Status::NotFound("Fashion-MNIST " + prefix + " files not found in " + Quoted(dir) +
                            " (looked for " + images_base + "[.gz] and " + labels_base +
                            "[.gz]); the Debian package dataset-fashion-mnist provides them "
                            "(apt-get install dataset-fashion-mnist)");
  }
  CLEAVE_ASSIGN_OR_RETURN(ImageDataset dataset, LoadIdxPair(images, labels));
  if (dataset.rows != 28 || dataset.cols != 28) {
    return Status::DataLoss(Quoted(images) + " holds " + std::to_string(dataset.rows) + "x" +
                            std::to_string(dataset.cols) + " images; Fashion-MNIST is 28x28");
  }
  for (size_t i = 0; i < dataset.labels.size(); ++i) {
    if (dataset.labels[i] >= 10) {
      return Status::DataLoss(Quoted(labels) + " has label " + std::to_string(dataset.labels[i]) +
                              " at index " + std::to_string(i) + "; Fashion-MNIST has 10 classes");
    }
  }
  return dataset;
}

}  // namespace cleave
