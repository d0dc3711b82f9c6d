#include "tools/lm_command.h"

#include <iostream>
#include <memory>

#include "common/shutdown.h"
#include "common/text_corpus.h"
#include "split/compute_runtime.h"
#include "split/lm_train.h"
#include "tools/command_error.h"

namespace cleave::tools {

using split::ScoreTokens;
using split::SplitLm;

using split::ChooseThreshold;
using split::LmBundleInfo;
using split::LmEval;
using split::LmSpec;
using split::LmTrainOptions;
using split::LmTrainResult;
using split::RoutedFigures;
using split::TokenScores;
using split::WriteLmBundle;
namespace {

using nlohmann::json;

struct TrainLmArgs {
  std::string out, corpus = kFortunesDir, model = "default";
  LmTrainOptions train;
  bool quick = false, quiet = false;
  int threads = 2;
  double tolerance = 0.02;
  double calibration_share = 0.05;
};

template <typename T>
T OrFail(Result<T> r) {
  if (!r.ok()) Fail("train-lm", r.status());
  return std::move(*r);
}

void RunTrainLm(TrainLmArgs& args, const CLI::App& cmd) {
  LmSpec spec;
  if (args.model == "default") {
    spec = LmSpec::Default();
  } else if (args.model == "tiny") {
    spec = LmSpec::Tiny();
  } else {
    Fail("train-lm", Status::InvalidArgument("--model must be 'default' or 'tiny'"));
  }
  LmTrainOptions options = args.train;
  if (args.quick) {
    if (cmd.count("--steps") == 0) options.steps = 60;
    if (cmd.count("--batch") == 0) options.batch = 8;
    options.warmup = std::min<int64_t>(options.warmup, options.steps / 4);
    options.eval_every = 0;
    options.eval_bytes = 8192;
  }
  if (!(args.tolerance >= 0 && args.tolerance < 1)) {
    Fail("train-lm", Status::InvalidArgument("--tolerance must be in [0, 1)"));
  }
  if (!(args.calibration_share > 0 && args.calibration_share < 0.5)) {
    Fail("train-lm", Status::InvalidArgument("--calibration-share must be in (0, 0.5)"));
  }
  options.progress_out = args.quiet ? nullptr : stderr;
  InstallShutdownHandlers();
  options.cancelled = [] { return ShutdownRequested(); };
  split::SetComputeThreads(std::max(1, args.threads));

  const TextCorpus corpus = OrFail(LoadFortunes(args.corpus));
  // The end of the training text is kept out of training: it calibrates the routing
  // threshold (the held-out split stays for the benchmark).
  const size_t cut =
      corpus.train.size() - static_cast<size_t>(args.calibration_share * corpus.train.size());
  const std::string train = corpus.train.substr(0, cut);
  const std::string calibration = corpus.train.substr(cut);

  SplitLm lm(spec);
  const LmTrainResult trained = OrFail(TrainLm(*lm, train, calibration, options));
  const TokenScores calib = OrFail(ScoreTokens(*lm, calibration, int64_t{1} << 30));
  const double threshold = ChooseThreshold(calib, args.tolerance);
  const RoutedFigures at = Routed(calib, threshold);
  const TokenScores held = OrFail(ScoreTokens(*lm, corpus.held_out, int64_t{1} << 30));
  const LmEval held_eval = Summarize(held);
  const RoutedFigures held_routed = Routed(held, threshold);

  LmBundleInfo info;
  info.spec = spec;
  info.exit_threshold = threshold;
  info.training = {{"corpus", args.corpus},
                   {"corpus_files", corpus.files.size()},
                   {"train_bytes", train.size()},
                   {"calibration_bytes", calibration.size()},
                   {"held_out_bytes", corpus.held_out.size()},
                   {"steps", trained.steps},
                   {"batch", options.batch},
                   {"lr", options.lr},
                   {"seed", options.seed},
                   {"seconds", trained.seconds},
                   {"train_loss", trained.train_loss},
                   {"history", trained.history},
                   {"calibration_tolerance", args.tolerance},
                   {"calibration_routed_fraction", at.routed_fraction},
                   {"calibration_bpc", at.bpc}};
  const Status written = WriteLmBundle(args.out, *lm, info);
  if (!written.ok()) Fail("train-lm", written);
  const json summary = {{"bundle", args.out},
                        {"spec", spec.ToJson()},
                        {"steps", trained.steps},
                        {"seconds", trained.seconds},
                        {"exit_threshold", threshold},
                        {"held_out",
                         {{"exit_bpc", held_eval.exit_bpc},
                          {"final_bpc", held_eval.final_bpc},
                          {"routed_bpc", held_routed.bpc},
                          {"routed_fraction", held_routed.routed_fraction},
                          {"tokens", held_eval.tokens}}}};
  std::cout << summary.dump(2) << std::endl;
}

}  // namespace

void RegisterLmCommands(CLI::App& app) {
  auto args = std::make_shared<TrainLmArgs>();
  CLI::App* cmd = app.add_subcommand(
      "train-lm",
      "train the split byte-level language model on the fortunes corpus and write an lm-split "
      "bundle (edge: embedding, first layers, exit head, bottleneck encoder; cloud: the rest)");
  cmd->add_option("--out", args->out, "bundle directory to write (atomically)")->required();
  cmd->add_option("--corpus", args->corpus, "directory of fortune files")->capture_default_str();
  cmd->add_option("--model", args->model, "model size: default or tiny")->capture_default_str();
  cmd->add_option("--steps", args->train.steps, "optimizer steps")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch", args->train.batch, "sequences per step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--lr", args->train.lr, "peak AdamW learning rate")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--exit-weight", args->train.exit_weight, "weight of the exit head's loss")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", args->train.seed, "seed of initialization and batch sampling")
      ->capture_default_str();
  cmd->add_option("--eval-every", args->train.eval_every,
                  "steps between evaluations (0 = end only)")
      ->capture_default_str();
  cmd->add_option("--threads", args->threads, "libtorch intra-op threads")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--tolerance", args->tolerance,
                  "routing calibration: routed bits per byte may exceed the cloud's by this share")
      ->capture_default_str();
  cmd->add_option("--calibration-share", args->calibration_share,
                  "share of the training text kept for calibration")
      ->capture_default_str();
  cmd->add_flag("--quick", args->quick, "a few steps (smoke tests and the demo's first look)");
  cmd->add_flag("--quiet", args->quiet, "no progress output");
  cmd->callback([args, cmd] { RunTrainLm(*args, *cmd); });
}

}  // namespace cleave::tools
