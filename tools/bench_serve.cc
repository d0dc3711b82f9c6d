#include "tools/bench_serve.h"

#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "common/datasets.h"
#include "common/feature_coding.h"
#include "common/file_util.h"
#include "common/inference_wire.h"
#include "common/process_stats.h"
#include "common/progress.h"
#include "common/tensor_codec.h"
#include "common/transport.h"
#include "split/bundle.h"
#include "split/compute_runtime.h"
#include "split/dataset.h"
#include "split/split_runtime.h"
#include "split/tail_plan.h"
#include "tools/bench_util.h"
#include "tools/daemon_launcher.h"
#include "tools/data_option.h"
#include "tools/serve_load_generator.h"

namespace cleave::tools {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

json OutcomesJson(const Outcomes& o) {
  const double ok = static_cast<double>(std::max<uint64_t>(1, o.ok));
  return {{"rps", o.seconds > 0 ? static_cast<double>(o.ok) / o.seconds : 0.0},
          {"p50_ms", Percentile(o.ok_latency_ms, 50)},
          {"p99_ms", Percentile(o.ok_latency_ms, 99)},
          {"server_p99_ms", Percentile(o.ok_server_ms, 99)},
          {"mean_batch", o.batch_rows / ok},
          {"server_queue_ms_mean", o.queue_us / ok / 1000.0},
          {"server_compute_ms_mean", o.compute_us / ok / 1000.0},
          {"ok", o.ok},
          {"overloaded", o.overloaded},
          {"deadline_exceeded", o.deadline},
          {"error", o.error}};
}

// Feature requests for `n` test images: what the bundle's int8 head would send at its
// deployment split point, in the wire version of options.wire_version (2, what edges send by
// default: coded features and a layout tag; 1: the model name and a self-describing tensor).
Result<std::vector<wire::InferRequest>> MakeRequestPool(const Bundle& bundle,
                                                        const BenchServeOptions& options) {
  if (options.pool <= 0) return Status::InvalidArgument("bench serve: --pool must be >= 1");
  if (options.wire_version != wire::kProtocolVersion &&
      options.wire_version != wire::kCompactProtocolVersion) {
    return Status::InvalidArgument("bench serve: --wire-version must be 1 or 2");
  }
  split::EdgeModel::Options edge_options;
  edge_options.int8 = true;
  CLEAVE_ASSIGN_OR_RETURN(auto edge, split::EdgeModel::Load(bundle, edge_options));
  const split::InputSpec& input = edge->info().input;
  const std::string data_spec = !options.data.empty() ? options.data
                                : !input.data.empty() ? input.data
                                                      : std::string("fashion-mnist");
  CLEAVE_ASSIGN_OR_RETURN(const split::LabeledImages test,
                          split::LoadSplitFor(data_spec, DatasetSplit::kTest, input, options.pool));
  const int64_t n = test.size();
  CLEAVE_ASSIGN_OR_RETURN(split::EdgeHeadOutput head, edge->Run(test.images));
  torch::Tensor features = head.features.contiguous().to(torch::kFloat32);
  std::vector<uint32_t> row_shape = {1};
  for (uint32_t d : edge->feature_shape()) row_shape.push_back(d);
  const int64_t row_elems = features.numel() / n;
  const wire::FeatureLayout layout = edge->layout(0);
  std::vector<wire::InferRequest> pool;
  for (int64_t i = 0; i < n; ++i) {
    const float* row = features.data_ptr<float>() + i * row_elems;
    wire::InferRequest request;
    if (options.wire_version == wire::kCompactProtocolVersion) {
      // As edge::EdgeEngine codes an offloaded input.
      request.protocol_version = wire::kCompactProtocolVersion;
      request.split = 0;
      request.layout_tag = edge->layout_tag(0);
      CLEAVE_ASSIGN_OR_RETURN(auto coded, wire::CodeFeaturesShortest(layout, row));
      request.coded = std::move(coded.first);
      request.input =
          coded.second ? wire::InputKind::kPackedFeatures : wire::InputKind::kCodedFeatures;
    } else {
      request.model = edge->model_name();
      request.input = wire::InputKind::kFeatures;
      CLEAVE_ASSIGN_OR_RETURN(request.features,
                              wire::EncodeTensor(row, row_shape, edge->wire_dtype(),
                                                 /*channel_axis=*/1, &edge->wire_quant()));
    }
    pool.push_back(std::move(request));
  }
  return pool;
}

// Rows per second of RunTail at `batch`, timed for about `seconds` after a warm-up; the
// inputs are the pool's features decoded exactly as the daemon decodes them.
Result<double> CeilingRps(split::CloudModel& model, const std::vector<wire::InferRequest>& pool,
                          int batch, double seconds) {
  const wire::FeatureLayout layout = model.layout(0);
  std::vector<float> rows;
  for (int i = 0; i < batch; ++i) {
    CLEAVE_ASSIGN_OR_RETURN(
        std::vector<float> decoded,
        wire::DecodeRequestFeatures(pool[static_cast<size_t>(i) % pool.size()], layout));
    rows.insert(rows.end(), decoded.begin(), decoded.end());
  }
  std::vector<int64_t> shape = {batch};
  for (uint32_t d : model.feature_shape()) shape.push_back(d);
  torch::Tensor input = torch::from_blob(rows.data(), shape, torch::kFloat32).clone();
  for (int i = 0; i < 5; ++i) CLEAVE_RETURN_IF_ERROR(model.RunTail(input).status());
  const auto start = Clock::now();
  int64_t done = 0;
  while (SecondsBetween(start, Clock::now()) < seconds) {
    CLEAVE_RETURN_IF_ERROR(model.RunTail(input).status());
    done += batch;
  }
  return static_cast<double>(done) / SecondsBetween(start, Clock::now());
}

struct Daemon {
  LaunchedDaemon launched;
  pid_t pid = 0;
};

Result<Daemon> StartCloud(const BenchServeOptions& options, const std::filesystem::path& work,
                          int max_batch, int64_t delay_us, int64_t queue_wait_us,
                          const std::string& name) {
  CLEAVE_ASSIGN_OR_RETURN(LaunchedDaemon launched, LaunchDaemon(SelfBinaryDir() / "cleave-cloud",
                                                                {"--cloud.bundle",
                                                                 options.bundle,
                                                                 "--cloud.listen",
                                                                 "tcp://127.0.0.1:0",
                                                                 "--cloud.threads",
                                                                 std::to_string(options.threads),
                                                                 "--cloud.workers",
                                                                 "1",
                                                                 "--cloud.max_batch",
                                                                 std::to_string(max_batch),
                                                                 "--cloud.max_queue_delay_us",
                                                                 std::to_string(delay_us),
                                                                 "--cloud.max_queue",
                                                                 std::to_string(options.max_queue),
                                                                 "--cloud.max_queue_wait_us",
                                                                 std::to_string(queue_wait_us),
                                                                 "--cloud.precision",
                                                                 options.tail_precision,
                                                                 "--log.level",
                                                                 "warn"},
                                                                "cloud.ready_file", work, name));
  Daemon d;
  d.pid = launched.process->pid();
  d.launched = std::move(launched);
  return d;
}

// Closed-loop points at every client count against the daemon at `endpoint`.
Result<json> Sweep(TransportContext& context, const std::string& endpoint,
                   const std::vector<wire::InferRequest>& pool, const BenchServeOptions& options,
                   const std::string& label, double* best_rps) {
  const int most = *std::max_element(options.clients.begin(), options.clients.end());
  CLEAVE_ASSIGN_OR_RETURN(auto gen, LoadGenerator::Connect(context, endpoint, most, pool));
  json points = json::array();
  *best_rps = 0;
  for (int clients : options.clients) {
    CLEAVE_ASSIGN_OR_RETURN(Outcomes o,
                            gen->ClosedLoop(clients, 0.5, options.seconds, options.deadline_ms,
                                            options.overloaded_backoff_ms));
    json point = OutcomesJson(o);
    point["clients"] = clients;
    std::fprintf(stderr,
                 "%s: %3d clients: %8.0f req/s  p50 %.2f ms  p99 %.2f ms  batch %.1f  (daemon: "
                 "queue %.2f ms, compute %.2f ms)\n",
                 label.c_str(), clients, point["rps"].get<double>(), point["p50_ms"].get<double>(),
                 point["p99_ms"].get<double>(), point["mean_batch"].get<double>(),
                 point["server_queue_ms_mean"].get<double>(),
                 point["server_compute_ms_mean"].get<double>());
    *best_rps = std::max(*best_rps, point["rps"].get<double>());
    points.push_back(point);
  }
  return points;
}

}  // namespace

Result<json> RunBenchServe(const BenchServeOptions& options) {
  if (options.clients.empty()) return Status::InvalidArgument("bench serve: --clients is empty");
  for (int c : options.clients) {
    if (c < 1 || c > 4096) {
      return Status::InvalidArgument("bench serve: client counts must be in [1, 4096], got " +
                                     std::to_string(c));
    }
  }
  if (options.max_batch < 2) {
    return Status::InvalidArgument(
        "bench serve: --max-batch must be >= 2 (1 is the unbatched "
        "baseline the benchmark runs itself)");
  }
  if (options.seconds <= 0 || options.overload_seconds <= 0 || options.overload_factor <= 0) {
    return Status::InvalidArgument("bench serve: durations and the overload factor must be > 0");
  }
  CLEAVE_ASSIGN_OR_RETURN(split::TailPrecision precision,
                          split::ParseTailPrecision(options.tail_precision));
  split::SetComputeThreads(std::max(1, options.threads));
  torch::NoGradGuard no_grad;
  CLEAVE_ASSIGN_OR_RETURN(Bundle bundle, Bundle::Open(options.bundle));
  CLEAVE_ASSIGN_OR_RETURN(std::vector<wire::InferRequest> pool, MakeRequestPool(bundle, options));

  json report;
  report["bundle"] = options.bundle;
  report["threads"] = options.threads;
  report["tail_precision"] = split::TailPrecisionName(precision);
  report["max_batch"] = options.max_batch;
  report["max_queue_delay_us"] = options.max_queue_delay_us;
  report["max_queue"] = options.max_queue;
  report["max_queue_wait_us"] = options.max_queue_wait_us;
  report["throughput_queue_wait_us"] = options.throughput_queue_wait_us;
  report["overloaded_backoff_ms"] = options.overloaded_backoff_ms;
  report["wire_version"] = options.wire_version;
  report["request_bytes"] = WireBytes(wire::EncodeInferRequest(pool[0]).size());

  // (b) The ceiling: the tail alone, batched, in this process.
  {
    std::fprintf(stderr, "compute ceiling: tail in process at batch 1 and %d...\n",
                 options.max_batch);
    split::CloudModel::Options model_options;
    model_options.precision = precision;
    CLEAVE_ASSIGN_OR_RETURN(auto model, split::CloudModel::Load(bundle, model_options));
    CLEAVE_ASSIGN_OR_RETURN(double batch1, CeilingRps(*model, pool, 1, 2.0));
    CLEAVE_ASSIGN_OR_RETURN(double ceiling, CeilingRps(*model, pool, options.max_batch, 3.0));
    report["compute_batch1_rps"] = batch1;
    report["compute_ceiling_rps"] = ceiling;
    std::fprintf(stderr, "compute: batch 1 %.0f rows/s, batch %d %.0f rows/s\n", batch1,
                 options.max_batch, ceiling);
  }

  const std::filesystem::path work =
      std::filesystem::temp_directory_path() / ("cleave-bench-serve-" + std::to_string(::getpid()));
  TransportContext context;

  // (a) Unbatched, then batched, at increasing concurrency: what each configuration can
  // serve, with admission by queue length (max_queue) only.
  double unbatched_rps = 0, batched_rps = 0;
  {
    CLEAVE_ASSIGN_OR_RETURN(
        Daemon cloud,
        StartCloud(options, work, 1, 0, options.throughput_queue_wait_us, "cloud-unbatched"));
    CLEAVE_ASSIGN_OR_RETURN(report["unbatched"], Sweep(context, cloud.launched.endpoint, pool,
                                                       options, "unbatched", &unbatched_rps));
    (void)cloud.launched.process->Stop(5000);
  }
  {
    CLEAVE_ASSIGN_OR_RETURN(Daemon cloud,
                            StartCloud(options, work, options.max_batch, options.max_queue_delay_us,
                                       options.throughput_queue_wait_us, "cloud-batched"));
    CLEAVE_ASSIGN_OR_RETURN(report["batched"], Sweep(context, cloud.launched.endpoint, pool,
                                                     options, "batched", &batched_rps));
    (void)cloud.launched.process->Stop(5000);
  }
  report["unbatched_rps"] = unbatched_rps;
  report["batched_rps"] = batched_rps;

  // The serving configuration: batcher on, admission by estimated queueing time. Unloaded
  // latency and the overload phase run against it.
  CLEAVE_ASSIGN_OR_RETURN(Daemon cloud,
                          StartCloud(options, work, options.max_batch, options.max_queue_delay_us,
                                     options.max_queue_wait_us, "cloud-serving"));

  // Warm-up at the highest concurrency, not measured: the daemon meets every batch size
  // (oneDNN caches a kernel per shape, the allocator keeps its buffers) and its admission
  // cost model sees full batches, as a daemon that has been serving would have.
  {
    const int most = *std::max_element(options.clients.begin(), options.clients.end());
    CLEAVE_ASSIGN_OR_RETURN(auto gen,
                            LoadGenerator::Connect(context, cloud.launched.endpoint, most, pool));
    CLEAVE_RETURN_IF_ERROR(gen->ClosedLoop(most, 0.5, std::min(2.0, options.seconds),
                                           options.deadline_ms, options.overloaded_backoff_ms)
                               .status());
  }

  // (c) Unloaded latency: one client, batcher on.
  {
    CLEAVE_ASSIGN_OR_RETURN(auto gen,
                            LoadGenerator::Connect(context, cloud.launched.endpoint, 1, pool));
    CLEAVE_ASSIGN_OR_RETURN(Outcomes o,
                            gen->ClosedLoop(1, 0.5, options.seconds, options.deadline_ms,
                                            options.overloaded_backoff_ms));
    report["unloaded"] = OutcomesJson(o);
    report["unloaded_p99_ms"] = Percentile(o.ok_latency_ms, 99);
  }

  // (d) Overload: offered rate = factor x measured capacity.
  const double offered_rps = options.overload_factor * batched_rps;
  const int64_t rss_before = ProcessRssBytes(cloud.pid, "VmRSS");
  int64_t rss_max = rss_before;
  {
    std::fprintf(stderr, "overload: offering %.0f req/s for %.0f s...\n", offered_rps,
                 options.overload_seconds);
    CLEAVE_ASSIGN_OR_RETURN(auto gen,
                            LoadGenerator::Connect(context, cloud.launched.endpoint,
                                                   std::max(1, options.overload_clients), pool));
    CLEAVE_ASSIGN_OR_RETURN(
        Outcomes o, gen->OpenLoop(offered_rps, options.overload_seconds, options.deadline_ms, [&] {
          rss_max = std::max(rss_max, ProcessRssBytes(cloud.pid, "VmRSS"));
        }));
    json overload = OutcomesJson(o);
    overload["offered_rps"] = offered_rps;
    overload["sent"] = o.sent;
    overload["send_failed"] = o.send_failed;
    overload["unanswered"] = o.sent - o.send_failed - o.answered();
    overload["answered_fraction"] =
        o.sent > 0 ? static_cast<double>(o.answered()) / static_cast<double>(o.sent) : 0.0;
    overload["rejected_fraction"] =
        o.sent > 0 ? static_cast<double>(o.overloaded) / static_cast<double>(o.sent) : 0.0;
    overload["admitted_p99_ms"] = Percentile(o.ok_latency_ms, 99);
    overload["served_rps"] = static_cast<double>(o.ok) / options.overload_seconds;
    overload["rss_before_bytes"] = rss_before;
    overload["rss_max_bytes"] = rss_max;
    report["overload"] = overload;
    std::fprintf(stderr,
                 "overload: %lu sent, %lu ok, %lu overloaded, %lu deadline, %lu error, %lu "
                 "unanswered; admitted p99 %.2f ms (in the daemon: p99 %.2f ms)\n",
                 static_cast<unsigned long>(o.sent), static_cast<unsigned long>(o.ok),
                 static_cast<unsigned long>(o.overloaded), static_cast<unsigned long>(o.deadline),
                 static_cast<unsigned long>(o.error),
                 static_cast<unsigned long>(overload["unanswered"].get<uint64_t>()),
                 overload["admitted_p99_ms"].get<double>(),
                 overload["server_p99_ms"].get<double>());
  }
  report["peak_rss_bytes"] = ProcessRssBytes(cloud.pid, "VmHWM");
  (void)cloud.launched.process->Stop(5000);
  std::error_code ec;
  std::filesystem::remove_all(work, ec);

  // Targets of issue 5, evaluated on what was just measured.
  const double ceiling = report["compute_ceiling_rps"];
  const json& overload = report["overload"];
  const double latency_bound = 2 * report["unloaded_p99_ms"].get<double>() +
                               static_cast<double>(options.max_queue_delay_us) / 1000.0;
  report["targets"] = {
      {"batched_ge_0.8x_ceiling", batched_rps >= 0.8 * ceiling},
      {"batched_ge_3x_unbatched", batched_rps >= 3 * unbatched_rps},
      {"overload_every_request_answered",
       overload["unanswered"].get<uint64_t>() == 0 && overload["send_failed"].get<uint64_t>() == 0},
      {"overload_admitted_p99_within_bound",
       overload["admitted_p99_ms"].get<double>() <= latency_bound},
      {"admitted_p99_bound_ms", latency_bound},
      // Bounded: the overload phase grows the daemon's resident memory by at most a quarter.
      {"overload_rss_bounded", rss_max <= rss_before + rss_before / 4}};

  if (!options.json_out.empty()) {
    CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(options.json_out, report.dump(2) + "\n"));
  }
  if (!options.markdown_out.empty()) {
    CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(options.markdown_out, BenchServeMarkdown(report)));
  }
  return report;
}

std::string BenchServeMarkdown(const json& report) {
  auto fixed = [](double v, int digits) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
    return std::string(buf);
  };
  std::string md =
      "| clients | unbatched req/s | p99 ms | batched req/s | p50 ms | p99 ms | mean batch |\n"
      "|---|---|---|---|---|---|---|\n";
  const json& u = report.at("unbatched");
  const json& b = report.at("batched");
  for (size_t i = 0; i < std::min(u.size(), b.size()); ++i) {
    md += "| " + std::to_string(b[i].at("clients").get<int>()) + " | " + fixed(u[i].at("rps"), 0) +
          " | " + fixed(u[i].at("p99_ms"), 2) + " | " + fixed(b[i].at("rps"), 0) + " | " +
          fixed(b[i].at("p50_ms"), 2) + " | " + fixed(b[i].at("p99_ms"), 2) + " | " +
          fixed(b[i].at("mean_batch"), 1) + " |\n";
  }
  const json& o = report.at("overload");
  md += "\n| figure | value |\n|---|---|\n";
  md += "| `compute_ceiling_rps` (batch " + std::to_string(report.at("max_batch").get<int>()) +
        ") | " + fixed(report.at("compute_ceiling_rps"), 0) + " |\n";
  md += "| `compute_batch1_rps` | " + fixed(report.at("compute_batch1_rps"), 0) + " |\n";
  md += "| `batched_rps` | " + fixed(report.at("batched_rps"), 0) + " |\n";
  md += "| `unbatched_rps` | " + fixed(report.at("unbatched_rps"), 0) + " |\n";
  md += "| `unloaded_p99_ms` | " + fixed(report.at("unloaded_p99_ms"), 3) + " |\n";
  md += "| `overload.offered_rps` | " + fixed(o.at("offered_rps"), 0) + " |\n";
  md += "| `overload.served_rps` | " + fixed(o.at("served_rps"), 0) + " |\n";
  md += "| `overload.rejected_fraction` | " + fixed(o.at("rejected_fraction"), 3) + " |\n";
  md += "| `overload.answered_fraction` | " + fixed(o.at("answered_fraction"), 4) + " |\n";
  md += "| `overload.admitted_p99_ms` | " + fixed(o.at("admitted_p99_ms"), 3) + " |\n";
  md += "| `overload.rss_before_bytes` | " +
        std::to_string(o.at("rss_before_bytes").get<int64_t>()) + " |\n";
  md += "| `overload.rss_max_bytes` | " + std::to_string(o.at("rss_max_bytes").get<int64_t>()) +
        " |\n";
  md +=
      "| `peak_rss_bytes` | " + std::to_string(report.at("peak_rss_bytes").get<int64_t>()) + " |\n";
  if (report.contains("tail_precision")) {
    md += "| tail precision | " + report.at("tail_precision").get<std::string>() + " |\n";
  }
  if (report.contains("wire_version")) {
    md +=
        "| request wire version | " + std::to_string(report.at("wire_version").get<int>()) + " |\n";
  }
  md += "| request bytes on the wire | " +
        std::to_string(report.at("request_bytes").get<int64_t>()) + " |\n";
  md += "\n| target (issue 5) | met |\n|---|---|\n";
  for (const auto& [key, value] : report.at("targets").items()) {
    md += "| `" + key + "` | " +
          (value.is_boolean() ? (value.get<bool>() ? "yes" : "**no**") : fixed(value, 3)) + " |\n";
  }
  return md;
}

void RegisterBenchServeCommand(CLI::App& bench) {
  auto options = std::make_shared<BenchServeOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "serve",
      "the cloud tail under load: a cleave-cloud process on tcp loopback, many edges played "
      "by one load generator; batched vs unbatched throughput at increasing concurrency, the "
      "in-process compute ceiling, unloaded latency and a 3x overload phase; prints JSON");
  cmd->add_option("--bundle", options->bundle, "vision model bundle directory")->required();
  cmd->add_option("--json", options->json_out, "write the JSON report here");
  cmd->add_option("--markdown", options->markdown_out,
                  "also write the report as markdown tables (docs/benchmarks.md)");
  cmd->add_option("--data", options->data,
                  std::string(kDataSpecHelp) + " (default: the one the bundle was trained on)");
  cmd->add_option("--threads", options->threads,
                  "libtorch intra-op threads of the daemon's worker and of the ceiling")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--tail-precision", options->tail_precision,
                  "arithmetic of the tail in the daemons and the ceiling, as cloud.precision: "
                  "fp32|bf16|auto")
      ->capture_default_str();
  cmd->add_option("--clients", options->clients,
                  "concurrent closed-loop clients of each throughput point")
      ->delimiter(',');
  cmd->add_option("--seconds", options->seconds, "measured seconds per throughput point");
  cmd->add_option("--overload-seconds", options->overload_seconds, "length of the overload phase");
  cmd->add_option("--overload-factor", options->overload_factor,
                  "offered rate in the overload phase, as a multiple of the measured capacity");
  cmd->add_option("--overload-clients", options->overload_clients,
                  "sockets the overload is spread over")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-batch", options->max_batch, "the daemon's cloud.max_batch");
  cmd->add_option("--max-queue-delay-us", options->max_queue_delay_us,
                  "the daemon's cloud.max_queue_delay_us");
  cmd->add_option("--max-queue", options->max_queue, "the daemon's cloud.max_queue")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-queue-wait-us", options->max_queue_wait_us,
                  "cloud.max_queue_wait_us of the serving daemon (unloaded latency and the "
                  "overload phase; 0 = admission by queue length only)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--throughput-queue-wait-us", options->throughput_queue_wait_us,
                  "cloud.max_queue_wait_us of the daemons of the throughput sweeps (0 = "
                  "admission by queue length only: they measure what each configuration serves)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--overloaded-backoff-ms", options->overloaded_backoff_ms,
                  "closed-loop clients answered `overloaded` wait this long before their next "
                  "request, doubling on each refusal in a row up to 32x (0 = resend at once)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--deadline-ms", options->deadline_ms, "per-request deadline")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--pool", options->pool, "distinct test images whose features are sent")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--wire-version", options->wire_version,
                  "request encoding: 2 (coded features and a layout tag, what edges send) or 1 "
                  "(model name and tensor, as edge.wire_version = 1)")
      ->check(CLI::IsMember({1, 2}))
      ->capture_default_str();
  cmd->callback([options] {
    Result<json> report = RunBenchServe(*options);
    if (!report.ok()) {
      std::fprintf(stderr, "cleave bench serve: %s\n", report.status().ToString().c_str());
      throw CLI::RuntimeError(1);
    }
    std::cout << report->dump(2) << std::endl;
  });
}

}  // namespace cleave::tools
