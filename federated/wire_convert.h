// Conversions between libtorch weights and the libtorch-free structs of the federated wire
// (tensors, common/fl_wire.h) and of the checkpoint format (layouts,
// federated/checkpoint_format.h), shared by the aggregator, the edge client and checkpoints.
#pragma once

#include <string>
#include <vector>

#include "common/fl_wire.h"
#include "common/status.h"
#include "common/tensor_codec.h"
#include "federated/checkpoint_format.h"
#include "federated/weights.h"

namespace cleave::federated {

// A float32 CPU tensor as an f32 wire tensor (shape and bytes copied).
wire::EncodedTensor ToWireTensor(const torch::Tensor& tensor);
// Decodes (and validates) any wire dtype to a float32 tensor of the wire shape.
Result<torch::Tensor> FromWireTensor(const wire::EncodedTensor& tensor);

std::vector<LayoutEntry> ToWireLayout(const WeightsLayout& layout);
WeightsLayout FromWireLayout(const std::vector<LayoutEntry>& entries);
// SHA-256 hex of the layout's canonical JSON: both ends of a connection compare it before
// exchanging weights, so a model mismatch is refused instead of misread.
std::string LayoutSha256(const WeightsLayout& layout);

// The entries of `w` whose mask bit is set, as wire tensors (what an Update carries).
std::vector<wire::EncodedTensor> MaskedToWire(const Weights& w, const std::vector<bool>& mask);
// Rebuilds full weights from the masked wire tensors plus `base` for the other entries.
// InvalidArgument when the count or a shape does not match the layout.
Result<Weights> MaskedFromWire(const std::vector<wire::EncodedTensor>& tensors,
                               const std::vector<bool>& mask, const WeightsLayout& layout,
                               const Weights& base);

}  // namespace cleave::federated
