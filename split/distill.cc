#include "split/distill.h"

#include <chrono>
#include <cmath>
#include <optional>

#include "common/progress.h"

namespace cleave::split {
namespace {

namespace F = torch::nn::functional;

constexpr double kLabelSmoothing = 0.1;
constexpr double kKdTemperature = 4.0;
constexpr double kKdWeight = 0.5;  // share of the KD term; the rest is cross-entropy
// Stage 2 refreshes the wire ranges every few batches: the range search costs about as much
// as a small conv layer, and ranges drift slowly.
constexpr int64_t kWireObserveEvery = 4;

struct Batch {
  torch::Tensor images;  // augmented when the stage augments
  torch::Tensor labels;
  torch::Tensor index;  // rows of the training set
};
// Returns the loss of one batch, with autograd history.
using StepFn = std::function<torch::Tensor(const Batch& batch)>;

std::string Fixed(double v, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

// Hinton et al. 2015: T^2 * KL(softmax(teacher/T) || softmax(student/T)).
torch::Tensor KdLoss(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits) {
  const double t = kKdTemperature;
  return t * t *
         F::kl_div(F::log_softmax(student_logits / t, F::LogSoftmaxFuncOptions(1)),
                   F::log_softmax(teacher_logits / t, F::LogSoftmaxFuncOptions(1)),
                   F::KLDivFuncOptions().reduction(torch::kBatchMean).log_target(true));
}

torch::Tensor CeLoss(const torch::Tensor& logits, const torch::Tensor& labels,
                     double smoothing = 0.0) {
  return F::cross_entropy(logits, labels, F::CrossEntropyFuncOptions().label_smoothing(smoothing));
}

// The shared mini-batch loop: shuffling, augmentation, schedule, progress, cancellation.
Result<StageStats> RunStage(const StageConfig& config, const ImageRows& train,
                            torch::optim::Optimizer& optimizer, const StepFn& step) {
  const int64_t n = train.size();
  const int64_t batch = std::min<int64_t>(config.batch_size, n);
  if (batch < 2 || config.epochs < 0) {
    return Status::InvalidArgument(config.label + ": need at least 2 training images, got " +
                                   std::to_string(n));
  }
  const int64_t steps_per_epoch = n / batch;  // the ragged last batch is dropped
  const int64_t total_steps = steps_per_epoch * config.epochs;
  StageStats stats;
  stats.name = config.label;
  std::optional<ProgressBar> bar;
  if (config.progress_out != nullptr) {
    bar.emplace(config.label, static_cast<uint64_t>(total_steps * batch), config.progress_out);
  }
  const auto start = std::chrono::steady_clock::now();
  double loss_avg = 0;
  int64_t step_index = 0;
  for (int epoch = 0; epoch < config.epochs; ++epoch) {
    EpochBatches batches(train, torch::randperm(n, torch::kLong), batch);
    for (int64_t s = 0; s < steps_per_epoch; ++s, ++step_index) {
      if (config.cancelled && config.cancelled()) {
        return Status::FailedPrecondition("interrupted during " + config.label +
                                          "; nothing was written");
      }
      SetLearningRate(optimizer, WarmupCosineLr(config.lr, step_index, total_steps));
      Result<torch::Tensor> images = batches.Next();
      if (!images.ok()) return images.status().WithContext(config.label + ": reading a batch");
      const torch::Tensor index = batches.Index(s);
      Batch b{*images, train.labels().index_select(0, index), index};
      if (config.augment) b.images = Augment(b.images, config.augment_options);
      const torch::Tensor loss = step(b);
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      const double value = loss.item<double>();
      if (!std::isfinite(value)) {
        return Status::Internal(config.label + ": loss became " + std::to_string(value) +
                                " at step " + std::to_string(step_index) +
                                " (diverged; try a lower learning rate)");
      }
      loss_avg = step_index == 0 ? value : 0.98 * loss_avg + 0.02 * value;
      stats.samples += batch;
      if (bar) {
        bar->Update(static_cast<uint64_t>(stats.samples), "epoch " + std::to_string(epoch + 1) +
                                                              "/" + std::to_string(config.epochs) +
                                                              " loss " + Fixed(loss_avg, 4));
      }
    }
  }
  if (bar) bar->Finish("loss " + Fixed(loss_avg, 4));
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats.samples_per_second = stats.seconds > 0 ? stats.samples / stats.seconds : 0;
  stats.final_loss = loss_avg;
  return stats;
}

// Stage stats whose wall time counts from `start` (so set-up passes are included).
Result<StageStats> SinceStart(Result<StageStats> stats,
                              std::chrono::steady_clock::time_point start) {
  if (stats.ok()) {
    stats->seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return stats;
}

// Copies parameters and buffers between two blocks of identical structure.
Status CopyModule(torch::nn::Module& dst, torch::nn::Module& src, const std::string& what) {
  torch::NoGradGuard no_grad;
  auto dst_params = dst.named_parameters(true);
  auto src_params = src.named_parameters(true);
  auto dst_buffers = dst.named_buffers(true);
  auto src_buffers = src.named_buffers(true);
  if (dst_params.size() != src_params.size() || dst_buffers.size() != src_buffers.size()) {
    return Status::InvalidArgument(what + ": block structures differ");
  }
  for (auto* pair : {&dst_params, &dst_buffers}) {
    auto& source = pair == &dst_params ? src_params : src_buffers;
    for (auto& item : *pair) {
      const torch::Tensor* from = source.find(item.key());
      if (from == nullptr || from->sizes() != item.value().sizes()) {
        return Status::InvalidArgument(what + ": tensor " + item.key() + " does not match");
      }
      item.value().copy_(*from);
    }
  }
  return Status::Ok();
}

std::vector<torch::Tensor> ParametersOf(SplitVisionNetImpl& net, int begin, int end) {
  std::vector<torch::Tensor> out;
  for (int i = begin; i < end; ++i) {
    for (auto& p : net.block(i).parameters()) out.push_back(p);
  }
  return out;
}

}  // namespace

nlohmann::json StageStats::ToJson() const {
  return {{"name", name},
          {"seconds", seconds},
          {"samples", samples},
          {"samples_per_second", samples_per_second},
          {"final_loss", final_loss}};
}

Result<std::pair<int, int>> BottleneckBlocks(const VisionModelSpec& spec) {
  int encoder = -1, decoder = -1;
  for (size_t i = 0; i < spec.blocks.size(); ++i) {
    if (spec.blocks[i].role == "encoder" && encoder < 0) encoder = static_cast<int>(i);
    if (spec.blocks[i].role == "decoder" && decoder < 0) decoder = static_cast<int>(i);
  }
  if (encoder < 0 || decoder != encoder + 1) {
    return Status::InvalidArgument(
        "model spec needs an 'encoder' block immediately followed by a 'decoder' block");
  }
  return std::make_pair(encoder, decoder);
}

void SetMemoryFormat(torch::nn::Module& module, c10::MemoryFormat format) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) {
    if (p.dim() == 4) p.set_data(p.contiguous(format));
  }
}

Result<VisionModelSpec> TeacherFor(const VisionModelSpec& student) {
  CLEAVE_ASSIGN_OR_RETURN(const auto pair, BottleneckBlocks(student));
  const BlockSpec& encoder = student.blocks[pair.first];
  const BlockSpec& decoder = student.blocks[pair.second];
  VisionModelSpec teacher = student;
  teacher.exits.clear();
  teacher.split_after = -1;
  // The teacher keeps the student's family: a residual network gets a BasicBlock there.
  const bool residual_family = pair.first > 0 && student.blocks[pair.first - 1].type == "res";
  BlockSpec merged;
  merged.type = residual_family ? "res" : "fused_mb";
  merged.in_channels = encoder.in_channels;
  merged.out_channels = decoder.out_channels;
  merged.stride = encoder.stride;
  merged.expansion = 2;
  teacher.blocks.erase(teacher.blocks.begin() + pair.first,
                       teacher.blocks.begin() + pair.second + 1);
  teacher.blocks.insert(teacher.blocks.begin() + pair.first, merged);
  CLEAVE_RETURN_IF_ERROR(teacher.Validate());
  return teacher;
}

Result<StageStats> TrainTeacher(SplitVisionNetImpl& teacher, const ImageRows& train,
                                const StageConfig& config) {
  teacher.train();
  torch::optim::SGD optimizer(
      teacher.parameters(),
      torch::optim::SGDOptions(config.lr).momentum(0.9).nesterov(true).weight_decay(
          config.weight_decay));
  return RunStage(config, train, optimizer, [&](const Batch& b) {
    return CeLoss(teacher.forward(b.images), b.labels, kLabelSmoothing);
  });
}

Status InitStudentFromTeacher(SplitVisionNetImpl& student, SplitVisionNetImpl& teacher) {
  CLEAVE_ASSIGN_OR_RETURN(const auto pair, BottleneckBlocks(student.spec()));
  const int encoder = pair.first, decoder = pair.second;
  const int tail_blocks = student.num_blocks() - decoder - 1;
  if (teacher.num_blocks() != encoder + 1 + tail_blocks) {
    return Status::InvalidArgument("teacher has " + std::to_string(teacher.num_blocks()) +
                                   " blocks; the student needs " +
                                   std::to_string(encoder + 1 + tail_blocks));
  }
  for (int i = 0; i < encoder; ++i) {
    CLEAVE_RETURN_IF_ERROR(
        CopyModule(student.block(i), teacher.block(i), "head block " + std::to_string(i)));
  }
  for (int k = 0; k < tail_blocks; ++k) {
    const int s = decoder + 1 + k, t = encoder + 1 + k;
    CLEAVE_RETURN_IF_ERROR(
        CopyModule(student.block(s), teacher.block(t),
                   "student block " + std::to_string(s) + " <- teacher " + std::to_string(t)));
  }
  return Status::Ok();
}

Result<StageStats> DistillBottleneck(SplitVisionNetImpl& student, SplitVisionNetImpl& teacher,
                                     const ImageRows& train, const StageConfig& config) {
  CLEAVE_ASSIGN_OR_RETURN(const auto pair, BottleneckBlocks(student.spec()));
  const int encoder = pair.first, decoder = pair.second;
  teacher.eval();
  student.eval();
  student.block(encoder).train();
  student.block(decoder).train();
  torch::optim::AdamW optimizer(
      ParametersOf(student, encoder, decoder + 1),
      torch::optim::AdamWOptions(config.lr).weight_decay(config.weight_decay));
  return RunStage(config, train, optimizer, [&](const Batch& b) {
    torch::Tensor head, target;
    {
      torch::NoGradGuard no_grad;  // the head is frozen and equals the teacher's
      head = teacher.ForwardRange(teacher.Preprocess(b.images), 0, encoder);
      target = teacher.block(encoder).forward(head);
    }
    return F::mse_loss(student.ForwardRange(head, encoder, decoder + 1), target);
  });
}

Result<StageStats> FinetuneWithWire(SplitVisionNetImpl& student, SplitVisionNetImpl& teacher,
                                    const ImageRows& train, const StageConfig& config,
                                    WireRangeTracker& wire) {
  const int split_end = student.spec().split_after + 1;
  if (split_end <= 0) return Status::InvalidArgument("student spec has no split point");
  const auto start = std::chrono::steady_clock::now();
  teacher.eval();
  // Without augmentation every epoch shows the teacher the same images: compute its logits
  // once (one inference pass) instead of once per epoch.
  torch::Tensor cached_teacher;
  if (!config.augment && config.epochs > 1) {
    CLEAVE_ASSIGN_OR_RETURN(cached_teacher, BatchedRows(train, 500, [&](const torch::Tensor& x) {
                              return teacher.forward(x);
                            }));
  }
  student.train();
  for (int e = 0; e < student.num_exits(); ++e) student.exit(e)->eval();
  torch::optim::SGD optimizer(
      ParametersOf(student, 0, student.num_blocks()),
      torch::optim::SGDOptions(config.lr).momentum(0.9).nesterov(true).weight_decay(
          config.weight_decay));
  int64_t step = 0;
  auto stats = RunStage(config, train, optimizer, [&](const Batch& b) {
    torch::Tensor features = student.ForwardRange(student.Preprocess(b.images), 0, split_end);
    if (step++ % kWireObserveEvery == 0 || !wire.initialized()) wire.Observe(features);
    features = FakeQuantizeWire(features, wire.Params(), wire.dtype());
    const torch::Tensor logits = student.ForwardRange(features, split_end, student.num_blocks());
    torch::Tensor teacher_logits;
    if (cached_teacher.defined()) {
      teacher_logits = cached_teacher.index_select(0, b.index);
    } else {
      torch::NoGradGuard no_grad;
      teacher_logits = teacher.forward(b.images);
    }
    return (1.0 - kKdWeight) * CeLoss(logits, b.labels) +
           kKdWeight * KdLoss(logits, teacher_logits);
  });
  return SinceStart(std::move(stats), start);
}

Result<StageStats> TrainExits(SplitVisionNetImpl& student, const ImageRows& train,
                              const StageConfig& config) {
  const VisionModelSpec& spec = student.spec();
  if (spec.exits.empty()) return Status::InvalidArgument("the model has no exits to train");
  const auto start = std::chrono::steady_clock::now();
  student.eval();
  int last_tap = 0;
  for (const ExitSpec& e : spec.exits) last_tap = std::max(last_tap, e.after_block);
  // The frozen backbone's answers are fixed when the images are: compute them once.
  torch::Tensor cached_final;
  if (!config.augment && config.epochs > 1) {
    CLEAVE_ASSIGN_OR_RETURN(cached_final, BatchedRows(train, 500, [&](const torch::Tensor& x) {
                              return student.forward(x);
                            }));
  }
  std::vector<torch::Tensor> params;
  for (int e = 0; e < student.num_exits(); ++e) {
    student.exit(e)->train();
    for (auto& p : student.exit(e)->parameters()) params.push_back(p);
  }
  torch::optim::AdamW optimizer(
      params, torch::optim::AdamWOptions(config.lr).weight_decay(config.weight_decay));
  auto stats = RunStage(config, train, optimizer, [&](const Batch& b) {
    std::vector<torch::Tensor> taps(spec.exits.size());
    torch::Tensor final_logits;
    {
      torch::NoGradGuard no_grad;  // backbone frozen (eval: BN statistics stay put)
      torch::Tensor h = student.Preprocess(b.images);
      const int end = cached_final.defined() ? last_tap + 1 : student.num_blocks();
      for (int i = 0; i < end; ++i) {
        h = student.block(i).forward(h);
        for (size_t e = 0; e < spec.exits.size(); ++e) {
          if (spec.exits[e].after_block == i) taps[e] = h;
        }
      }
      final_logits = cached_final.defined() ? cached_final.index_select(0, b.index) : h;
    }
    torch::Tensor loss = torch::zeros({}, torch::kFloat);
    for (size_t e = 0; e < taps.size(); ++e) {
      const torch::Tensor logits = student.exit(static_cast<int>(e))->forward(taps[e]);
      loss = loss + (1.0 - kKdWeight) * CeLoss(logits, b.labels) +
             kKdWeight * KdLoss(logits, final_logits);
    }
    return loss;
  });
  return SinceStart(std::move(stats), start);
}

}  // namespace cleave::split
