#include "edge/adaptation.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "common/file_util.h"
#include "common/logging.h"
#include "edge/adaptable_model.h"
#include "federated/fl_config.h"
#include "federated/replay_buffer.h"
#include "split/torch_status.h"

namespace cleave::edge {

namespace F = torch::nn::functional;
using federated::LabeledBatch;

namespace {

int64_t ImageBytes(const torch::Tensor& image) {
  return image.defined() ? image.numel() * static_cast<int64_t>(image.element_size()) : 0;
}

// The top class of `logits` and its probability margin over the second (top-1 minus top-2).
std::pair<int64_t, double> TopClassAndMargin(const torch::Tensor& logits) {
  const torch::Tensor p = F::softmax(logits.to(torch::kFloat).flatten(), F::SoftmaxFuncOptions(0));
  const auto top = p.topk(std::min<int64_t>(2, p.numel()));
  const double margin = std::get<0>(top)[0].item<double>() -
                        (p.numel() > 1 ? std::get<0>(top)[1].item<double>() : 0.0);
  return {std::get<1>(top)[0].item<int64_t>(), margin};
}

std::string AdaptShapeText(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

std::filesystem::path PendingFile(const std::string& buffer_file) {
  return buffer_file + ".pending";
}

// The last `limit` rows (the oldest go first).
LabeledBatch KeepLast(const LabeledBatch& rows, int64_t limit) {
  if (rows.size() <= limit) return rows;
  return rows.Select(torch::arange(rows.size() - limit, rows.size(), torch::kLong));
}

Result<crypto::Key256> ReadKeyFile(const std::string& path) {
  CLEAVE_ASSIGN_OR_RETURN(std::string text, ReadPrivateFile(path));
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  crypto::Key256 key{};
  if (text.size() == 64) {
    for (size_t i = 0; i < 32; ++i) {
      const std::string byte = text.substr(2 * i, 2);
      if (!std::isxdigit(static_cast<unsigned char>(byte[0])) ||
          !std::isxdigit(static_cast<unsigned char>(byte[1]))) {
        return Status::InvalidArgument(path + ": not 64 hex digits");
      }
      key[i] = static_cast<uint8_t>(std::stoi(byte, nullptr, 16));
    }
    return key;
  }
  return Status::InvalidArgument(path +
                                 ": a buffer key is 64 hex digits (32 bytes); e.g. "
                                 "`openssl rand -hex 32 > FILE && chmod 600 FILE`");
}

}  // namespace

// ---------------------------------------------------------------- options and config

Status AdaptOptions::Validate() const {
  if (scope != "auto" && scope != "exits" && scope != "head") {
    return Status::InvalidArgument("edge.adapt_scope must be auto, exits or head, got '" + scope +
                                   "'");
  }
  CLEAVE_RETURN_IF_ERROR(strategy.Validate().WithContext("edge.adapt_*"));
  const auto positive = [](double v, const char* key) -> Status {
    if (!(v > 0) || !std::isfinite(v)) {
      return Status::InvalidArgument(std::string(key) + " must be > 0");
    }
    return Status::Ok();
  };
  CLEAVE_RETURN_IF_ERROR(positive(static_cast<double>(min_new), "edge.adapt_min_new"));
  CLEAVE_RETURN_IF_ERROR(positive(static_cast<double>(window), "edge.adapt_window"));
  CLEAVE_RETURN_IF_ERROR(positive(epochs, "edge.adapt_epochs"));
  CLEAVE_RETURN_IF_ERROR(positive(static_cast<double>(batch_size), "edge.adapt_batch_size"));
  CLEAVE_RETURN_IF_ERROR(positive(lr, "edge.adapt_lr"));
  CLEAVE_RETURN_IF_ERROR(positive(max_cycle_seconds, "edge.adapt_max_seconds"));
  CLEAVE_RETURN_IF_ERROR(
      positive(static_cast<double>(feedback_window), "edge.adapt_feedback_window"));
  CLEAVE_RETURN_IF_ERROR(positive(static_cast<double>(inbox), "edge.adapt_inbox"));
  CLEAVE_RETURN_IF_ERROR(positive(static_cast<double>(max_bytes), "edge.adapt_max_mb"));
  if (!(cpu_share > 0 && cpu_share <= 1)) {
    return Status::InvalidArgument("edge.adapt_cpu_share must be in (0, 1]");
  }
  if (!(momentum >= 0 && momentum < 1)) {
    return Status::InvalidArgument("edge.adapt_momentum must be in [0, 1)");
  }
  if (!(pseudo_margin >= 0 && pseudo_margin <= 1)) {
    return Status::InvalidArgument("edge.adapt_pseudo_margin must be in [0, 1] (0 = off)");
  }
  if (!(teacher_margin >= 0) || !std::isfinite(teacher_margin)) {
    return Status::InvalidArgument("edge.adapt_teacher_margin must be >= 0 (> 1 = never)");
  }
  if (!(code_weight >= 0) || !std::isfinite(code_weight)) {
    return Status::InvalidArgument("edge.adapt_code_weight must be >= 0");
  }
  if (min_new > window) {
    return Status::InvalidArgument("edge.adapt_min_new must be <= edge.adapt_window");
  }
  if (buffer_key && buffer_file.empty()) {
    return Status::InvalidArgument("edge.adapt_buffer_key_file needs edge.adapt_buffer_file");
  }
  return Status::Ok();
}

void AddAdaptConfigKeys(ConfigSchema& s) {
  s.Add("edge.adapt_enabled", ConfigType::kBool, "false",
        "serve: learn on the gateway from what it serves (the cloud's answers as soft labels, "
        "confident exits, the application's feedback) and hot-swap the adapted exits in "
        "(docs/design.md, on-gateway learning)")
      .Add("edge.adapt_scope", ConfigType::kString, "auto",
           "what adapts: exits (the early exits only; the code sent to the cloud is "
           "untouched) | head (also the head's blocks before the encoder, with distillation "
           "holding the encoder's code; cleave's own vision-split bundles only) | auto (head "
           "where the bundle allows it, else exits)")
      .Add("edge.adapt_min_new", ConfigType::kInt, "256",
           "labelled inputs that start an adaptation cycle")
      .Add("edge.adapt_window", ConfigType::kInt, "4096",
           "labelled inputs kept for the next cycle (the oldest are dropped)")
      .Add("edge.adapt_epochs", ConfigType::kInt, "3", "epochs over a cycle's inputs")
      .Add("edge.adapt_batch_size", ConfigType::kInt, "32", "adaptation mini-batch")
      .Add("edge.adapt_lr", ConfigType::kDouble, "0.01", "adaptation SGD learning rate")
      .Add("edge.adapt_momentum", ConfigType::kDouble, "0.9", "adaptation SGD momentum")
      .Add("edge.adapt_cpu_share", ConfigType::kDouble, "0.25",
           "adaptation's CPU budget: share of one core over time (the learner sleeps between "
           "cycles to stay within it)")
      .Add("edge.adapt_max_seconds", ConfigType::kDouble, "30",
           "training time of one cycle at most")
      .Add("edge.adapt_pseudo_margin", ConfigType::kDouble, "0",
           "an exit answer whose probability margin (top-1 minus top-2) reaches this becomes "
           "a pseudo-label; 0 = off")
      .Add("edge.adapt_teacher_margin", ConfigType::kDouble, "0.3",
           "a cloud answer whose probability margin (top-1 minus top-2) reaches this also "
           "teaches its class as a hard label (else only its soft label); > 1 = never")
      .Add("edge.adapt_code_weight", ConfigType::kDouble, "1.0",
           "scope head: weight of the distillation that holds the encoder's code")
      .Add("edge.adapt_feedback_window", ConfigType::kInt, "4096",
           "the last N requests can still get feedback (their inputs are kept that long)")
      .Add("edge.adapt_max_mb", ConfigType::kInt, "128",
           "memory the inputs waiting for the learner may take, in MiB, for the inbox and "
           "for the feedback window each (the oldest requests leave the window first)")
      .Add("edge.adapt_inbox", ConfigType::kInt, "8192",
           "served inputs waiting for the learner; more are dropped (serving never waits)")
      .Add("edge.adapt_buffer_file", ConfigType::kString, "",
           "where the learner's rows (replay buffer, pending inputs) are kept across "
           "restarts, written atomically (mode 0600); empty = not kept")
      .Add("edge.adapt_buffer_key_file", ConfigType::kString, "",
           "AES-256 key file (64 hex digits, mode 0600) sealing edge.adapt_buffer_file; "
           "empty = not sealed");
  // Experience replay; distillation at T = 1 (the exits answer with the cloud's own
  // confidence, which the exit threshold reads). Chosen with `cleave bench continual
  // --validation` (docs/benchmarks.md).
  federated::ContinualConfig strategy;
  strategy.strategy = "derpp";
  strategy.kd_temperature = 1.0;
  federated::AddContinualConfigKeys(s, "edge.adapt_", strategy);
}

Result<AdaptOptions> AdaptOptionsFromConfig(const Config& c) {
  AdaptOptions o;
  o.enabled = c.GetBool("edge.adapt_enabled");
  o.scope = c.GetString("edge.adapt_scope");
  o.min_new = c.GetInt("edge.adapt_min_new");
  o.window = c.GetInt("edge.adapt_window");
  o.epochs = static_cast<int>(c.GetInt("edge.adapt_epochs"));
  o.batch_size = c.GetInt("edge.adapt_batch_size");
  o.lr = c.GetDouble("edge.adapt_lr");
  o.momentum = c.GetDouble("edge.adapt_momentum");
  o.cpu_share = c.GetDouble("edge.adapt_cpu_share");
  o.max_cycle_seconds = c.GetDouble("edge.adapt_max_seconds");
  o.pseudo_margin = c.GetDouble("edge.adapt_pseudo_margin");
  o.code_weight = c.GetDouble("edge.adapt_code_weight");
  o.teacher_margin = c.GetDouble("edge.adapt_teacher_margin");
  o.feedback_window = c.GetInt("edge.adapt_feedback_window");
  o.inbox = c.GetInt("edge.adapt_inbox");
  o.max_bytes = c.GetInt("edge.adapt_max_mb") << 20;
  o.buffer_file = c.GetString("edge.adapt_buffer_file");
  CLEAVE_ASSIGN_OR_RETURN(o.strategy, federated::ReadContinualConfigKeys(c, "edge.adapt_"));
  const std::string key_file = c.GetString("edge.adapt_buffer_key_file");
  if (!key_file.empty()) {
    Result<crypto::Key256> key = ReadKeyFile(key_file);
    if (!key.ok()) return key.status().WithContext("edge.adapt_buffer_key_file");
    o.buffer_key = *key;
  }
  CLEAVE_RETURN_IF_ERROR(o.Validate());
  return o;
}

// ---------------------------------------------------------------- the learner

EdgeLearner::EdgeLearner(AdaptOptions options, split::EdgeModel::Options head, SwapFn swap,
                         std::shared_ptr<Metrics> metrics)
    : options_(std::move(options)),
      head_(std::move(head)),
      swap_(std::move(swap)),
      metrics_(metrics ? std::move(metrics) : std::make_shared<Metrics>()),
      m_(&metrics_->Adaptation()) {}

Result<std::unique_ptr<EdgeLearner>> EdgeLearner::Create(AdaptOptions options, const Bundle& bundle,
                                                         split::EdgeModel::Options head,
                                                         SwapFn swap,
                                                         std::shared_ptr<Metrics> metrics) {
  CLEAVE_RETURN_IF_ERROR(options.Validate());
  if (!swap) return Status::InvalidArgument("edge learner: no swap function");
  if (options.scope == "auto") {
    options.scope = bundle.kind() == split::kVisionSplitKind ? "head" : "exits";
  }
  std::unique_ptr<EdgeLearner> learner(
      new EdgeLearner(std::move(options), std::move(head), std::move(swap), std::move(metrics)));
  CLEAVE_ASSIGN_OR_RETURN(learner->base_,
                          LoadAdaptableModel(bundle, learner->head_, learner->options_.scope,
                                             learner->options_.code_weight));
  learner->kind_ = learner->base_->kind();
  learner->num_classes_ = learner->base_->num_classes();
  learner->pending_shape_ = learner->base_->input_shape();
  CLEAVE_RETURN_IF_ERROR(learner->Load());
  {
    MutexLock lock(&learner->mu_);
    learner->fresh_ = learner->pending_.size();  // rows kept from before a restart
  }
  {
    const LearnerStats stats = learner->stats();
    learner->m_->buffer_rows->Set(static_cast<double>(stats.buffer_rows));
    learner->m_->pending_rows->Set(static_cast<double>(stats.pending_rows));
    GetLogger("edge")->info(
        "adaptation on ({} bundle, scope {}, strategy {}): {} buffer rows and {} pending "
        "rows{}",
        learner->kind_, learner->options_.scope, learner->options_.strategy.strategy,
        stats.buffer_rows, stats.pending_rows,
        learner->options_.buffer_file.empty() ? "" : " from " + learner->options_.buffer_file);
  }
  learner->thread_ = std::thread([raw = learner.get()] { raw->Loop(); });
  return learner;
}

EdgeLearner::~EdgeLearner() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  cv_.NotifyAll();
  if (thread_.joinable()) thread_.join();
  if (Status s = Save(); !s.ok()) {
    GetLogger("edge")->warn("adaptation: rows not saved at shutdown: {}", s.ToString());
  }
}

Status EdgeLearner::Rebase(const Bundle& bundle) {
  const auto check = [&]() -> Result<std::shared_ptr<AdaptableModel>> {
    if (bundle.kind() != kind_) {
      return Status::FailedPrecondition(
          "adaptation: the new bundle is of kind " + bundle.kind() + ", the learner's is " + kind_ +
          " (its rows and strategy belong to that model); restart the edge to adapt a " +
          bundle.kind() + " bundle");
    }
    CLEAVE_ASSIGN_OR_RETURN(
        std::shared_ptr<AdaptableModel> loaded,
        LoadAdaptableModel(bundle, head_, options_.scope, options_.code_weight));
    if (loaded->num_classes() != num_classes_ || loaded->input_shape() != pending_shape_) {
      return Status::InvalidArgument(
          "adaptation: the new bundle's input or classes differ from the learner's rows (" +
          std::to_string(loaded->num_classes()) + " classes, input " +
          AdaptShapeText(loaded->input_shape()) + "; the learner's: " +
          std::to_string(num_classes_) + " classes, input " + AdaptShapeText(pending_shape_) + ")");
    }
    return loaded;
  };
  Result<std::shared_ptr<AdaptableModel>> loaded = check();
  const Status refused = loaded.status();
  MutexLock lock(&mu_);
  ++generation_;  // a cycle in progress on the old base is not swapped in
  if (!refused.ok()) {
    // The new version serves; exits adapted on the old base must not replace it.
    next_base_.reset();
    suspended_ = refused.ToString() + "; adaptation pauses until a bundle it can adapt serves";
    stats_.last_error = suspended_;
    return refused;
  }
  next_base_ = std::move(loaded).value();
  suspended_.clear();
  return Status::Ok();
}

void EdgeLearner::Observe(Observation o) {
  if (!o.image.defined()) return;
  const bool labelled =
      o.teacher.defined() || (o.exit_logits.defined() && options_.pseudo_margin > 0);
  bool dropped = false;
  {
    MutexLock lock(&mu_);
    ++served_since_;
    if (o.exit_logits.defined()) ++exited_since_;
    const int64_t id = next_id_++;
    // Every request can get feedback for a while.
    const int64_t bytes = ImageBytes(o.image);
    const auto key = std::make_pair(std::move(o.peer), o.request_id);
    auto [it, fresh] = recent_.try_emplace(key);
    if (fresh) {
      recent_order_.push_back(key);
    } else {
      recent_bytes_ -= ImageBytes(it->second.image);
    }
    it->second = Recent{id, o.image};
    recent_bytes_ += bytes;
    while (!recent_order_.empty() &&
           (static_cast<int64_t>(recent_order_.size()) > options_.feedback_window ||
            recent_bytes_ > options_.max_bytes)) {
      auto old = recent_.find(recent_order_.front());
      if (old != recent_.end()) {
        recent_bytes_ -= ImageBytes(old->second.image);
        recent_.erase(old);
      }
      recent_order_.pop_front();
    }
    if (labelled) {
      if (static_cast<int64_t>(inbox_.size()) >= options_.inbox ||
          inbox_bytes_ + bytes > options_.max_bytes) {
        dropped = true;
        ++stats_.dropped;
      } else {
        inbox_bytes_ += bytes;
        inbox_.push_back(
            Item{id, std::move(o.image), std::move(o.teacher), std::move(o.exit_logits), -1});
        ++labelled_waiting_;
      }
    }
  }
  if (dropped) m_->observations_dropped->Increment();
  if (labelled && !dropped) cv_.NotifyOne();
}

edge_api::FeedbackReply EdgeLearner::Feedback(const std::string& peer,
                                              const edge_api::FeedbackRequest& request) {
  edge_api::FeedbackReply reply;
  reply.request_id = request.request_id;
  if (request.true_class < 0 || request.true_class >= num_classes_) {
    reply.error = "trueClass " + std::to_string(request.true_class) +
                  " is outside the model's classes 0.." + std::to_string(num_classes_ - 1);
  } else {
    MutexLock lock(&mu_);
    auto it = recent_.find({peer, request.request_id});
    if (it == recent_.end()) {
      reply.error = "unknown request id " + std::to_string(request.request_id) +
                    " on this connection (feedback is kept for the last " +
                    std::to_string(options_.feedback_window) + " requests)";
    } else if (static_cast<int64_t>(inbox_.size()) >= options_.inbox ||
               inbox_bytes_ + ImageBytes(it->second.image) > options_.max_bytes) {
      reply.error = "the learner is busy; feedback not taken (try again later)";
    } else {
      inbox_bytes_ += ImageBytes(it->second.image);
      inbox_.push_back(Item{it->second.id, it->second.image, {}, {}, request.true_class});
      ++labelled_waiting_;
      reply.accepted = true;
    }
  }
  if (reply.accepted) {
    m_->feedback_accepted->Increment();
    cv_.NotifyOne();
  } else {
    m_->feedback_rejected->Increment();
  }
  return reply;
}

LearnerStats EdgeLearner::stats() const {
  MutexLock lock(&mu_);
  return stats_;
}

void EdgeLearner::Drain() {
  std::vector<Item> inbox;
  {
    MutexLock lock(&mu_);
    inbox.swap(inbox_);
    fresh_ += static_cast<int64_t>(inbox.size());
    labelled_waiting_ = 0;
    inbox_bytes_ = 0;
  }
  if (inbox.empty()) return;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> images, soft;
  std::vector<int64_t> hard, ids;
  std::vector<int64_t> has_soft;
  int64_t teacher = 0, pseudo = 0, feedback = 0;
  int64_t malformed = 0;
  for (Item& item : inbox) {
    int64_t label = -1;
    // The cloud's answer and the exit's logits come from elsewhere: a class count that does
    // not match the model's (a cloud serving another model) is dropped, never trusted.
    if ((item.teacher.defined() && item.teacher.numel() != num_classes_) ||
        (item.exit_logits.defined() && item.exit_logits.numel() != num_classes_) ||
        item.image.sizes() != pending_shape_) {
      ++malformed;
      continue;
    }
    if (item.label >= 0) {
      ++feedback;
      // A row that is pending or in the buffer gets the true class; otherwise it joins.
      bool known = false;
      if (pending_.size() > 0) {
        const torch::Tensor hit = pending_.ids.eq(item.id);
        if (hit.any().item<bool>()) {
          pending_.labels.masked_fill_(hit, item.label);
          known = true;
        }
      }
      if (strategy_->buffer() && strategy_->buffer()->SetLabel(item.id, item.label) > 0) {
        known = true;
      }
      if (known) continue;
      label = item.label;
    } else if (item.teacher.defined()) {
      ++teacher;
      if (options_.teacher_margin <= 1) {
        const auto [top, margin] = TopClassAndMargin(item.teacher);
        if (margin >= options_.teacher_margin) label = top;
      }
    } else if (item.exit_logits.defined()) {
      const auto [top, margin] = TopClassAndMargin(item.exit_logits);
      if (margin < options_.pseudo_margin) continue;
      label = top;
      ++pseudo;
    } else {
      continue;
    }
    images.push_back(item.image.to(torch::kFloat));
    hard.push_back(label);
    ids.push_back(item.id);
    has_soft.push_back(item.teacher.defined() ? 1 : 0);
    soft.push_back(item.teacher.defined() ? item.teacher.to(torch::kFloat).reshape({num_classes_})
                                          : torch::zeros({num_classes_}));
  }
  if (!images.empty()) {
    LabeledBatch rows;
    rows.images = torch::stack(images);
    rows.labels = torch::tensor(hard, torch::kLong);
    rows.soft = torch::stack(soft);
    rows.has_soft = torch::tensor(has_soft, torch::kLong).to(torch::kBool);
    rows.ids = torch::tensor(ids, torch::kLong);
    pending_ = KeepLast(LabeledBatch::Concat(pending_, rows), options_.window);
  }
  if (malformed > 0) {
    m_->observations_dropped->Increment(static_cast<double>(malformed));
    GetLogger("edge")->warn(
        "adaptation: dropped {} inputs whose shape or class count does not "
        "match the model",
        malformed);
  }
  m_->observed_teacher->Increment(static_cast<double>(teacher));
  m_->observed_pseudo->Increment(static_cast<double>(pseudo));
  m_->observed_feedback->Increment(static_cast<double>(feedback));
  m_->pending_rows->Set(static_cast<double>(pending_.size()));
  MutexLock lock(&mu_);
  stats_.observed += teacher + pseudo + feedback;
  stats_.dropped += malformed;
  stats_.pending_rows = pending_.size();
}

namespace {

// Whether served traffic has drifted from what the bundle was calibrated on: `exited` exit
// answers among `served` requests are significantly (a one-sided 3-sigma binomial test) fewer
// than the exit rate the bundle's calibration measured on its held-out data. On data like the
// training data a cycle can only move the exits past their calibrated threshold; cycles run
// when the exits fall short. Without a calibrated exit rate every cycle runs.
bool Drifted(const nlohmann::json& calibration, int64_t served, int64_t exited) {
  if (!calibration.is_object() || !calibration.contains("exit_fraction") ||
      !calibration["exit_fraction"].is_number()) {
    return true;
  }
  const double p0 = calibration["exit_fraction"].get<double>();
  if (!(p0 > 0 && p0 < 1)) return true;
  if (served <= 0) return false;
  const double n = static_cast<double>(served);
  const double z = (static_cast<double>(exited) - n * p0) / std::sqrt(n * p0 * (1 - p0));
  return z <= -3.0;
}

}  // namespace

Status EdgeLearner::Cycle() {
  std::shared_ptr<AdaptableModel> next;
  uint64_t generation = 0;
  {
    MutexLock lock(&mu_);
    if (!suspended_.empty()) return Status::FailedPrecondition(suspended_);
    next = std::move(next_base_);
    generation = generation_;
  }
  if (next) base_ = std::move(next);
  if (pending_.size() == 0) {
    return Status::FailedPrecondition("adaptation: no labelled input to learn from yet");
  }
  int64_t served = 0, exited = 0;
  {
    MutexLock lock(&mu_);
    served = std::exchange(served_since_, 0);
    exited = std::exchange(exited_since_, 0);
  }
  if (!Drifted(base_->calibration(), served, exited)) {
    GetLogger("edge")->debug(
        "adaptation: no cycle: {} of {} requests answered by an exit, not below the bundle's "
        "calibrated exit rate",
        exited, served);
    m_->cycles_skipped->Increment();
    MutexLock lock(&mu_);
    ++stats_.skipped_cycles;
    return Status::Ok();
  }
  return split::CallTorch(split::TorchSource::kOwnState, "adaptation", [&]() -> Status {
    const std::unique_ptr<federated::ContinualModel> trained = base_->Trainable();
    if (previous_.size() > 0) {
      CLEAVE_RETURN_IF_ERROR(strategy_->Consolidate(*trained, previous_));
    }
    federated::ExperienceOptions eo;
    eo.epochs = options_.epochs;
    eo.batch_size = options_.batch_size;
    eo.lr = options_.lr;
    eo.momentum = options_.momentum;
    // The head's blocks keep BatchNorm frozen, whose small running variances amplify their
    // gradients (measured: the default bundle diverges within 10 steps at lr 0.001 without
    // this); clipping the update keeps scope head stable.
    eo.max_grad_norm = options_.scope == "head" ? 1.0 : 0.0;
    eo.seed = options_.seed + static_cast<uint64_t>(stats().cycles);
    eo.time_budget_micros = static_cast<int64_t>(options_.max_cycle_seconds * 1e6);
    eo.cancelled = [this] {
      MutexLock lock(&mu_);
      return stop_;
    };
    // Every fifth row the cloud answered is held out of this cycle to check the result
    // against the teacher; it trains in the next cycle.
    const torch::Tensor position = torch::arange(pending_.size(), torch::kLong);
    const torch::Tensor held = position.remainder(5).eq(4).logical_and(pending_.has_soft);
    const LabeledBatch check = pending_.Select(held.nonzero().flatten());
    const LabeledBatch train = pending_.Select(held.logical_not().nonzero().flatten());
    const double before = base_->Disagreement(check);
    CLEAVE_ASSIGN_OR_RETURN(federated::ExperienceResult r,
                            federated::TrainExperience(*trained, *strategy_, train, eo));
    previous_ = train;
    pending_ = check;
    const double after = base_->Disagreement(check);
    if (after > before) {
      // The cycle made the exits answer differently from the cloud more often: what serves
      // keeps serving; the learner goes on from where training left it (a later cycle that
      // passes the check is swapped in).
      GetLogger("edge")->info(
          "adaptation: not swapped: the exits would disagree with the cloud on {:.1f} % of "
          "held-out answers, {:.1f} % before the cycle",
          100 * after, 100 * before);
      m_->cycles_kept->Increment();
      outcome_ = CycleOutcome::kKept;
      MutexLock lock(&mu_);
      ++stats_.kept_cycles;
      return Status::Ok();
    }
    // The engine to swap in: copies of the adapted model (served inputs re-quantize an
    // int8 head that training changed).
    torch::Tensor calibration = previous_.images;
    if (strategy_->buffer() && strategy_->buffer()->size() > 0) {
      calibration = torch::cat({calibration, strategy_->buffer()->All().images});
    }
    if (calibration.size(0) > 512) calibration = calibration.narrow(0, 0, 512);
    CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<split::EdgeModel> edge,
                            base_->Serving(head_, calibration));
    {
      MutexLock lock(&mu_);
      if (generation != generation_) {
        return Status::Unavailable("adaptation: a new bundle version arrived during the cycle");
      }
    }
    swap_(std::make_unique<EdgeEngine>(std::move(edge)));
    outcome_ = CycleOutcome::kSwapped;
    GetLogger("edge")->info("adaptation: {} steps on {} inputs in {:.1f} s; adapted head serves",
                            r.steps, previous_.size(), r.seconds);
    return Status::Ok();
  });
}

void EdgeLearner::Loop() {
  using SteadyClock = std::chrono::steady_clock;
  for (;;) {
    bool forced = false, suspended = false;
    {
      MutexLock lock(&mu_);
      cv_.WaitFor(&mu_, std::chrono::seconds(1), [this]() REQUIRES(mu_) {
        return stop_ || now_requested_ > now_done_ ||
               (suspended_.empty() && labelled_waiting_ + fresh_ >= options_.min_new);
      });
      if (stop_) break;
      forced = now_requested_ > now_done_;
      suspended = !suspended_.empty();
    }
    Drain();
    {
      // A cycle (or a decision that there is no drift to adapt to) takes min_new labelled
      // inputs that arrived since the last one: the drift test then has a window to judge.
      MutexLock lock(&mu_);
      if (!forced && (suspended || fresh_ < options_.min_new)) continue;
      fresh_ = 0;
    }
    const auto start = SteadyClock::now();
    outcome_ = CycleOutcome::kNone;
    Status s = Cycle();
    const double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
    if (s.ok() && outcome_ != CycleOutcome::kNone) {
      if (outcome_ == CycleOutcome::kSwapped) m_->cycles->Increment();
      m_->cycle_seconds->Observe(seconds);
      if (Status saved = Save(); !saved.ok()) {
        GetLogger("edge")->warn("adaptation: rows not saved: {}", saved.ToString());
      }
    } else if (s.code() != StatusCode::kFailedPrecondition) {
      m_->cycles_failed->Increment();
      GetLogger("edge")->warn("adaptation cycle failed: {}", s.ToString());
    }
    m_->pending_rows->Set(static_cast<double>(pending_.size()));
    if (strategy_->buffer()) m_->buffer_rows->Set(static_cast<double>(strategy_->buffer()->size()));
    {
      MutexLock lock(&mu_);
      if (s.ok() && outcome_ != CycleOutcome::kNone) ++stats_.cycles;
      if (!s.ok() && s.code() != StatusCode::kFailedPrecondition) ++stats_.failed_cycles;
      if (!s.ok()) stats_.last_error = s.ToString();
      stats_.last_cycle_seconds = seconds;
      stats_.pending_rows = pending_.size();
      stats_.buffer_rows = strategy_->buffer() ? strategy_->buffer()->size() : 0;
      if (forced) {
        ++now_done_;
        now_status_ = s;
        cv_.NotifyAll();
        continue;  // a requested cycle does not wait out the budget
      }
      // The CPU budget: training took `seconds`; rest so that it is cpu_share of the time.
      const double rest = seconds * (1.0 / options_.cpu_share - 1.0);
      cv_.WaitFor(&mu_, std::chrono::duration<double>(rest),
                  [this]() REQUIRES(mu_) { return stop_ || now_requested_ > now_done_; });
    }
  }
}

Status EdgeLearner::AdaptNow() {
  MutexLock lock(&mu_);
  const int64_t ticket = ++now_requested_;
  cv_.NotifyAll();
  cv_.Wait(&mu_, [&]() REQUIRES(mu_) { return now_done_ >= ticket || stop_; });
  if (now_done_ < ticket) return Status::Unavailable("adaptation: the learner stopped");
  return now_status_;
}

Status EdgeLearner::Save() {
  if (options_.buffer_file.empty()) return Status::Ok();
  const auto save = [&]() -> Status {
    if (strategy_ && strategy_->buffer()) {
      CLEAVE_RETURN_IF_ERROR(strategy_->buffer()->Save(options_.buffer_file, options_.buffer_key));
    }
    federated::ReplayOptions all;
    all.capacity = std::max<int64_t>(1, options_.window);
    all.max_bytes = 0;
    federated::ReplayBuffer pending(all);
    if (pending_.size() > 0) CLEAVE_RETURN_IF_ERROR(pending.Add(pending_));
    return pending.Save(PendingFile(options_.buffer_file), options_.buffer_key);
  };
  return split::CallTorch(split::TorchSource::kOwnState, "saving the learner's rows", save);
}

Status EdgeLearner::Load() {
  std::optional<federated::ReplayBuffer> buffer;
  if (!options_.buffer_file.empty()) {
    federated::ReplayOptions replay = options_.strategy.replay;
    replay.seed = options_.seed;
    if (options_.strategy.uses_buffer()) {
      Result<federated::ReplayBuffer> loaded =
          federated::ReplayBuffer::Load(options_.buffer_file, replay, options_.buffer_key);
      if (loaded.ok()) {
        buffer = std::move(loaded).value();
      } else if (loaded.status().code() != StatusCode::kNotFound) {
        return loaded.status().WithContext("edge.adapt_buffer_file");
      }
    }
    federated::ReplayOptions all;
    all.capacity = std::max<int64_t>(1, options_.window);
    all.max_bytes = 0;
    Result<federated::ReplayBuffer> pending =
        federated::ReplayBuffer::Load(PendingFile(options_.buffer_file), all, options_.buffer_key);
    if (pending.ok()) {
      pending_ = pending->All();
      if (pending_.size() > 0 && pending_.images.sizes().slice(1).vec() != pending_shape_) {
        return Status::InvalidArgument("edge.adapt_buffer_file: its rows do not fit this model");
      }
    } else if (pending.status().code() != StatusCode::kNotFound) {
      return pending.status().WithContext("edge.adapt_buffer_file");
    }
  }
  int64_t max_id = 0;
  if (pending_.size() > 0) max_id = pending_.ids.max().item<int64_t>();
  if (buffer && buffer->size() > 0)
    max_id = std::max(max_id, buffer->All().ids.max().item<int64_t>());
  CLEAVE_ASSIGN_OR_RETURN(strategy_,
                          federated::MakeContinualStrategy(options_.strategy, std::move(buffer)));
  MutexLock lock(&mu_);
  next_id_ = max_id + 1;  // ids stay unique across restarts
  stats_.pending_rows = pending_.size();
  stats_.buffer_rows = strategy_->buffer() ? strategy_->buffer()->size() : 0;
  return Status::Ok();
}

}  // namespace cleave::edge
