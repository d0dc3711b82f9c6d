#include "edge/edge_engine.h"

#include <chrono>

#include "common/feature_coding.h"
#include "common/inference_wire.h"
#include "common/jpeg_image.h"
#include "common/png_image.h"
#include "common/tensor_codec.h"
#include "split/exit_policy.h"

namespace cleave::edge {
namespace {

uint64_t MicrosSince(std::chrono::steady_clock::time_point start) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                   std::chrono::steady_clock::now() - start)
                                   .count());
}

std::vector<float> RowToVector(const torch::Tensor& logits, int64_t row) {
  torch::Tensor r = logits[row].contiguous().to(torch::kFloat32);
  const float* p = r.data_ptr<float>();
  return std::vector<float>(p, p + r.numel());
}

}  // namespace

int32_t ArgMax(const std::vector<float>& values) {
  if (values.empty()) return -1;
  int32_t best = 0;
  for (size_t i = 1; i < values.size(); ++i) {
    if (values[i] > values[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

EdgeEngine::EdgeEngine(std::unique_ptr<split::EdgeModel> model) : model_(std::move(model)) {
  for (int s = 0; s < model_->num_splits(); ++s) layout_tags_.push_back(model_->layout_tag(s));
}

Result<torch::Tensor> EdgeEngine::ImageFromRequest(const edge_api::ClassifyRequest& request) const {
  PixelImage image;
  switch (request.kind) {
    case edge_api::ImageKind::kPng: {
      CLEAVE_ASSIGN_OR_RETURN(image, DecodePngPixels(request.png, 0));
      break;
    }
    case edge_api::ImageKind::kJpeg: {
      CLEAVE_ASSIGN_OR_RETURN(image, DecodeJpegPixels(request.jpeg, 0));
      break;
    }
    case edge_api::ImageKind::kGray8:
    case edge_api::ImageKind::kRgb8: {
      image.width = request.width;
      image.height = request.height;
      image.channels = request.kind == edge_api::ImageKind::kRgb8 ? 3 : 1;
      image.pixels.assign(request.pixels.begin(), request.pixels.end());
      break;
    }
  }
  return split::PrepareImageTensor(image, model_->info().input);
}

std::string EdgeEngine::ClassName(int32_t index) const {
  const std::vector<std::string>& names = model_->info().input.class_names;
  if (index < 0 || static_cast<size_t>(index) >= names.size()) return "";
  return names[index];
}

Result<std::vector<HeadDecision>> EdgeEngine::Decide(const torch::Tensor& images,
                                                     const std::vector<uint64_t>& wire_ids,
                                                     const std::vector<float>& thresholds,
                                                     const std::vector<uint32_t>& deadlines_ms,
                                                     int split) {
  const auto start = std::chrono::steady_clock::now();
  if (split < 0 || split >= model_->num_splits()) {
    return Status::InvalidArgument("split point " + std::to_string(split) +
                                   " is not in the bundle (" +
                                   std::to_string(model_->num_splits()) + " split points)");
  }
  if (split > 0 && wire_version_ != wire::kCompactProtocolVersion) {
    return Status::InvalidArgument("wire version 1 can only offload at split point 0");
  }
  if (images.dim() != 4) return Status::InvalidArgument("images must be [N,1,H,W]");
  const int64_t n = images.size(0);
  if (static_cast<int64_t>(wire_ids.size()) != n || static_cast<int64_t>(thresholds.size()) != n ||
      static_cast<int64_t>(deadlines_ms.size()) != n) {
    return Status::InvalidArgument("EdgeEngine::Decide: per-row arguments do not match batch " +
                                   std::to_string(n));
  }
  CLEAVE_ASSIGN_OR_RETURN(split::EdgeHeadOutput head, model_->Run(images, split));
  const split::ExitPolicy& policy = model_->exit_policy(split);
  const int num_exits = static_cast<int>(head.exit_logits.size());

  // Scores of every exit for every row (the policy's criterion; higher = more confident).
  std::vector<torch::Tensor> scores;
  scores.reserve(num_exits);
  for (const auto& logits : head.exit_logits) {
    scores.push_back(split::ExitScores(policy.criterion(), logits).contiguous());
  }
  std::vector<int> calibrated = policy.Decide(head.exit_logits);

  std::vector<HeadDecision> decisions(n);
  torch::Tensor features = head.features.contiguous().to(torch::kFloat32);
  std::vector<uint32_t> row_shape = {1};
  for (uint32_t d : model_->feature_shape(split)) row_shape.push_back(d);
  const wire::FeatureLayout layout = model_->layout(split);
  const int64_t row_elems = n > 0 ? features.numel() / n : 0;

  for (int64_t i = 0; i < n; ++i) {
    HeadDecision& d = decisions[i];
    // The most confident exit answers when the cloud cannot.
    float best = -1.0f;
    for (int e = 0; e < num_exits; ++e) {
      const float s = scores[e][i].item<float>();
      if (s > best) {
        best = s;
        d.best_exit = e;
      }
    }
    if (d.best_exit >= 0) {
      d.best_confidence = best;
      d.best_scores = RowToVector(head.exit_logits[d.best_exit], i);
      d.best_class = ArgMax(d.best_scores);
    }
    if (thresholds[i] < 0.0f) {
      d.exit_index = calibrated[i];
    } else {
      d.exit_index = -1;
      for (int e = 0; e < num_exits; ++e) {
        if (scores[e][i].item<float>() >= thresholds[i]) {
          d.exit_index = e;
          break;
        }
      }
    }
    if (d.exit_index >= 0) {
      // Answer locally with the exit that fired (it may differ from the most confident).
      d.best_exit = d.exit_index;
      d.best_scores = RowToVector(head.exit_logits[d.exit_index], i);
      d.best_class = ArgMax(d.best_scores);
      d.best_confidence = scores[d.exit_index][i].item<float>();
      continue;
    }
    d.split = split;
    wire::InferRequest request;
    request.request_id = wire_ids[i];
    request.deadline_ms = deadlines_ms[i];
    const float* row = features.data_ptr<float>() + i * row_elems;
    if (wire_version_ == wire::kCompactProtocolVersion) {
      request.protocol_version = wire::kCompactProtocolVersion;
      request.split = static_cast<uint8_t>(split);
      request.layout_tag = layout_tags_[static_cast<size_t>(split)];
      CLEAVE_ASSIGN_OR_RETURN(auto coded, wire::CodeFeaturesShortest(layout, row));
      request.coded = std::move(coded.first);
      request.input =
          coded.second ? wire::InputKind::kPackedFeatures : wire::InputKind::kCodedFeatures;
    } else {
      request.model = model_->model_name();
      request.input = wire::InputKind::kFeatures;
      CLEAVE_ASSIGN_OR_RETURN(request.features,
                              wire::EncodeTensor(row, row_shape, model_->wire_dtype(),
                                                 /*channel_axis=*/1, &model_->wire_quant()));
    }
    d.offload_request = wire::EncodeInferRequest(request);
  }
  const uint64_t per_row = n > 0 ? MicrosSince(start) / static_cast<uint64_t>(n) : 0;
  for (auto& d : decisions) d.edge_micros = per_row;
  return decisions;
}

}  // namespace cleave::edge
