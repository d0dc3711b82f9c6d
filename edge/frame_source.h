// Streaming sources of cleave-edge: where frames come from when the daemon classifies a
// continuous feed (edge.source; edge/stream_feeder.h sends them to the daemon).
//
//   zmq-pull://ENDPOINT  a PULL socket; binds ENDPOINT (producers connect and PUSH), or
//                        connects with `>ENDPOINT`
//   zmq-sub://ENDPOINT   a SUB socket; connects to a publisher at ENDPOINT, or binds with
//                        `@ENDPOINT`; subscribes to FrameSourceOptions::topics (all when empty)
//                        A ZeroMQ message is one frame: [image] (the default stream) or
//                        [stream id, image] (a SUB topic is the stream id).
//   dir:PATH             a watched directory (inotify): every regular file that is closed after
//                        writing in it or renamed into it, in that order; names starting with
//                        '.' or ending in .tmp or .part are never read (write there, then
//                        rename). Files already there at start are taken first, by name. Each
//                        file taken is kept, deleted or moved (DirAfter).
//   stdin                length-prefixed frames on standard input (or any descriptor): a
//                        4-byte little-endian length, then that many bytes.
//
// Image bytes are PNG or JPEG (told by their magic bytes) or, with a raw FrameFormat, exactly
// width x height (x3 for rgb8) pixels. Bad input - larger than max_frame_bytes, not an image
// of the format, an empty or malformed message - is delivered as a SourceFrame with a non-OK
// status (the feeder counts and skips it); only the source itself failing is an error.
//
// Threads: a FrameSource belongs to one thread (it owns a socket or a descriptor's reads).
#pragma once

#include <zmq.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/edge_api.h"
#include "common/status.h"
#include "common/transport.h"

namespace cleave::edge {

// What the image bytes of a frame are.
struct FrameFormat {
  enum class Kind : uint8_t { kAuto, kGray8, kRgb8 };
  Kind kind = Kind::kAuto;         // kAuto: PNG or JPEG, by magic bytes
  uint32_t width = 0, height = 0;  // raw kinds
};
// "auto", "gray8:WxH" or "rgb8:WxH" (sides in [1, edge_api::kMaxImageSide]).
Result<FrameFormat> ParseFrameFormat(std::string_view text);

// What the directory source does with a file once it has read it (answered or not).
struct DirAfter {
  enum class Kind : uint8_t { kKeep, kDelete, kMove };
  Kind kind = Kind::kKeep;
  std::string move_to;  // kMove: a directory on the same file system
};
// "keep", "delete" or "move:DIR".
Result<DirAfter> ParseDirAfter(std::string_view text);

// A parsed edge.source.
struct SourceSpec {
  enum class Kind : uint8_t { kZmqPull, kZmqSub, kDirectory, kStdin };
  Kind kind = Kind::kStdin;
  std::string endpoint;  // zmq kinds, without the @/> prefix
  bool bind = false;     // zmq kinds
  std::string path;      // kDirectory
};
// InvalidArgument, listing the accepted forms, for an unknown scheme or an empty endpoint/path.
Result<SourceSpec> ParseSourceSpec(std::string_view text);

// Stream ids: 1..128 bytes of [A-Za-z0-9_.:@/-], but not the reserved kOtherStream.
// InvalidArgument saying why not.
Status CheckStreamId(std::string_view stream);
// The stream that input no stream can take is counted on (edge/stream_feeder.h).
inline constexpr char kOtherStream[] = "_other";

struct FrameSourceOptions {
  std::string default_stream = "default";  // stream of frames that do not name one
  std::vector<std::string> topics;         // zmq-sub: stream ids subscribed to; empty = all
  FrameFormat format;
  uint64_t max_frame_bytes = 4u << 20;  // image bytes of one frame at most
  DirAfter after;                       // directory source
  Clock* clock = nullptr;               // arrival times; null = SystemClock()
};

// One input of a source.
struct SourceFrame {
  std::string stream;      // as the input named it (unchecked); "" = the default stream
  std::string origin;      // where it came from, for the results: a file name; else ""
  int64_t arrival_us = 0;  // when the source took it (options.clock)
  Status status;           // not OK: bad input (why); the fields below are then unset
  edge_api::ImageKind kind = edge_api::ImageKind::kPng;
  std::string bytes;               // PNG / JPEG bytes, or raw pixels
  uint32_t width = 0, height = 0;  // raw kinds
};

// Fills `frame` (status, kind, bytes, dims) from image bytes per `format` and the size cap.
void FillSourceFrame(const FrameFormat& format, uint64_t max_frame_bytes, std::string bytes,
                     SourceFrame* frame);

class FrameSource {
 public:
  virtual ~FrameSource() = default;

  // What to poll for input (ZMQ_POLLIN): a ZeroMQ socket or a descriptor.
  virtual zmq_pollitem_t poll_item() = 0;
  // Appends at most `max` inputs without blocking. May deliver input even when poll_item is
  // not readable (input it buffered), so call it every loop turn. An error means the source
  // failed for good (the watched directory was removed, unframed stdin); inputs appended
  // before it are still valid.
  virtual Status Read(size_t max, std::vector<SourceFrame>* out) = 0;
  // True once the source will deliver nothing more (end of stdin).
  virtual bool finished() const { return false; }
  // What it reads, resolved: "zmq-pull tcp://127.0.0.1:40123 (bound)", "dir:/var/spool/cam".
  virtual const std::string& description() const = 0;
};

// Opens `spec` (zmq sockets on `context`, which must outlive the source; stdin is fd 0).
// Errors: InvalidArgument for bad options or endpoints, IoError/NotFound when the endpoint or
// directory cannot be used.
Result<std::unique_ptr<FrameSource>> OpenFrameSource(TransportContext& context,
                                                     const SourceSpec& spec,
                                                     const FrameSourceOptions& options);

// The kinds, for tests and embedding.
Result<std::unique_ptr<FrameSource>> OpenZmqFrameSource(TransportContext& context,
                                                        const SourceSpec& spec,
                                                        const FrameSourceOptions& options);
// Watches `dir` (which must exist). NotFound / InvalidArgument for a bad dir or move target.
Result<std::unique_ptr<FrameSource>> OpenDirectoryFrameSource(const std::string& dir,
                                                              const FrameSourceOptions& options);
// Reads length-prefixed frames from `fd`, which must stay open while the source lives (the
// source never closes it). `name` describes it ("stdin").
std::unique_ptr<FrameSource> OpenFdFrameSource(int fd, const std::string& name,
                                               const FrameSourceOptions& options);

}  // namespace cleave::edge
