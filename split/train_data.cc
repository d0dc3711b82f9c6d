#include "split/train_data.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <thread>

#include "common/progress.h"

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

Result<LabeledImages> LoadLabeledImages(const ImageDataSource& source, const InputSpec& input,
                                        const LoadImagesOptions& options) {
  CLEAVE_RETURN_IF_ERROR(input.Validate());
  const bool by_rows = !options.rows.empty();
  const int64_t n = by_rows             ? static_cast<int64_t>(options.rows.size())
                    : options.limit > 0 ? std::min(options.limit, source.size())
                                        : source.size();
  if (n < 1) return Status::InvalidArgument("the dataset has no images");
  const ImageShape shape = source.shape();
  const int64_t out_bytes = input.bytes();
  // uint8 while reading (a quarter of the float size), converted once at the end.
  torch::Tensor pixels =
      torch::empty({n, input.channels, input.height, input.width}, torch::kUInt8);
  torch::Tensor labels = torch::empty({n}, torch::kLong);
  uint8_t* out = pixels.data_ptr<uint8_t>();
  int64_t* label_out = labels.data_ptr<int64_t>();
  const int64_t classes = static_cast<int64_t>(input.class_names.size());

  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> failed{false};
  std::mutex error_mu;
  Status first_error = Status::Ok();
  int64_t first_error_index = n;
  const auto work = [&] {
    std::vector<uint8_t> raw(static_cast<size_t>(shape.bytes()));
    constexpr int64_t kChunk = 64;
    while (!failed.load(std::memory_order_relaxed)) {
      const int64_t begin = next.fetch_add(kChunk);
      if (begin >= n) break;
      const int64_t end = std::min(n, begin + kChunk);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t row = by_rows ? options.rows[static_cast<size_t>(i)] : i;
        int32_t label = -1;
        Status st = source.Read(row, raw.data(), &label);
        if (st.ok() && (label < 0 || label >= classes)) {
          st = Status::InvalidArgument("label " + std::to_string(label) + " is outside the " +
                                       std::to_string(classes) + " classes");
        }
        if (st.ok()) {
          st = input.PrepareChw(raw.data(), shape.channels, shape.height, shape.width,
                                out + i * out_bytes);
        }
        if (!st.ok()) {
          std::lock_guard<std::mutex> lock(error_mu);
          if (i < first_error_index) {
            first_error_index = i;
            first_error = st.WithContext("image " + std::to_string(row));
          }
          failed = true;
          break;
        }
        label_out[i] = label;
      }
      done.fetch_add(end - begin);
    }
  };
  const int threads = std::max(1, std::min<int>(options.threads, 16));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  if (options.progress_out != nullptr && n >= 20000) {
    // The calling thread reports progress while the others read.
    std::thread reader(work);
    ProgressBar bar(options.label, static_cast<uint64_t>(n), options.progress_out);
    while (done.load() < n && !failed.load()) {
      bar.Update(static_cast<uint64_t>(std::min(done.load(), n)));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (next.load() >= n && done.load() >= n) break;
    }
    reader.join();
    for (auto& t : pool) t.join();
    pool.clear();
    bar.Finish();
  } else {
    work();
  }
  for (auto& t : pool) t.join();
  if (failed) return first_error;
  LabeledImages result;
  result.images = pixels.to(torch::kFloat).div_(255.0);
  result.labels = labels;
  return result;
}

std::pair<std::vector<float>, std::vector<float>> ChannelStats(const torch::Tensor& images) {
  torch::NoGradGuard no_grad;
  const torch::Tensor per_channel = images.transpose(0, 1).flatten(1).to(torch::kDouble);
  const torch::Tensor mean = per_channel.mean(1);
  const torch::Tensor std = per_channel.std(1, /*unbiased=*/false).clamp_min(1e-3);
  std::vector<float> m, s;
  for (int64_t c = 0; c < mean.size(0); ++c) {
    m.push_back(static_cast<float>(mean[c].item<double>()));
    s.push_back(static_cast<float>(std[c].item<double>()));
  }
  return {m, s};
}

Result<std::pair<torch::Tensor, torch::Tensor>> HoldOutRows(int64_t n, int64_t held_out,
                                                            uint64_t seed) {
  if (held_out < 0 || held_out >= n) {
    return Status::InvalidArgument("held-out size " + std::to_string(held_out) +
                                   " must be in [0, " + std::to_string(n) + ")");
  }
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  const torch::Tensor perm = torch::randperm(n, gen);
  // Sorting each side keeps the original order inside it, so the split is easy to inspect.
  const torch::Tensor held = std::get<0>(perm.narrow(0, 0, held_out).sort());
  const torch::Tensor rest = std::get<0>(perm.narrow(0, held_out, n - held_out).sort());
  return std::make_pair(rest, held);
}

Result<std::pair<LabeledImages, LabeledImages>> HoldOut(const LabeledImages& all, int64_t held_out,
                                                        uint64_t seed) {
  CLEAVE_ASSIGN_OR_RETURN(auto rows, HoldOutRows(all.size(), held_out, seed));
  return std::make_pair(all.Select(rows.first), all.Select(rows.second));
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
