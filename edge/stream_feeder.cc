#include "edge/stream_feeder.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/edge_api.h"
#include "common/logging.h"

namespace cleave::edge {
// The feeder thread's bookkeeping (named, not anonymous: StreamFeeder::Loop holds these).
namespace stream_feed {

// Frames per second of one stream, over windows of about a second.
class FeedRate {
 public:
  void Count() { ++count_; }
  void Update(int64_t now_us, prometheus::Gauge* gauge) {
    if (start_us_ < 0) start_us_ = now_us;
    const int64_t elapsed = now_us - start_us_;
    if (elapsed < 1'000'000) return;
    gauge->Set(static_cast<double>(count_) * 1e6 / static_cast<double>(elapsed));
    count_ = 0;
    start_us_ = now_us;
  }

 private:
  int64_t start_us_ = -1;
  uint64_t count_ = 0;
};

struct FeedWaiting {
  uint64_t seq = 0;
  SourceFrame frame;
};

struct FeedStream {
  std::string name;
  const StreamMetrics* m = nullptr;
  uint64_t next_seq = 1;
  int in_flight = 0;
  std::optional<FeedWaiting> waiting;  // at most one frame waits for a window slot
  FeedRate received_rate, answered_rate;
};

struct FeedInFlight {
  FeedStream* stream = nullptr;
  uint64_t seq = 0;
  int64_t arrival_us = 0;
  int64_t sent_us = 0;
  int64_t expires_us = 0;
  std::string origin;
};

}  // namespace stream_feed
namespace {

// Inputs taken from the source per loop turn (latest-frame-wins); kWait takes one at a time
// so that no frame of it is ever replaced.
constexpr size_t kFeedReadBatch = 256;
constexpr int kFeedIdleMs = 50;  // the loop turns at least this often (stop, retries, rates)

using stream_feed::FeedInFlight;
using stream_feed::FeedStream;
using stream_feed::FeedWaiting;

const char* AnsweredByName(edge_api::AnswerSource source) {
  switch (source) {
    case edge_api::AnswerSource::kEdgeExit: return "exit";
    case edge_api::AnswerSource::kCloud: return "cloud";
    case edge_api::AnswerSource::kDegraded: return "degraded";
    default: return "error";
  }
}

// Microseconds as milliseconds with three decimals (no binary noise in the JSON lines).
double Millis(int64_t micros) { return static_cast<double>(micros) / 1000.0; }

double UnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// tcp://0.0.0.0:P (what binding tcp://*:P resolves to) is not an address to connect to.
std::string ConnectableEndpoint(std::string endpoint) {
  const std::string any4 = "tcp://0.0.0.0:";
  const std::string any6 = "tcp://[::]:";
  if (endpoint.rfind(any4, 0) == 0) return "tcp://127.0.0.1:" + endpoint.substr(any4.size());
  if (endpoint.rfind(any6, 0) == 0) return "tcp://[::1]:" + endpoint.substr(any6.size());
  return endpoint;
}

}  // namespace

Result<DropPolicy> ParseDropPolicy(std::string_view text) {
  if (text == "latest") return DropPolicy::kLatestFrameWins;
  if (text == "wait") return DropPolicy::kWait;
  return Status::InvalidArgument("unknown stream policy '" + std::string(text) +
                                 "'; expected latest (latest-frame-wins) or wait");
}

// The feeder thread's state. Everything here belongs to that thread, except the atomic
// totals (read by stats()).
class StreamFeeder::Loop {
 public:
  Loop(StreamFeederOptions options, std::unique_ptr<FrameSource> source,
       std::unique_ptr<DealerClient> daemon, std::unique_ptr<zmq::socket_t> publish,
       std::FILE* results, bool owns_results)
      : options_(std::move(options)),
        clock_(options_.clock ? options_.clock : &SystemClock()),
        metrics_(options_.metrics ? options_.metrics : std::make_shared<Metrics>()),
        source_(std::move(source)),
        daemon_(std::move(daemon)),
        publish_(std::move(publish)),
        results_(results),
        owns_results_(owns_results) {
    Stream(options_.default_stream);  // its series exist from the start
  }
  ~Loop() {
    if (publish_) publish_->close();
    if (results_ != nullptr && owns_results_) std::fclose(results_);
  }

  Status Run(const std::atomic<bool>& stop);

  std::atomic<uint64_t> received{0}, answered{0}, dropped{0}, stray{0};

 private:
  FeedStream* Stream(const std::string& name) {
    auto found = streams_.find(name);
    if (found != streams_.end()) return found->second.get();
    auto stream = std::make_unique<FeedStream>();
    stream->name = name;
    stream->m = &metrics_->Stream(name);
    return streams_.emplace(name, std::move(stream)).first->second.get();
  }
  bool AnyWaiting() const {
    for (const auto& [name, s] : streams_) {
      if (s->waiting) return true;
    }
    return false;
  }

  void Accept(SourceFrame frame);
  void TrySend(FeedStream& s);
  void HandleReply(const std::string& bytes);
  void Drop(FeedStream& s, uint64_t seq, FrameDrop reason, const std::string& why,
            const std::string& origin);
  void ExpireReplies(int64_t now_us);
  void Write(const std::string& stream, nlohmann::json line);

  StreamFeederOptions options_;
  Clock* clock_;
  std::shared_ptr<Metrics> metrics_;
  std::unique_ptr<FrameSource> source_;
  std::unique_ptr<DealerClient> daemon_;
  std::unique_ptr<zmq::socket_t> publish_;
  std::FILE* results_;
  bool owns_results_;
  bool results_failed_ = false;
  bool send_failing_ = false;
  std::map<std::string, std::unique_ptr<FeedStream>> streams_;
  std::map<uint64_t, FeedInFlight> in_flight_;     // by request id
  std::set<std::pair<int64_t, uint64_t>> expiry_;  // (expires_us, request id)
  uint64_t next_request_id_ = 1;
};

void StreamFeeder::Loop::Write(const std::string& stream, nlohmann::json line) {
  line["time"] = UnixSeconds();
  const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (results_ != nullptr && !results_failed_) {
    if (std::fputs(text.c_str(), results_) < 0 || std::fputc('\n', results_) < 0 ||
        std::fflush(results_) != 0) {
      results_failed_ = true;  // said once; the metrics keep counting
      GetLogger("edge")->error("stream results cannot be written ({}); no more lines go there",
                               std::strerror(errno));
    }
  }
  if (publish_) {
    try {
      // PUB never blocks: at its high-water mark ZeroMQ drops for that subscriber.
      publish_->send(zmq::buffer(stream), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      publish_->send(zmq::buffer(text), zmq::send_flags::dontwait);
    } catch (const zmq::error_t& e) {
      GetLogger("edge")->warn("publishing a stream result failed: {}", e.what());
    }
  }
}

void StreamFeeder::Loop::Drop(FeedStream& s, uint64_t seq, FrameDrop reason, const std::string& why,
                              const std::string& origin) {
  s.m->Drop(reason);
  dropped.fetch_add(1, std::memory_order_relaxed);
  nlohmann::json line = {{"stream", s.name}, {"seq", seq}, {"dropped", FrameDropName(reason)}};
  if (!why.empty()) line["error"] = why;
  if (!origin.empty()) line["origin"] = origin;
  Write(s.name, std::move(line));
}

void StreamFeeder::Loop::Accept(SourceFrame frame) {
  const std::string name = frame.stream.empty() ? options_.default_stream : frame.stream;
  FeedStream* s = nullptr;
  std::optional<FrameDrop> refused;
  std::string why;
  if (Status valid = CheckStreamId(name); !valid.ok()) {
    s = Stream(kOtherStream);
    refused = FrameDrop::kBadInput;
    why = "stream id refused: " + valid.message();
  } else if (streams_.count(name) == 0 &&
             streams_.size() - streams_.count(kOtherStream) >= options_.max_streams) {
    s = Stream(kOtherStream);
    refused = FrameDrop::kTooManyStreams;
    why = "stream " + name + " would pass edge.stream_max_streams (" +
          std::to_string(options_.max_streams) + ")";
  } else {
    s = Stream(name);
  }
  const uint64_t seq = s->next_seq++;
  s->m->frames->Increment();
  s->received_rate.Count();
  received.fetch_add(1, std::memory_order_relaxed);
  if (refused) {
    Drop(*s, seq, *refused, why, frame.origin);
    return;
  }
  if (!frame.status.ok()) {
    Drop(*s, seq, FrameDrop::kBadInput, frame.status.message(), frame.origin);
    return;
  }
  if (s->waiting) {
    // Latest frame wins: the one waiting for a window slot is now out of date.
    Drop(*s, s->waiting->seq, FrameDrop::kReplaced, "", s->waiting->frame.origin);
  }
  s->waiting = FeedWaiting{seq, std::move(frame)};
  TrySend(*s);
}

void StreamFeeder::Loop::TrySend(FeedStream& s) {
  while (s.waiting && s.in_flight < options_.window) {
    SourceFrame& frame = s.waiting->frame;
    edge_api::ClassifyRequest request;
    request.request_id = next_request_id_;
    request.deadline_ms = options_.deadline_ms;
    request.exit_threshold = options_.exit_threshold;
    request.kind = frame.kind;
    std::string* image = frame.kind == edge_api::ImageKind::kPng    ? &request.png
                         : frame.kind == edge_api::ImageKind::kJpeg ? &request.jpeg
                                                                    : &request.pixels;
    request.width = frame.width;
    request.height = frame.height;
    *image = std::move(frame.bytes);
    const std::string bytes = edge_api::EncodeClassifyRequest(request);
    Status sent = daemon_->Send(bytes, 0);
    if (!sent.ok()) {
      frame.bytes = std::move(*image);  // stays waiting; retried every loop turn
      if (!send_failing_) {
        GetLogger("edge")->warn("stream frames cannot reach the daemon at {}: {}",
                                daemon_->endpoint(), sent.ToString());
      }
      send_failing_ = true;
      return;
    }
    send_failing_ = false;
    const int64_t now = clock_->NowMicros();
    FeedInFlight f;
    f.stream = &s;
    f.seq = s.waiting->seq;
    f.arrival_us = frame.arrival_us;
    f.sent_us = now;
    f.expires_us = now + int64_t{options_.reply_timeout_ms} * 1000;
    f.origin = std::move(frame.origin);
    expiry_.emplace(f.expires_us, next_request_id_);
    in_flight_.emplace(next_request_id_++, std::move(f));
    ++s.in_flight;
    s.waiting.reset();
  }
}

void StreamFeeder::Loop::HandleReply(const std::string& bytes) {
  Result<edge_api::ClassifyReply> reply = edge_api::DecodeClassifyReply(bytes);
  auto it = reply.ok() ? in_flight_.find(reply->request_id) : in_flight_.end();
  if (it == in_flight_.end()) {
    // Undecodable, or for a request already dropped as no_reply.
    stray.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  FeedInFlight f = std::move(it->second);
  in_flight_.erase(it);
  expiry_.erase({f.expires_us, reply->request_id});
  FeedStream& s = *f.stream;
  --s.in_flight;
  if (reply->source == edge_api::AnswerSource::kError) {
    Drop(s, f.seq, FrameDrop::kError, reply->error, f.origin);
  } else {
    const int64_t now = clock_->NowMicros();
    switch (reply->source) {
      case edge_api::AnswerSource::kEdgeExit: s.m->answered_exit->Increment(); break;
      case edge_api::AnswerSource::kCloud: s.m->answered_cloud->Increment(); break;
      default: s.m->answered_degraded->Increment(); break;
    }
    s.m->staleness_seconds->Observe(static_cast<double>(now - f.arrival_us) * 1e-6);
    s.answered_rate.Count();
    answered.fetch_add(1, std::memory_order_relaxed);
    const float confidence = std::isfinite(reply->confidence) ? reply->confidence : 0.0f;
    nlohmann::json line = {{"stream", s.name},
                           {"seq", f.seq},
                           {"answered_by", AnsweredByName(reply->source)},
                           {"class", reply->predicted_class},
                           {"class_name", reply->class_name},
                           {"confidence", confidence},
                           {"latency_ms", Millis(now - f.sent_us)},
                           {"staleness_ms", Millis(now - f.arrival_us)}};
    if (!reply->error.empty()) line["error"] = reply->error;
    if (!f.origin.empty()) line["origin"] = f.origin;
    Write(s.name, std::move(line));
  }
  TrySend(s);
}

void StreamFeeder::Loop::ExpireReplies(int64_t now_us) {
  while (!expiry_.empty() && expiry_.begin()->first <= now_us) {
    const uint64_t id = expiry_.begin()->second;
    expiry_.erase(expiry_.begin());
    auto it = in_flight_.find(id);
    if (it == in_flight_.end()) continue;
    FeedInFlight f = std::move(it->second);
    in_flight_.erase(it);
    --f.stream->in_flight;
    Drop(*f.stream, f.seq, FrameDrop::kNoReply,
         "the daemon did not answer within " + std::to_string(options_.reply_timeout_ms) + " ms",
         f.origin);
    TrySend(*f.stream);
  }
}

Status StreamFeeder::Loop::Run(const std::atomic<bool>& stop) {
  auto log = GetLogger("edge");
  log->info("stream source {} feeding {} (window {}, policy {})", source_->description(),
            daemon_->endpoint(), options_.window,
            options_.policy == DropPolicy::kWait ? "wait" : "latest");
  bool draining = false;
  bool ended_logged = false;
  bool more_ready = false;  // the last read filled its batch: read again without waiting
  int64_t drain_until = 0;
  std::vector<SourceFrame> frames;
  while (true) {
    int64_t now = clock_->NowMicros();
    if (!draining && stop.load(std::memory_order_acquire)) {
      draining = true;
      drain_until = now + int64_t{options_.reply_timeout_ms} * 1000;
      for (auto& [name, s] : streams_) {
        if (!s->waiting) continue;
        const FeedWaiting waiting = std::move(*s->waiting);
        s->waiting.reset();
        Drop(*s, waiting.seq, FrameDrop::kShutdown, "the daemon is stopping", waiting.frame.origin);
      }
    }
    if (source_->finished() && !ended_logged) {
      ended_logged = true;
      log->info("stream source {} ended after {} frames", source_->description(), received.load());
    }
    if ((draining || source_->finished()) && in_flight_.empty() && !AnyWaiting()) break;
    if (draining && now >= drain_until) {
      ExpireReplies(std::numeric_limits<int64_t>::max());
      break;
    }
    const bool read_source = !draining && !source_->finished() &&
                             (options_.policy == DropPolicy::kLatestFrameWins || !AnyWaiting());
    std::vector<zmq::pollitem_t> items = {{daemon_->socket().handle(), 0, ZMQ_POLLIN, 0}};
    if (read_source) items.push_back(source_->poll_item());
    int timeout_ms = more_ready ? 0 : kFeedIdleMs;
    if (!expiry_.empty()) {
      const int64_t until = expiry_.begin()->first - now;
      timeout_ms = static_cast<int>(std::clamp<int64_t>((until + 999) / 1000, 0, timeout_ms));
    }
    try {
      zmq::poll(items.data(), items.size(), std::chrono::milliseconds(timeout_ms));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) return Status::Internal(std::string("stream poll failed: ") + e.what());
    }
    while (true) {
      Result<std::optional<std::string>> msg = daemon_->Receive(0);
      if (!msg.ok()) return msg.status().WithContext("stream link to the daemon");
      if (!msg->has_value()) break;
      HandleReply(**msg);
    }
    more_ready = false;
    if (read_source) {
      const size_t batch = options_.policy == DropPolicy::kWait ? 1 : kFeedReadBatch;
      frames.clear();
      Status read = source_->Read(batch, &frames);
      more_ready = frames.size() == batch;
      for (SourceFrame& frame : frames) Accept(std::move(frame));
      if (!read.ok()) return read.WithContext("stream source " + source_->description());
    }
    now = clock_->NowMicros();
    ExpireReplies(now);
    if (send_failing_) {
      for (auto& [name, s] : streams_) TrySend(*s);
    }
    for (auto& [name, s] : streams_) {
      s->received_rate.Update(now, s->m->received_fps);
      s->answered_rate.Update(now, s->m->answered_fps);
    }
  }
  log->info("stream feeder stopped: {} frames, {} answered, {} dropped", received.load(),
            answered.load(), dropped.load());
  return Status::Ok();
}

Result<std::unique_ptr<StreamFeeder>> StreamFeeder::Start(TransportContext& context,
                                                          StreamFeederOptions options,
                                                          std::unique_ptr<FrameSource> source) {
  if (source == nullptr) return Status::InvalidArgument("stream feeder: no source");
  if (options.window < 1 || options.window > 1024) {
    return Status::InvalidArgument("edge.stream_window must be in [1, 1024], got " +
                                   std::to_string(options.window));
  }
  if (options.max_streams < 1 || options.max_streams > 10000) {
    return Status::InvalidArgument("edge.stream_max_streams must be in [1, 10000], got " +
                                   std::to_string(options.max_streams));
  }
  CLEAVE_RETURN_IF_ERROR(CheckStreamId(options.default_stream)
                             .WithContext("edge.source_stream '" + options.default_stream + "'"));
  if (!(options.exit_threshold < 0.0f || options.exit_threshold <= 1.0f)) {
    return Status::InvalidArgument(
        "edge.stream_exit_threshold must be < 0 (calibrated) or in "
        "[0, 1]");
  }
  if (options.reply_timeout_ms < 1) {
    return Status::InvalidArgument("stream reply timeout must be >= 1 ms");
  }
  std::FILE* results = nullptr;
  bool owns_results = false;
  if (options.results == "stdout") {
    results = stdout;
  } else if (!options.results.empty() && options.results != "none") {
    results = std::fopen(options.results.c_str(), "ae");
    if (results == nullptr) {
      return Status::IoError("edge.stream_results: cannot open " + options.results + ": " +
                             std::strerror(errno));
    }
    owns_results = true;
  }
  // Closes the file on the error paths below; the loop takes it over at the end.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> results_guard(owns_results ? results : nullptr,
                                                                &std::fclose);
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<DealerClient> daemon,
                          DealerClient::Connect(context, ConnectableEndpoint(options.daemon)));
  std::unique_ptr<zmq::socket_t> publish;
  std::string publish_endpoint;
  if (!options.publish.empty()) {
    try {
      publish = std::make_unique<zmq::socket_t>(context.raw(), zmq::socket_type::pub);
      publish->set(zmq::sockopt::linger, 0);
      publish->set(zmq::sockopt::sndhwm, 1000);
      publish->bind(options.publish);
      publish_endpoint = publish->get(zmq::sockopt::last_endpoint);
    } catch (const zmq::error_t& e) {
      return ZmqErrorToStatus(e, "edge.stream_publish: cannot bind " + options.publish);
    }
  }
  std::unique_ptr<StreamFeeder> feeder(new StreamFeeder());
  feeder->source_description_ = source->description();
  feeder->publish_endpoint_ = publish_endpoint;
  results_guard.release();
  feeder->loop_ = std::make_unique<Loop>(std::move(options), std::move(source), std::move(daemon),
                                         std::move(publish), results, owns_results);
  StreamFeeder* raw = feeder.get();
  feeder->thread_ = std::thread([raw] {
    Status status;
    try {
      status = raw->loop_->Run(raw->stop_);
    } catch (const std::exception& e) {
      status = Status::Internal(std::string("stream feeder: ") + e.what());
    }
    if (!status.ok()) GetLogger("edge")->error("stream feeder failed: {}", status.ToString());
    {
      MutexLock lock(&raw->mu_);
      raw->status_ = status;
    }
    raw->done_.store(true, std::memory_order_release);
  });
  return feeder;
}

StreamFeeder::~StreamFeeder() {
  RequestStop();
  if (thread_.joinable()) thread_.join();
  loop_.reset();  // closes its sockets before the caller's context goes
}

Status StreamFeeder::status() const {
  MutexLock lock(&mu_);
  return status_;
}

StreamFeederStats StreamFeeder::stats() const {
  StreamFeederStats s;
  s.received = loop_->received.load(std::memory_order_relaxed);
  s.answered = loop_->answered.load(std::memory_order_relaxed);
  s.dropped = loop_->dropped.load(std::memory_order_relaxed);
  s.stray_replies = loop_->stray.load(std::memory_order_relaxed);
  return s;
}

}  // namespace cleave::edge
