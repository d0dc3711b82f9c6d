// The entropy model of a split point's wire features, fitted when a bundle is made and kept as
// a file of the bundle (EntropyModel::Serialize, verified by the manifest's SHA-256 like every
// file) that the manifest's "wire" object names with the model's fingerprint, so the edge
// codes and the cloud decodes version 2 requests with the same tables
// (common/feature_coding.h).
#pragma once

#include <functional>
#include <memory>
#include <string>

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

// The manifest's wire object, naming the entropy model's `file` and fingerprint when there is
// one ("entropy": {"file", "fingerprint", "context"}).
nlohmann::json WireJsonWithEntropy(wire::DType dtype, const wire::QuantParams& quant,
                                   const std::shared_ptr<const EntropyModel>& entropy,
                                   const std::string& file);

// Reads a verified file of the bundle being read (DataLoss when it has none of that name).
using BundleFileReader = std::function<Result<std::string>(const std::string& file)>;

// The entropy model a manifest wire object names: null when absent; the file read with
// `read` and parsed (EntropyModel::Parse), DataLoss when its fingerprint is not the one the
// manifest states; InvalidArgument for a malformed entry. (An inline EntropyModel::ToJson
// object is read too.)
Result<std::shared_ptr<const EntropyModel>> ReadWireEntropy(const nlohmann::json& wire,
                                                            const BundleFileReader& read);

}  // namespace cleave::split
