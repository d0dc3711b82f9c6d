// The descriptor FrameSource (stdin): frames framed as a 4-byte little-endian length, then
// that many bytes (edge/length_prefixed.h). The descriptor is read only when poll() says it is
// readable, so it needs no O_NONBLOCK (which would also change the shell's stdin); a regular file
// is always readable.
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/logging.h"
#include "edge/frame_source.h"
#include "edge/length_prefixed.h"

namespace cleave::edge {
namespace {

constexpr size_t kFdReadChunk = 64 * 1024;

class FdFrameSource : public FrameSource {
 public:
  FdFrameSource(int fd, std::string name, FrameSourceOptions options)
      : fd_(fd),
        description_(std::move(name)),
        options_(std::move(options)),
        clock_(options_.clock ? options_.clock : &SystemClock()),
        splitter_(options_.max_frame_bytes) {}

  zmq_pollitem_t poll_item() override {
    // Nothing to wait for once at the end: -1 is ignored by poll.
    return {nullptr, ended_ ? -1 : fd_, ZMQ_POLLIN, 0};
  }

  Status Read(size_t max, std::vector<SourceFrame>* out) override {
    size_t taken = 0;
    while (taken < max && !ended_) {
      // Whole frames already buffered go first.
      Result<LengthPrefixedSplitter::Piece> piece = splitter_.Next();
      if (!piece.ok()) {
        ended_ = true;
        return piece.status();
      }
      if (piece->kind != LengthPrefixedSplitter::Piece::Kind::kNeedMore) {
        SourceFrame frame;
        frame.arrival_us = clock_->NowMicros();
        if (piece->kind == LengthPrefixedSplitter::Piece::Kind::kOversized) {
          frame.status =
              Status::InvalidArgument("frame of " + std::to_string(piece->length) +
                                      " bytes exceeds edge.source_max_bytes (" +
                                      std::to_string(options_.max_frame_bytes) + "); skipped");
        } else {
          FillSourceFrame(options_.format, options_.max_frame_bytes, std::move(piece->bytes),
                          &frame);
        }
        out->push_back(std::move(frame));
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
      splitter_.Feed(std::string_view(chunk, static_cast<size_t>(n)));
    }
    return Status::Ok();
  }

  bool finished() const override { return ended_; }
  const std::string& description() const override { return description_; }

 private:
  void EndOfInput(std::vector<SourceFrame>* out) {
    ended_ = true;
    // Inside an oversized frame: that frame is already counted.
    if (splitter_.buffered() == 0 || splitter_.skipping()) return;
    SourceFrame frame;
    frame.arrival_us = clock_->NowMicros();
    frame.status = Status::InvalidArgument(description_ + " ended inside a frame (" +
                                           std::to_string(splitter_.buffered()) +
                                           " bytes after the last whole frame)");
    out->push_back(std::move(frame));
  }

  int fd_;
  std::string description_;
  FrameSourceOptions options_;
  Clock* clock_;
  LengthPrefixedSplitter splitter_;
  bool ended_ = false;
};

}  // namespace

std::unique_ptr<FrameSource> OpenFdFrameSource(int fd, const std::string& name,
                                               const FrameSourceOptions& options) {
  return std::make_unique<FdFrameSource>(fd, name, options);
}

}  // namespace cleave::edge
