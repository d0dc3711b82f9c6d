#include "tools/bench_split.h"

#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <numeric>

#include "common/datasets.h"
#include "common/file_util.h"
#include "common/inference_wire.h"
#include "common/jpeg_image.h"
#include "common/plot.h"
#include "common/png_image.h"
#include "common/progress.h"
#include "common/tensor_codec.h"
#include "common/transport.h"
#include "edge/edge_engine.h"
#include "edge/offload_client.h"
#include "split/bundle.h"
#include "split/compute_runtime.h"
#include "split/dataset.h"
#include "split/image_rows.h"
#include "split/imported_model.h"
#include "split/split_runtime.h"
#include "split/tail_plan.h"
#include "split/vision_model.h"
#include "tools/bench_util.h"
#include "tools/daemon_launcher.h"
#include "tools/data_option.h"

namespace cleave::tools {

using edge::HeadDecision;

using edge::ArgMax;
using edge::EdgeEngine;
using edge::OffloadClient;
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// JPEG quality of the cloud_jpeg baseline (the issue's; libjpeg's default is 75).
constexpr int kBenchJpegQuality = 90;

// One request of one configuration.
struct Sample {
  bool correct = false;
  double bytes = 0;     // everything the edge put on the wire for it
  double edge_ms = 0;   // edge compute
  double total_ms = 0;  // end to end, as the application sees it
  bool at_edge = false;
  bool degraded = false;
  bool offloaded = false;  // went to the cloud (answered by it or not)
};

json Summarize(const std::vector<Sample>& samples) {
  std::vector<double> bytes, edge, total, offload;
  size_t correct = 0, at_edge = 0, degraded = 0;
  for (const Sample& s : samples) {
    bytes.push_back(s.bytes);
    edge.push_back(s.edge_ms);
    total.push_back(s.total_ms);
    if (s.offloaded) offload.push_back(s.total_ms);
    correct += s.correct;
    at_edge += s.at_edge;
    degraded += s.degraded;
  }
  const double n = static_cast<double>(std::max<size_t>(1, samples.size()));
  return {{"accuracy", correct / n},
          {"bytes_per_request_mean", Mean(bytes)},
          {"edge_ms_mean", Mean(edge)},
          {"p50_ms", Percentile(total, 50)},
          {"p99_ms", Percentile(total, 99)},
          // The requests that went to the cloud only (issue 19): what offloading costs.
          {"offload_p50_ms", offload.empty() ? json() : json(Percentile(offload, 50))},
          {"offload_p99_ms", offload.empty() ? json() : json(Percentile(offload, 99))},
          {"offloaded", offload.size()},
          {"edge_fraction", at_edge / n},
          {"degraded", degraded},
          {"requests", samples.size()}};
}

// Median of `iterations` timed calls of fn (after a short warm-up), in ms.
template <typename Fn>
double MedianMs(int iterations, Fn&& fn) {
  for (int i = 0; i < 10; ++i) fn();
  std::vector<double> times;
  times.reserve(iterations);
  for (int i = 0; i < iterations; ++i) {
    const auto start = Clock::now();
    fn();
    times.push_back(MsSince(start));
  }
  return Percentile(times, 50);
}

// The test split converted to the bundle's input (split/input_spec.h), as the edge sees it;
// in memory, or read an image at a time when larger than the memory budget
// (split/image_rows.h). Images are fetched before a timed region starts.
struct TestSet {
  split::ImageRows rows;
  std::vector<int64_t> labels;
  int64_t n = 0;
  Result<torch::Tensor> Image(int64_t i) const { return rows.Slice(i, 1); }
  Result<torch::Tensor> Batch(int64_t begin, int64_t end) const {
    return rows.Slice(begin, end - begin);
  }
  // An image [1, C, H, W] as 8-bit interleaved pixels (what a client would encode as PNG or
  // JPEG). The tensor holds bytes / 255, so rounding recovers the bytes exactly.
  static PixelImage Pixels(const torch::Tensor& image) {
    const torch::Tensor bytes =
        image[0].mul(255.0).round().clamp(0, 255).to(torch::kUInt8).permute({1, 2, 0}).contiguous();
    PixelImage pixels;
    pixels.channels = static_cast<uint32_t>(bytes.size(2));
    pixels.height = static_cast<uint32_t>(bytes.size(0));
    pixels.width = static_cast<uint32_t>(bytes.size(1));
    pixels.pixels.assign(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel());
    return pixels;
  }
};

int32_t ArgMaxRow(const torch::Tensor& logits, int64_t row) {
  return static_cast<int32_t>(logits[row].argmax().item<int64_t>());
}

// split_no_exit accuracy computed in-process (no wire): head -> u4 codec -> tail.
Result<double> InProcessSplitAccuracy(split::EdgeModel& edge, split::CloudModel& cloud,
                                      const TestSet& test) {
  size_t correct = 0;
  for (int64_t begin = 0; begin < test.n; begin += 256) {
    const int64_t end = std::min<int64_t>(test.n, begin + 256);
    CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor batch, test.Batch(begin, end));
    CLEAVE_ASSIGN_OR_RETURN(split::EdgeHeadOutput head, edge.Run(batch));
    torch::Tensor features = head.features.contiguous().to(torch::kFloat32);
    std::vector<uint32_t> shape;
    for (int64_t d : features.sizes()) shape.push_back(static_cast<uint32_t>(d));
    CLEAVE_ASSIGN_OR_RETURN(wire::EncodedTensor encoded,
                            wire::EncodeTensor(features.data_ptr<float>(), shape, edge.wire_dtype(),
                                               1, &edge.wire_quant()));
    CLEAVE_ASSIGN_OR_RETURN(std::vector<float> decoded, wire::DecodeTensor(encoded));
    torch::Tensor restored = torch::from_blob(decoded.data(), features.sizes(), torch::kFloat32);
    CLEAVE_ASSIGN_OR_RETURN(torch::Tensor logits, cloud.RunTail(restored));
    for (int64_t i = begin; i < end; ++i) {
      correct += ArgMaxRow(logits, i - begin) == test.labels[i];
    }
  }
  return static_cast<double>(correct) / static_cast<double>(test.n);
}

// Sends one request and waits for its reply; nullopt when it did not arrive in time.
std::optional<wire::InferReply> Exchange1(OffloadClient& client, uint64_t id,
                                          const std::string& bytes, int deadline_ms) {
  auto replies = client.Exchange({{id, bytes}}, deadline_ms);
  if (!replies.ok()) return std::nullopt;
  auto it = replies->find(id);
  if (it == replies->end() || it->second.status != wire::ReplyStatus::kOk) return std::nullopt;
  return it->second;
}

struct SplitRun {
  std::vector<Sample> samples;
  // Per image, for the threshold sweep (from the no-exit run): best exit confidence, whether
  // that exit was right, whether the cloud was right, and the bytes of offloading.
  std::vector<float> exit_confidence;
  std::vector<bool> exit_correct, cloud_correct;
  std::vector<double> offload_bytes;
};

Result<SplitRun> RunSplit(EdgeEngine& engine, OffloadClient& client, const TestSet& test,
                          float threshold, int deadline_ms, const std::string& label) {
  SplitRun run;
  ProgressBar progress(label, static_cast<uint64_t>(test.n));
  for (int64_t i = 0; i < test.n; ++i) {
    Sample s;
    const uint64_t id = static_cast<uint64_t>(i + 1);
    CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor image, test.Image(i));
    const auto start = Clock::now();
    auto decisions = engine.Decide(image, {id}, {threshold}, {static_cast<uint32_t>(deadline_ms)});
    s.edge_ms = MsSince(start);
    if (!decisions.ok()) {
      std::fprintf(stderr, "edge failed on image %ld: %s\n", static_cast<long>(i),
                   decisions.status().ToString().c_str());
      run.samples.push_back(s);
      continue;
    }
    const HeadDecision& d = (*decisions)[0];
    const int label_i = test.labels[i];
    run.exit_confidence.push_back(d.best_confidence);
    run.exit_correct.push_back(d.best_class == label_i);
    if (d.exit_index >= 0) {
      s.at_edge = true;
      s.correct = d.best_class == label_i;
      run.cloud_correct.push_back(false);
      run.offload_bytes.push_back(0);
    } else {
      s.bytes = static_cast<double>(WireBytes(d.offload_request.size()));
      s.offloaded = true;
      auto reply = Exchange1(client, id, d.offload_request, deadline_ms);
      if (reply) {
        s.correct = ArgMax(reply->scores) == label_i;
      } else {
        s.degraded = true;
        s.correct = d.best_class == label_i;
      }
      run.cloud_correct.push_back(reply && ArgMax(reply->scores) == label_i);
      run.offload_bytes.push_back(s.bytes);
    }
    s.total_ms = MsSince(start);
    run.samples.push_back(s);
    if (i % 100 == 0) progress.Update(static_cast<uint64_t>(i));
  }
  progress.Update(static_cast<uint64_t>(test.n));
  progress.Finish();
  return run;
}

// Accuracy and mean bytes per request if inputs whose best exit is at least `t` confident
// exit locally (exact for single-exit models), from a run that offloaded everything.
json Sweep(const SplitRun& all) {
  json points = json::array();
  const size_t n = all.exit_confidence.size();
  for (double t : {0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999, 1.01}) {
    size_t correct = 0, local = 0;
    double bytes = 0;
    for (size_t i = 0; i < n; ++i) {
      if (all.exit_confidence[i] >= t) {
        ++local;
        correct += all.exit_correct[i];
      } else {
        correct += all.cloud_correct[i];
        bytes += all.offload_bytes[i];
      }
    }
    const double dn = static_cast<double>(std::max<size_t>(1, n));
    points.push_back({{"threshold", t},
                      {"accuracy", correct / dn},
                      {"bytes_per_request_mean", bytes / dn},
                      {"edge_fraction", local / dn}});
  }
  return points;
}

}  // namespace

Result<json> RunBenchSplit(const BenchSplitOptions& options) {
  split::SetComputeThreads(std::max(1, options.threads));
  torch::NoGradGuard no_grad;
  CLEAVE_ASSIGN_OR_RETURN(Bundle bundle, Bundle::Open(options.bundle));
  CLEAVE_ASSIGN_OR_RETURN(const split::InputSpec described_input, split::ReadBundleInput(bundle));
  // The bundle's own dataset unless --data names another (converted to its input).
  const std::string data_spec = !options.data.empty()          ? options.data
                                : described_input.data.empty() ? std::string("fashion-mnist")
                                                               : described_input.data;
  TestSet test;
  CLEAVE_ASSIGN_OR_RETURN(
      test.rows,
      split::OpenRows(data_spec, DatasetSplit::kTest, described_input, options.limit,
                      options.memory_mb * (int64_t{1} << 20), std::max(1, options.threads)));
  test.n = test.rows.size();
  test.labels.assign(test.rows.labels().data_ptr<int64_t>(),
                     test.rows.labels().data_ptr<int64_t>() + test.n);

  split::EdgeModel::Options int8_options;
  int8_options.int8 = true;
  int8_options.int8_engine = options.int8_engine;
  split::EdgeModel::Options fp32_options;
  fp32_options.int8 = false;
  CLEAVE_ASSIGN_OR_RETURN(auto edge_int8, split::EdgeModel::Load(bundle, int8_options));
  CLEAVE_ASSIGN_OR_RETURN(auto edge_fp32, split::EdgeModel::Load(bundle, fp32_options));
  CLEAVE_ASSIGN_OR_RETURN(split::TailPrecision precision,
                          split::ParseTailPrecision(options.tail_precision));
  split::CloudModel::Options cloud_options;
  cloud_options.precision = precision;
  CLEAVE_ASSIGN_OR_RETURN(auto cloud_model, split::CloudModel::Load(bundle, cloud_options));
  CLEAVE_ASSIGN_OR_RETURN(auto local, split::LocalModel::Load(bundle));
  json report;
  report["bundle"] = options.bundle;
  report["test_images"] = test.n;
  report["data"] = data_spec;
  report["input"] = described_input.ToJson();
  report["threads"] = options.threads;
  report["int8_engine"] = edge_int8->engine();
  report["tail_precision"] = split::TailPrecisionName(precision);

  // Architecture figures: parameters and MACs of head (+ exits) and tail; stored head sizes.
  if (const split::ImportedSplitModel* imported = edge_fp32->imported()) {
    // An imported model: parameters of the TorchScript head + bottleneck encoder + exits
    // (MACs of TorchScript graphs are not counted yet).
    int64_t head_params = 0;
    for (const at::Tensor& p : imported->head.parameters()) head_params += p.numel();
    for (const auto& p : imported->encoder->parameters()) head_params += p.numel();
    for (const auto& e : imported->exits) {
      for (const auto& p : e->parameters()) head_params += p.numel();
    }
    report["head_params"] = head_params;
    report["head_fp32_bytes"] = 4 * head_params;
    report["head_kind"] = "torchscript";
    const split::ImportedSplitModel* int8 = edge_int8->imported();
    if (int8 != nullptr && int8->int8_head) {
      // The int8 head's bytes plus the fp32 encoder and exits that run after it.
      report["head_int8_bytes"] = int8->int8_head->WeightBytes() +
                                  4 * (head_params - [&] {
                                    int64_t n = 0;
                                    for (const at::Tensor& p : imported->head.parameters()) {
                                      n += p.numel();
                                    }
                                    return n;
                                  }());
      report["int8_ops_fraction"] = int8->int8_head->report().int8_ops_fraction;
      report["int8_macs_fraction"] = int8->int8_head->report().int8_macs_fraction;
    } else {
      report["head_int8_bytes"] = nullptr;
    }
  } else {
    const split::VisionSplitModel& info = edge_fp32->info();
    const int split_end = info.head_end();
    const split::SplitVisionNetImpl& net = *info.net;
    report["head_params"] = net.ParameterCount(0, split_end, true);
    report["head_macs"] = net.MacCount(0, split_end, true);
    report["tail_params"] = net.ParameterCount(split_end, net.num_blocks(), false);
    report["tail_macs"] = net.MacCount(split_end, net.num_blocks(), false);
    // fp32: 4 bytes per parameter of head + exits; int8: what the int8 head stores (int8
    // weights, per-channel scales, biases, activation parameters).
    report["head_fp32_bytes"] = 4 * net.ParameterCount(0, split_end, true);
    if (!edge_int8->info().int8_head) {
      return Status::FailedPrecondition("bundle has no int8 head");
    }
    report["head_int8_bytes"] = edge_int8->info().int8_head->WeightBytes();
  }

  // Batch-1 compute timings, in process.
  std::fprintf(stderr, "timing head (fp32, int8) and tail at batch 1...\n");
  CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor one, test.Image(0));
  report["head_fp32_ms"] = MedianMs(options.timing_iterations, [&] { (void)edge_fp32->Run(one); });
  report["head_int8_ms"] = MedianMs(options.timing_iterations, [&] { (void)edge_int8->Run(one); });
  CLEAVE_ASSIGN_OR_RETURN(split::EdgeHeadOutput head_one, edge_int8->Run(one));
  torch::Tensor feat_one = head_one.features.contiguous();
  report["tail_ms"] =
      MedianMs(options.timing_iterations, [&] { (void)cloud_model->RunTail(feat_one); });
  report["local_fp32_compute_ms"] =
      MedianMs(options.timing_iterations, [&] { (void)local->Run(one); });

  std::fprintf(stderr, "accuracy of the split path with fp32 and int8 heads...\n");
  CLEAVE_ASSIGN_OR_RETURN(double acc_fp32, InProcessSplitAccuracy(*edge_fp32, *cloud_model, test));
  CLEAVE_ASSIGN_OR_RETURN(double acc_int8, InProcessSplitAccuracy(*edge_int8, *cloud_model, test));
  report["head_fp32_accuracy"] = acc_fp32;
  report["head_int8_accuracy"] = acc_int8;
  if (precision != split::TailPrecision::kFp32) {
    // The same deployed path with an fp32 tail: what the reduced-precision tail costs.
    CLEAVE_ASSIGN_OR_RETURN(auto fp32_tail, split::CloudModel::Load(bundle));
    CLEAVE_ASSIGN_OR_RETURN(double acc_fp32_tail,
                            InProcessSplitAccuracy(*edge_int8, *fp32_tail, test));
    report["head_int8_accuracy_tail_fp32"] = acc_fp32_tail;
    report["tail_precision_cost_points"] = 100 * (acc_fp32_tail - acc_int8);
    std::fprintf(stderr, "tail %s: %.2f %% (fp32 tail %.2f %%)\n",
                 split::TailPrecisionName(precision), 100 * acc_int8, 100 * acc_fp32_tail);
  }
  cloud_model.reset();
  edge_fp32.reset();

  // The cloud tail as its own process on tcp loopback.
  const std::filesystem::path work =
      std::filesystem::temp_directory_path() / ("cleave-bench-" + std::to_string(::getpid()));
  CLEAVE_ASSIGN_OR_RETURN(
      LaunchedDaemon cloud,
      LaunchDaemon(SelfBinaryDir() / "cleave-cloud",
                   {"--cloud.bundle", options.bundle, "--cloud.listen", "tcp://127.0.0.1:0",
                    "--cloud.threads", std::to_string(options.threads), "--cloud.precision",
                    options.tail_precision, "--log.level", "warn"},
                   "cloud.ready_file", work, "cloud"));
  TransportContext context;
  CLEAVE_ASSIGN_OR_RETURN(auto client, OffloadClient::Connect(context, cloud.endpoint));
  // Wait for the connection so the first request is not a reconnect measurement.
  for (int i = 0; i < 200; ++i) {
    wire::InferRequest ping;
    ping.request_id = 0;
    ping.model = "";
    auto r = client->Exchange({{0, wire::EncodeInferRequest(ping)}}, 50);
    if (r.ok() && !r->empty()) break;
  }

  json configs;
  {  // local_fp32: the whole split model on the edge, nothing on the wire.
    std::vector<Sample> samples;
    ProgressBar progress("local_fp32", static_cast<uint64_t>(test.n));
    for (int64_t i = 0; i < test.n; ++i) {
      Sample s;
      CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor image, test.Image(i));
      const auto start = Clock::now();
      auto logits = local->Run(image);
      s.edge_ms = s.total_ms = MsSince(start);
      s.at_edge = true;
      s.correct = logits.ok() && ArgMaxRow(*logits, 0) == test.labels[i];
      samples.push_back(s);
      if (i % 100 == 0) progress.Update(static_cast<uint64_t>(i));
    }
    progress.Update(static_cast<uint64_t>(test.n));
    progress.Finish();
    configs["local_fp32"] = Summarize(samples);
  }
  // cloud_png / cloud_jpeg: the edge sends the raw image (at the network's input size) as PNG,
  // or as JPEG at quality 90; the cloud runs the whole model.
  for (const bool jpeg : {false, true}) {
    const char* name = jpeg ? "cloud_jpeg" : "cloud_png";
    std::vector<Sample> samples;
    ProgressBar progress(name, static_cast<uint64_t>(test.n));
    for (int64_t i = 0; i < test.n; ++i) {
      Sample s;
      CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor row, test.Image(i));
      const auto start = Clock::now();
      const PixelImage image = TestSet::Pixels(row);
      // The deployed wire (version 2) for the image too, so both sides of the comparison
      // have the same envelope.
      wire::InferRequest request;
      request.protocol_version = wire::kCompactProtocolVersion;
      request.request_id = static_cast<uint64_t>(i + 1);
      request.deadline_ms = static_cast<uint32_t>(options.deadline_ms);
      request.input = wire::InputKind::kPng;
      if (jpeg) {
        CLEAVE_ASSIGN_OR_RETURN(request.png, EncodeJpegPixels(image, kBenchJpegQuality));
      } else {
        CLEAVE_ASSIGN_OR_RETURN(request.png, EncodePngPixels(image));
      }
      const std::string bytes = wire::EncodeInferRequest(request);
      s.edge_ms = MsSince(start);
      s.bytes = static_cast<double>(WireBytes(bytes.size()));
      s.offloaded = true;
      auto reply = Exchange1(*client, request.request_id, bytes, options.deadline_ms);
      s.total_ms = MsSince(start);
      s.degraded = !reply;
      s.correct = reply && ArgMax(reply->scores) == test.labels[i];
      samples.push_back(s);
      if (i % 100 == 0) progress.Update(static_cast<uint64_t>(i));
    }
    progress.Update(static_cast<uint64_t>(test.n));
    progress.Finish();
    configs[name] = Summarize(samples);
  }
  EdgeEngine engine(std::move(edge_int8));
  CLEAVE_ASSIGN_OR_RETURN(
      const SplitRun no_exit,
      RunSplit(engine, *client, test, /*threshold=*/2.0f, options.deadline_ms, "split_no_exit"));
  configs["split_no_exit"] = Summarize(no_exit.samples);
  CLEAVE_ASSIGN_OR_RETURN(
      const SplitRun with_exit,
      RunSplit(engine, *client, test, /*threshold=*/-1.0f, options.deadline_ms, "split_exit"));
  configs["split_exit"] = Summarize(with_exit.samples);
  report["configs"] = configs;
  report["exit_threshold"] = engine.model().exit_policy().ToJson();
  report["sweep"] = Sweep(no_exit);
  client.reset();
  (void)cloud.process->Stop(3000);

  // Targets of issue 2, evaluated on what was just measured.
  const double local_acc = configs["local_fp32"]["accuracy"];
  const double png_bytes = configs["cloud_png"]["bytes_per_request_mean"];
  const double budget =
      1.5 * (report["head_int8_ms"].get<double>() + report["tail_ms"].get<double>()) + 0.5;
  report["targets"] = {
      {"local_fp32_accuracy_ge_0.925", local_acc >= 0.925},
      {"split_exit_within_0.5pt",
       configs["split_exit"]["accuracy"].get<double>() >= local_acc - 0.005},
      {"split_exit_bytes_le_png_over_10",
       configs["split_exit"]["bytes_per_request_mean"].get<double>() <= png_bytes / 10},
      {"split_no_exit_within_0.5pt",
       configs["split_no_exit"]["accuracy"].get<double>() >= local_acc - 0.005},
      {"split_no_exit_bytes_le_png_over_4",
       configs["split_no_exit"]["bytes_per_request_mean"].get<double>() <= png_bytes / 4},
      {"split_exit_p50_le_budget", configs["split_exit"]["p50_ms"].get<double>() <= budget},
      {"latency_budget_ms", budget}};
  // Issue 19: the requests that went to the cloud against the compute they need, and the
  // compact wire's bytes.
  const double compute_ms = report["head_int8_ms"].get<double>() + report["tail_ms"].get<double>();
  const double offload_budget = 1.2 * compute_ms + 0.3;
  const auto offload_p50 = [&](const char* name) {
    const json& v = configs[name]["offload_p50_ms"];
    return v.is_number() ? v.get<double>() : 1e9;
  };
  report["targets"]["offload_latency_budget_ms"] = offload_budget;
  report["targets"]["split_exit_offload_p50_le_budget"] =
      offload_p50("split_exit") <= offload_budget;
  report["targets"]["split_no_exit_offload_p50_le_budget"] =
      offload_p50("split_no_exit") <= offload_budget;
  report["targets"]["split_exit_bytes_le_png_over_25_within_0.3pt"] =
      configs["split_exit"]["bytes_per_request_mean"].get<double>() <= png_bytes / 25 &&
      configs["split_exit"]["accuracy"].get<double>() >= local_acc - 0.003;
  report["targets"]["split_no_exit_bytes_le_png_over_8"] =
      configs["split_no_exit"]["bytes_per_request_mean"].get<double>() <= png_bytes / 8;
  if (report["head_int8_bytes"].is_number()) {  // imported bundles have no int8 head yet
    report["targets"]["int8_cost_le_0.3pt"] = acc_int8 >= acc_fp32 - 0.003;
    report["targets"]["int8_bytes_le_30pct"] =
        report["head_int8_bytes"].get<double>() <= 0.3 * report["head_fp32_bytes"].get<double>();
  }

  if (!options.json_out.empty()) {
    CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(options.json_out, report.dump(2) + "\n"));
    std::string plot = options.plot_out;
    if (plot.empty()) {
      plot = (std::filesystem::path(options.json_out).replace_extension(".png")).string();
    }
    PlotSpec spec_plot;
    spec_plot.title = "Split inference on " + report.value("data", std::string("fashion-mnist")) +
                      ": accuracy vs bytes per request";
    spec_plot.xlabel = "mean bytes on the wire per request";
    spec_plot.ylabel = "test accuracy";
    PlotSeries sweep_series;
    sweep_series.label = "split, exit threshold sweep";
    for (const auto& p : report["sweep"]) {
      sweep_series.x.push_back(p["bytes_per_request_mean"]);
      sweep_series.y.push_back(p["accuracy"]);
    }
    spec_plot.series.push_back(sweep_series);
    for (const char* name : {"cloud_png", "split_no_exit", "split_exit", "local_fp32"}) {
      PlotSeries point;
      point.label = name;
      point.points_only = true;
      point.x.push_back(configs[name]["bytes_per_request_mean"]);
      point.y.push_back(configs[name]["accuracy"]);
      spec_plot.series.push_back(point);
    }
    spec_plot.log_x = false;
    if (Status s = WritePlotPng(spec_plot, plot); !s.ok()) {
      std::fprintf(stderr, "warning: plot not written: %s\n", s.ToString().c_str());
    } else {
      report["plot"] = plot;
    }
  }
  if (!options.markdown_out.empty()) {
    CLEAVE_RETURN_IF_ERROR(WriteFileAtomic(options.markdown_out, BenchSplitMarkdown(report)));
  }
  std::error_code ec;
  std::filesystem::remove_all(work, ec);
  return report;
}

std::string BenchSplitMarkdown(const json& report) {
  auto fixed = [](double v, int digits) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
    return std::string(buf);
  };
  auto optional = [&fixed](const json& v) {
    return v.is_number() ? fixed(v, 3) : std::string("-");
  };
  std::string md;
  md +=
      "| config | accuracy | bytes/request (mean) | edge ms (mean) | p50 ms | p99 ms | "
      "offloaded p50 ms | offloaded p99 ms | answered at edge |\n"
      "|---|---|---|---|---|---|---|---|---|\n";
  for (const char* name : {"local_fp32", "cloud_png", "split_no_exit", "split_exit"}) {
    const json& c = report.at("configs").at(name);
    md += std::string("| `") + name + "` | " + fixed(100 * c.at("accuracy").get<double>(), 2) +
          " % | " + fixed(c.at("bytes_per_request_mean"), 1) + " | " +
          fixed(c.at("edge_ms_mean"), 3) + " | " + fixed(c.at("p50_ms"), 3) + " | " +
          fixed(c.at("p99_ms"), 3) + " | " + optional(c.value("offload_p50_ms", json())) + " | " +
          optional(c.value("offload_p99_ms", json())) + " | " +
          fixed(100 * c.at("edge_fraction").get<double>(), 1) + " % |\n";
  }
  md += "\n| figure | value |\n|---|---|\n";
  for (const char* key : {"head_fp32_ms", "head_int8_ms", "tail_ms", "local_fp32_compute_ms"}) {
    md += std::string("| `") + key + "` | " + fixed(report.at(key), 3) + " ms |\n";
  }
  for (const char* key : {"head_fp32_accuracy", "head_int8_accuracy"}) {
    md +=
        std::string("| `") + key + "` | " + fixed(100 * report.at(key).get<double>(), 2) + " % |\n";
  }
  for (const char* key : {"head_fp32_bytes", "head_int8_bytes", "head_params", "head_macs",
                          "tail_params", "tail_macs"}) {
    md +=
        std::string("| `") + key + "` | " + std::to_string(report.at(key).get<int64_t>()) + " |\n";
  }
  if (report.contains("head_int8_accuracy_tail_fp32")) {
    md += "| `head_int8_accuracy_tail_fp32` | " +
          fixed(100 * report.at("head_int8_accuracy_tail_fp32").get<double>(), 2) + " % |\n";
    md += "| `tail_precision_cost_points` | " + fixed(report.at("tail_precision_cost_points"), 2) +
          " |\n";
  }
  md += std::string("| int8 engine | ") + report.at("int8_engine").get<std::string>() + " |\n";
  if (report.contains("tail_precision")) {
    md += std::string("| tail precision | ") + report.at("tail_precision").get<std::string>() +
          " |\n";
  }
  md += "| test images | " + std::to_string(report.at("test_images").get<int64_t>()) + " |\n";
  md += "\n| target (issues 2 and 19) | met |\n|---|---|\n";
  for (const auto& [key, value] : report.at("targets").items()) {
    md += "| `" + key + "` | " +
          (value.is_boolean() ? (value.get<bool>() ? "yes" : "**no**") : fixed(value, 3)) + " |\n";
  }
  return md;
}

void RegisterBenchSplitCommand(CLI::App& bench) {
  auto options = std::make_shared<BenchSplitOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "split",
      "measure split inference over the real wire (cleave-cloud as its own process on tcp "
      "loopback): local_fp32, cloud_png, split_no_exit and split_exit on the Fashion-MNIST "
      "test set; prints JSON");
  cmd->add_option("--bundle", options->bundle, "model bundle directory")->required();
  cmd->add_option("--json", options->json_out, "write the JSON report here");
  cmd->add_option("--plot", options->plot_out,
                  "PNG plot of accuracy vs bytes (default: the --json path with .png)");
  cmd->add_option("--markdown", options->markdown_out,
                  "also write the report as markdown tables (docs/benchmarks.md)");
  cmd->add_option("--data", options->data,
                  std::string(kDataSpecHelp) + " (default: the one the bundle was trained on)");
  cmd->add_option("--limit", options->limit, "use only the first N test images (0 = all)");
  cmd->add_option("--memory-mb", options->memory_mb,
                  "a test split whose converted images (float32) take more than this is read an "
                  "image at a time (outside the timed regions) instead of held in memory")
      ->capture_default_str();
  cmd->add_option("--threads", options->threads, "libtorch intra-op threads (edge and cloud)");
  cmd->add_option("--timing-iterations", options->timing_iterations,
                  "batch-1 compute timing repetitions");
  cmd->add_option("--deadline-ms", options->deadline_ms, "per-request deadline");
  cmd->add_option("--int8-engine", options->int8_engine, "auto|onednn|qnnpack|reference");
  cmd->add_option("--tail-precision", options->tail_precision,
                  "arithmetic of the cloud tail, as cloud.precision: fp32|bf16|auto (not fp32: "
                  "the fp32 tail's accuracy is reported beside it)")
      ->capture_default_str();
  cmd->callback([options] {
    Result<json> report = RunBenchSplit(*options);
    if (!report.ok()) {
      std::fprintf(stderr, "cleave bench split: %s\n", report.status().ToString().c_str());
      throw CLI::RuntimeError(1);
    }
    std::cout << report->dump(2) << std::endl;
  });
}

}  // namespace cleave::tools
