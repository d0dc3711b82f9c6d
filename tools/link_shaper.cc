#include "tools/link_shaper.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>

#include "common/logging.h"
#include "common/mutex.h"

namespace cleave::tools {
namespace {

// "10mbit" -> bits per second; 0 when the unit is unknown or the number is bad.
double ParseBandwidth(const std::string& text) {
  static const std::pair<const char*, double> kUnits[] = {
      {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}};
  for (const auto& [unit, scale] : kUnits) {
    const std::string u = unit;
    if (text.size() > u.size() && text.compare(text.size() - u.size(), u.size(), u) == 0) {
      try {
        size_t used = 0;
        const std::string number = text.substr(0, text.size() - u.size());
        const double v = std::stod(number, &used);
        return used == number.size() ? v * scale : 0;
      } catch (const std::exception&) {
        return 0;
      }
    }
  }
  return 0;
}

}  // namespace

Result<LinkTrace> LinkTrace::FromSteps(std::vector<LinkStep> steps) {
  if (steps.empty() || steps.front().at_s != 0) {
    return Status::InvalidArgument("a link trace starts with a step at 0 s");
  }
  for (size_t i = 0; i < steps.size(); ++i) {
    const LinkStep& s = steps[i];
    const std::string where = "link trace step " + std::to_string(i + 1);
    if (i > 0 && !(s.at_s > steps[i - 1].at_s)) {
      return Status::InvalidArgument(where + ": steps must be in increasing time order");
    }
    if (!(s.bandwidth_bps > 0) || !std::isfinite(s.bandwidth_bps)) {
      return Status::InvalidArgument(where + ": the bandwidth must be > 0");
    }
    if (!(s.rtt_ms >= 0) || !std::isfinite(s.rtt_ms)) {
      return Status::InvalidArgument(where + ": the RTT must be >= 0 ms");
    }
  }
  LinkTrace trace;
  trace.steps_ = std::move(steps);
  return trace;
}

Result<LinkTrace> LinkTrace::Parse(const std::string& text) {
  std::vector<LinkStep> steps;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    const std::string item = text.substr(begin, end - begin);
    const std::string where = "link trace step '" + item + "'";
    const size_t a = item.find(':');
    const size_t b = a == std::string::npos ? a : item.find(':', a + 1);
    if (b == std::string::npos) {
      return Status::InvalidArgument(where + ": expected SECONDS:BANDWIDTH:RTTms");
    }
    LinkStep s;
    try {
      size_t used = 0;
      s.at_s = std::stod(item.substr(0, a), &used);
      if (used != a) throw std::invalid_argument("time");
      std::string rtt = item.substr(b + 1);
      if (rtt.size() < 3 || rtt.compare(rtt.size() - 2, 2, "ms") != 0) {
        throw std::invalid_argument("rtt");
      }
      rtt.resize(rtt.size() - 2);
      s.rtt_ms = std::stod(rtt, &used);
      if (used != rtt.size()) throw std::invalid_argument("rtt");
    } catch (const std::exception&) {
      return Status::InvalidArgument(where + ": expected SECONDS:BANDWIDTH:RTTms");
    }
    s.bandwidth_bps = ParseBandwidth(item.substr(a + 1, b - a - 1));
    if (s.bandwidth_bps <= 0) {
      return Status::InvalidArgument(where +
                                     ": bandwidth must be a number > 0 with a unit of "
                                     "bit, kbit, mbit or gbit");
    }
    steps.push_back(s);
    begin = end + 1;
  }
  return FromSteps(std::move(steps));
}

size_t LinkTrace::IndexAt(double seconds) const {
  size_t i = 0;
  while (i + 1 < steps_.size() && steps_[i + 1].at_s <= seconds) ++i;
  return i;
}

const LinkStep& LinkTrace::At(double seconds) const { return steps_[IndexAt(seconds)]; }

struct LinkShaper::State {
  State(TransportContext& c, const cleave::Clock& k, LinkTrace t)
      : context(c), clock(k), trace(t) {}
  struct Queued {
    int64_t due_us = 0;
    std::string peer;
    std::string body;
  };
  TransportContext& context;
  const cleave::Clock& clock;  // qualified: a unity build may see another Clock
  LinkTrace trace;
  std::string upstream;
  size_t max_queued = 4096;
  bool shape_bandwidth = true;
  std::atomic<int64_t> start_us{0};
  std::unique_ptr<RouterServer> front;
  std::map<std::string, std::unique_ptr<DealerClient>> back;  // per edge
  std::deque<Queued> up, down;
  int64_t uplink_free_us = 0;
  int64_t last_up_due_us = 0, last_down_due_us = 0;
  mutable Mutex mu;
  LinkShaperStats stats GUARDED_BY(mu);
};

Result<std::unique_ptr<LinkShaper>> LinkShaper::Start(TransportContext& context,
                                                      const std::string& upstream, LinkTrace trace,
                                                      const ::cleave::Clock& clock,
                                                      size_t max_queued) {
  LinkShaperOptions options;
  options.max_queued = max_queued;
  return Start(context, upstream, std::move(trace), clock, options);
}

Result<std::unique_ptr<LinkShaper>> LinkShaper::Start(TransportContext& context,
                                                      const std::string& upstream, LinkTrace trace,
                                                      const ::cleave::Clock& clock,
                                                      const LinkShaperOptions& options) {
  std::unique_ptr<LinkShaper> shaper(new LinkShaper());
  shaper->state_ = std::make_unique<State>(context, clock, std::move(trace));
  State& s = *shaper->state_;
  s.upstream = upstream;
  s.max_queued = std::max<size_t>(1, options.max_queued);
  s.shape_bandwidth = options.shape_bandwidth;
  CLEAVE_ASSIGN_OR_RETURN(s.front, RouterServer::Bind(context, "tcp://127.0.0.1:0"));
  shaper->endpoint_ = s.front->endpoint();
  s.start_us = clock.NowMicros();
  shaper->thread_ = std::thread([raw = shaper.get()] { raw->Loop(); });
  return shaper;
}

LinkShaper::~LinkShaper() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

int64_t LinkShaper::start_us() const { return state_->start_us; }

void LinkShaper::RestartTrace() { state_->start_us = state_->clock.NowMicros(); }

double LinkShaper::Elapsed() const {
  return static_cast<double>(state_->clock.NowMicros() - state_->start_us) * 1e-6;
}

LinkShaperStats LinkShaper::stats() const {
  MutexLock lock(&state_->mu);
  return state_->stats;
}

void LinkShaper::Loop() {
  State& s = *state_;
  auto log = GetLogger("bench");
  while (!stop_) {
    std::vector<zmq::pollitem_t> items;
    if (s.up.size() < s.max_queued) {
      items.push_back({s.front->socket().handle(), 0, ZMQ_POLLIN, 0});
    }
    for (auto& [peer, dealer] : s.back) {
      items.push_back({dealer->socket().handle(), 0, ZMQ_POLLIN, 0});
    }
    int64_t now = s.clock.NowMicros();
    int64_t next_due = now + 10'000;
    if (!s.up.empty()) next_due = std::min(next_due, std::max(now + 1000, s.up.front().due_us));
    if (!s.down.empty()) next_due = std::min(next_due, s.down.front().due_us);
    try {
      zmq::poll(items.data(), items.size(),
                std::chrono::milliseconds(std::max<int64_t>(0, (next_due - now) / 1000)));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      log->error("link shaper: poll failed: {}", e.what());
      return;
    }
    now = s.clock.NowMicros();
    const LinkStep& step = s.trace.At(static_cast<double>(now - s.start_us) * 1e-6);
    const auto half_rtt_us = static_cast<int64_t>(step.rtt_ms * 500.0);
    // Uplink: FIFO at the step's bandwidth, then half the RTT.
    while (s.up.size() < s.max_queued) {
      Result<std::optional<Envelope>> in = s.front->Receive(0);
      if (!in.ok() || !in->has_value()) break;
      Envelope& env = **in;
      const uint64_t bytes = WireBytes(env.body.size());
      const auto tx_us =
          s.shape_bandwidth
              ? static_cast<int64_t>(static_cast<double>(bytes) * 8e6 / step.bandwidth_bps)
              : 0;
      s.uplink_free_us = std::max(s.uplink_free_us, now) + tx_us;
      const int64_t due = std::max(s.uplink_free_us + half_rtt_us, s.last_up_due_us);
      s.last_up_due_us = due;
      {
        MutexLock lock(&s.mu);
        ++s.stats.up_messages;
        s.stats.up_bytes += bytes;
      }
      s.up.push_back({due, std::move(env.peer), std::move(env.body)});
    }
    // Downlink: half the RTT, order kept.
    for (auto& [peer, dealer] : s.back) {
      while (true) {
        Result<std::optional<std::string>> in = dealer->Receive(0);
        if (!in.ok() || !in->has_value()) break;
        const int64_t due = std::max(now + half_rtt_us, s.last_down_due_us);
        s.last_down_due_us = due;
        {
          MutexLock lock(&s.mu);
          ++s.stats.down_messages;
          s.stats.down_bytes += WireBytes((*in)->size());
        }
        s.down.push_back({due, peer, std::move(**in)});
      }
    }
    // Deliver what is due.
    now = s.clock.NowMicros();
    while (!s.up.empty() && s.up.front().due_us <= now) {
      State::Queued& q = s.up.front();
      auto it = s.back.find(q.peer);
      if (it == s.back.end()) {
        Result<std::unique_ptr<DealerClient>> dealer = DealerClient::Connect(s.context, s.upstream);
        if (!dealer.ok()) {
          log->error("link shaper: cannot connect upstream: {}", dealer.status().ToString());
          s.up.pop_front();
          continue;
        }
        it = s.back.emplace(q.peer, std::move(dealer).value()).first;
      }
      // A DEALER still connecting refuses at once (immediate mode): keep the message at the
      // head and try again next turn, so nothing is lost or reordered.
      if (!it->second->Send(q.body, 0).ok()) break;
      s.up.pop_front();
    }
    while (!s.down.empty() && s.down.front().due_us <= now) {
      if (!s.front->Send(s.down.front().peer, s.down.front().body).ok()) {
        log->warn("link shaper: a reply could not be delivered to its edge");
      }
      s.down.pop_front();
    }
  }
}

}  // namespace cleave::tools
