#include "tools/bench_stream.h"

#include <unistd.h>

#include <torch/torch.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <thread>
#include <zmq.hpp>

#include "common/clock.h"
#include "common/datasets.h"
#include "common/file_util.h"
#include "common/png_image.h"
#include "common/process_stats.h"
#include "common/transport.h"
#include "split/bundle.h"
#include "split/dataset.h"
#include "split/image_rows.h"
#include "split/split_runtime.h"
#include "tools/bench_util.h"
#include "tools/daemon_launcher.h"
#include "tools/data_option.h"
#include "tools/link_shaper.h"
#include "tools/shaped_cloud.h"

namespace cleave::tools {

using json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

namespace {

constexpr char kWarmupStream[] = "warmup";
constexpr char kBenchStream[] = "bench";
constexpr int kWarmupFrames = 20;

// The frames a camera would send: the test images as PNG, with their labels.
struct FramePool {
  std::vector<std::string> png;
  std::vector<int64_t> labels;
};

Result<FramePool> MakeFramePool(const BenchStreamOptions& options) {
  CLEAVE_ASSIGN_OR_RETURN(Bundle bundle, Bundle::Open(options.bundle));
  CLEAVE_ASSIGN_OR_RETURN(const split::InputSpec input, split::ReadBundleInput(bundle));
  const std::string spec = !options.data.empty() ? options.data
                           : input.data.empty()  ? std::string("fashion-mnist")
                                                 : input.data;
  CLEAVE_ASSIGN_OR_RETURN(
      split::ImageRows rows,
      split::OpenRows(spec, DatasetSplit::kTest, input, options.pool, int64_t{1} << 30, 1));
  FramePool pool;
  const int64_t n = rows.size();
  for (int64_t i = 0; i < n; ++i) {
    CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor image, rows.Slice(i, 1));
    const torch::Tensor bytes =
        image[0].mul(255.0).round().clamp(0, 255).to(torch::kUInt8).permute({1, 2, 0}).contiguous();
    PixelImage pixels;
    pixels.channels = static_cast<uint32_t>(bytes.size(2));
    pixels.height = static_cast<uint32_t>(bytes.size(0));
    pixels.width = static_cast<uint32_t>(bytes.size(1));
    pixels.pixels.assign(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel());
    CLEAVE_ASSIGN_OR_RETURN(std::string png, EncodePngPixels(pixels));
    pool.png.push_back(std::move(png));
    pool.labels.push_back(rows.labels()[i].item<int64_t>());
  }
  if (pool.png.empty()) return Status::InvalidArgument("the test split has no images");
  return pool;
}

// Lines of `stream` in the results file so far.
uint64_t CountStreamLines(const std::filesystem::path& path, const std::string& stream) {
  std::ifstream in(path);
  const std::string needle = "\"stream\":\"" + stream + "\"";
  uint64_t n = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.find(needle) != std::string::npos) ++n;
  }
  return n;
}

// Waits until `stream` has `expected` result lines or `timeout_ms` passed; true when it has.
bool WaitForLines(const std::filesystem::path& path, const std::string& stream, uint64_t expected,
                  int timeout_ms, const std::function<void()>& each_turn) {
  const auto end = SteadyClock::now() + std::chrono::milliseconds(timeout_ms);
  while (SteadyClock::now() < end) {
    if (CountStreamLines(path, stream) >= expected) return true;
    if (each_turn) each_turn();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return CountStreamLines(path, stream) >= expected;
}

void SendFrame(zmq::socket_t& push, const std::string& stream, const std::string& png) {
  push.send(zmq::buffer(stream), zmq::send_flags::sndmore);
  push.send(zmq::buffer(png), zmq::send_flags::none);
}

// One rate: a fresh link shaper and edge daemon, warm-up frames, then `rate` frames per second
// for options.seconds, and the tally of what came back.
Result<json> RunRate(const BenchStreamOptions& options, const FramePool& pool, ShapedCloud& cloud,
                     const LinkTrace& trace, int rate, const std::filesystem::path& work) {
  TransportContext context;
  CLEAVE_ASSIGN_OR_RETURN(auto shaper, StartShapedLink(cloud, context, trace, SystemClock()));
  zmq::socket_t push(context.raw(), zmq::socket_type::push);
  push.set(zmq::sockopt::sndhwm, 100000);
  push.set(zmq::sockopt::linger, 0);
  push.bind("tcp://127.0.0.1:0");
  const std::string source = push.get(zmq::sockopt::last_endpoint);
  const std::filesystem::path results = work / ("stream-" + std::to_string(rate) + ".jsonl");
  std::error_code ec;
  std::filesystem::remove(results, ec);

  std::vector<std::string> args = {"serve",
                                   "--edge.bundle",
                                   options.bundle,
                                   "--edge.listen",
                                   "tcp://127.0.0.1:0",
                                   "--edge.cloud",
                                   shaper->endpoint(),
                                   "--edge.threads",
                                   std::to_string(options.threads),
                                   "--edge.source",
                                   "zmq-pull://>" + source,
                                   "--edge.stream_results",
                                   results.string(),
                                   "--log.level",
                                   "warn"};
  if (options.deadline_ms > 0) {
    args.insert(args.end(), {"--edge.deadline_ms", std::to_string(options.deadline_ms)});
  }
  if (options.stream_window > 0) {
    args.insert(args.end(), {"--edge.stream_window", std::to_string(options.stream_window)});
  }
  CLEAVE_ASSIGN_OR_RETURN(LaunchedDaemon edge,
                          LaunchDaemon(SelfBinaryDir() / "cleave-edge", args, "edge.ready_file",
                                       work, "edge-" + std::to_string(rate)));
  const pid_t pid = edge.process->pid();

  // Warm-up on a stream of its own: connections up, first-call costs paid.
  for (int i = 0; i < kWarmupFrames; ++i) {
    SendFrame(push, kWarmupStream, pool.png[static_cast<size_t>(i) % pool.png.size()]);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!WaitForLines(results, kWarmupStream, kWarmupFrames, 30000, nullptr)) {
    (void)edge.process->Stop(3000);
    return Status::Unavailable("cleave-edge did not answer its warm-up frames within 30 s (log: " +
                               edge.log_path.string() + ")");
  }
  const LinkShaperStats link_before = shaper->stats();
  const int64_t rss_start = ProcessRssBytes(pid, "VmRSS");
  int64_t rss_max = rss_start;
  auto sample_rss = [&] { rss_max = std::max(rss_max, ProcessRssBytes(pid, "VmRSS")); };

  // The measured phase: frames paced at `rate`, the n-th at start + n / rate.
  const uint64_t frames = static_cast<uint64_t>(std::max(1.0, options.seconds * rate));
  std::vector<int64_t> labels;
  labels.reserve(frames);
  const auto start = SteadyClock::now();
  auto next_rss = start;
  for (uint64_t i = 0; i < frames; ++i) {
    const auto due = start + std::chrono::duration_cast<SteadyClock::duration>(
                                 std::chrono::duration<double>(static_cast<double>(i) / rate));
    std::this_thread::sleep_until(due);
    const size_t k = static_cast<size_t>(i % pool.png.size());
    SendFrame(push, kBenchStream, pool.png[k]);
    labels.push_back(pool.labels[k]);
    if (SteadyClock::now() >= next_rss) {
      sample_rss();
      next_rss += std::chrono::milliseconds(100);
    }
  }
  const double send_seconds = SecondsSince(start);
  // Every frame gets a line (answered or dropped) once its request returns or times out.
  const bool complete = WaitForLines(results, kBenchStream, frames, 60000, sample_rss);
  const double total_seconds = SecondsSince(start);
  sample_rss();
  const int64_t peak_rss = ProcessRssBytes(pid, "VmHWM");
  const LinkShaperStats link_after = shaper->stats();
  (void)edge.process->Stop(5000);

  CLEAVE_ASSIGN_OR_RETURN(const std::string lines, ReadFileToString(results));
  CLEAVE_ASSIGN_OR_RETURN(const StreamTally tally, TallyStreamLines(lines, kBenchStream, labels));
  json r;
  r["offered_fps"] = static_cast<double>(frames) / send_seconds;
  r["frames_sent"] = frames;
  r["received"] = tally.received;
  r["answered"] = tally.answered;
  r["dropped"] = tally.dropped;
  r["dropped_by_reason"] = tally.dropped_by_reason;
  r["answered_by"] = tally.answered_by;
  r["all_accounted"] =
      complete && tally.received == frames && tally.received == tally.answered + tally.dropped;
  // Answers per second over the sending time: what an application downstream of the stream
  // receives while the source runs.
  r["achieved_fps"] = static_cast<double>(tally.answered) / send_seconds;
  r["run_seconds"] = total_seconds;
  r["accuracy"] = tally.answered == 0
                      ? 0.0
                      : static_cast<double>(tally.correct) / static_cast<double>(tally.answered);
  r["latency_p50_ms"] = Percentile(tally.latency_ms, 50);
  r["latency_p99_ms"] = Percentile(tally.latency_ms, 99);
  r["staleness_p50_ms"] = Percentile(tally.staleness_ms, 50);
  r["staleness_p99_ms"] = Percentile(tally.staleness_ms, 99);
  r["rss_start_bytes"] = rss_start;
  r["rss_max_bytes"] = rss_max;
  r["peak_rss_bytes"] = peak_rss;
  r["uplink_bytes"] = link_after.up_bytes - link_before.up_bytes;
  r["uplink_messages"] = link_after.up_messages - link_before.up_messages;
  return r;
}

std::string Fixed(const json& value, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, value.get<double>());
  return buf;
}

}  // namespace

Result<StreamTally> TallyStreamLines(const std::string& lines, const std::string& stream,
                                     const std::vector<int64_t>& labels) {
  StreamTally tally;
  std::istringstream in(lines);
  size_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.empty()) continue;
    const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return Status::InvalidArgument("result line " + std::to_string(line_no) + " is not JSON");
    }
    if (!j.contains("stream") || !j["stream"].is_string()) {
      return Status::InvalidArgument("result line " + std::to_string(line_no) + " names no stream");
    }
    if (j["stream"].get<std::string>() != stream) continue;
    if (!j.contains("seq") || !j["seq"].is_number_unsigned()) {
      return Status::InvalidArgument("result line " + std::to_string(line_no) + " has no seq");
    }
    ++tally.received;
    if (j.contains("dropped")) {
      if (!j["dropped"].is_string()) {
        return Status::InvalidArgument("result line " + std::to_string(line_no) +
                                       ": dropped is not a reason");
      }
      ++tally.dropped;
      json& n = tally.dropped_by_reason[j["dropped"].get<std::string>()];
      n = n.is_null() ? 1 : n.get<uint64_t>() + 1;
      continue;
    }
    if (!j.contains("answered_by") || !j["answered_by"].is_string() || !j.contains("class") ||
        !j["class"].is_number_integer() || !j.contains("latency_ms") ||
        !j["latency_ms"].is_number() || !j.contains("staleness_ms") ||
        !j["staleness_ms"].is_number()) {
      return Status::InvalidArgument(
          "result line " + std::to_string(line_no) +
          " is neither a drop nor an answer with answered_by, class, latency_ms and staleness_ms");
    }
    ++tally.answered;
    json& n = tally.answered_by[j["answered_by"].get<std::string>()];
    n = n.is_null() ? 1 : n.get<uint64_t>() + 1;
    tally.latency_ms.push_back(j["latency_ms"].get<double>());
    tally.staleness_ms.push_back(j["staleness_ms"].get<double>());
    const uint64_t seq = j["seq"].get<uint64_t>();
    if (seq >= 1 && seq <= labels.size() && j["class"].get<int64_t>() == labels[seq - 1]) {
      ++tally.correct;
    }
  }
  return tally;
}

Result<json> RunBenchStream(const BenchStreamOptions& options) {
  if (options.rates.empty()) return Status::InvalidArgument("--rates: give at least one rate");
  for (int rate : options.rates) {
    if (rate <= 0) return Status::InvalidArgument("--rates: every rate must be > 0");
  }
  if (!(options.seconds > 0)) return Status::InvalidArgument("--seconds must be > 0");
  Result<LinkTrace> parsed = LinkTrace::Parse(options.link);
  if (!parsed.ok()) {
    return Status::InvalidArgument("--link: " + parsed.status().message());
  }
  const LinkTrace trace = std::move(*parsed);
  std::fprintf(stderr, "encoding %d test images as PNG frames...\n", options.pool);
  CLEAVE_ASSIGN_OR_RETURN(const FramePool pool, MakeFramePool(options));

  const std::filesystem::path work = std::filesystem::temp_directory_path() /
                                     ("cleave-bench-stream-" + std::to_string(::getpid()));
  std::filesystem::create_directories(work);
  CLEAVE_ASSIGN_OR_RETURN(LinkMode mode, ParseLinkMode(options.link_mode));
  CLEAVE_ASSIGN_OR_RETURN(
      ShapedCloud cloud, LaunchShapedCloud(mode, trace,
                                           {"--cloud.bundle", options.bundle, "--cloud.threads",
                                            std::to_string(options.threads), "--log.level", "warn"},
                                           work, "cloud"));

  json report;
  report["bundle"] = options.bundle;
  report["link"] = options.link;
  report["link_mode"] = cloud.mode;
  if (!cloud.why_relay.empty()) report["link_mode_why_relay"] = cloud.why_relay;
  report["seconds_per_rate"] = options.seconds;
  report["frame_bytes_mean"] = [&] {
    double sum = 0;
    for (const std::string& p : pool.png) sum += static_cast<double>(p.size());
    return sum / static_cast<double>(pool.png.size());
  }();
  json rates = json::object();
  for (int rate : options.rates) {
    std::fprintf(stderr, "stream at %d frames/s for %.0f s over %s...\n", rate, options.seconds,
                 options.link.c_str());
    Result<json> r = RunRate(options, pool, cloud, trace, rate, work);
    if (!r.ok()) return r.status();
    std::fprintf(stderr, "  achieved %.1f fps, staleness p99 %.1f ms, %llu dropped\n",
                 (*r)["achieved_fps"].get<double>(), (*r)["staleness_p99_ms"].get<double>(),
                 static_cast<unsigned long long>((*r)["dropped"].get<uint64_t>()));
    rates[std::to_string(rate)] = *r;
  }
  (void)cloud.cloud.process->Stop(3000);

  // Targets (issue 19): every frame answered or dropped with a reason; the edge's memory
  // bounded whatever the source's rate: during each phase its RSS stays within a quarter of
  // what it was when the phase started, as the overload phase of `bench serve` checks.
  bool accounted = true, bounded = true;
  for (const auto& [rate, r] : rates.items()) {
    accounted = accounted && r["all_accounted"].get<bool>();
    const int64_t start = r["rss_start_bytes"].get<int64_t>();
    bounded = bounded && r["rss_max_bytes"].get<int64_t>() <= start + start / 4;
  }
  report["rates"] = rates;
  report["targets"] = {{"every_frame_answered_or_dropped_with_reason", accounted},
                       {"edge_rss_within_25pct_of_phase_start", bounded}};
  if (!options.json_out.empty()) {
    CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(options.json_out, report.dump(2) + "\n"));
  }
  if (!options.markdown_out.empty()) {
    CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(options.markdown_out, BenchStreamMarkdown(report)));
  }
  std::error_code ec;
  std::filesystem::remove_all(work, ec);
  return report;
}

std::string BenchStreamMarkdown(const json& report) {
  std::string md = "Link `" + report.at("link").get<std::string>() + "` (" +
                   report.at("link_mode").get<std::string>() + "), " +
                   Fixed(report.at("seconds_per_rate"), 0) + " s per rate, PNG frames of " +
                   Fixed(report.at("frame_bytes_mean"), 0) + " bytes on average.\n\n";
  md +=
      "| offered fps | achieved fps | answered (exit / cloud / degraded) | dropped | staleness "
      "p50 / p99 ms | latency p99 ms | accuracy | edge RSS start / max / peak MiB | uplink "
      "bytes |\n|---|---|---|---|---|---|---|---|---|\n";
  auto mib = [](const json& v) { return std::to_string(v.get<int64_t>() >> 20); };
  auto count = [](const json& obj, const char* key) {
    return obj.contains(key) ? std::to_string(obj.at(key).get<uint64_t>()) : std::string("0");
  };
  std::vector<std::pair<double, std::string>> order;  // JSON keys sort as text: "100" < "30"
  for (const auto& [rate, r] : report.at("rates").items())
    order.emplace_back(std::stod(rate), rate);
  std::sort(order.begin(), order.end());
  for (const auto& [fps, rate] : order) {
    const json& r = report.at("rates").at(rate);
    std::string drops = std::to_string(r.at("dropped").get<uint64_t>());
    if (!r.at("dropped_by_reason").empty()) {
      drops += " (";
      bool first = true;
      for (const auto& [reason, n] : r.at("dropped_by_reason").items()) {
        drops += (first ? "" : ", ") + reason + " " + std::to_string(n.get<uint64_t>());
        first = false;
      }
      drops += ")";
    }
    const json& by = r.at("answered_by");
    md += "| " + Fixed(r.at("offered_fps"), 1) + " | " + Fixed(r.at("achieved_fps"), 1) + " | " +
          std::to_string(r.at("answered").get<uint64_t>()) + " (" + count(by, "exit") + " / " +
          count(by, "cloud") + " / " + count(by, "degraded") + ") | " + drops + " | " +
          Fixed(r.at("staleness_p50_ms"), 1) + " / " + Fixed(r.at("staleness_p99_ms"), 1) + " | " +
          Fixed(r.at("latency_p99_ms"), 1) + " | " +
          Fixed(json(100 * r.at("accuracy").get<double>()), 2) + " % | " +
          mib(r.at("rss_start_bytes")) + " / " + mib(r.at("rss_max_bytes")) + " / " +
          mib(r.at("peak_rss_bytes")) + " | " +
          std::to_string(r.at("uplink_bytes").get<uint64_t>()) + " |\n";
  }
  md += "\n| target (issue 19) | met |\n|---|---|\n";
  for (const auto& [key, value] : report.at("targets").items()) {
    md += "| `" + key + "` | " + (value.get<bool>() ? "yes" : "**no**") + " |\n";
  }
  return md;
}

void RegisterBenchStreamCommand(CLI::App& bench) {
  auto options = std::make_shared<BenchStreamOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "stream",
      "a camera-like source PUSHes PNG test frames into cleave-edge's streaming input "
      "(edge.source) at each rate while the edge reaches cleave-cloud through a shaped link; "
      "per rate: achieved answers/s, staleness, drops by reason, who answered, accuracy and the "
      "edge daemon's memory; prints JSON");
  cmd->add_option("--bundle", options->bundle, "vision model bundle directory")->required();
  cmd->add_option("--json", options->json_out, "write the JSON report here");
  cmd->add_option("--markdown", options->markdown_out,
                  "also write the report as markdown tables (docs/benchmarks.md)");
  cmd->add_option("--data", options->data,
                  std::string(kDataSpecHelp) + " (default: the one the bundle was trained on)");
  cmd->add_option("--rates", options->rates, "offered frames per second, one phase each")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--seconds", options->seconds, "measured seconds per rate")
      ->capture_default_str();
  cmd->add_option("--link", options->link,
                  "the edge -> cloud link: bandwidth and round trip from each step's time on, "
                  "AT_S:BANDWIDTH:RTT,... (e.g. 0:10mbit:5ms,20:200kbit:80ms)")
      ->capture_default_str();
  cmd->add_option("--link-mode", options->link_mode,
                  "how the link is made: kernel (the cloud in a network namespace behind a veth "
                  "pair, tc tbf shaping its bandwidth, the relay adding the delay; needs root), "
                  "relay (the relay shapes both), auto (kernel where allowed, else relay)")
      ->capture_default_str();
  cmd->add_option("--pool", options->pool, "distinct test images the frames cycle through")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--threads", options->threads, "libtorch threads of each daemon")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--deadline-ms", options->deadline_ms,
                  "edge.deadline_ms of the edge daemon (0 = its default)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--stream-window", options->stream_window,
                  "edge.stream_window: requests in flight per stream (0 = the daemon's default)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([options] {
    Result<json> report = RunBenchStream(*options);
    if (!report.ok()) {
      std::fprintf(stderr, "cleave bench stream: %s\n", report.status().ToString().c_str());
      throw CLI::RuntimeError(1);
    }
    std::cout << report->dump(2) << std::endl;
  });
}

}  // namespace cleave::tools
