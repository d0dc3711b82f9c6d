#include "split/lm_train.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <sstream>

#include "common/progress.h"
#include "split/bundle.h"
#include "split/torch_status.h"

namespace cleave::split {

using nlohmann::json;
namespace F = torch::nn::functional;

namespace {

constexpr char kLmBundleKind[] = "lm-split";
constexpr char kEdgeFile[] = "edge.pt";
constexpr char kCloudFile[] = "cloud.pt";
constexpr double kLn2 = 0.6931471805599453;

// Bytes of `text` as int64 token ids.
torch::Tensor TokensOf(const std::string& text, int64_t begin, int64_t count) {
  torch::Tensor t = torch::empty({count}, torch::kLong);
  int64_t* out = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<unsigned char>(text[begin + i]);
  return t;
}

// Is parameter `name` part of what the edge runs?
bool OnEdge(const std::string& name, int split_after) {
  for (const char* prefix : {"embed.", "exit_norm.", "exit_head.", "code_norm.", "encoder."}) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  if (name.rfind("blocks.", 0) == 0) {
    const int layer = std::atoi(name.c_str() + 7);
    return layer < split_after;
  }
  return false;
}

Result<std::string> SavePart(SplitLmImpl& lm, bool edge) {
  return CallTorch(TorchSource::kOwnState, "saving the language model", [&] {
    torch::serialize::OutputArchive archive;
    for (const auto& p : lm.named_parameters(/*recurse=*/true)) {
      if (OnEdge(p.key(), lm.spec().split_after) == edge)
        archive.write(p.key(), p.value().detach());
    }
    std::ostringstream out;
    archive.save_to(out);
    return out.str();
  });
}

Status LoadPart(const Bundle& bundle, SplitLmImpl& lm, bool edge) {
  const std::string file = edge ? kEdgeFile : kCloudFile;
  if (!bundle.HasFile(file)) return Status::DataLoss("lm bundle has no " + file);
  CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, bundle.ReadVerified(file));
  torch::serialize::InputArchive archive;
  CLEAVE_RETURN_IF_ERROR(CallTorch(TorchSource::kStoredBytes,
                                   file + " is not a readable libtorch archive",
                                   [&] { archive.load_from(bytes.data(), bytes.size()); }));
  torch::NoGradGuard no_grad;
  for (const auto& p : lm.named_parameters(/*recurse=*/true)) {
    if (OnEdge(p.key(), lm.spec().split_after) != edge) continue;
    torch::Tensor stored;
    CLEAVE_ASSIGN_OR_RETURN(
        const bool found,
        CallTorch(TorchSource::kStoredBytes, file + ": tensor " + p.key() + " unreadable",
                  [&] { return archive.try_read(p.key(), stored); }));
    if (!found || !stored.defined()) return Status::DataLoss(file + " lacks tensor " + p.key());
    if (stored.sizes() != p.value().sizes() || stored.scalar_type() != p.value().scalar_type()) {
      return Status::DataLoss(file + ": tensor " + p.key() + " has shape " +
                              c10::str(stored.sizes()) + ", the spec needs " +
                              c10::str(p.value().sizes()));
    }
    if (!torch::isfinite(stored).all().item<bool>()) {
      return Status::DataLoss(file + ": tensor " + p.key() + " has non-finite values");
    }
    p.value().copy_(stored);
  }
  return Status::Ok();
}

double LearningRate(const LmTrainOptions& o, int64_t step) {
  if (step < o.warmup) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup);
  const double progress = static_cast<double>(step - o.warmup) /
                          static_cast<double>(std::max<int64_t>(1, o.steps - o.warmup));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
  return o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine);
}

}  // namespace

Result<TokenScores> ScoreTokens(SplitLmImpl& lm, const std::string& text, int64_t max_bytes) {
  const int64_t window = lm.spec().context + 1;
  const int64_t usable = std::min<int64_t>(static_cast<int64_t>(text.size()), max_bytes);
  if (usable < window) {
    return Status::InvalidArgument("language model scoring: need at least " +
                                   std::to_string(window) + " bytes of text");
  }
  TokenScores s;
  const auto score = [&] {
    torch::NoGradGuard no_grad;
    const bool was_training = lm.is_training();
    lm.eval();
    const int64_t windows = usable / window;
    constexpr int64_t kBatch = 16;
    for (int64_t first = 0; first < windows; first += kBatch) {
      const int64_t n = std::min(kBatch, windows - first);
      const torch::Tensor batch = TokensOf(text, first * window, n * window).view({n, window});
      const torch::Tensor input = batch.narrow(1, 0, window - 1);
      const torch::Tensor target = batch.narrow(1, 1, window - 1).unsqueeze(2);
      const LmOutputs out = lm.forward(input);
      const torch::Tensor exit_logp = F::log_softmax(out.exit_logits, 2);
      const torch::Tensor final_logp = F::log_softmax(out.final_logits, 2);
      const torch::Tensor confidence = std::get<0>(exit_logp.max(2)).exp().reshape({-1});
      const torch::Tensor e = exit_logp.gather(2, target).reshape({-1}) / kLn2;
      const torch::Tensor f = final_logp.gather(2, target).reshape({-1}) / kLn2;
      const auto append = [](std::vector<float>& v, const torch::Tensor& t) {
        const torch::Tensor c = t.contiguous();
        v.insert(v.end(), c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
      };
      append(s.exit_confidence, confidence);
      append(s.exit_log2p, e);
      append(s.final_log2p, f);
    }
    if (was_training) lm.train();
  };
  CLEAVE_RETURN_IF_ERROR(
      CallTorch(TorchSource::kOwnState, "language model scoring failed inside libtorch", score));
  return s;
}

LmEval Summarize(const TokenScores& s) {
  LmEval e;
  e.tokens = static_cast<int64_t>(s.exit_log2p.size());
  if (e.tokens == 0) return e;
  double exit_sum = 0, final_sum = 0;
  for (int64_t i = 0; i < e.tokens; ++i) {
    exit_sum -= s.exit_log2p[i];
    final_sum -= s.final_log2p[i];
  }
  e.exit_bpc = exit_sum / static_cast<double>(e.tokens);
  e.final_bpc = final_sum / static_cast<double>(e.tokens);
  return e;
}

RoutedFigures Routed(const TokenScores& s, double threshold) {
  RoutedFigures r;
  const size_t n = s.exit_log2p.size();
  if (n == 0) return r;
  double bits = 0;
  size_t routed = 0;
  for (size_t i = 0; i < n; ++i) {
    if (s.exit_confidence[i] >= threshold) {
      bits -= s.exit_log2p[i];
    } else {
      bits -= s.final_log2p[i];
      ++routed;
    }
  }
  r.bpc = bits / static_cast<double>(n);
  r.routed_fraction = static_cast<double>(routed) / static_cast<double>(n);
  return r;
}

double ChooseThreshold(const TokenScores& s, double tolerance) {
  const double limit = (1.0 + tolerance) * Summarize(s).final_bpc;
  // Candidate thresholds: the tokens' own confidences, high to low. Lowering the threshold
  // answers more tokens locally; take the lowest that stays within the limit.
  std::vector<size_t> order(s.exit_confidence.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return s.exit_confidence[a] > s.exit_confidence[b]; });
  double bits = 0;
  for (float f : s.final_log2p) bits -= f;  // everything routed
  const double n = static_cast<double>(order.size());
  double best = 1.0;
  for (size_t k = 0; k < order.size(); ++k) {
    const size_t i = order[k];
    bits += s.final_log2p[i] - s.exit_log2p[i];  // token i now answered at the edge
    // Ties: only cut between distinct confidences.
    if (k + 1 < order.size() && s.exit_confidence[order[k + 1]] == s.exit_confidence[i]) continue;
    if (bits / n <= limit) best = s.exit_confidence[i];
  }
  return best;
}

Result<LmTrainResult> TrainLm(SplitLmImpl& lm, const std::string& train_text,
                              const std::string& validation, const LmTrainOptions& o) {
  const int64_t window = lm.spec().context + 1;
  if (static_cast<int64_t>(train_text.size()) < 2 * window) {
    return Status::InvalidArgument("train-lm: the training text is shorter than two windows");
  }
  if (o.steps < 1 || o.batch < 1 || !(o.lr > 0) || o.warmup < 0) {
    return Status::InvalidArgument("train-lm: steps, batch and lr must be positive");
  }
  LmTrainResult result;
  const auto start = std::chrono::steady_clock::now();
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int64_t> pick(0, static_cast<int64_t>(train_text.size()) - window);
  torch::manual_seed(o.seed);
  torch::optim::AdamW optimizer(
      lm.parameters(),
      torch::optim::AdamWOptions(o.lr).betas({0.9, 0.95}).weight_decay(o.weight_decay));
  std::unique_ptr<ProgressBar> bar;
  if (o.progress_out) bar = std::make_unique<ProgressBar>("train-lm", o.steps, o.progress_out);
  std::vector<double> recent;
  const auto evaluate = [&](int64_t step) -> Status {
    CLEAVE_ASSIGN_OR_RETURN(TokenScores scores, ScoreTokens(lm, validation, o.eval_bytes));
    result.held_out = Summarize(scores);
    result.history.push_back({{"step", step},
                              {"exit_bpc", result.held_out.exit_bpc},
                              {"final_bpc", result.held_out.final_bpc}});
    return Status::Ok();
  };
  CLEAVE_RETURN_IF_ERROR(CallTorch(TorchSource::kOwnState, "train-lm failed inside libtorch", [&] {
    lm.train();
    for (int64_t step = 0; step < o.steps; ++step) {
      if (o.cancelled && o.cancelled()) {
        return Status::FailedPrecondition("train-lm: cancelled at step " + std::to_string(step));
      }
      torch::Tensor batch = torch::empty({o.batch, window}, torch::kLong);
      for (int b = 0; b < o.batch; ++b) batch[b].copy_(TokensOf(train_text, pick(rng), window));
      const torch::Tensor input = batch.narrow(1, 0, window - 1);
      const torch::Tensor target = batch.narrow(1, 1, window - 1).reshape({-1});
      const torch::Tensor state = lm.EdgeLayers(input);
      torch::Tensor code = lm.Encode(state);
      if (o.code_noise) {
        // Half a u8 step of this token's code range, as the wire's per-token quantizer uses.
        const torch::Tensor range =
            (std::get<0>(code.max(2, true)) - std::get<0>(code.min(2, true))).detach();
        code = code + (torch::rand_like(code) - 0.5) * (range / 255.0);
      }
      const torch::Tensor exit_loss =
          F::cross_entropy(lm.ExitLogits(state).reshape({-1, lm.spec().vocab}), target);
      const torch::Tensor final_loss =
          F::cross_entropy(lm.CloudLogits(lm.Decode(code)).reshape({-1, lm.spec().vocab}), target);
      const torch::Tensor loss = o.exit_weight * exit_loss + final_loss;
      for (auto& group : optimizer.param_groups()) {
        static_cast<torch::optim::AdamWOptions&>(group.options()).lr(LearningRate(o, step));
      }
      optimizer.zero_grad();
      loss.backward();
      torch::nn::utils::clip_grad_norm_(lm.parameters(), 1.0);
      optimizer.step();
      const double value = loss.item<double>();
      if (!std::isfinite(value)) {
        return Status::Internal("train-lm: loss diverged at step " + std::to_string(step) +
                                " (lower --lr)");
      }
      recent.push_back(value);
      if (recent.size() > 100) recent.erase(recent.begin());
      ++result.steps;
      if (o.eval_every > 0 && (step + 1) % o.eval_every == 0 && step + 1 < o.steps) {
        CLEAVE_RETURN_IF_ERROR(evaluate(step + 1));
        lm.train();
      }
      if (bar) {
        char suffix[96];
        std::snprintf(suffix, sizeof suffix, "loss %.3f", value);
        bar->Update(step + 1, suffix);
      }
    }
    CLEAVE_RETURN_IF_ERROR(evaluate(o.steps));
    return Status::Ok();
  }));
  if (bar) {
    char suffix[96];
    std::snprintf(suffix, sizeof suffix, "held-out bpc exit %.3f final %.3f",
                  result.held_out.exit_bpc, result.held_out.final_bpc);
    bar->Finish(suffix);
  }
  double sum = 0;
  for (double v : recent) sum += v;
  result.train_loss = recent.empty() ? 0 : sum / static_cast<double>(recent.size());
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  lm.eval();
  return result;
}

Status WriteLmBundle(const std::filesystem::path& dir, SplitLmImpl& lm, const LmBundleInfo& info) {
  CLEAVE_RETURN_IF_ERROR(info.spec.Validate());
  if (!(info.exit_threshold >= 0 && info.exit_threshold <= 1)) {
    return Status::InvalidArgument("lm bundle: exit threshold must be in [0, 1]");
  }
  BundleWriter writer(dir);
  CLEAVE_ASSIGN_OR_RETURN(const std::string edge, SavePart(lm, true));
  CLEAVE_ASSIGN_OR_RETURN(const std::string cloud, SavePart(lm, false));
  CLEAVE_RETURN_IF_ERROR(writer.AddFile(kEdgeFile, edge));
  CLEAVE_RETURN_IF_ERROR(writer.AddFile(kCloudFile, cloud));
  const json model = {{"spec", info.spec.ToJson()},
                      {"routing",
                       {{"exit_threshold", info.exit_threshold},
                        {"rule", "exit when max probability >= exit_threshold"}}},
                      {"training", info.training}};
  return writer.Commit(kLmBundleKind, model);
}

Result<LoadedLm> ReadLmBundle(const std::filesystem::path& dir, bool edge, bool cloud) {
  CLEAVE_ASSIGN_OR_RETURN(const Bundle bundle, Bundle::Open(dir));
  if (bundle.kind() != kLmBundleKind) {
    return Status::InvalidArgument("bundle at " + dir.string() + " is a '" + bundle.kind() +
                                   "' bundle, not '" + kLmBundleKind + "'");
  }
  const json& m = bundle.model();
  if (!m.is_object() || !m.contains("spec") || !m.contains("routing") ||
      !m["routing"].is_object() || !m["routing"].contains("exit_threshold") ||
      !m["routing"]["exit_threshold"].is_number()) {
    return Status::InvalidArgument("lm bundle manifest: needs 'spec' and 'routing.exit_threshold'");
  }
  LoadedLm out;
  CLEAVE_ASSIGN_OR_RETURN(out.info.spec, LmSpec::FromJson(m["spec"]));
  out.info.exit_threshold = m["routing"]["exit_threshold"].get<double>();
  if (!(out.info.exit_threshold >= 0 && out.info.exit_threshold <= 1)) {
    return Status::InvalidArgument("lm bundle manifest: exit_threshold must be in [0, 1]");
  }
  out.info.training = m.value("training", json::object());
  out.model = SplitLm(out.info.spec);
  if (edge) CLEAVE_RETURN_IF_ERROR(LoadPart(bundle, *out.model, true));
  if (cloud) CLEAVE_RETURN_IF_ERROR(LoadPart(bundle, *out.model, false));
  out.model->eval();
  return out;
}

}  // namespace cleave::split
