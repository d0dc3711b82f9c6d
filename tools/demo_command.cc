#include "tools/demo_command.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <numeric>

#include <nlohmann/json.hpp>

#include "common/datasets.h"
#include "common/file_util.h"
#include "common/plot.h"
#include "common/progress.h"
#include "common/transport.h"
#include "edge/edge_client.h"
#include "split/bundle.h"
#include "split/dataset.h"
#include "split/split_runtime.h"
#include "split/vision_bundle.h"
#include "tools/bench_util.h"
#include "tools/daemon_launcher.h"
#include "tools/data_option.h"

namespace cleave::tools {

using edge::ClassifyOutcome;
using edge::EdgeClient;
namespace {

using nlohmann::json;

struct Summary {
  size_t requests = 0, answered = 0, correct = 0, at_edge = 0, cloud = 0, degraded = 0, errors = 0;
  double bytes_mean = 0, p50_ms = 0, p99_ms = 0;
  json ToJson() const {
    const double n = static_cast<double>(std::max<size_t>(1, requests));
    return {{"requests", requests},
            {"answered", answered},
            {"accuracy", correct / n},
            {"edge_fraction", at_edge / n},
            {"cloud_fraction", cloud / n},
            {"degraded", degraded},
            {"errors", errors},
            {"bytes_per_request_mean", bytes_mean},
            {"p50_ms", p50_ms},
            {"p99_ms", p99_ms}};
  }
};

// The test images as raw 8-bit requests carry them: interleaved (HWC), at the bundle's input.
struct DemoImages {
  int channels = 1, height = 0, width = 0;
  std::vector<std::string> pixels;  // one per image
  std::vector<int64_t> labels;
  size_t size() const { return labels.size(); }
};

DemoImages ToDemoImages(const split::LabeledImages& set) {
  DemoImages out;
  const torch::Tensor bytes = set.images.mul(255.0)
                                  .round()
                                  .clamp(0, 255)
                                  .to(torch::kUInt8)
                                  .permute({0, 2, 3, 1})
                                  .contiguous();
  out.channels = static_cast<int>(bytes.size(3));
  out.height = static_cast<int>(bytes.size(1));
  out.width = static_cast<int>(bytes.size(2));
  const size_t per_image = static_cast<size_t>(out.channels) * out.height * out.width;
  const char* base = reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>());
  for (int64_t i = 0; i < bytes.size(0); ++i)
    out.pixels.emplace_back(base + i * per_image, per_image);
  out.labels.assign(set.labels.data_ptr<int64_t>(), set.labels.data_ptr<int64_t>() + set.size());
  return out;
}

Summary Summarize(const std::vector<ClassifyOutcome>& outcomes, const DemoImages& data) {
  Summary s;
  std::vector<double> latency;
  double bytes = 0;
  for (size_t i = 0; i < outcomes.size(); ++i) {
    const ClassifyOutcome& o = outcomes[i];
    ++s.requests;
    if (!o.answered) continue;
    ++s.answered;
    latency.push_back(o.latency_ms);
    bytes += static_cast<double>(o.reply.wire_bytes);
    switch (o.reply.source) {
      case edge_api::AnswerSource::kEdgeExit: ++s.at_edge; break;
      case edge_api::AnswerSource::kCloud: ++s.cloud; break;
      case edge_api::AnswerSource::kDegraded: ++s.degraded; break;
      default: ++s.errors; break;
    }
    s.correct += o.reply.predicted_class == data.labels[i];
  }
  s.bytes_mean = bytes / static_cast<double>(std::max<size_t>(1, s.requests));
  s.p50_ms = Percentile(latency, 50);
  s.p99_ms = Percentile(latency, 99);
  return s;
}

std::vector<edge_api::ClassifyRequest> MakeRequests(const DemoImages& data, size_t n,
                                                    float threshold, uint64_t first_id) {
  std::vector<edge_api::ClassifyRequest> requests(n);
  for (size_t i = 0; i < n; ++i) {
    auto& r = requests[i];
    r.request_id = first_id + i;
    r.exit_threshold = threshold;
    r.kind = data.channels == 3 ? edge_api::ImageKind::kRgb8 : edge_api::ImageKind::kGray8;
    r.width = static_cast<uint32_t>(data.width);
    r.height = static_cast<uint32_t>(data.height);
    r.pixels = data.pixels[i];
  }
  return requests;
}

}  // namespace

// The federated part of the demo: rounds between a real cleave-aggregator and `fl_edges`
// cleave-edge daemons; returns the aggregator's summary.
Result<json> RunFederatedDemo(const DemoOptions& options, const std::string& data_spec,
                              const std::filesystem::path& out) {
  const std::filesystem::path bin = SelfBinaryDir();
  const std::filesystem::path dir = out / "federated";
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);  // a fresh run, not a resume of an older demo
  std::filesystem::create_directories(dir, ec);
  const std::string summary_file = (dir / "summary.json").string();
  std::fprintf(stderr, "\nfederated rounds: cleave-aggregator + %d cleave-edge daemons...\n",
               options.fl_edges);
  CLEAVE_ASSIGN_OR_RETURN(LaunchedDaemon aggregator,
                          LaunchDaemon(bin / "cleave-aggregator",
                                       {"--aggregator.bundle",
                                        options.bundle,
                                        "--aggregator.listen",
                                        "tcp://127.0.0.1:0",
                                        "--aggregator.rounds",
                                        std::to_string(options.fl_rounds),
                                        "--aggregator.wait_for_clients",
                                        std::to_string(options.fl_edges),
                                        "--aggregator.checkpoint",
                                        (dir / "aggregator.ckpt").string(),
                                        "--aggregator.summary_file",
                                        summary_file,
                                        "--aggregator.publish_dir",
                                        (dir / "bundles").string(),
                                        "--aggregator.eval_data",
                                        data_spec,
                                        "--aggregator.eval_limit",
                                        std::to_string(options.fl_eval_limit),
                                        "--aggregator.client_timeout_ms",
                                        "120000",
                                        "--round.fraction",
                                        "1.0",
                                        "--round.min_clients",
                                        std::to_string(options.fl_edges),
                                        "--round.quorum",
                                        "2",
                                        "--round.deadline_seconds",
                                        "300",
                                        "--round.trainable",
                                        options.fl_trainable,
                                        "--fit.local_epochs",
                                        "1",
                                        "--fit.batch_size",
                                        "64",
                                        "--fit.lr",
                                        std::to_string(options.fl_lr)},
                                       "aggregator.ready_file", dir, "aggregator"));
  std::vector<LaunchedDaemon> edges;
  for (int i = 0; i < options.fl_edges; ++i) {
    CLEAVE_ASSIGN_OR_RETURN(LaunchedDaemon edge,
                            LaunchDaemon(bin / "cleave-edge",
                                         {"serve",
                                          "--edge.bundle",
                                          options.bundle,
                                          "--edge.listen",
                                          "tcp://127.0.0.1:0",
                                          "--edge.cloud",
                                          "tcp://127.0.0.1:1",
                                          "--edge.threads",
                                          "1",
                                          "--edge.aggregator",
                                          aggregator.endpoint,
                                          "--edge.client_id",
                                          "demo-edge-" + std::to_string(i),
                                          "--edge.fl_data",
                                          data_spec,
                                          "--edge.fl_partition",
                                          "dirichlet:0.5",
                                          "--edge.fl_partitions",
                                          std::to_string(options.fl_edges),
                                          "--edge.fl_partition_index",
                                          std::to_string(i),
                                          "--edge.fl_train_limit",
                                          std::to_string(options.fl_train_limit)},
                                         "edge.ready_file", dir, "edge" + std::to_string(i)));
    edges.push_back(std::move(edge));
  }
  CLEAVE_ASSIGN_OR_RETURN(int code, aggregator.process->Wait(30 * 60 * 1000));
  for (auto& e : edges) (void)e.process->Stop(5000);
  if (code != 0) {
    return Status::Internal("cleave-aggregator exited with " + std::to_string(code) + "; see " +
                            aggregator.log_path.string());
  }
  CLEAVE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(summary_file));
  json summary = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (summary.is_discarded()) return Status::DataLoss(summary_file + " is not JSON");
  return summary;
}

Result<PlotSpec> AccuracyVsBytesPlot(const json& report) {
  const json* sweep = report.contains("sweep") ? &report["sweep"] : nullptr;
  const json* calibrated = report.contains("calibrated_on_sweep_images")
                               ? &report["calibrated_on_sweep_images"]
                               : nullptr;
  const auto has_point = [](const json& p) {
    return p.is_object() && p.contains("bytes_per_request_mean") &&
           p["bytes_per_request_mean"].is_number() && p.contains("accuracy") &&
           p["accuracy"].is_number();
  };
  if (sweep == nullptr || !sweep->is_array() || sweep->empty() || calibrated == nullptr ||
      !has_point(*calibrated) || !std::all_of(sweep->begin(), sweep->end(), has_point)) {
    return Status::InvalidArgument(
        "the report needs a non-empty 'sweep' and 'calibrated_on_sweep_images', each point with "
        "numeric 'bytes_per_request_mean' and 'accuracy'");
  }
  const std::string images = std::to_string(report.value("sweep_images", size_t{0}));
  PlotSpec plot;
  plot.title = "cleave demo: accuracy vs bytes per request (exit threshold sweep, " + images +
               " test images)";
  plot.xlabel = "mean bytes on the wire per request";
  plot.ylabel = "test accuracy";
  PlotSeries series;
  series.label = "exit threshold 0 .. 1";
  for (const json& p : *sweep) {
    series.x.push_back(p["bytes_per_request_mean"].get<double>());
    series.y.push_back(p["accuracy"].get<double>());
  }
  plot.series.push_back(series);
  PlotSeries point;
  point.label = "calibrated threshold (same images)";
  point.points_only = true;
  point.x.push_back((*calibrated)["bytes_per_request_mean"].get<double>());
  point.y.push_back((*calibrated)["accuracy"].get<double>());
  plot.series.push_back(point);
  return plot;
}

Result<json> RunDemo(const DemoOptions& options) {
  // The bundle's own dataset unless --data names another, converted to its input.
  CLEAVE_ASSIGN_OR_RETURN(const Bundle bundle, Bundle::Open(options.bundle));
  CLEAVE_ASSIGN_OR_RETURN(const split::InputSpec described_input, split::ReadBundleInput(bundle));
  const std::string data_spec = !options.data.empty()           ? options.data
                                : !described_input.data.empty() ? described_input.data
                                                                : std::string("fashion-mnist");
  CLEAVE_ASSIGN_OR_RETURN(
      const split::LabeledImages test_set,
      split::LoadSplitFor(data_spec, DatasetSplit::kTest, described_input, options.limit));
  const DemoImages test = ToDemoImages(test_set);
  size_t n = test.size();
  if (options.limit > 0) n = std::min<size_t>(n, options.limit);
  const std::filesystem::path out = options.out_dir;
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  const std::filesystem::path bin = SelfBinaryDir();

  std::fprintf(stderr, "starting cleave-cloud and cleave-edge on loopback...\n");
  CLEAVE_ASSIGN_OR_RETURN(LaunchedDaemon cloud,
                          LaunchDaemon(bin / "cleave-cloud",
                                       {"--cloud.bundle", options.bundle, "--cloud.listen",
                                        "tcp://127.0.0.1:0", "--cloud.threads", "1"},
                                       "cloud.ready_file", out, "cloud"));
  CLEAVE_ASSIGN_OR_RETURN(
      LaunchedDaemon edge,
      LaunchDaemon(bin / "cleave-edge",
                   {"serve", "--edge.bundle", options.bundle, "--edge.listen", "tcp://127.0.0.1:0",
                    "--edge.cloud", cloud.endpoint, "--edge.deadline_ms",
                    std::to_string(options.deadline_ms), "--edge.threads", "1"},
                   "edge.ready_file", out, "edge"));
  TransportContext context;
  CLEAVE_ASSIGN_OR_RETURN(auto client, EdgeClient::Connect(context, edge.endpoint));

  // The main run: the whole test set through the edge daemon with its calibrated threshold.
  ProgressBar progress("test set through cleave-edge", n);
  CLEAVE_ASSIGN_OR_RETURN(
      std::vector<ClassifyOutcome> outcomes,
      client->Run(MakeRequests(test, n, -1.0f, 1), options.window, options.deadline_ms * 4,
                  [&](size_t done) { progress.Update(done); }));
  progress.Finish();
  Summary main = Summarize(outcomes, test);

  // Threshold sweep (per-request override of the exit threshold) on the first sweep_n
  // images; the calibrated threshold's point of the plot comes from the main run's answers
  // for those same images, so it is comparable with the sweep's curve.
  json sweep = json::array();
  const size_t sweep_n = std::min<size_t>(n, options.sweep_limit);
  const Summary calibrated_on_sweep =
      Summarize(std::vector<ClassifyOutcome>(outcomes.begin(), outcomes.begin() + sweep_n), test);
  uint64_t next_id = n + 1;
  for (float t : {0.0f, 0.6f, 0.8f, 0.9f, 0.95f, 0.99f, 1.0f}) {
    CLEAVE_ASSIGN_OR_RETURN(std::vector<ClassifyOutcome> swept,
                            client->Run(MakeRequests(test, sweep_n, t, next_id), options.window,
                                        options.deadline_ms * 4));
    next_id += sweep_n;
    json point = Summarize(swept, test).ToJson();
    point["threshold"] = t;
    sweep.push_back(point);
    std::fprintf(stderr, "  threshold %.2f: accuracy %.4f, %.1f bytes/request, %.1f%% at edge\n", t,
                 point["accuracy"].get<double>(), point["bytes_per_request_mean"].get<double>(),
                 100 * point["edge_fraction"].get<double>());
  }
  client.reset();
  (void)edge.process->Stop(5000);
  (void)cloud.process->Stop(5000);

  json report = {
      {"bundle", options.bundle}, {"test_images", n},
      {"main", main.ToJson()},    {"sweep", sweep},
      {"sweep_images", sweep_n},  {"calibrated_on_sweep_images", calibrated_on_sweep.ToJson()}};
  if (options.fl_rounds > 0) {
    CLEAVE_ASSIGN_OR_RETURN(report["federated"], RunFederatedDemo(options, data_spec, out));
  }
  CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(out / "report.json", report.dump(2) + "\n"));
  Result<PlotSpec> plot = AccuracyVsBytesPlot(report);
  Status plotted = plot.ok() ? WritePlotPng(*plot, out / "accuracy_vs_bytes.png") : plot.status();
  if (!plotted.ok()) {
    std::fprintf(stderr, "warning: plot not written: %s\n", plotted.ToString().c_str());
  }

  std::printf("\ncleave demo — %zu Fashion-MNIST test images through cleave-edge -> cleave-cloud\n",
              n);
  std::printf("  %-28s %10.2f %%\n", "accuracy", 100 * report["main"]["accuracy"].get<double>());
  std::printf("  %-28s %10.2f %%\n", "answered at the edge",
              100 * report["main"]["edge_fraction"].get<double>());
  std::printf("  %-28s %10.1f B\n", "mean bytes on the wire", main.bytes_mean);
  std::printf("  %-28s %10.2f ms\n", "p50 latency", main.p50_ms);
  std::printf("  %-28s %10.2f ms\n", "p99 latency", main.p99_ms);
  std::printf("  %-28s %10zu\n", "degraded answers", main.degraded);
  std::printf("  %-28s %10zu\n", "unanswered", main.requests - main.answered);
  if (report.contains("federated")) {
    const json& fl = report["federated"];
    std::printf("\nfederated: %d rounds, %zu edges, Dirichlet(0.5) shares, trained: %s\n",
                fl.value("rounds_completed", 0), fl.value("clients", size_t{0}),
                options.fl_trainable.c_str());
    if (fl.contains("initial_accuracy")) {
      std::printf("  %-28s %10.2f %%\n", "test accuracy before",
                  100 * fl["initial_accuracy"].get<double>());
    }
    for (const auto& r : fl["rounds"]) {
      if (!r.contains("accuracy")) continue;
      std::printf("  %-28s %10.2f %%  (%d/%d updates)\n",
                  ("after round " + std::to_string(r["round"].get<int>())).c_str(),
                  100 * r["accuracy"].get<double>(), r["succeeded"].get<int>(),
                  r["sampled"].get<int>());
    }
  }
  std::printf("report: %s\nplot:   %s\n", (out / "report.json").c_str(),
              (out / "accuracy_vs_bytes.png").c_str());
  return report;
}

void RegisterDemoCommand(CLI::App& app) {
  auto options = std::make_shared<DemoOptions>();
  CLI::App* cmd = app.add_subcommand(
      "demo",
      "the main job: start cleave-cloud and cleave-edge on loopback, push the Fashion-MNIST "
      "test set through the edge daemon, print a table and write report.json + a PNG plot");
  cmd->add_option("--bundle", options->bundle, "model bundle directory")->required();
  cmd->add_option("--out", options->out_dir, "output directory (report.json, plot, logs)");
  cmd->add_option("--data", options->data,
                  std::string(kDataSpecHelp) + " (default: the one the bundle was trained on)");
  cmd->add_option("--limit", options->limit, "use only the first N test images (0 = all)");
  cmd->add_option("--sweep-limit", options->sweep_limit, "images per threshold of the sweep");
  cmd->add_option("--window", options->window, "requests in flight at once");
  cmd->add_option("--deadline-ms", options->deadline_ms, "per-request deadline");
  cmd->add_option("--fl-rounds", options->fl_rounds,
                  "federated rounds with cleave-aggregator and the edges (0 = skip)")
      ->capture_default_str();
  cmd->add_option("--fl-edges", options->fl_edges, "cleave-edge daemons taking part")
      ->capture_default_str();
  cmd->add_option("--fl-train-limit", options->fl_train_limit,
                  "training images shared among the edges")
      ->capture_default_str();
  cmd->add_option("--fl-lr", options->fl_lr, "client learning rate of the federated rounds")
      ->capture_default_str();
  cmd->add_option("--fl-trainable", options->fl_trainable,
                  "what the rounds train: head_and_exits or all")
      ->capture_default_str();
  cmd->add_option("--fl-eval-limit", options->fl_eval_limit,
                  "test images the aggregator evaluates on (0 = all)");
  cmd->callback([options] {
    Result<json> report = RunDemo(*options);
    if (!report.ok()) {
      std::fprintf(stderr, "cleave demo: %s\n", report.status().ToString().c_str());
      throw CLI::RuntimeError(1);
    }
  });
}

}  // namespace cleave::tools
