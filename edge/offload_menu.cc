#include "edge/offload_menu.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/inference_wire.h"
#include "common/transport.h"
#include "split/latency_profile.h"

namespace cleave::edge {
namespace {

using nlohmann::json;

// Mean coded feature bytes of split point `split`: the entropy model's held-out figure when the
// bundle recorded one, else the packed size.
// `key` of `object` when it is an object holding it, else null (manifests are input: any
// of these may be missing or of another type).
json Member(const json& object, const char* key) {
  if (!object.is_object()) return json();
  auto it = object.find(key);
  return it == object.end() ? json() : *it;
}

double CodedBytes(const split::EdgeModel& model, int split) {
  const split::VisionSplitModel& info = model.info();
  const json report =
      Member(split == 0 ? info.evaluation : info.splits[static_cast<size_t>(split) - 1].calibration,
             "wire_entropy");
  const json bytes = Member(report, "heldout_bytes_per_image");
  if (bytes.is_number() && bytes.get<double>() > 0 && model.layout(split).entropy != nullptr) {
    return bytes.get<double>();
  }
  const wire::FeatureLayout layout = model.layout(split);
  return static_cast<double>(wire::PackedByteSize(layout.dtype, layout.elements()));
}

json SweepOf(const split::EdgeModel& model, int split) {
  const split::VisionSplitModel& info = model.info();
  return Member(
      split == 0 ? info.calibration : info.splits[static_cast<size_t>(split) - 1].calibration,
      "sweep");
}

double Number(const json& object, const char* key, double fallback) {
  const json v = Member(object, key);
  return v.is_number() ? v.get<double>() : fallback;
}

}  // namespace

double CompactRequestWireBytes(double coded_bytes) {
  wire::InferRequest probe;
  probe.protocol_version = wire::kCompactProtocolVersion;
  probe.request_id = 4097;  // a typical id: two bytes
  probe.deadline_ms = 250;
  probe.layout_tag = 0xA5A5;
  probe.input = wire::InputKind::kCodedFeatures;
  const auto n = static_cast<size_t>(coded_bytes + 0.5);
  probe.coded.assign(std::max<size_t>(1, n), '\x5a');
  return static_cast<double>(WireBytes(wire::EncodeInferRequest(probe).size()));
}

OffloadMenu BuildOffloadMenu(const split::EdgeModel& model, bool int8) {
  OffloadMenu menu;
  const split::VisionSplitModel& info = model.info();
  Result<split::LatencyProfile> profile =
      info.profile.is_null() ? Result<split::LatencyProfile>(Status::NotFound("no profile"))
                             : split::LatencyProfile::FromJson(info.profile, info);
  const auto edge_ms = [&](int s) { return profile.ok() ? profile->EdgeMs(info, s, int8) : 0.0; };
  const auto cloud_ms = [&](int s) {
    return profile.ok() ? profile->CloudMs(info, s, false) : 0.0;
  };

  // The calibrated option first: what the static policy runs.
  OffloadOption calibrated;
  calibrated.split = 0;
  const std::vector<double>& thresholds = model.exit_policy().thresholds();
  calibrated.exit_threshold = thresholds.empty() ? split::kExitDisabled : thresholds[0];
  calibrated.exit_fraction = std::clamp(Number(info.calibration, "exit_fraction", 0.0), 0.0, 1.0);
  calibrated.accuracy = std::clamp(Number(info.calibration, "accuracy", 0.0), 0.0, 1.0);
  calibrated.edge_ms = edge_ms(0);
  calibrated.cloud_ms = cloud_ms(0);
  calibrated.request_bytes = CompactRequestWireBytes(CodedBytes(model, 0));
  menu.options.push_back(calibrated);
  menu.calibrated = 0;
  if (!profile.ok()) return menu;  // no latency figures: nothing to trade off

  for (int s = 0; s < model.num_splits(); ++s) {
    const json sweep = SweepOf(model, s);
    if (!sweep.is_array()) continue;
    const double bytes = CompactRequestWireBytes(CodedBytes(model, s));
    for (const json& point : sweep) {
      const double t = Number(point, "threshold", split::kExitDisabled);
      const double fraction = std::clamp(Number(point, "exit_fraction", 0.0), 0.0, 1.0);
      const double accuracy = std::clamp(Number(point, "accuracy", 0.0), 0.0, 1.0);
      if (!std::isfinite(t) || t < 0) continue;
      if (s == 0 && t == 0.0 && fraction >= 1.0) {
        // Every input answered by an exit: the local-only option.
        OffloadOption local;
        local.split = -1;
        local.exit_threshold = 0.0;
        local.exit_fraction = 1.0;
        local.accuracy = accuracy;
        local.edge_ms = edge_ms(0);
        menu.options.push_back(local);
        continue;
      }
      if (fraction >= 1.0) continue;  // offloads nothing: the local option covers it
      OffloadOption o;
      o.split = s;
      o.exit_threshold = t;
      o.exit_fraction = fraction;
      o.accuracy = accuracy;
      o.edge_ms = edge_ms(s);
      o.cloud_ms = cloud_ms(s);
      o.request_bytes = bytes;
      menu.options.push_back(o);
    }
  }
  return menu;
}

std::string OffloadOptionSpec(const OffloadOption& option) {
  if (!option.offloads()) return "local";
  if (option.exit_threshold > 1.0) return std::to_string(option.split) + ":off";
  char threshold[32];
  std::snprintf(threshold, sizeof(threshold), "%g", option.exit_threshold);
  return std::to_string(option.split) + ":" + threshold;
}

Result<int> FindOffloadOption(const OffloadMenu& menu, const std::string& spec) {
  // Parse SPLIT:THRESHOLD so that "0:0.90" and "0:0.9" name the same option.
  int split = -1;
  double threshold = -1;
  bool parsed = spec == "local";
  const size_t colon = spec.find(':');
  if (!parsed && colon != std::string::npos && colon > 0) {
    try {
      size_t used = 0;
      split = std::stoi(spec.substr(0, colon), &used);
      const std::string t = spec.substr(colon + 1);
      if (used == colon && t == "off") {
        threshold = split::kExitDisabled;
        parsed = split >= 0;
      } else if (used == colon) {
        threshold = std::stod(t, &used);
        parsed = split >= 0 && used == t.size() && threshold >= 0 && threshold <= 1;
      }
    } catch (const std::exception&) {
      parsed = false;
    }
  }
  std::string known;
  for (size_t i = 0; i < menu.options.size(); ++i) {
    const OffloadOption& o = menu.options[i];
    known += (i == 0 ? "" : ", ") + OffloadOptionSpec(o);
    if (!parsed) continue;
    if (spec == "local" ? !o.offloads()
                        : o.offloads() && o.split == split &&
                              (threshold > 1 ? o.exit_threshold > 1
                                             : std::abs(o.exit_threshold - threshold) <= 1e-6)) {
      return static_cast<int>(i);
    }
  }
  return Status::NotFound("offload option '" + spec + "' is not on the bundle's menu (" + known +
                          "; written local or SPLIT:THRESHOLD)");
}

std::string DescribeMenu(const OffloadMenu& menu) {
  std::string out;
  char line[200];
  for (size_t i = 0; i < menu.options.size(); ++i) {
    const OffloadOption& o = menu.options[i];
    std::snprintf(line, sizeof(line),
                  "%s%s @%.3g: acc %.4f, exit %.2f, edge %.3f ms, cloud %.3f ms, %.0f B\n",
                  static_cast<int>(i) == menu.calibrated ? "* " : "  ",
                  o.split < 0 ? "local" : ("split " + std::to_string(o.split)).c_str(),
                  o.exit_threshold, o.accuracy, o.exit_fraction, o.edge_ms, o.cloud_ms,
                  o.request_bytes);
    out += line;
  }
  return out;
}

}  // namespace cleave::edge
