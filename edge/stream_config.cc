#include "edge/stream_config.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "common/edge_api.h"

namespace cleave::edge {
namespace {

// A ClassifyRequest with an image this large still fits edge_api::kMaxMessageBytes.
constexpr int64_t kMaxStreamFrameBytes = int64_t{edge_api::kMaxMessageBytes} - (64 << 10);

// "cam1, cam2" -> {"cam1", "cam2"}.
Result<std::vector<std::string>> ParseStreamTopics(const std::string& text) {
  std::vector<std::string> topics;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t comma = std::min(text.find(',', at), text.size());
    std::string topic = text.substr(at, comma - at);
    topic.erase(0, topic.find_first_not_of(' '));
    topic.erase(topic.find_last_not_of(' ') + 1);
    if (!topic.empty()) {
      CLEAVE_RETURN_IF_ERROR(
          CheckStreamId(topic).WithContext("edge.source_topics: '" + topic + "'"));
      topics.push_back(topic);
    }
    at = comma + 1;
  }
  return topics;
}

}  // namespace

void AddStreamConfigKeys(ConfigSchema& schema) {
  schema
      .Add("edge.source", ConfigType::kString, "",
           "serve: classify a stream of frames from zmq-pull://ENDPOINT (binds; >ENDPOINT "
           "connects), zmq-sub://ENDPOINT (connects; @ENDPOINT binds), dir:PATH (files closed "
           "or renamed into it) or stdin (each frame a 4-byte little-endian length, then the "
           "bytes); a ZeroMQ message is [image] or [stream id, image]. Empty = no stream")
      .Add("edge.source_stream", ConfigType::kString, "default",
           "stream id of frames that do not name one (dir, stdin, one-part messages)")
      .Add("edge.source_topics", ConfigType::kString, "",
           "zmq-sub: stream ids to subscribe to, comma-separated; empty = all")
      .Add("edge.source_format", ConfigType::kString, "auto",
           "image bytes of a frame: auto (PNG or JPEG, by magic bytes), gray8:WxH or rgb8:WxH "
           "(raw pixels)")
      .Add("edge.source_max_bytes", ConfigType::kInt, std::to_string(4 << 20),
           "largest frame accepted, in bytes; larger ones are counted as bad input and skipped")
      .Add("edge.source_dir_after", ConfigType::kString, "keep",
           "dir: what happens to a file once read: keep, delete or move:DIR (same file system)")
      .Add("edge.stream_window", ConfigType::kInt, "2",
           "requests of one stream in flight at most; with the window full one newer frame "
           "waits")
      .Add("edge.stream_policy", ConfigType::kString, "latest",
           "latest: a newer frame replaces the waiting one (counted as dropped, reason "
           "replaced); wait: stop reading the source until the window has room (not with "
           "zmq-sub)")
      .Add("edge.stream_max_streams", ConfigType::kInt, "64",
           "distinct stream ids tracked; frames of further streams are dropped (counted on "
           "stream _other)")
      .Add("edge.stream_exit_threshold", ConfigType::kDouble, "-1",
           "exit threshold of stream requests; < 0 = the bundle's calibrated one")
      .Add("edge.stream_results", ConfigType::kString, "stdout",
           "where the JSON line of every frame goes (answer or drop): stdout, none, or a file "
           "(appended to)")
      .Add("edge.stream_publish", ConfigType::kString, "",
           "ZeroMQ endpoint to bind a PUB socket on that publishes every JSON line as "
           "[stream id, line]; empty = none");
}

Result<std::optional<StreamSetup>> StreamSetupFromConfig(const Config& config) {
  const std::string source = config.GetString("edge.source");
  if (source.empty()) return std::optional<StreamSetup>();
  StreamSetup setup;
  Result<SourceSpec> spec = ParseSourceSpec(source);
  if (!spec.ok()) return spec.status().WithContext("edge.source");
  setup.spec = *spec;
  FrameSourceOptions& s = setup.source;
  s.default_stream = config.GetString("edge.source_stream");
  CLEAVE_RETURN_IF_ERROR(
      CheckStreamId(s.default_stream).WithContext("edge.source_stream '" + s.default_stream + "'"));
  CLEAVE_ASSIGN_OR_RETURN(s.topics, ParseStreamTopics(config.GetString("edge.source_topics")));
  if (!s.topics.empty() && setup.spec.kind != SourceSpec::Kind::kZmqSub) {
    return Status::InvalidArgument("edge.source_topics is for zmq-sub sources");
  }
  Result<FrameFormat> format = ParseFrameFormat(config.GetString("edge.source_format"));
  if (!format.ok()) return format.status().WithContext("edge.source_format");
  s.format = *format;
  const int64_t max_bytes = config.GetInt("edge.source_max_bytes");
  if (max_bytes < 1 || max_bytes > kMaxStreamFrameBytes) {
    return Status::InvalidArgument("edge.source_max_bytes must be in [1, " +
                                   std::to_string(kMaxStreamFrameBytes) + "], got " +
                                   std::to_string(max_bytes));
  }
  s.max_frame_bytes = static_cast<uint64_t>(max_bytes);
  if (s.format.kind != FrameFormat::Kind::kAuto) {
    const uint64_t raw = uint64_t{s.format.width} * s.format.height *
                         (s.format.kind == FrameFormat::Kind::kRgb8 ? 3 : 1);
    if (raw > s.max_frame_bytes) {
      return Status::InvalidArgument("edge.source_format frames of " + std::to_string(raw) +
                                     " bytes exceed edge.source_max_bytes (" +
                                     std::to_string(max_bytes) + ")");
    }
  }
  Result<DirAfter> after = ParseDirAfter(config.GetString("edge.source_dir_after"));
  if (!after.ok()) return after.status().WithContext("edge.source_dir_after");
  s.after = *after;

  StreamFeederOptions& f = setup.feeder;
  f.default_stream = s.default_stream;
  const int64_t window = config.GetInt("edge.stream_window");
  if (window < 1 || window > 1024) {
    return Status::InvalidArgument("edge.stream_window must be in [1, 1024], got " +
                                   std::to_string(window));
  }
  f.window = static_cast<int>(window);
  Result<DropPolicy> policy = ParseDropPolicy(config.GetString("edge.stream_policy"));
  if (!policy.ok()) return policy.status().WithContext("edge.stream_policy");
  f.policy = *policy;
  if (f.policy == DropPolicy::kWait && setup.spec.kind == SourceSpec::Kind::kZmqSub) {
    return Status::InvalidArgument(
        "edge.stream_policy wait cannot hold back a zmq-sub source (ZeroMQ drops what a SUB "
        "socket cannot queue, uncounted); use latest, or a zmq-pull source");
  }
  const int64_t max_streams = config.GetInt("edge.stream_max_streams");
  if (max_streams < 1 || max_streams > 10000) {
    return Status::InvalidArgument("edge.stream_max_streams must be in [1, 10000], got " +
                                   std::to_string(max_streams));
  }
  f.max_streams = static_cast<size_t>(max_streams);
  const double threshold = config.GetDouble("edge.stream_exit_threshold");
  if (!(threshold < 0.0 || threshold <= 1.0)) {
    return Status::InvalidArgument(
        "edge.stream_exit_threshold must be < 0 (the calibrated threshold) or in [0, 1], got " +
        std::to_string(threshold));
  }
  f.exit_threshold = threshold < 0.0 ? -1.0f : static_cast<float>(threshold);
  // The daemon answers every request within its deadline (degraded if need be); a reply this
  // late means the daemon is gone.
  f.reply_timeout_ms = static_cast<int>(
      std::clamp<int64_t>(config.GetInt("edge.deadline_ms") * 4 + 5000, 5000, 600000));
  f.results = config.GetString("edge.stream_results");
  if (f.results.empty()) {
    return Status::InvalidArgument("edge.stream_results must be stdout, none or a file path");
  }
  f.publish = config.GetString("edge.stream_publish");
  return std::optional<StreamSetup>(std::move(setup));
}

}  // namespace cleave::edge
