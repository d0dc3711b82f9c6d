#include "tools/bench_lm.h"

#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "common/file_util.h"
#include "common/plot.h"
#include "common/progress.h"
#include "common/text_corpus.h"
#include "common/transport.h"
#include "edge/lm_link.h"
#include "edge/lm_router.h"
#include "split/compute_runtime.h"
#include "split/lm_train.h"
#include "tools/bench_util.h"
#include "tools/daemon_launcher.h"

namespace cleave::tools {

using edge::LmRouter;
using edge::LmRouterOptions;
using edge::RouteMode;
using edge::RouterStats;
using edge::RouterStep;
using edge::ZmqLmLink;
namespace {

using nlohmann::json;
constexpr double kLn2 = 0.69314718055994530942;

struct ConfigRun {
  std::string name;
  RouteMode mode = RouteMode::kRouted;
  double threshold = 0;
};

// Feeds `windows` windows of `text` through a fresh router session each and scores the
// distribution used for every next byte.
Result<json> RunConfig(const ConfigRun& run, const split::SplitLm& model,
                       const std::string& model_name, ZmqLmLink* link, const std::string& text,
                       int64_t windows) {
  const split::LmSpec& spec = model->spec();
  const int64_t window = spec.context + 1;
  std::vector<double> step_ms;
  step_ms.reserve(static_cast<size_t>(windows * (window - 1)));
  double log2_sum = 0;
  RouterStats total;
  const int64_t bytes_before = link ? link->wire_bytes_sent() : 0;
  ProgressBar progress(run.name, static_cast<uint64_t>(windows));
  const auto started = std::chrono::steady_clock::now();
  for (int64_t w = 0; w < windows; ++w) {
    LmRouterOptions o;
    o.exit_threshold = run.threshold;
    o.mode = run.mode;
    o.model = model_name;
    o.session = "bench-" + std::to_string(::getpid()) + "-" + run.name + "-" + std::to_string(w);
    LmRouter router(model, o, run.mode == RouteMode::kEdgeOnly ? nullptr : link);
    const char* bytes = text.data() + w * window;
    for (int64_t t = 0; t + 1 < window; ++t) {
      const auto step_started = std::chrono::steady_clock::now();
      Result<RouterStep> step = router.Feed(static_cast<unsigned char>(bytes[t]));
      step_ms.push_back(MsSince(step_started));
      if (!step.ok()) return step.status().WithContext(run.name + ": token " + std::to_string(t));
      log2_sum += step->log_probs[static_cast<unsigned char>(bytes[t + 1])] / kLn2;
    }
    router.End();
    const RouterStats& s = router.stats();
    total.tokens += s.tokens;
    total.routed += s.routed;
    total.degraded += s.degraded;
    total.resyncs += s.resyncs;
    total.requests += s.requests;
    total.cloud_macs += s.cloud_macs;
    progress.Update(static_cast<uint64_t>(w + 1));
  }
  progress.Finish();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const double tokens = static_cast<double>(std::max<int64_t>(1, total.tokens));
  const int64_t bytes_sent = link ? link->wire_bytes_sent() - bytes_before : 0;
  return json{{"threshold", run.threshold},
              {"bits_per_char", -log2_sum / tokens},
              {"routed_fraction", static_cast<double>(total.routed) / tokens},
              {"bytes_per_token_mean", static_cast<double>(bytes_sent) / tokens},
              {"cloud_macs", total.cloud_macs},
              {"tokens_per_second", tokens / std::max(seconds, 1e-9)},
              {"p50_ms", Percentile(step_ms, 50)},
              {"p99_ms", Percentile(step_ms, 99)},
              {"tokens", total.tokens},
              {"requests", total.requests},
              {"resyncs", total.resyncs},
              {"degraded", total.degraded},
              {"seconds", seconds}};
}

// cloud_flops_share of every configuration, relative to cloud_only's MACs on the same text.
void AddFlopsShare(json& config, double cloud_only_macs) {
  config["cloud_flops_share"] =
      cloud_only_macs > 0 ? config["cloud_macs"].get<double>() / cloud_only_macs : 0.0;
}

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

void WritePlot(const json& report, const std::string& path) {
  PlotSpec plot;
  plot.title = "Hard-token routing on held-out fortunes: bits per character vs routed fraction";
  plot.xlabel = "routed fraction (tokens answered by the cloud)";
  plot.ylabel = "bits per character";
  PlotSeries sweep;
  sweep.label = "routed, threshold sweep";
  std::vector<std::pair<double, double>> points;
  for (const auto& p : report["sweep"])
    points.emplace_back(p["routed_fraction"], p["bits_per_char"]);
  std::sort(points.begin(), points.end());
  for (const auto& [x, y] : points) {
    sweep.x.push_back(x);
    sweep.y.push_back(y);
  }
  plot.series.push_back(sweep);
  for (const char* name : {"cloud_only", "edge_only", "routed"}) {
    PlotSeries point;
    point.label = std::string(name) == "routed" ? "routed (calibrated threshold)" : name;
    point.points_only = true;
    point.x.push_back(report["configs"][name]["routed_fraction"]);
    point.y.push_back(report["configs"][name]["bits_per_char"]);
    plot.series.push_back(point);
  }
  if (Status s = WritePlotPng(plot, path); !s.ok()) {
    std::fprintf(stderr, "warning: plot not written: %s\n", s.ToString().c_str());
  }
}

}  // namespace

Result<json> RunBenchLm(const BenchLmOptions& options) {
  if (options.bytes < 1) return Status::InvalidArgument("--bytes must be positive");
  split::SetComputeThreads(std::max(1, options.threads));
  CLEAVE_ASSIGN_OR_RETURN(split::LoadedLm lm, split::ReadLmBundle(options.bundle));
  const split::LmSpec& spec = lm.info.spec;
  CLEAVE_ASSIGN_OR_RETURN(
      TextCorpus corpus,
      LoadFortunes(options.corpus.empty() ? std::string(kFortunesDir) : options.corpus));
  const int64_t window = spec.context + 1;
  const int64_t usable =
      std::min<int64_t>(static_cast<int64_t>(corpus.held_out.size()), options.bytes);
  const int64_t windows = usable / window;
  if (windows < 1) {
    return Status::InvalidArgument("need at least " + std::to_string(window) +
                                   " bytes of held-out text (--bytes " +
                                   std::to_string(options.bytes) + ", held-out text " +
                                   std::to_string(corpus.held_out.size()) + " bytes)");
  }
  const std::string text = corpus.held_out.substr(0, static_cast<size_t>(windows * window));

  json report;
  report["bundle"] = options.bundle;
  report["spec"] = spec.ToJson();
  report["exit_threshold"] = lm.info.exit_threshold;
  report["held_out_bytes_scored"] = windows * (window - 1);
  report["windows"] = windows;
  report["threads"] = options.threads;
  report["naive_fp16_bytes_per_token"] = 2 * spec.d_model;
  {  // The same text in process, batched, fp32 code: the reference for the wire figures.
    CLEAVE_ASSIGN_OR_RETURN(split::TokenScores scores,
                            split::ScoreTokens(*lm.model, text, int64_t{1} << 40));
    const split::LmEval eval = split::Summarize(scores);
    const split::RoutedFigures at = split::Routed(scores, lm.info.exit_threshold);
    report["in_process"] = {{"exit_bpc", eval.exit_bpc},
                            {"final_bpc", eval.final_bpc},
                            {"routed_bpc", at.bpc},
                            {"routed_fraction", at.routed_fraction}};
  }

  // The cloud as its own process on tcp loopback, serving the same bundle.
  const std::filesystem::path work =
      std::filesystem::temp_directory_path() / ("cleave-bench-lm-" + std::to_string(::getpid()));
  CLEAVE_ASSIGN_OR_RETURN(
      LaunchedDaemon cloud,
      LaunchDaemon(
          SelfBinaryDir() / "cleave-cloud",
          {"--cloud.bundle", options.bundle, "--cloud.listen", "tcp://127.0.0.1:0",
           "--cloud.threads", std::to_string(std::max(1, options.threads)), "--log.level", "warn"},
          "cloud.ready_file", work, "cloud"));
  TransportContext context;
  CLEAVE_ASSIGN_OR_RETURN(
      std::unique_ptr<ZmqLmLink> link,
      ZmqLmLink::Connect(context, cloud.endpoint, options.timeout_ms, std::chrono::seconds(1)));
  const std::string model_name = std::filesystem::path(options.bundle).filename().string();

  // Warm-up (connection, first-use allocations on both sides), not measured.
  const std::string first_window = text.substr(0, static_cast<size_t>(window));
  for (RouteMode mode : {RouteMode::kCloudOnly, RouteMode::kRouted}) {
    CLEAVE_ASSIGN_OR_RETURN(
        json ignored, RunConfig({"warm-up", mode, lm.info.exit_threshold}, lm.model, model_name,
                                link.get(), first_window, 1));
    if (ignored["degraded"].get<int64_t>() > 0) {
      return Status::Unavailable("the cloud did not answer during warm-up (see " +
                                 cloud.log_path.string() + ")");
    }
  }

  json configs;
  const std::vector<ConfigRun> runs = {{"cloud_only", RouteMode::kCloudOnly, 0},
                                       {"edge_only", RouteMode::kEdgeOnly, 0},
                                       {"routed", RouteMode::kRouted, lm.info.exit_threshold}};
  for (const ConfigRun& run : runs) {
    CLEAVE_ASSIGN_OR_RETURN(configs[run.name],
                            RunConfig(run, lm.model, model_name, link.get(), text, windows));
  }
  json sweep = json::array();
  for (double threshold : options.sweep) {
    const ConfigRun run{"sweep-" + Fixed(threshold, 3), RouteMode::kRouted, threshold};
    CLEAVE_ASSIGN_OR_RETURN(json point,
                            RunConfig(run, lm.model, model_name, link.get(), text, windows));
    sweep.push_back(point);
  }
  (void)cloud.process->Stop(3000);

  const double cloud_only_macs = configs["cloud_only"]["cloud_macs"].get<double>();
  for (auto& [name, config] : configs.items()) AddFlopsShare(config, cloud_only_macs);
  for (auto& point : sweep) AddFlopsShare(point, cloud_only_macs);
  report["configs"] = configs;
  report["sweep"] = sweep;

  // Targets of issue 4, evaluated on what was just measured.
  const json& routed = configs["routed"];
  const double bpc_ratio =
      routed["bits_per_char"].get<double>() / configs["cloud_only"]["bits_per_char"].get<double>();
  const double bytes_ratio = routed["bytes_per_token_mean"].get<double>() /
                             report["naive_fp16_bytes_per_token"].get<double>();
  int64_t degraded = 0;
  for (const auto& [name, config] : configs.items()) degraded += config["degraded"].get<int64_t>();
  report["targets"] = {
      {"routed_bpc_ratio", bpc_ratio},
      {"routed_bpc_le_1.03x_cloud_only", bpc_ratio <= 1.03},
      {"routed_fraction_le_0.35", routed["routed_fraction"].get<double>() <= 0.35},
      {"routed_bytes_ratio_to_naive_fp16", bytes_ratio},
      {"routed_bytes_le_quarter_naive_fp16", bytes_ratio <= 0.25},
      {"routed_cloud_flops_share_le_0.40", routed["cloud_flops_share"].get<double>() <= 0.40},
      {"no_degraded_steps", degraded == 0}};

  if (!options.json_out.empty()) {
    CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(options.json_out, report.dump(2) + "\n"));
    std::string plot = options.plot_out;
    if (plot.empty()) {
      plot = std::filesystem::path(options.json_out).replace_extension(".png").string();
    }
    WritePlot(report, plot);
  }
  if (!options.markdown_out.empty()) {
    CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(options.markdown_out, BenchLmMarkdown(report)));
  }
  std::error_code ec;
  std::filesystem::remove_all(work, ec);
  return report;
}

std::string BenchLmMarkdown(const json& report) {
  std::string md =
      "| config | threshold | bits/char | routed fraction | bytes/token | cloud FLOPs share | "
      "tokens/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|\n";
  const auto row = [&](const std::string& name, const json& c) {
    md += "| " + name + " | " + Fixed(c.at("threshold"), 3) + " | " +
          Fixed(c.at("bits_per_char"), 3) + " | " + Fixed(c.at("routed_fraction"), 3) + " | " +
          Fixed(c.at("bytes_per_token_mean"), 1) + " | " + Fixed(c.at("cloud_flops_share"), 3) +
          " | " + Fixed(c.at("tokens_per_second"), 0) + " | " + Fixed(c.at("p50_ms"), 3) + " | " +
          Fixed(c.at("p99_ms"), 3) + " |\n";
  };
  for (const char* name : {"cloud_only", "edge_only", "routed"}) {
    row(std::string("`") + name + "`", report.at("configs").at(name));
  }
  for (const auto& point : report.at("sweep")) row("sweep", point);
  md += "\n| figure | value |\n|---|---|\n";
  md += "| `naive_fp16_bytes_per_token` | " +
        std::to_string(report.at("naive_fp16_bytes_per_token").get<int64_t>()) + " |\n";
  md += "| held-out bytes scored | " +
        std::to_string(report.at("held_out_bytes_scored").get<int64_t>()) + " |\n";
  for (const char* key : {"exit_bpc", "final_bpc", "routed_bpc", "routed_fraction"}) {
    md += std::string("| in process, `") + key + "` | " +
          Fixed(report.at("in_process").at(key), 3) + " |\n";
  }
  md += "\n| target (issue 4) | met |\n|---|---|\n";
  for (const auto& [key, value] : report.at("targets").items()) {
    md += "| `" + key + "` | " +
          (value.is_boolean() ? (value.get<bool>() ? "yes" : "**no**") : Fixed(value, 3)) + " |\n";
  }
  return md;
}

void RegisterBenchLmCommand(CLI::App& bench) {
  auto options = std::make_shared<BenchLmOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "lm",
      "measure hard-token routing over the real wire (cleave-cloud as its own process on tcp "
      "loopback): cloud_only, edge_only, routed and a threshold sweep on held-out fortunes; "
      "prints JSON");
  cmd->add_option("--bundle", options->bundle, "lm-split bundle directory (cleave train-lm)")
      ->required();
  cmd->add_option("--json", options->json_out, "write the JSON report here");
  cmd->add_option("--plot", options->plot_out,
                  "PNG plot of bits per character vs routed fraction (default: the --json path "
                  "with .png)");
  cmd->add_option("--markdown", options->markdown_out,
                  "also write the report as markdown tables (docs/benchmarks.md)");
  cmd->add_option("--corpus", options->corpus,
                  "fortunes directory (default: the Debian package's)");
  cmd->add_option("--bytes", options->bytes, "held-out bytes scored per configuration")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--threads", options->threads, "libtorch intra-op threads (edge and cloud)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--timeout-ms", options->timeout_ms, "per cloud request")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--sweep", options->sweep, "exit thresholds of the sweep (comma separated)")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->callback([options] {
    Result<json> report = RunBenchLm(*options);
    if (!report.ok()) {
      std::fprintf(stderr, "cleave bench lm: %s\n", report.status().ToString().c_str());
      throw CLI::RuntimeError(1);
    }
    std::cout << report->dump(2) << std::endl;
  });
}

}  // namespace cleave::tools
