#include "common/entropy_predictor.h"

#include <limits>
#include <string>

#include <nlohmann/json.hpp>

namespace cleave {
namespace {

Status PredictorJsonError(const std::string& what) {
  return Status::InvalidArgument("entropy model JSON's \"predictor\" " + what);
}

// A JSON number that is an integer in [lo, hi].
bool PredictorJsonIntIn(const nlohmann::json& value, int64_t lo, int64_t hi) {
  if (value.is_number_unsigned()) return value.get<uint64_t>() <= static_cast<uint64_t>(hi);
  if (value.is_number_integer()) {
    const auto v = value.get<int64_t>();
    return v >= lo && v <= hi;
  }
  return false;
}

}  // namespace

Status ValidateEntropyPredictor(const EntropyPredictor& predictor, uint32_t elements) {
  if (predictor.buckets < kMinEntropyPredictionBuckets ||
      predictor.buckets > kMaxEntropyPredictionBuckets) {
    return Status::InvalidArgument("entropy model prediction buckets " +
                                   std::to_string(predictor.buckets) + " are outside [" +
                                   std::to_string(kMinEntropyPredictionBuckets) + ", " +
                                   std::to_string(kMaxEntropyPredictionBuckets) + "]");
  }
  if (predictor.elements.size() != elements) {
    return Status::InvalidArgument(
        "entropy model predictor has " + std::to_string(predictor.elements.size()) +
        " element predictors for " + std::to_string(elements) + " elements");
  }
  uint64_t total = 0;
  for (uint32_t i = 0; i < elements; ++i) {
    const auto& taps = predictor.elements[i].taps;
    if (taps.size() > kMaxEntropyPredictionTaps) {
      return Status::InvalidArgument("entropy model predictor of element " + std::to_string(i) +
                                     " has " + std::to_string(taps.size()) +
                                     " taps, more than the limit of " +
                                     std::to_string(kMaxEntropyPredictionTaps));
    }
    total += taps.size();
    if (total > kMaxEntropyPredictionTotalTaps) {
      return Status::InvalidArgument("entropy model predictor has more than " +
                                     std::to_string(kMaxEntropyPredictionTotalTaps) + " taps");
    }
    uint32_t previous = 0;
    for (const EntropyPredictionTap& tap : taps) {
      if (tap.distance == 0 || tap.distance > i) {
        return Status::InvalidArgument(
            "entropy model predictor of element " + std::to_string(i) + " has a tap at distance " +
            std::to_string(tap.distance) + "; only the " + std::to_string(i) +
            " elements coded before it can be read (distances 1 to " + std::to_string(i) + ")");
      }
      if (tap.distance <= previous) {
        return Status::InvalidArgument("entropy model predictor of element " + std::to_string(i) +
                                       " has tap distances that are not strictly increasing (" +
                                       std::to_string(tap.distance) + " after " +
                                       std::to_string(previous) + ")");
      }
      previous = tap.distance;
    }
  }
  return Status::Ok();
}

nlohmann::json EntropyPredictorToJson(const EntropyPredictor& predictor) {
  nlohmann::json elements = nlohmann::json::array();
  for (const EntropyElementPredictor& element : predictor.elements) {
    nlohmann::json taps = nlohmann::json::array();
    for (const EntropyPredictionTap& tap : element.taps) taps.push_back({tap.distance, tap.weight});
    elements.push_back({{"bias", element.bias}, {"taps", std::move(taps)}});
  }
  return {{"buckets", predictor.buckets}, {"elements", std::move(elements)}};
}

Result<EntropyPredictor> EntropyPredictorFromJson(const nlohmann::json& json) {
  constexpr int64_t kInt32Min = std::numeric_limits<int32_t>::min();
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  constexpr int64_t kUint32Max = std::numeric_limits<uint32_t>::max();
  if (!json.is_object()) return PredictorJsonError("is not an object");
  EntropyPredictor predictor;
  const auto buckets = json.find("buckets");
  if (buckets == json.end() || !PredictorJsonIntIn(*buckets, 0, kUint32Max)) {
    return PredictorJsonError("has no \"buckets\" that is an unsigned 32-bit integer");
  }
  predictor.buckets = buckets->get<uint32_t>();
  const auto elements = json.find("elements");
  if (elements == json.end() || !elements->is_array()) {
    return PredictorJsonError("has no \"elements\" array");
  }
  predictor.elements.reserve(elements->size());
  for (const nlohmann::json& element : *elements) {
    const std::string where = "element " + std::to_string(predictor.elements.size());
    if (!element.is_object()) return PredictorJsonError(where + " is not an object");
    const auto bias = element.find("bias");
    if (bias == element.end() || !PredictorJsonIntIn(*bias, kInt32Min, kInt32Max)) {
      return PredictorJsonError(where + " has no \"bias\" that is a signed 32-bit integer");
    }
    const auto taps = element.find("taps");
    if (taps == element.end() || !taps->is_array()) {
      return PredictorJsonError(where + " has no \"taps\" array");
    }
    EntropyElementPredictor out;
    out.bias = bias->get<int32_t>();
    out.taps.reserve(taps->size());
    for (const nlohmann::json& tap : *taps) {
      if (!tap.is_array() || tap.size() != 2 || !PredictorJsonIntIn(tap[0], 0, kUint32Max) ||
          !PredictorJsonIntIn(tap[1], kInt32Min, kInt32Max)) {
        return PredictorJsonError(where + " has a tap that is not [distance, weight] (unsigned " +
                                  "and signed 32-bit integers)");
      }
      out.taps.push_back({tap[0].get<uint32_t>(), tap[1].get<int32_t>()});
    }
    predictor.elements.push_back(std::move(out));
  }
  return predictor;
}

}  // namespace cleave
