// FrameSource: spec parsing, frame checks and the ZeroMQ kinds (PULL, SUB). The directory
// and descriptor kinds are in frame_source_dir.cc and frame_source_fd.cc.
#include "edge/frame_source.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "common/logging.h"

namespace cleave::edge {
namespace {

constexpr char kSourceForms[] =
    "expected zmq-pull://ENDPOINT, zmq-sub://ENDPOINT, dir:PATH or stdin (ENDPOINT may start "
    "with @ to bind or > to connect)";

bool StartsWith(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

// "28x28" -> (28, 28).
Status ParseFrameSides(std::string_view text, FrameFormat* format) {
  const size_t x = text.find('x');
  const auto side = [](std::string_view digits, uint32_t* out) {
    if (digits.empty() || digits.size() > 5) return false;
    uint32_t v = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') return false;
      v = v * 10 + static_cast<uint32_t>(c - '0');
    }
    *out = v;
    return v >= 1 && v <= edge_api::kMaxImageSide;
  };
  if (x == std::string_view::npos || !side(text.substr(0, x), &format->width) ||
      !side(text.substr(x + 1), &format->height)) {
    return Status::InvalidArgument("raw frame size '" + std::string(text) +
                                   "' is not WIDTHxHEIGHT with sides in [1, " +
                                   std::to_string(edge_api::kMaxImageSide) + "]");
  }
  return Status::Ok();
}

bool IsPng(std::string_view bytes) {
  return bytes.size() >= 8 && std::memcmp(bytes.data(), "\x89PNG\r\n\x1a\n", 8) == 0;
}
bool IsJpeg(std::string_view bytes) {
  return bytes.size() >= 3 && std::memcmp(bytes.data(), "\xff\xd8\xff", 3) == 0;
}

}  // namespace

Result<FrameFormat> ParseFrameFormat(std::string_view text) {
  FrameFormat format;
  if (text == "auto") return format;
  if (StartsWith(text, "gray8:")) {
    format.kind = FrameFormat::Kind::kGray8;
    CLEAVE_RETURN_IF_ERROR(ParseFrameSides(text.substr(6), &format));
    return format;
  }
  if (StartsWith(text, "rgb8:")) {
    format.kind = FrameFormat::Kind::kRgb8;
    CLEAVE_RETURN_IF_ERROR(ParseFrameSides(text.substr(5), &format));
    return format;
  }
  return Status::InvalidArgument("unknown frame format '" + std::string(text) +
                                 "'; expected auto (PNG or JPEG), gray8:WxH or rgb8:WxH");
}

Result<DirAfter> ParseDirAfter(std::string_view text) {
  DirAfter after;
  if (text == "keep") return after;
  if (text == "delete") {
    after.kind = DirAfter::Kind::kDelete;
    return after;
  }
  if (StartsWith(text, "move:") && text.size() > 5) {
    after.kind = DirAfter::Kind::kMove;
    after.move_to = std::string(text.substr(5));
    return after;
  }
  return Status::InvalidArgument("unknown action '" + std::string(text) +
                                 "' for files taken; expected keep, delete or move:DIR");
}

Result<SourceSpec> ParseSourceSpec(std::string_view text) {
  SourceSpec spec;
  if (text == "stdin" || text == "-") return spec;
  const auto zmq_endpoint = [&](std::string_view rest, bool bind_by_default) -> Status {
    spec.bind = bind_by_default;
    if (!rest.empty() && (rest[0] == '@' || rest[0] == '>')) {
      spec.bind = rest[0] == '@';
      rest.remove_prefix(1);
    }
    if (rest.find("://") == std::string_view::npos || StartsWith(rest, "://")) {
      return Status::InvalidArgument("source '" + std::string(text) +
                                     "' has no ZeroMQ endpoint (tcp://HOST:PORT, ipc://PATH or "
                                     "inproc://NAME) after the scheme");
    }
    spec.endpoint = std::string(rest);
    return Status::Ok();
  };
  if (StartsWith(text, "zmq-pull://")) {
    spec.kind = SourceSpec::Kind::kZmqPull;
    CLEAVE_RETURN_IF_ERROR(zmq_endpoint(text.substr(11), /*bind_by_default=*/true));
    return spec;
  }
  if (StartsWith(text, "zmq-sub://")) {
    spec.kind = SourceSpec::Kind::kZmqSub;
    CLEAVE_RETURN_IF_ERROR(zmq_endpoint(text.substr(10), /*bind_by_default=*/false));
    return spec;
  }
  if (StartsWith(text, "dir:")) {
    spec.kind = SourceSpec::Kind::kDirectory;
    spec.path = std::string(text.substr(4));
    if (spec.path.empty()) {
      return Status::InvalidArgument("source 'dir:' names no directory; " +
                                     std::string(kSourceForms));
    }
    return spec;
  }
  return Status::InvalidArgument("unknown source '" + std::string(text) + "'; " + kSourceForms);
}

Status CheckStreamId(std::string_view stream) {
  if (stream.empty() || stream.size() > 128) {
    return Status::InvalidArgument("a stream id has 1 to 128 bytes (got " +
                                   std::to_string(stream.size()) + ")");
  }
  for (char c : stream) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    (c != '\0' && std::strchr("._:@/-", c) != nullptr);
    if (!ok) {
      return Status::InvalidArgument("a stream id is made of [A-Za-z0-9_.:@/-]");
    }
  }
  if (stream == kOtherStream) {
    return Status::InvalidArgument(std::string("stream id ") + kOtherStream + " is reserved");
  }
  return Status::Ok();
}

void FillSourceFrame(const FrameFormat& format, uint64_t max_frame_bytes, std::string bytes,
                     SourceFrame* frame) {
  if (bytes.size() > max_frame_bytes) {
    frame->status = Status::InvalidArgument("frame of " + std::to_string(bytes.size()) +
                                            " bytes exceeds edge.source_max_bytes (" +
                                            std::to_string(max_frame_bytes) + ")");
    return;
  }
  if (bytes.empty()) {
    frame->status = Status::InvalidArgument("empty frame");
    return;
  }
  if (format.kind == FrameFormat::Kind::kAuto) {
    if (IsPng(bytes)) {
      frame->kind = edge_api::ImageKind::kPng;
    } else if (IsJpeg(bytes)) {
      frame->kind = edge_api::ImageKind::kJpeg;
    } else {
      frame->status = Status::InvalidArgument(
          "frame is not a PNG or JPEG (edge.source_format auto); raw pixels need "
          "edge.source_format gray8:WxH or rgb8:WxH");
      return;
    }
    frame->bytes = std::move(bytes);
    return;
  }
  const bool rgb = format.kind == FrameFormat::Kind::kRgb8;
  const uint64_t expected = uint64_t{format.width} * format.height * (rgb ? 3 : 1);
  if (bytes.size() != expected) {
    frame->status = Status::InvalidArgument(
        "raw frame of " + std::to_string(bytes.size()) + " bytes; " + (rgb ? "rgb8 " : "gray8 ") +
        std::to_string(format.width) + "x" + std::to_string(format.height) + " needs " +
        std::to_string(expected));
    return;
  }
  frame->kind = rgb ? edge_api::ImageKind::kRgb8 : edge_api::ImageKind::kGray8;
  frame->width = format.width;
  frame->height = format.height;
  frame->bytes = std::move(bytes);
}

namespace {

// PULL or SUB. Messages are [image] or [stream id, image].
class ZmqFrameSource : public FrameSource {
 public:
  ZmqFrameSource(zmq::socket_t socket, std::string description, FrameSourceOptions options)
      : socket_(std::move(socket)),
        description_(std::move(description)),
        options_(std::move(options)),
        clock_(options_.clock ? options_.clock : &SystemClock()) {}
  ~ZmqFrameSource() override { socket_.close(); }

  zmq_pollitem_t poll_item() override { return {socket_.handle(), 0, ZMQ_POLLIN, 0}; }

  Status Read(size_t max, std::vector<SourceFrame>* out) override {
    try {
      // At most `max` messages per call, so a flood of another topic cannot hold the loop.
      for (size_t taken = 0; taken < max; ++taken) {
        std::vector<zmq::message_t> parts;
        zmq::message_t part;
        if (!socket_.recv(part, zmq::recv_flags::dontwait)) return Status::Ok();
        bool more = part.more();
        parts.push_back(std::move(part));
        // The parts of one message arrive together; keep only the first three.
        while (more) {
          zmq::message_t next;
          if (!socket_.recv(next, zmq::recv_flags::dontwait)) break;
          more = next.more();
          if (parts.size() < 3) parts.push_back(std::move(next));
        }
        SourceFrame frame;
        frame.arrival_us = clock_->NowMicros();
        if (parts.size() == 1) {
          FillSourceFrame(options_.format, options_.max_frame_bytes, parts[0].to_string(), &frame);
        } else {
          frame.stream = parts[0].to_string();
          if (!options_.topics.empty() && std::find(options_.topics.begin(), options_.topics.end(),
                                                    frame.stream) == options_.topics.end()) {
            continue;  // a longer topic that only shares a subscribed prefix: not ours
          }
          if (parts.size() == 2) {
            FillSourceFrame(options_.format, options_.max_frame_bytes, parts[1].to_string(),
                            &frame);
          } else {
            frame.status = Status::InvalidArgument(
                "message of more than 2 parts; expected [image] or [stream id, image]");
          }
        }
        out->push_back(std::move(frame));
      }
    } catch (const zmq::error_t& e) {
      return ZmqErrorToStatus(e, "receive on " + description_);
    }
    return Status::Ok();
  }

  const std::string& description() const override { return description_; }

 private:
  zmq::socket_t socket_;
  std::string description_;
  FrameSourceOptions options_;
  Clock* clock_;
};

}  // namespace

Result<std::unique_ptr<FrameSource>> OpenZmqFrameSource(TransportContext& context,
                                                        const SourceSpec& spec,
                                                        const FrameSourceOptions& options) {
  const bool sub = spec.kind == SourceSpec::Kind::kZmqSub;
  if (!sub && spec.kind != SourceSpec::Kind::kZmqPull) {
    return Status::InvalidArgument("not a ZeroMQ source");
  }
  for (const std::string& topic : options.topics) {
    CLEAVE_RETURN_IF_ERROR(CheckStreamId(topic).WithContext("edge.source_topics '" + topic + "'"));
  }
  const std::string kind = sub ? "zmq-sub" : "zmq-pull";
  zmq::socket_t socket;
  std::string resolved = spec.endpoint;
  try {
    socket = zmq::socket_t(context.raw(), sub ? zmq::socket_type::sub : zmq::socket_type::pull);
    socket.set(zmq::sockopt::linger, 0);
    socket.set(zmq::sockopt::rcvhwm, 1000);
    // Frames up to four times the cap arrive and are counted as oversized; a larger message
    // makes ZeroMQ drop that connection before anything is allocated for it.
    socket.set(
        zmq::sockopt::maxmsgsize,
        static_cast<int64_t>(std::min<uint64_t>(options.max_frame_bytes, 1u << 30) * 4 + 4096));
    if (sub) {
      if (options.topics.empty()) {
        socket.set(zmq::sockopt::subscribe, "");
      } else {
        for (const std::string& topic : options.topics) socket.set(zmq::sockopt::subscribe, topic);
      }
    }
  } catch (const zmq::error_t& e) {
    return ZmqErrorToStatus(e, "cannot create the " + kind + " socket for " + spec.endpoint);
  }
  try {
    if (spec.bind) {
      socket.bind(spec.endpoint);
      resolved = socket.get(zmq::sockopt::last_endpoint);
    } else {
      socket.connect(spec.endpoint);
    }
  } catch (const zmq::error_t& e) {
    return ZmqErrorToStatus(e, std::string("edge.source: cannot ") +
                                   (spec.bind ? "bind " : "connect ") + spec.endpoint);
  }
  return std::unique_ptr<FrameSource>(new ZmqFrameSource(
      std::move(socket), kind + " " + resolved + (spec.bind ? " (bound)" : " (connected)"),
      options));
}

Result<std::unique_ptr<FrameSource>> OpenFrameSource(TransportContext& context,
                                                     const SourceSpec& spec,
                                                     const FrameSourceOptions& options) {
  CLEAVE_RETURN_IF_ERROR(CheckStreamId(options.default_stream)
                             .WithContext("edge.source_stream '" + options.default_stream + "'"));
  switch (spec.kind) {
    case SourceSpec::Kind::kZmqPull:
    case SourceSpec::Kind::kZmqSub: return OpenZmqFrameSource(context, spec, options);
    case SourceSpec::Kind::kDirectory: return OpenDirectoryFrameSource(spec.path, options);
    case SourceSpec::Kind::kStdin: return OpenFdFrameSource(0, "stdin", options);
  }
  return Status::InvalidArgument("unknown source kind");
}

}  // namespace cleave::edge
