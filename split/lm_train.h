// Training, evaluation, routing calibration and bundles of the split language model.
//
// Training samples random windows of `context + 1` bytes from the training text and
// minimizes exit_weight * CE(exit head) + CE(final head) (joint early-exit training as in
// DeeBERT/CALM), with AdamW, linear warm-up and cosine decay. The final path runs through
// the bottleneck with uniform noise of half a quantization step added to the code (the
// differentiable stand-in for rounding of Ballé et al., 2017), so the cloud tail tolerates
// the u8 wire code it will receive.
//
// Routing (see ChooseThreshold): a token is answered by the exit head when the exit's
// largest probability is >= the threshold, else by the cloud's final head. Calibration
// picks the largest share of local answers whose bits per byte stay within a tolerance of
// the cloud's, on text the model did not train on.
//
// Bundles (kind "lm-split"): edge.pt holds what the gateway runs (embedding, layers [0, K),
// exit head, bottleneck encoder), cloud.pt the rest (decoder, layers [K, N), final head);
// the manifest's model entry holds the spec, the routing threshold and training figures.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "split/lm_model.h"

namespace cleave::split {

struct LmTrainOptions {
  int64_t steps = 4000;
  int batch = 32;
  double lr = 2e-3;
  int64_t warmup = 200;
  double min_lr_ratio = 0.1;  // cosine decay ends at lr * this
  double weight_decay = 0.05;
  double exit_weight = 1.0;
  bool code_noise = true;  // train the cloud tail on noisy codes (see file comment)
  uint64_t seed = 1;
  int64_t eval_every = 500;    // steps between held-out evaluations (0 = end only)
  int64_t eval_bytes = 32768;  // held-out bytes per evaluation
  std::FILE* progress_out = stderr;
  std::function<bool()> cancelled;  // polled between steps
};

struct LmEval {
  double exit_bpc = 0;   // bits per byte of the exit head
  double final_bpc = 0;  // bits per byte of the final head (fp32 code)
  int64_t tokens = 0;
};

// Per-token figures of teacher-forced predictions over `text` (non-overlapping windows of
// the context length): the exit head's largest probability and both heads' log2
// probability of the true next byte. The raw material for routing curves.
struct TokenScores {
  std::vector<float> exit_confidence;
  std::vector<float> exit_log2p;
  std::vector<float> final_log2p;
};
Result<TokenScores> ScoreTokens(SplitLmImpl& lm, const std::string& text, int64_t max_bytes);

LmEval Summarize(const TokenScores& scores);
// Bits per byte and routed share when tokens with exit confidence >= threshold are answered
// by the exit head.
struct RoutedFigures {
  double bpc = 0;
  double routed_fraction = 0;  // share answered by the cloud
};
RoutedFigures Routed(const TokenScores& scores, double threshold);
// The threshold with the smallest routed fraction whose bits per byte are at most
// (1 + tolerance) x the cloud-only figure; 1.0 routes everything but certain tokens.
double ChooseThreshold(const TokenScores& scores, double tolerance);

struct LmTrainResult {
  int64_t steps = 0;
  double seconds = 0;
  double train_loss = 0;  // mean of the last 100 steps (exit + final)
  LmEval held_out;
  nlohmann::json history = nlohmann::json::array();
};
// Trains `lm` in place. `validation` is scored during training (a slice of held-out text).
Result<LmTrainResult> TrainLm(SplitLmImpl& lm, const std::string& train_text,
                              const std::string& validation, const LmTrainOptions& options);

// What a bundle records besides the weights.
struct LmBundleInfo {
  LmSpec spec;
  double exit_threshold = 0.9;  // routing: exit when max probability >= this
  nlohmann::json training = nlohmann::json::object();
};
Status WriteLmBundle(const std::filesystem::path& dir, SplitLmImpl& lm, const LmBundleInfo& info);
// Reads and verifies an "lm-split" bundle; `edge` and `cloud` choose the parts loaded (the
// other part's parameters keep their initial values).
struct LoadedLm {
  LmBundleInfo info;
  SplitLm model{nullptr};
};
Result<LoadedLm> ReadLmBundle(const std::filesystem::path& dir, bool edge = true,
                              bool cloud = true);

}  // namespace cleave::split
