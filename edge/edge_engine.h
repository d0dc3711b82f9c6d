// EdgeEngine: the compute half of cleave-edge. For a batch of images it runs the head and
// its early exits, applies the exit policy, and for inputs that must be offloaded quantizes
// the bottleneck features and encodes the wire request for the cloud tail.
//
// It owns the EdgeModel; it does no I/O, so the daemon, the one-shot CLI and the benchmark
// share exactly this code path. Not thread-safe: one caller at a time (the model is not).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "common/edge_api.h"
#include "common/inference_wire.h"
#include "common/status.h"
#include "split/split_runtime.h"

namespace cleave::edge {

// What the edge decided for one image.
struct HeadDecision {
  int exit_index = -1;             // the exit that answers locally, or -1: offload to the cloud
  int best_exit = -1;              // the most confident exit (the degraded answer)
  float best_confidence = 0;       // its exit-policy score
  int32_t best_class = -1;         // its predicted class
  std::vector<float> best_scores;  // its logits
  std::string offload_request;     // encoded wire::InferRequest (only when exit_index == -1)
  int split = 0;                   // the split point the head ran to
  uint64_t edge_micros = 0;        // this image's share of head + exit + encode time
};

class EdgeEngine {
 public:
  explicit EdgeEngine(std::unique_ptr<split::EdgeModel> model);

  // Runs the head on `images` ([N,C,H,W] floats in [0,1], the bundle's input). For row i:
  // `thresholds[i]` < 0 uses the calibrated exit policy, otherwise that threshold for every exit;
  // an offloaded row gets an InferRequest with `wire_ids[i]` and `deadlines_ms[i]`. All vectors
  // have N entries (InvalidArgument otherwise).
  // `split` picks the bundle's split point (0 = the deployment split; InvalidArgument for one the
  // bundle does not have, or for split > 0 with wire version 1, which can only name split 0).
  Result<std::vector<HeadDecision>> Decide(const torch::Tensor& images,
                                           const std::vector<uint64_t>& wire_ids,
                                           const std::vector<float>& thresholds,
                                           const std::vector<uint32_t>& deadlines_ms,
                                           int split = 0);

  // The request encoding: wire::kCompactProtocolVersion (2, the default: split index, layout
  // tag and the coded features only) or wire::kProtocolVersion (1: model name and a
  // self-describing tensor, for clouds older than version 2). Version 2 ids are 32-bit: the
  // caller keeps wire ids below 2^32.
  void set_wire_version(uint16_t version) { wire_version_ = version; }
  uint16_t wire_version() const { return wire_version_; }

  // Converts a decoded application request (PNG, JPEG, raw gray or RGB of any size) into the
  // [1,C,H,W] tensor in [0,1] the bundle declares, with the bundle's InputSpec (the same
  // conversion training used). InvalidArgument, saying why, for what cannot be decoded or
  // converted.
  Result<torch::Tensor> ImageFromRequest(const edge_api::ClassifyRequest& request) const;

  split::EdgeModel& model() { return *model_; }
  int image_size() const { return model_->info().spec.image_size; }
  int input_channels() const { return model_->info().spec.input_channels; }
  // The bundle's name of class `index`; "" outside the class list.
  std::string ClassName(int32_t index) const;

 private:
  std::unique_ptr<split::EdgeModel> model_;
  uint16_t wire_version_ = wire::kCompactProtocolVersion;
  std::vector<uint16_t> layout_tags_;  // per split point, computed once
};

// Index of the largest value (-1 for an empty vector).
int32_t ArgMax(const std::vector<float>& values);

}  // namespace cleave::edge
