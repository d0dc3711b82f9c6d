#include "tools/bench_adaptive.h"

#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <numeric>
#include <random>

#include "common/child_process.h"
#include "common/edge_api.h"
#include "common/file_util.h"
#include "common/transport.h"
#include "edge/offload_menu.h"
#include "split/bundle.h"
#include "split/image_rows.h"
#include "split/split_runtime.h"
#include "tools/adaptive_report.h"
#include "tools/daemon_launcher.h"
#include "tools/data_option.h"
#include "tools/link_shaper.h"
#include "tools/shaped_cloud.h"

namespace cleave::tools {
namespace {

using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

// How long after its deadline the client still waits for a request's reply (the edge answers
// every request by its deadline; this only bounds a run whose edge died).
constexpr int kAdaptiveReplyGraceMs = 2000;
// Request ids of the warm-up requests start here (the counted ones at 1).
constexpr uint64_t kAdaptiveWarmupIdBase = uint64_t{1} << 40;

// The same request stream for every configuration: encoded ClassifyRequests of test images
// in a seeded order, and their labels.
struct AdaptiveStream {
  std::vector<std::string> encoded;  // per image, request id 0 (patched per send)
  std::vector<edge_api::ClassifyRequest> requests;
  std::vector<int64_t> labels;
  std::vector<size_t> order;  // image of request k: order[k % order.size()]
};

Result<AdaptiveStream> MakeStream(const Bundle& bundle, const BenchAdaptiveOptions& options,
                                  int64_t images) {
  CLEAVE_ASSIGN_OR_RETURN(const split::InputSpec input, split::ReadBundleInput(bundle));
  const std::string data_spec = !options.data.empty() ? options.data
                                : input.data.empty()  ? std::string("fashion-mnist")
                                                      : input.data;
  CLEAVE_ASSIGN_OR_RETURN(
      split::ImageRows rows,
      split::OpenRows(data_spec, DatasetSplit::kTest, input, images, int64_t{1} << 30, 1));
  AdaptiveStream stream;
  const int64_t n = rows.size();
  if (n == 0) return Status::InvalidArgument("bench adaptive: the test split is empty");
  const torch::Tensor labels = rows.labels();
  for (int64_t i = 0; i < n; ++i) {
    CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor image, rows.Slice(i, 1));
    // The rows hold bytes / 255: rounding recovers the pixels an application would send.
    const torch::Tensor bytes =
        image[0].mul(255.0).round().clamp(0, 255).to(torch::kUInt8).permute({1, 2, 0}).contiguous();
    edge_api::ClassifyRequest r;
    r.kind = bytes.size(2) == 3 ? edge_api::ImageKind::kRgb8 : edge_api::ImageKind::kGray8;
    r.height = static_cast<uint32_t>(bytes.size(0));
    r.width = static_cast<uint32_t>(bytes.size(1));
    r.deadline_ms = static_cast<uint32_t>(options.deadline_ms);
    r.pixels.assign(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()),
                    static_cast<size_t>(bytes.numel()));
    stream.requests.push_back(std::move(r));
    stream.labels.push_back(labels[i].item<int64_t>());
  }
  stream.order.resize(static_cast<size_t>(n));
  std::iota(stream.order.begin(), stream.order.end(), size_t{0});
  std::mt19937 rng(options.seed);
  std::shuffle(stream.order.begin(), stream.order.end(), rng);
  return stream;
}

// The option spec of the reply's (split, threshold) on `menu`'s terms.
std::string ServedOption(const edge_api::ClassifyReply& reply, const edge::OffloadMenu& menu) {
  if (reply.split < 0) return "local";
  if (reply.exit_threshold < 0) {
    return edge::OffloadOptionSpec(menu.options[static_cast<size_t>(menu.calibrated)]);
  }
  edge::OffloadOption o;
  o.split = reply.split;
  o.exit_threshold = reply.exit_threshold;
  return edge::OffloadOptionSpec(o);
}

// Sends requests [first, first + count) of the stream open loop at options.rate and collects
// their replies. `window_of(k)` is the window of request k (relative index); records are in
// send order.
Result<std::vector<AdaptiveRecord>> Drive(DealerClient& client, const AdaptiveStream& stream,
                                          const BenchAdaptiveOptions& options,
                                          const edge::OffloadMenu& menu, uint64_t id_base,
                                          size_t first, size_t count,
                                          const std::function<int(size_t)>& window_of) {
  std::vector<AdaptiveRecord> records(count);
  std::vector<SteadyClock::time_point> sent(count);
  std::vector<bool> done(count, false);
  const int timeout_ms = options.deadline_ms + kAdaptiveReplyGraceMs;
  for (size_t k = 0; k < count; ++k) {
    records[k].window = window_of(k);
    records[k].latency_ms = timeout_ms;
  }
  const auto start = SteadyClock::now();
  const auto due = [&](size_t k) {
    return start + std::chrono::microseconds(
                       static_cast<int64_t>(1e6 * static_cast<double>(k) / options.rate));
  };
  size_t next = 0, answered = 0;
  while (answered < count) {
    const auto now = SteadyClock::now();
    if (next < count && now >= due(next)) {
      const size_t image = stream.order[(first + next) % stream.order.size()];
      edge_api::ClassifyRequest request = stream.requests[image];
      request.request_id = id_base + next;
      sent[next] = SteadyClock::now();
      Status s = client.Send(edge_api::EncodeClassifyRequest(request), 100);
      if (!s.ok()) {
        done[next] = true;  // counted as unanswered
        ++answered;
      }
      ++next;
      continue;
    }
    // Past the last send: stop once the oldest unanswered request timed out.
    if (next == count) {
      bool waiting = false;
      for (size_t k = 0; k < count && !waiting; ++k) {
        waiting = !done[k] && now - sent[k] < std::chrono::milliseconds(timeout_ms);
      }
      if (!waiting) break;
    }
    int wait_ms = 20;
    if (next < count) {
      wait_ms = static_cast<int>(std::clamp<int64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(due(next) - now).count(), 0, 20));
    }
    CLEAVE_ASSIGN_OR_RETURN(std::optional<std::string> bytes, client.Receive(wait_ms));
    while (bytes.has_value()) {
      const auto at = SteadyClock::now();
      Result<edge_api::ClassifyReply> reply = edge_api::DecodeClassifyReply(*bytes);
      if (reply.ok() && reply->request_id >= id_base && reply->request_id - id_base < count) {
        const size_t k = reply->request_id - id_base;
        if (!done[k]) {
          done[k] = true;
          ++answered;
          AdaptiveRecord& r = records[k];
          const double latency = std::chrono::duration<double, std::milli>(at - sent[k]).count();
          if (latency <= timeout_ms) {
            r.answered = true;
            r.latency_ms = latency;
            const size_t image = stream.order[(first + k) % stream.order.size()];
            r.correct = reply->source != edge_api::AnswerSource::kError &&
                        reply->predicted_class == stream.labels[image];
            r.bytes = static_cast<double>(reply->wire_bytes);
            r.option = ServedOption(*reply, menu);
            r.probe = reply->probe;
          }
        }
      }
      CLEAVE_ASSIGN_OR_RETURN(bytes, client.Receive(0));
    }
  }
  return records;
}

struct AdaptiveConfig {
  std::string name;                // adaptive, static_0_0.9, ...
  std::vector<std::string> flags;  // the edge's policy flags
};

// One configuration over the whole trace: a fresh relay and edge, warm-up, counted requests.
Result<AdaptiveRun> RunConfig(TransportContext& context, ShapedCloud& cloud,
                              const std::string& bundle_dir, const LinkTrace& trace,
                              const AdaptiveStream& stream, const BenchAdaptiveOptions& options,
                              const edge::OffloadMenu& menu, const AdaptiveConfig& config,
                              const std::filesystem::path& work) {
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<LinkShaper> shaper,
                          StartShapedLink(cloud, context, trace, SystemClock()));
  std::vector<std::string> args = {"serve",
                                   "--edge.bundle",
                                   bundle_dir,
                                   "--edge.listen",
                                   "tcp://127.0.0.1:0",
                                   "--edge.cloud",
                                   shaper->endpoint(),
                                   "--edge.deadline_ms",
                                   std::to_string(options.deadline_ms),
                                   "--edge.int8_engine",
                                   options.int8_engine,
                                   "--edge.threads",
                                   "1",
                                   "--log.level",
                                   "info"};
  args.insert(args.end(), config.flags.begin(), config.flags.end());
  CLEAVE_ASSIGN_OR_RETURN(LaunchedDaemon edge,
                          LaunchDaemon(SelfBinaryDir() / "cleave-edge", args, "edge.ready_file",
                                       work, "edge-" + config.name));
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<DealerClient> client,
                          DealerClient::Connect(context, edge.endpoint));
  const size_t counted = static_cast<size_t>(std::llround(options.seconds * options.rate));
  const size_t warmup = static_cast<size_t>(std::llround(options.warmup_seconds * options.rate));
  if (warmup > 0) {
    // The tail of the stream, so no counted image is seen twice in a row.
    CLEAVE_RETURN_IF_ERROR(Drive(*client, stream, options, menu, kAdaptiveWarmupIdBase, counted,
                                 warmup, [](size_t) { return 0; })
                               .status()
                               .WithContext("warm-up of " + config.name));
  }
  shaper->RestartTrace();
  if (cloud.kernel) cloud.kernel->Follow(trace, SystemClock(), shaper->start_us());
  AdaptiveRun run;
  run.name = config.name;
  CLEAVE_ASSIGN_OR_RETURN(
      run.records, Drive(*client, stream, options, menu, 1, 0, counted, [&](size_t k) {
        return static_cast<int>(trace.IndexAt(static_cast<double>(k) / options.rate));
      }));
  client.reset();
  (void)edge.process->Stop(5000);
  const LinkShaperStats link = shaper->stats();
  size_t hits = 0, answered = 0;
  for (const AdaptiveRecord& r : run.records) {
    answered += r.answered;
    hits += r.answered && r.latency_ms <= options.slo_ms;
  }
  std::fprintf(stderr, "%-22s %zu/%zu answered, %.1f %% within %.0f ms, %lu B up the link\n",
               config.name.c_str(), answered, run.records.size(),
               100.0 * static_cast<double>(hits) / static_cast<double>(run.records.size()),
               options.slo_ms, static_cast<unsigned long>(link.up_bytes));
  return run;
}

// The bundle the benchmark serves: the given one, or a copy with the --add-split cuts when it
// has a single split point.
Result<std::string> PrepareBundle(const BenchAdaptiveOptions& options,
                                  const std::filesystem::path& work, bool* added) {
  *added = false;
  CLEAVE_ASSIGN_OR_RETURN(Bundle bundle, Bundle::Open(options.bundle));
  split::EdgeModel::Options head;
  head.int8 = true;
  head.int8_engine = options.int8_engine;
  CLEAVE_ASSIGN_OR_RETURN(auto model, split::EdgeModel::Load(bundle, head));
  if (model->num_splits() > 1 || options.add_splits.empty()) return options.bundle;
  const std::filesystem::path copy = work / "bundle";
  if (std::filesystem::exists(copy / "manifest.json")) {
    // A copy from an earlier run in the same work directory: reuse it if it opens.
    if (Bundle::Open(copy.string()).ok()) {
      *added = true;
      return copy.string();
    }
  }
  std::vector<std::string> argv = {(SelfBinaryDir() / "cleave").string(), "split", "--bundle",
                                   options.bundle, "--out", copy.string(), "--quiet",
                                   // The latency profile is measured with the thread count the
                                   // daemons run with (edge.threads, cloud.threads): with two
                                   // threads on a busy machine a batch-1 fp32 block can stall
                                   // for tens of ms, which would misstate every split point.
                                   "--threads", "1"};
  for (const std::string& cut : options.add_splits) {
    argv.push_back("--add-split");
    argv.push_back(cut);
  }
  std::fprintf(stderr, "adding split points to a copy of the bundle (cleave split)...\n");
  CLEAVE_ASSIGN_OR_RETURN(auto child, ChildProcess::Spawn(argv, (work / "split.log").string()));
  CLEAVE_ASSIGN_OR_RETURN(int code, child->Wait(30 * 60 * 1000));
  if (code != 0) {
    return Status::Internal("cleave split --add-split failed (exit " + std::to_string(code) +
                            "); see " + (work / "split.log").string());
  }
  *added = true;
  return copy.string();
}

std::string StaticName(const std::string& spec) {
  std::string name = "static_" + spec;
  std::replace(name.begin(), name.end(), ':', '_');
  return name;
}

void ApplyQuick(BenchAdaptiveOptions& options) {
  options.trace = "0:10mbit:5ms,3:200kbit:80ms";
  options.seconds = 6;
  options.rate = 25;
  options.warmup_seconds = 0.5;
}

}  // namespace

Result<json> RunBenchAdaptive(BenchAdaptiveOptions options) {
  if (options.quick) ApplyQuick(options);
  if (!(options.rate > 0) || !(options.seconds > 0) || !(options.slo_ms > 0) ||
      !(options.slo_percentile > 0 && options.slo_percentile < 1) || options.deadline_ms <= 0 ||
      options.warmup_seconds < 0) {
    return Status::InvalidArgument(
        "bench adaptive: --rate, --seconds, --slo-ms and --deadline-ms must be > 0, "
        "--slo-percentile in (0, 1) and --warmup-seconds >= 0");
  }
  CLEAVE_ASSIGN_OR_RETURN(LinkTrace trace, LinkTrace::Parse(options.trace));
  if (trace.steps().back().at_s >= options.seconds) {
    return Status::InvalidArgument("bench adaptive: the trace's last step starts at " +
                                   std::to_string(trace.steps().back().at_s) +
                                   " s, not before --seconds " + std::to_string(options.seconds));
  }
  torch::NoGradGuard no_grad;
  const bool own_work = options.work_dir.empty();
  const std::filesystem::path work =
      own_work ? std::filesystem::temp_directory_path() /
                     ("cleave-bench-adaptive-" + std::to_string(::getpid()))
               : std::filesystem::path(options.work_dir);
  std::error_code ec;
  std::filesystem::create_directories(work, ec);

  bool added = false;
  CLEAVE_ASSIGN_OR_RETURN(const std::string bundle_dir, PrepareBundle(options, work, &added));
  CLEAVE_ASSIGN_OR_RETURN(Bundle bundle, Bundle::Open(bundle_dir));
  split::EdgeModel::Options head;
  head.int8 = true;
  head.int8_engine = options.int8_engine;
  CLEAVE_ASSIGN_OR_RETURN(auto model, split::EdgeModel::Load(bundle, head));
  const edge::OffloadMenu menu = edge::BuildOffloadMenu(*model, /*int8=*/true);
  std::fprintf(stderr, "offload menu (%zu options):\n%s", menu.options.size(),
               edge::DescribeMenu(menu).c_str());

  // The static configurations: every distinct option of the menu, or those asked for.
  std::vector<std::string> specs;
  if (!options.statics.empty()) {
    for (const std::string& s : options.statics) {
      CLEAVE_ASSIGN_OR_RETURN(int index, edge::FindOffloadOption(menu, s));
      specs.push_back(edge::OffloadOptionSpec(menu.options[static_cast<size_t>(index)]));
    }
  } else if (options.quick) {
    // The calibrated option, local only, and every split point with its exits off.
    specs.push_back(edge::OffloadOptionSpec(menu.options[static_cast<size_t>(menu.calibrated)]));
    for (const edge::OffloadOption& o : menu.options) {
      if (!o.offloads() || o.exit_threshold > 1) specs.push_back(edge::OffloadOptionSpec(o));
    }
  } else {
    for (const edge::OffloadOption& o : menu.options) specs.push_back(edge::OffloadOptionSpec(o));
  }
  std::vector<std::string> unique;
  for (const std::string& s : specs) {
    if (std::find(unique.begin(), unique.end(), s) == unique.end()) unique.push_back(s);
  }
  std::vector<AdaptiveConfig> configs;
  configs.push_back(
      {"adaptive",
       {"--edge.offload_policy", "slo", "--edge.slo_ms", std::to_string(options.slo_ms),
        "--edge.slo_percentile", std::to_string(options.slo_percentile)}});
  for (const std::string& s : unique) {
    configs.push_back(
        {StaticName(s), {"--edge.offload_policy", "static", "--edge.static_option", s}});
  }

  const size_t counted = static_cast<size_t>(std::llround(options.seconds * options.rate));
  const size_t warmup = static_cast<size_t>(std::llround(options.warmup_seconds * options.rate));
  CLEAVE_ASSIGN_OR_RETURN(
      const AdaptiveStream stream,
      MakeStream(bundle, options, static_cast<int64_t>(std::min<size_t>(counted + warmup, 10000))));

  CLEAVE_ASSIGN_OR_RETURN(const LinkMode link_mode, ParseLinkMode(options.link_mode));
  CLEAVE_ASSIGN_OR_RETURN(ShapedCloud cloud,
                          LaunchShapedCloud(link_mode, trace,
                                            {"--cloud.bundle", bundle_dir, "--cloud.threads", "1",
                                             "--cloud.workers", "1", "--log.level", "warn"},
                                            work, "cloud"));
  TransportContext context;
  const auto started = SteadyClock::now();
  std::vector<AdaptiveRun> runs;
  for (const AdaptiveConfig& config : configs) {
    CLEAVE_ASSIGN_OR_RETURN(AdaptiveRun run, RunConfig(context, cloud, bundle_dir, trace, stream,
                                                       options, menu, config, work));
    runs.push_back(std::move(run));
  }
  (void)cloud.cloud.process->Stop(5000);

  const AdaptiveRun adaptive = runs.front();
  const std::vector<AdaptiveRun> statics(runs.begin() + 1, runs.end());
  json report = AnalyzeAdaptiveRuns(adaptive, statics, static_cast<int>(trace.steps().size()),
                                    options.slo_ms, options.slo_percentile);
  json steps = json::array();
  for (size_t i = 0; i < trace.steps().size(); ++i) {
    const LinkStep& s = trace.steps()[i];
    const double end = i + 1 < trace.steps().size() ? trace.steps()[i + 1].at_s : options.seconds;
    steps.push_back({{"from_s", s.at_s},
                     {"to_s", end},
                     {"bandwidth_bps", s.bandwidth_bps},
                     {"rtt_ms", s.rtt_ms}});
  }
  json menu_json = json::array();
  for (const edge::OffloadOption& o : menu.options) {
    menu_json.push_back({{"option", edge::OffloadOptionSpec(o)},
                         {"split", o.split},
                         {"exit_threshold", o.exit_threshold},
                         {"exit_fraction", o.exit_fraction},
                         {"accuracy", o.accuracy},
                         {"edge_ms", o.edge_ms},
                         {"cloud_ms", o.cloud_ms},
                         {"request_bytes", o.request_bytes}});
  }
  report["setup"] = {{"bundle", options.bundle},
                     {"served_bundle", bundle_dir},
                     {"split_points_added", added ? json(options.add_splits) : json::array()},
                     {"trace", options.trace},
                     {"link_mode", cloud.mode},
                     {"steps", steps},
                     {"seconds", options.seconds},
                     {"slo_ms", options.slo_ms},
                     {"slo_percentile", options.slo_percentile},
                     {"rate_per_s", options.rate},
                     {"deadline_ms", options.deadline_ms},
                     {"warmup_seconds", options.warmup_seconds},
                     {"requests_per_run", counted},
                     {"seed", options.seed},
                     {"int8_engine", options.int8_engine},
                     {"link", "in-process relay (tools/link_shaper.h): bandwidth and delay"},
                     {"quick", options.quick},
                     {"menu", menu_json}};
  // The adaptive run's requests, for re-convergence by eye: [window, latency ms, option served,
  // probe, correct].
  json requests = json::array();
  for (const AdaptiveRecord& r : adaptive.records) {
    requests.push_back({r.window, std::round(r.latency_ms * 10) / 10, r.option, r.probe ? 1 : 0,
                        r.answered && r.correct ? 1 : 0});
  }
  report["adaptive_requests"] = requests;
  report["wall_seconds"] = std::chrono::duration<double>(SteadyClock::now() - started).count();
  report["note"] =
      "latency figures come from a shared 2-core machine (other builds and benchmarks ran "
      "beside it): noisy";
  if (own_work) std::filesystem::remove_all(work, ec);
  if (!options.json_out.empty()) {
    CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(options.json_out, report.dump(2) + "\n"));
  }
  if (!options.markdown_out.empty()) {
    CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(options.markdown_out, BenchAdaptiveMarkdown(report)));
  }
  return report;
}

std::string BenchAdaptiveMarkdown(const json& report) {
  auto fixed = [](const json& v, int digits, double scale = 1) {
    if (!v.is_number()) return std::string("-");
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.*f", digits, scale * v.get<double>());
    return std::string(buf);
  };
  auto row = [&](const std::string& name, const json& f, const std::string& note = "") {
    const std::string label = "`" + name + "`" + note;
    if (f.is_null()) return "| " + label + " | - | - | - | - |\n";
    return "| " + label + " | " + fixed(f.at("slo_hit_rate"), 1, 100) + " % | " +
           fixed(f.at("p99_ms"), 1) + " | " + fixed(f.at("accuracy"), 2, 100) + " % | " +
           fixed(f.at("bytes_per_request_mean"), 1) + " |\n";
  };
  const std::string header =
      "| configuration | SLO hit rate | p99 ms | accuracy | bytes/request |\n"
      "|---|---|---|---|---|\n";
  const json& setup = report.at("setup");
  const std::string best = report.value("best_static", json()).is_string()
                               ? report.at("best_static").get<std::string>()
                               : std::string();
  std::string md;
  md += "SLO " + fixed(setup.at("slo_ms"), 0) + " ms at p" +
        fixed(setup.at("slo_percentile"), 0, 100) + ", " + fixed(setup.at("rate_per_s"), 0) +
        " requests/s, deadline " + std::to_string(setup.at("deadline_ms").get<int>()) +
        " ms, trace `" + setup.at("trace").get<std::string>() + "` (" +
        setup.value("link_mode", std::string("relay")) + " link) over " +
        fixed(setup.at("seconds"), 0) + " s. Best static configuration: `" + best + "`.\n\n";
  md += "Overall:\n\n" + header;
  const json& policies = report.at("policies");
  md += row("adaptive", policies.at("adaptive"));
  md += row("oracle", policies.at("oracle"));
  for (const auto& [name, f] : policies.items()) {
    if (name != "adaptive" && name != "oracle") {
      md += row(name, f, name == best ? " (best static)" : "");
    }
  }
  const json& windows = report.at("windows");
  for (size_t i = 0; i < windows.size(); ++i) {
    const json& step = setup.at("steps").at(i);
    md += "\nWindow " + std::to_string(i) + " (" + fixed(step.at("from_s"), 0) + "-" +
          fixed(step.at("to_s"), 0) + " s: " + fixed(step.at("bandwidth_bps"), 0, 1e-3) +
          " kbit/s, RTT " + fixed(step.at("rtt_ms"), 0) + " ms); oracle picks `" +
          (report.at("oracle_picks").at(i).is_string()
               ? report.at("oracle_picks").at(i).get<std::string>()
               : std::string("-")) +
          "`; adaptive re-converged after " +
          (report.at("reconvergence_requests").at(i).is_number()
               ? std::to_string(report.at("reconvergence_requests").at(i).get<int64_t>())
               : std::string("-")) +
          " requests:\n\n" + header;
    md += row("adaptive", windows[i].at("adaptive"));
    md += row("oracle", windows[i].at("oracle"));
    if (!best.empty()) md += row(best, windows[i].at(best), " (best static)");
  }
  md += "\n| target | met |\n|---|---|\n";
  for (const auto& [key, value] : report.at("targets").items()) {
    md += "| `" + key + "` | " + (value.get<bool>() ? "yes" : "**no**") + " |\n";
  }
  return md;
}

void RegisterBenchAdaptiveCommand(CLI::App& bench) {
  auto options = std::make_shared<BenchAdaptiveOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "adaptive",
      "the offload policy on a link that changes: a cleave-cloud process, and per "
      "configuration a fresh cleave-edge behind an in-process relay whose uplink bandwidth "
      "and round trip follow --trace. Runs, one after the other on the same trace and the same "
      "request stream (test images in a --seed order, open loop at --rate, each with "
      "--deadline-ms): `adaptive` (edge.offload_policy = slo, edge.slo_ms = --slo-ms at "
      "--slo-percentile), then `static_<split>_<threshold>` for every option of the bundle's "
      "offload menu (static_local: the exits answer everything). A bundle with one split point "
      "is copied with `cleave split --add-split` (--add-split) first. Reports per trace window "
      "and overall: SLO hit rate (answered within --slo-ms as the client measured), p99, "
      "accuracy and bytes per request, for each configuration and the oracle (per window, the "
      "most accurate static configuration meeting the SLO percentile in that window, else the "
      "highest hit rate); the best static configuration (the most accurate whose overall hit "
      "rate meets the percentile, else the highest hit rate); the requests the adaptive policy "
      "takes per window to settle on the option it keeps for the rest of the window; and the "
      "issue's targets (adaptive >= best static's hit rate in every window, >= oracle's - 2 "
      "points overall, accuracy >= oracle's - 0.5 points). The first --warmup-seconds of "
      "requests are not counted. --quick (the tests'): trace 0:10mbit:5ms,3:200kbit:80ms "
      "over 6 s at 25/s, warm-up 0.5 s, statics: the calibrated option, local and every split "
      "point with its exits off. Prints JSON");
  cmd->add_option("--bundle", options->bundle, "vision model bundle directory")->required();
  cmd->add_option("--json", options->json_out, "write the JSON report here");
  cmd->add_option("--markdown", options->markdown_out, "also write the report as markdown");
  cmd->add_option("--work-dir", options->work_dir,
                  "keep the bundle copy and the daemons' logs here (default: a temporary "
                  "directory, removed afterwards)");
  cmd->add_option("--data", options->data,
                  std::string(kDataSpecHelp) + " (default: the one the bundle was trained on)");
  cmd->add_option("--link-mode", options->link_mode,
                  "how the link is made: kernel (the cloud in a network namespace behind a veth "
                  "pair, tc tbf shaping its bandwidth, the relay adding the delay; needs root), "
                  "relay (the relay shapes both), auto (kernel where allowed, else relay)")
      ->capture_default_str();
  cmd->add_option("--trace", options->trace,
                  "link trace SECONDS:BANDWIDTH:RTTms,... (bandwidth in bit, kbit, mbit, gbit; "
                  "the first step at 0)")
      ->capture_default_str();
  cmd->add_option("--seconds", options->seconds, "counted seconds of requests per configuration")
      ->capture_default_str();
  cmd->add_option("--slo-ms", options->slo_ms, "the latency objective (edge.slo_ms)")
      ->capture_default_str();
  cmd->add_option("--slo-percentile", options->slo_percentile,
                  "the objective's percentile (edge.slo_percentile), also the hit rate the "
                  "best static configuration and the oracle must reach")
      ->capture_default_str();
  cmd->add_option("--rate", options->rate, "requests per second, open loop")->capture_default_str();
  cmd->add_option("--deadline-ms", options->deadline_ms, "every request's deadline")
      ->capture_default_str();
  cmd->add_option("--warmup-seconds", options->warmup_seconds,
                  "requests sent before the trace starts, not counted")
      ->capture_default_str();
  cmd->add_option("--seed", options->seed, "order of the test images")->capture_default_str();
  cmd->add_option("--add-split", options->add_splits,
                  "cuts added to a copy of a bundle that has only its deployment split "
                  "(cleave split --add-split AFTER[:DTYPE])")
      ->capture_default_str();
  cmd->add_option("--statics", options->statics,
                  "run only these static options (local or SPLIT:THRESHOLD; default: every "
                  "option of the menu)")
      ->delimiter(',');
  cmd->add_option("--int8-engine", options->int8_engine, "the edge's edge.int8_engine")
      ->capture_default_str();
  cmd->add_flag("--quick", options->quick, "the short set-up of the tests (see above)");
  cmd->callback([options] {
    Result<json> report = RunBenchAdaptive(*options);
    if (!report.ok()) {
      std::fprintf(stderr, "cleave bench adaptive: %s\n", report.status().ToString().c_str());
      throw CLI::RuntimeError(1);
    }
    std::cout << report->dump(2) << std::endl;
  });
}

}  // namespace cleave::tools
