#include "split/train_data.h"

#include <cmath>

namespace cleave::split {

LabeledImages LabeledImages::Select(const torch::Tensor& index) const {
  return {images.index_select(0, index), labels.index_select(0, index)};
}

LabeledImages LabeledImages::Head(int64_t n) const {
  const int64_t k = std::min(n, size());
  return {images.narrow(0, 0, k), labels.narrow(0, 0, k)};
}

Result<LabeledImages> ToLabeledImages(const ImageDataset& dataset) {
  const int64_t n = static_cast<int64_t>(dataset.size());
  if (n == 0) return Status::InvalidArgument("dataset is empty");
  if (dataset.labels.size() != static_cast<size_t>(n)) {
    return Status::InvalidArgument("dataset has " + std::to_string(n) + " images but " +
                                   std::to_string(dataset.labels.size()) + " labels");
  }
  LabeledImages out;
  out.images = torch::from_blob(
                   const_cast<uint8_t*>(dataset.images.data()),
                   {n, 1, static_cast<int64_t>(dataset.rows), static_cast<int64_t>(dataset.cols)},
                   torch::kUInt8)
                   .to(torch::kFloat)
                   .div_(255.0);
  out.labels = torch::from_blob(const_cast<uint8_t*>(dataset.labels.data()), {n}, torch::kUInt8)
                   .to(torch::kLong);
  return out;
}

Result<std::pair<LabeledImages, LabeledImages>> HoldOut(const LabeledImages& all, int64_t held_out,
                                                        uint64_t seed) {
  if (held_out < 0 || held_out >= all.size()) {
    return Status::InvalidArgument("held-out size " + std::to_string(held_out) +
                                   " must be in [0, " + std::to_string(all.size()) + ")");
  }
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  const torch::Tensor perm = torch::randperm(all.size(), gen);
  // Sorting each side keeps the original order inside it, so the split is easy to inspect.
  const torch::Tensor held = std::get<0>(perm.narrow(0, 0, held_out).sort());
  const torch::Tensor rest = std::get<0>(perm.narrow(0, held_out, all.size() - held_out).sort());
  return std::make_pair(all.Select(rest), all.Select(held));
}

torch::Tensor Augment(const torch::Tensor& images, const AugmentOptions& options) {
  torch::Tensor out = images;
  const int64_t n = images.size(0);
  if (options.hflip) {
    const torch::Tensor flip = torch::rand({n, 1, 1, 1}) < 0.5;
    out = torch::where(flip, out.flip({3}), out);
  }
  const int p = options.crop_padding;
  if (p > 0) {
    // Random translation as a gather: pad once, then take each image's window through
    // one index tensor (a per-image loop of narrow/copy costs more than the conv layers).
    const int64_t h = images.size(2), w = images.size(3);
    const torch::Tensor padded = torch::constant_pad_nd(out, {p, p, p, p});
    const torch::Tensor dy = torch::randint(0, 2 * p + 1, {n, 1, 1, 1}, torch::kLong);
    const torch::Tensor dx = torch::randint(0, 2 * p + 1, {n, 1, 1, 1}, torch::kLong);
    const torch::Tensor rows = torch::arange(h, torch::kLong).view({1, 1, h, 1}) + dy;
    const torch::Tensor cols = torch::arange(w, torch::kLong).view({1, 1, 1, w}) + dx;
    const int64_t pw = w + 2 * p;
    const torch::Tensor flat_index = (rows * pw + cols).expand({n, images.size(1), h, w});
    out = padded.flatten(2).gather(2, flat_index.flatten(2)).view_as(images);
  } else if (out.data_ptr() == images.data_ptr()) {
    out = images.clone();
  }
  return out;
}

double WarmupCosineLr(double peak, int64_t step, int64_t total, double warmup) {
  if (total <= 0) return peak;
  const double f = static_cast<double>(step) / static_cast<double>(total);
  if (f < warmup) return peak * (0.1 + 0.9 * f / warmup);
  const double g = (f - warmup) / std::max(1e-9, 1.0 - warmup);
  return peak * 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, g)));
}

void SetLearningRate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) {
    if (auto* sgd = dynamic_cast<torch::optim::SGDOptions*>(&group.options())) {
      sgd->lr(lr);
    } else if (auto* adamw = dynamic_cast<torch::optim::AdamWOptions*>(&group.options())) {
      adamw->lr(lr);
    } else if (auto* adam = dynamic_cast<torch::optim::AdamOptions*>(&group.options())) {
      adam->lr(lr);
    }
  }
}

torch::Tensor Batched(const torch::Tensor& inputs, int64_t batch,
                      const std::function<torch::Tensor(const torch::Tensor&)>& fn) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for (int64_t i = 0; i < inputs.size(0); i += batch) {
    parts.push_back(fn(inputs.narrow(0, i, std::min(batch, inputs.size(0) - i))));
  }
  return torch::cat(parts, 0);
}

double Accuracy(const torch::Tensor& logits, const torch::Tensor& labels) {
  if (labels.numel() == 0) return 0.0;
  return logits.argmax(1).eq(labels).to(torch::kDouble).mean().item<double>();
}

}  // namespace cleave::split
