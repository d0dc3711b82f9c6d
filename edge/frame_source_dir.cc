// The directory FrameSource (dir:PATH): inotify reports files closed after writing
// (IN_CLOSE_WRITE) or renamed into the directory (IN_MOVED_TO), so a file is read only once its
// writer is done with it; one being written is not reported until it is closed.
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <set>
#include <system_error>

#include "common/logging.h"
#include "edge/frame_source.h"

namespace cleave::edge {
namespace {

namespace fs = std::filesystem;

// Names a writer uses while it writes (then renames): never read.
bool IsScratchName(const std::string& name) {
  const auto ends_with = [&](const char* suffix) {
    const size_t n = std::strlen(suffix);
    return name.size() >= n && name.compare(name.size() - n, n, suffix) == 0;
  };
  return name.empty() || name[0] == '.' || ends_with(".tmp") || ends_with(".part");
}

class DirectoryFrameSource : public FrameSource {
 public:
  DirectoryFrameSource(int inotify_fd, fs::path dir, FrameSourceOptions options)
      : fd_(inotify_fd),
        dir_(std::move(dir)),
        description_("dir:" + dir_.string()),
        options_(std::move(options)),
        clock_(options_.clock ? options_.clock : &SystemClock()) {
    Rescan();
  }
  ~DirectoryFrameSource() override { ::close(fd_); }

  zmq_pollitem_t poll_item() override { return {nullptr, fd_, ZMQ_POLLIN, 0}; }

  Status Read(size_t max, std::vector<SourceFrame>* out) override {
    CLEAVE_RETURN_IF_ERROR(DrainEvents());
    size_t taken = 0;
    while (taken < max && !queue_.empty()) {
      const std::string name = std::move(queue_.front());
      queue_.pop_front();
      queued_.erase(name);
      if (Take(name, out)) ++taken;
    }
    return Status::Ok();
  }

  const std::string& description() const override { return description_; }

 private:
  void Enqueue(const std::string& name) {
    if (IsScratchName(name) || !queued_.insert(name).second) return;
    queue_.push_back(name);
  }

  // Every eligible file now in the directory, by name (start-up, and after the kernel's event
  // queue overflowed). With `keep`, a file taken before is not taken again by a rescan.
  void Rescan() {
    std::vector<std::string> names;
    std::error_code ec;
    for (const fs::directory_entry& entry : fs::directory_iterator(dir_, ec)) {
      std::error_code type_ec;
      if (!entry.is_regular_file(type_ec)) continue;
      const std::string name = entry.path().filename().string();
      if (!taken_.count(name)) names.push_back(name);
    }
    if (ec) GetLogger("edge")->warn("cannot list {}: {}", dir_.string(), ec.message());
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) Enqueue(name);
  }

  // Reads the pending inotify events into the queue. An error when the directory is gone.
  Status DrainEvents() {
    alignas(inotify_event) char buffer[16384];
    while (true) {
      const ssize_t n = ::read(fd_, buffer, sizeof(buffer));
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return Status::Ok();
        return Status::IoError("reading inotify events of " + dir_.string() + ": " +
                               std::strerror(errno));
      }
      if (n == 0) return Status::Ok();
      for (ssize_t at = 0; at < n;) {
        const auto* event = reinterpret_cast<const inotify_event*>(buffer + at);
        at += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
        if (event->mask & IN_Q_OVERFLOW) {
          GetLogger("edge")->warn("{}: inotify queue overflowed; rescanning the directory",
                                  description_);
          Rescan();
          continue;
        }
        if (event->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT)) {
          return Status::NotFound("watched directory " + dir_.string() +
                                  " was removed, moved or unmounted");
        }
        if ((event->mask & IN_ISDIR) || event->len == 0) continue;
        // A file rewritten (closed after writing again) is a new frame, also with `keep`.
        const std::string name(event->name);
        taken_.erase(name);
        Enqueue(name);
      }
    }
  }

  // Reads `name` into a frame (true), or nothing when it is no longer there or not a regular
  // file (false); then keeps, deletes or moves it.
  bool Take(const std::string& name, std::vector<SourceFrame>* out) {
    const fs::path path = dir_ / name;
    const int file = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (file < 0) {
      // Renamed away or deleted before its turn (or a symlink): not a frame of ours.
      if (errno != ENOENT) {
        GetLogger("edge")->warn("{}: cannot open {}: {}", description_, name, std::strerror(errno));
      }
      return false;
    }
    struct stat st {};
    if (::fstat(file, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(file);
      return false;
    }
    SourceFrame frame;
    frame.origin = name;
    frame.arrival_us = clock_->NowMicros();
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size > options_.max_frame_bytes) {
      frame.status = Status::InvalidArgument("file " + name + " of " + std::to_string(size) +
                                             " bytes exceeds edge.source_max_bytes (" +
                                             std::to_string(options_.max_frame_bytes) + ")");
    } else {
      std::string bytes(size, '\0');
      size_t got = 0;
      while (got < bytes.size()) {
        const ssize_t n = ::read(file, bytes.data() + got, bytes.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<size_t>(n);
      }
      if (got != bytes.size()) {
        frame.status =
            Status::IoError("file " + name + " shrank or could not be read (" +
                            std::to_string(got) + " of " + std::to_string(size) + " bytes)");
      } else {
        FillSourceFrame(options_.format, options_.max_frame_bytes, std::move(bytes), &frame);
      }
    }
    ::close(file);
    out->push_back(std::move(frame));
    Dispose(name, path);
    return true;
  }

  void Dispose(const std::string& name, const fs::path& path) {
    std::error_code ec;
    switch (options_.after.kind) {
      case DirAfter::Kind::kKeep: taken_.insert(name); return;
      case DirAfter::Kind::kDelete: fs::remove(path, ec); break;
      case DirAfter::Kind::kMove:
        fs::rename(path, fs::path(options_.after.move_to) / name, ec);
        break;
    }
    if (ec) {
      // It stays; with delete/move a restart would take it again, so say so.
      GetLogger("edge")->warn("{}: cannot {} {}: {}", description_,
                              options_.after.kind == DirAfter::Kind::kDelete ? "delete" : "move",
                              name, ec.message());
      taken_.insert(name);
    }
  }

  int fd_;
  fs::path dir_;
  std::string description_;
  FrameSourceOptions options_;
  Clock* clock_;
  std::deque<std::string> queue_;  // names to take, in order
  std::set<std::string> queued_;   // the names in queue_
  std::set<std::string> taken_;    // kept (or undisposable) files a rescan must not take again
};

}  // namespace

Result<std::unique_ptr<FrameSource>> OpenDirectoryFrameSource(const std::string& dir,
                                                              const FrameSourceOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return Status::NotFound("edge.source: " + dir + " is not a directory");
  }
  if (options.after.kind == DirAfter::Kind::kMove) {
    const std::string& to = options.after.move_to;
    if (!fs::is_directory(to, ec)) {
      return Status::NotFound("edge.source_dir_after: move target " + to + " is not a directory");
    }
    if (fs::equivalent(dir, to, ec)) {
      return Status::InvalidArgument("edge.source_dir_after: move target " + to +
                                     " is the watched directory itself");
    }
    struct stat a {
    }, b{};
    if (::stat(dir.c_str(), &a) == 0 && ::stat(to.c_str(), &b) == 0 && a.st_dev != b.st_dev) {
      return Status::InvalidArgument("edge.source_dir_after: move target " + to +
                                     " is on another file system than " + dir +
                                     " (files are moved by rename)");
    }
  }
  const int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) return Status::IoError(std::string("inotify_init1: ") + std::strerror(errno));
  const uint32_t mask =
      IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK;
  if (::inotify_add_watch(fd, dir.c_str(), mask) < 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    return Status::IoError("edge.source: cannot watch " + dir + ": " + why);
  }
  // The watch is in place before the start-up scan, so no file falls between the two (one that
  // does both is queued once).
  return std::unique_ptr<FrameSource>(new DirectoryFrameSource(fd, dir, options));
}

}  // namespace cleave::edge
