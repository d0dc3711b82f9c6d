#include "federated/wire_convert.h"

#include <cstring>

#include "common/file_util.h"

namespace cleave::federated {

wire::EncodedTensor ToWireTensor(const torch::Tensor& tensor) {
  const torch::Tensor t = tensor.detach().to(torch::kFloat).contiguous();
  wire::EncodedTensor e;
  e.dtype = wire::DType::kFloat32;
  for (int64_t d : t.sizes()) e.shape.push_back(static_cast<uint32_t>(d));
  e.data.assign(reinterpret_cast<const char*>(t.data_ptr<float>()), t.numel() * sizeof(float));
  return e;
}

Result<torch::Tensor> FromWireTensor(const wire::EncodedTensor& tensor) {
  std::vector<int64_t> shape(tensor.shape.begin(), tensor.shape.end());
  if (tensor.dtype == wire::DType::kFloat32) {
    CLEAVE_RETURN_IF_ERROR(wire::ValidateTensor(tensor));
    torch::Tensor t = torch::empty(shape, torch::kFloat);
    std::memcpy(t.data_ptr<float>(), tensor.data.data(), tensor.data.size());
    return t;
  }
  CLEAVE_ASSIGN_OR_RETURN(std::vector<float> values, wire::DecodeTensor(tensor));
  torch::Tensor t = torch::empty(shape, torch::kFloat);
  std::memcpy(t.data_ptr<float>(), values.data(), values.size() * sizeof(float));
  return t;
}

std::vector<LayoutEntry> ToWireLayout(const WeightsLayout& layout) {
  std::vector<LayoutEntry> out;
  for (size_t i = 0; i < layout.size(); ++i) {
    LayoutEntry e;
    e.name = layout.names[i];
    for (int64_t d : layout.shapes[i]) e.shape.push_back(static_cast<uint32_t>(d));
    out.push_back(std::move(e));
  }
  return out;
}

WeightsLayout FromWireLayout(const std::vector<LayoutEntry>& entries) {
  WeightsLayout layout;
  for (const auto& e : entries) {
    layout.names.push_back(e.name);
    layout.shapes.emplace_back(e.shape.begin(), e.shape.end());
  }
  return layout;
}

std::string LayoutSha256(const WeightsLayout& layout) { return Sha256Hex(layout.ToJson().dump()); }

std::vector<wire::EncodedTensor> MaskedToWire(const Weights& w, const std::vector<bool>& mask) {
  std::vector<wire::EncodedTensor> out;
  for (size_t i = 0; i < w.size() && i < mask.size(); ++i) {
    if (mask[i]) out.push_back(ToWireTensor(w[i]));
  }
  return out;
}

Result<Weights> MaskedFromWire(const std::vector<wire::EncodedTensor>& tensors,
                               const std::vector<bool>& mask, const WeightsLayout& layout,
                               const Weights& base) {
  if (mask.size() != layout.size() || base.size() != layout.size()) {
    return Status::InvalidArgument("mask/base do not match the layout");
  }
  size_t expected = 0;
  for (bool b : mask) expected += b;
  if (tensors.size() != expected) {
    return Status::InvalidArgument("expected " + std::to_string(expected) + " tensors, got " +
                                   std::to_string(tensors.size()));
  }
  Weights out(layout.size());
  size_t next = 0;
  for (size_t i = 0; i < layout.size(); ++i) {
    if (!mask[i]) {
      out[i] = base[i];
      continue;
    }
    const wire::EncodedTensor& t = tensors[next++];
    if (std::vector<int64_t>(t.shape.begin(), t.shape.end()) != layout.shapes[i]) {
      return Status::InvalidArgument("tensor '" + layout.names[i] + "' has the wrong shape");
    }
    CLEAVE_ASSIGN_OR_RETURN(out[i], FromWireTensor(t));
  }
  return out;
}

}  // namespace cleave::federated
