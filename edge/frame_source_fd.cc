// The descriptor FrameSource (stdin): frames framed as a 4-byte little-endian length, then
// that many bytes. The descriptor is read only when poll() says it is readable, so it needs no
// O_NONBLOCK (which would also change the shell's stdin); a regular file is always readable.
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/logging.h"
#include "edge/frame_source.h"

namespace cleave::edge {
namespace {

constexpr size_t kFdReadChunk = 64 * 1024;

uint32_t LittleEndian32(const char* p) {
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  return uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
}

class FdFrameSource : public FrameSource {
 public:
  FdFrameSource(int fd, std::string name, FrameSourceOptions options)
      : fd_(fd),
        description_(std::move(name)),
        options_(std::move(options)),
        clock_(options_.clock ? options_.clock : &SystemClock()) {}

  zmq_pollitem_t poll_item() override {
    // Nothing to wait for once at the end: -1 is ignored by poll.
    return {nullptr, ended_ ? -1 : fd_, ZMQ_POLLIN, 0};
  }

  Status Read(size_t max, std::vector<SourceFrame>* out) override {
    size_t taken = 0;
    while (taken < max && !ended_) {
      // Whole frames already buffered go first.
      Result<bool> parsed = ParseOne(out);
      if (!parsed.ok()) {
        ended_ = true;
        return parsed.status();
      }
      if (*parsed) {
        ++taken;
        continue;
      }
      pollfd p{fd_, POLLIN, 0};
      const int ready = ::poll(&p, 1, 0);
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return Status::Ok();
      char chunk[kFdReadChunk];
      const ssize_t n = ::read(fd_, chunk, sizeof(chunk));
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        ended_ = true;
        return Status::IoError("reading " + description_ + ": " + std::strerror(errno));
      }
      if (n == 0) {
        EndOfInput(out);
        return Status::Ok();
      }
      Absorb(chunk, static_cast<size_t>(n));
    }
    return Status::Ok();
  }

  bool finished() const override { return ended_; }
  const std::string& description() const override { return description_; }

 private:
  // New bytes: those of a frame being skipped are dropped at once, the rest buffered.
  void Absorb(const char* data, size_t n) {
    const size_t skipped = std::min<uint64_t>(skip_, n);
    skip_ -= skipped;
    buffer_.append(data + skipped, n - skipped);
  }

  // One frame from the buffer: true when a frame (or a bad input) was appended, false when
  // more bytes are needed; an error when the input cannot be framed at all.
  Result<bool> ParseOne(std::vector<SourceFrame>* out) {
    if (skip_ > 0 || buffer_.size() < 4) return false;
    const uint32_t length = LittleEndian32(buffer_.data());
    SourceFrame frame;
    frame.arrival_us = clock_->NowMicros();
    if (length > options_.max_frame_bytes) {
      if (std::memcmp(buffer_.data(), "\x89PNG", 4) == 0 ||
          std::memcmp(buffer_.data(), "\xff\xd8\xff", 3) == 0) {
        return Status::InvalidArgument(
            description_ +
            " is not length-prefixed: it holds a bare PNG or JPEG; write each frame as a "
            "4-byte little-endian length followed by that many bytes");
      }
      // Skipped as it arrives, so an oversized frame never sits in memory.
      frame.status = Status::InvalidArgument(
          "frame of " + std::to_string(length) + " bytes exceeds edge.source_max_bytes (" +
          std::to_string(options_.max_frame_bytes) + "); skipped");
      const size_t have = buffer_.size() - 4;
      const size_t dropped = std::min<uint64_t>(have, length);
      skip_ = length - dropped;
      buffer_.erase(0, 4 + dropped);
      out->push_back(std::move(frame));
      return true;
    }
    if (buffer_.size() - 4 < length) return false;
    FillSourceFrame(options_.format, options_.max_frame_bytes, buffer_.substr(4, length), &frame);
    buffer_.erase(0, 4 + size_t{length});
    out->push_back(std::move(frame));
    return true;
  }

  void EndOfInput(std::vector<SourceFrame>* out) {
    ended_ = true;
    // Inside an oversized frame: that frame is already counted.
    if (buffer_.empty() || skip_ > 0) return;
    SourceFrame frame;
    frame.arrival_us = clock_->NowMicros();
    frame.status = Status::InvalidArgument(description_ + " ended inside a frame (" +
                                           std::to_string(buffer_.size()) +
                                           " bytes after the last whole frame)");
    buffer_.clear();
    out->push_back(std::move(frame));
  }

  int fd_;
  std::string description_;
  FrameSourceOptions options_;
  Clock* clock_;
  std::string buffer_;  // bytes read, not yet a whole frame
  uint64_t skip_ = 0;   // bytes of an oversized frame still to discard
  bool ended_ = false;
};

}  // namespace

std::unique_ptr<FrameSource> OpenFdFrameSource(int fd, const std::string& name,
                                               const FrameSourceOptions& options) {
  return std::make_unique<FdFrameSource>(fd, name, options);
}

}  // namespace cleave::edge
