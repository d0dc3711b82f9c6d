#include "split/wire_entropy.h"

#include "common/entropy_coder.h"
#include "split/torch_status.h"
#include "split/wire_quant.h"

namespace cleave::split {

using nlohmann::json;

Result<WireEntropyFit> FitWireEntropy(const torch::Tensor& features, wire::DType dtype,
                                      const wire::QuantParams& quant) {
  if (dtype != wire::DType::kUInt8 && dtype != wire::DType::kUInt4) {
    return Status::InvalidArgument("an entropy model needs a u8 or u4 wire");
  }
  if (features.dim() != 4 || features.size(0) < 2) {
    return Status::InvalidArgument("fitting an entropy model needs [N >= 2, C, H, W] features");
  }
  const torch::Tensor f = features.detach().to(torch::kFloat).contiguous();
  const auto per_row = static_cast<uint32_t>(f[0].numel());
  const std::vector<uint32_t> shape = {1, static_cast<uint32_t>(f.size(1)),
                                       static_cast<uint32_t>(f.size(2)),
                                       static_cast<uint32_t>(f.size(3))};
  std::vector<uint8_t> samples;
  samples.reserve(static_cast<size_t>(f.size(0)) * per_row);
  const float* data = f.data_ptr<float>();
  for (int64_t row = 0; row < f.size(0); ++row) {
    CLEAVE_ASSIGN_OR_RETURN(const wire::EncodedTensor t,
                            wire::EncodeTensor(data + row * per_row, shape, dtype, 1, &quant));
    CLEAVE_ASSIGN_OR_RETURN(const std::vector<uint8_t> symbols,
                            UnpackSymbols(dtype, t.data, per_row));
    samples.insert(samples.end(), symbols.begin(), symbols.end());
  }
  EntropyFitOptions options;
  options.alphabet = SymbolAlphabet(dtype);
  options.channels = shape[1];
  options.elements = per_row;
  CLEAVE_ASSIGN_OR_RETURN(EntropyModelChoice choice, ChooseEntropyModel(samples, options));
  WireEntropyFit fit;
  const double heldout = static_cast<double>(std::max<size_t>(1, choice.heldout_samples));
  json candidates = json::array();
  double best = 0;
  for (const EntropyCandidate& c : choice.candidates) {
    const double bytes = static_cast<double>(c.heldout_bytes) / heldout;
    candidates.push_back(
        {{"context", ContextKindName(c.kind)}, {"heldout_bytes_per_image", bytes}});
    if (c.kind == choice.model.kind()) best = bytes;
  }
  fit.report = {{"context", ContextKindName(choice.model.kind())},
                {"heldout_bytes_per_image", best},
                {"packed_bytes_per_image", wire::PackedByteSize(dtype, per_row)},
                {"candidates", candidates}};
  fit.model = std::make_shared<const EntropyModel>(std::move(choice.model));
  return fit;
}

json WireJsonWithEntropy(wire::DType dtype, const wire::QuantParams& quant,
                         const std::shared_ptr<const EntropyModel>& entropy,
                         const std::string& file) {
  json wire = WireManifestJson(dtype, quant);
  if (entropy) {
    wire["entropy"] = {{"file", file},
                       {"fingerprint", entropy->FingerprintHex()},
                       {"context", ContextKindName(entropy->kind())}};
  }
  return wire;
}

Result<std::shared_ptr<const EntropyModel>> ReadWireEntropy(const json& wire,
                                                            const BundleFileReader& read) {
  auto it = wire.find("entropy");
  if (it == wire.end() || it->is_null()) return std::shared_ptr<const EntropyModel>();
  if (it->is_object() && it->contains("frequencies")) {  // the model inline
    auto model = EntropyModel::FromJson(*it);
    if (!model.ok()) return model.status().WithContext("\"entropy\"");
    return std::make_shared<const EntropyModel>(std::move(model).value());
  }
  if (!it->is_object() || !it->contains("file") || !(*it)["file"].is_string() ||
      !it->contains("fingerprint") || !(*it)["fingerprint"].is_string()) {
    return Status::InvalidArgument("\"entropy\" must name a \"file\" and its \"fingerprint\"");
  }
  const std::string file = (*it)["file"].get<std::string>();
  if (!read) return Status::InvalidArgument("\"entropy\": no bundle to read " + file + " from");
  CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, read(file));
  auto model = EntropyModel::Parse(bytes);
  if (!model.ok()) return model.status().WithContext(file);
  if (model->FingerprintHex() != (*it)["fingerprint"].get<std::string>()) {
    return Status::DataLoss(file + " holds entropy model " + model->FingerprintHex() +
                            " but the manifest names " + (*it)["fingerprint"].get<std::string>());
  }
  return std::make_shared<const EntropyModel>(std::move(model).value());
}

}  // namespace cleave::split
