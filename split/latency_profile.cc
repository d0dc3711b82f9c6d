#include "split/latency_profile.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

#include "split/tail_plan.h"
#include "split/torch_status.h"

namespace cleave::split {
namespace {

using nlohmann::json;

// Median milliseconds of `repeats` calls of `f` after two warm-up calls.
template <typename F>
double MedianMs(int repeats, F&& f) {
  f();
  f();
  std::vector<double> ms;
  ms.reserve(static_cast<size_t>(repeats));
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::nth_element(ms.begin(), ms.begin() + static_cast<long>(ms.size() / 2), ms.end());
  return ms[ms.size() / 2];
}

Result<std::vector<double>> ProfileVector(const json& j, const char* key, size_t size) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) {
    return Status::InvalidArgument(std::string("profile: missing array \"") + key + "\"");
  }
  std::vector<double> out;
  for (const json& v : *it) {
    if (!v.is_number())
      return Status::InvalidArgument(std::string("profile: \"") + key + "\" holds a non-number");
    const double x = v.get<double>();
    if (!std::isfinite(x) || x < 0) {
      return Status::InvalidArgument(std::string("profile: \"") + key +
                                     "\" holds a negative or non-finite time");
    }
    out.push_back(x);
  }
  if (out.size() != size) {
    return Status::InvalidArgument(std::string("profile: \"") + key + "\" has " +
                                   std::to_string(out.size()) + " entries, the model needs " +
                                   std::to_string(size));
  }
  return out;
}

double Sum(const std::vector<double>& v, size_t begin, size_t end) {
  double total = 0;
  for (size_t i = begin; i < end && i < v.size(); ++i) total += v[i];
  return total;
}

}  // namespace

Status AttachLatencyProfile(VisionSplitModel& model, int repeats) {
  CLEAVE_ASSIGN_OR_RETURN(const LatencyProfile profile, MeasureLatencyProfile(model, repeats));
  model.profile = profile.ToJson();
  return Status::Ok();
}

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    std::string name = line.substr(colon + 1);
    name.erase(0, name.find_first_not_of(" \t"));
    return name.empty() ? "unknown" : name;
  }
  return "unknown";
}

json LatencyProfile::ToJson() const {
  return {{"cpu", cpu},
          {"threads", threads},
          {"block_fp32_ms", block_fp32_ms},
          {"block_plan_ms", block_plan_ms},
          {"block_plan32_ms", block_plan32_ms},
          {"exit_ms", exit_ms},
          {"int8_head_ms", int8_head_ms},
          {"encoder_ms", encoder_ms},
          {"decoder_ms", decoder_ms}};
}

Result<LatencyProfile> LatencyProfile::FromJson(const json& j, const VisionSplitModel& model) {
  if (!j.is_object()) return Status::InvalidArgument("profile must be an object");
  LatencyProfile p;
  p.cpu = j.value("cpu", std::string("unknown"));
  p.threads = j.value("threads", 1);
  const size_t blocks = model.spec.blocks.size();
  const size_t points = model.splits.size();
  CLEAVE_ASSIGN_OR_RETURN(p.block_fp32_ms, ProfileVector(j, "block_fp32_ms", blocks));
  CLEAVE_ASSIGN_OR_RETURN(p.block_plan_ms, ProfileVector(j, "block_plan_ms", blocks));
  CLEAVE_ASSIGN_OR_RETURN(p.block_plan32_ms, ProfileVector(j, "block_plan32_ms", blocks));
  CLEAVE_ASSIGN_OR_RETURN(p.exit_ms, ProfileVector(j, "exit_ms", model.spec.exits.size()));
  CLEAVE_ASSIGN_OR_RETURN(p.encoder_ms, ProfileVector(j, "encoder_ms", points));
  CLEAVE_ASSIGN_OR_RETURN(p.decoder_ms, ProfileVector(j, "decoder_ms", points));
  const json head = j.value("int8_head_ms", json(0.0));
  if (!head.is_number() || !std::isfinite(head.get<double>()) || head.get<double>() < 0) {
    return Status::InvalidArgument("profile: \"int8_head_ms\" must be a time >= 0");
  }
  p.int8_head_ms = head.get<double>();
  return p;
}

double LatencyProfile::EdgeMs(const VisionSplitModel& model, int split, bool int8) const {
  if (split == 0 && int8 && int8_head_ms > 0) return int8_head_ms;
  const int after = split == 0 ? model.spec.split_after : model.splits[split - 1].after;
  double ms = Sum(block_fp32_ms, 0, static_cast<size_t>(after) + 1);
  for (size_t e = 0; e < model.spec.exits.size() && e < exit_ms.size(); ++e) {
    if (model.spec.exits[e].after_block <= after) ms += exit_ms[e];
  }
  if (split > 0) ms += encoder_ms[split - 1];
  return ms;
}

double LatencyProfile::CloudMs(const VisionSplitModel& model, int split, bool batched) const {
  const int resume = split == 0 ? model.spec.split_after + 1 : model.splits[split - 1].resume;
  const std::vector<double>& blocks = batched ? block_plan32_ms : block_plan_ms;
  double ms = Sum(blocks, static_cast<size_t>(resume), blocks.size());
  if (split > 0) ms += decoder_ms[split - 1];
  return ms;
}

Result<LatencyProfile> MeasureLatencyProfile(VisionSplitModel& model, int repeats) {
  if (!model.net) return Status::InvalidArgument("latency profile: the model has no network");
  LatencyProfile p;
  p.cpu = CpuModelName();
  p.threads = torch::get_num_threads();
  SplitVisionNetImpl& net = *model.net;
  const VisionModelSpec& spec = model.spec;
  CLEAVE_RETURN_IF_ERROR(CallTorch(TorchSource::kOwnState, "measuring the latency profile", [&] {
    torch::NoGradGuard no_grad;
    net.eval();
    const torch::Tensor image =
        torch::rand({1, spec.input_channels, spec.image_size, spec.image_size});
    // Each block's input at batch 1 and at batch 32.
    std::vector<torch::Tensor> in1 = {net.Preprocess(image)};
    std::vector<torch::Tensor> in32 = {in1[0].repeat({32, 1, 1, 1})};
    for (int b = 0; b < net.num_blocks(); ++b) {
      in1.push_back(net.ForwardRange(in1.back(), b, b + 1));
      in32.push_back(net.ForwardRange(in32.back(), b, b + 1));
    }
    const TailPrecision precision =
        CpuHasNativeBf16() ? TailPrecision::kBf16 : TailPrecision::kFp32;
    for (int b = 0; b < net.num_blocks(); ++b) {
      p.block_fp32_ms.push_back(MedianMs(repeats, [&] { net.ForwardRange(in1[b], b, b + 1); }));
      CLEAVE_ASSIGN_OR_RETURN(TailPlan plan, TailPlan::Compile(net, b, b + 1, precision));
      p.block_plan_ms.push_back(MedianMs(repeats, [&] { plan.Run(in1[b]); }));
      p.block_plan32_ms.push_back(MedianMs(repeats, [&] { plan.Run(in32[b]); }) / 32.0);
    }
    for (int e = 0; e < net.num_exits(); ++e) {
      const torch::Tensor& x = in1[static_cast<size_t>(spec.exits[e].after_block) + 1];
      p.exit_ms.push_back(MedianMs(repeats, [&] { net.exit(e)->forward(x); }));
    }
    if (model.int8_head) {
      Status failed = Status::Ok();
      p.int8_head_ms = MedianMs(repeats, [&] {
        auto out = model.int8_head->Forward(image);
        if (!out.ok()) failed = out.status();
      });
      CLEAVE_RETURN_IF_ERROR(failed);
    }
    for (SplitPoint& point : model.splits) {
      if (!point.bottleneck) {
        p.encoder_ms.push_back(0);
        p.decoder_ms.push_back(0);
        continue;
      }
      if (!point.bottleneck->encoder_net) BuildBottleneck(point);
      const torch::Tensor& x = in1[static_cast<size_t>(point.after) + 1];
      const torch::Tensor code = point.bottleneck->encoder_net->forward(x);
      p.encoder_ms.push_back(MedianMs(repeats, [&] { point.bottleneck->encoder_net->forward(x); }));
      p.decoder_ms.push_back(
          MedianMs(repeats, [&] { point.bottleneck->decoder_net->forward(code); }));
    }
    return Status::Ok();
  }));
  return p;
}

}  // namespace cleave::split
