// The entropy model of a split point's wire features, fitted when a bundle is made and kept in
// its manifest's "wire" object ("entropy", EntropyModel::ToJson), so the edge codes and the
// cloud decodes version 2 requests with the same tables (common/feature_coding.h).
#pragma once

#include <memory>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/entropy_fit.h"
#include "common/entropy_model.h"
#include "common/feature_coding.h"
#include "common/status.h"
#include "common/tensor_codec.h"

namespace cleave::split {

// What fitting found: the model and the held-out cost of every context granularity tried.
struct WireEntropyFit {
  std::shared_ptr<const EntropyModel> model;
  nlohmann::json report;  // {"context", "heldout_bytes_per_image", "packed_bytes_per_image",
                          //  "candidates": [{"context", "heldout_bytes_per_image"}]}
};

// Quantizes `features` [N, C, H, W] (N >= 2) with `dtype` (u8/u4) and `quant` as the codec does,
// and chooses and fits an entropy model over the symbols (ChooseEntropyModel: granularity on
// held-out rows, refit on all). InvalidArgument for a float dtype or fewer than 2 rows; the
// codec's errors.
Result<WireEntropyFit> FitWireEntropy(const torch::Tensor& features, wire::DType dtype,
                                      const wire::QuantParams& quant);

// The manifest's wire object with the entropy model added when there is one.
nlohmann::json WireJsonWithEntropy(wire::DType dtype, const wire::QuantParams& quant,
                                   const std::shared_ptr<const EntropyModel>& entropy);
// Reads "entropy" from a manifest wire object: null when absent; InvalidArgument for a
// malformed model (EntropyModel::FromJson).
Result<std::shared_ptr<const EntropyModel>> ReadWireEntropy(const nlohmann::json& wire);

}  // namespace cleave::split
