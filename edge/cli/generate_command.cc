#include "edge/cli/generate_command.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <random>

#include <nlohmann/json.hpp>

#include "common/shutdown.h"
#include "edge/lm_link.h"
#include "split/compute_runtime.h"
#include "split/lm_train.h"

namespace cleave::edge {

namespace {

struct GenerateArgs {
  std::string bundle, cloud, prompt, session, mode = "routed";
  int max_tokens = 200;
  double temperature = 0.8;
  double threshold = -1;
  uint64_t seed = 1;
  int timeout_ms = 2000;
  int threads = 1;
  bool show_routing = false, json = false;
};

[[noreturn]] void Fail(const Status& s) {
  std::cerr << "cleave-edge generate: " << s.ToString() << "\n";
  throw CLI::RuntimeError(1);
}

int Sample(const std::vector<float>& log_probs, double temperature, std::mt19937_64& rng) {
  if (temperature <= 0) {
    return static_cast<int>(std::max_element(log_probs.begin(), log_probs.end()) -
                            log_probs.begin());
  }
  std::vector<double> weights(log_probs.size());
  const double top = *std::max_element(log_probs.begin(), log_probs.end());
  for (size_t i = 0; i < weights.size(); ++i) {
    weights[i] = std::exp((log_probs[i] - top) / temperature);
  }
  std::discrete_distribution<int> pick(weights.begin(), weights.end());
  return pick(rng);
}

void RunGenerate(const GenerateArgs& args) {
  if (args.prompt.empty()) Fail(Status::InvalidArgument("--prompt must not be empty"));
  RouteMode mode = RouteMode::kRouted;
  if (args.mode == "edge_only") {
    mode = RouteMode::kEdgeOnly;
  } else if (args.mode == "cloud_only") {
    mode = RouteMode::kCloudOnly;
  } else if (args.mode != "routed") {
    Fail(Status::InvalidArgument("--mode must be routed, edge_only or cloud_only"));
  }
  split::SetComputeThreads(std::max(1, args.threads));
  InstallShutdownHandlers();
  Result<split::LoadedLm> lm = split::ReadLmBundle(args.bundle, /*edge=*/true, /*cloud=*/false);
  if (!lm.ok()) Fail(lm.status().WithContext("cannot load " + args.bundle));
  LmRouterOptions options;
  options.mode = mode;
  options.exit_threshold = args.threshold >= 0 ? args.threshold : lm->info.exit_threshold;
  options.model = std::filesystem::path(args.bundle).filename().string();
  options.session = !args.session.empty()
                        ? args.session
                        : "gen-" + std::to_string(::getpid()) + "-" + std::to_string(args.seed);
  TransportContext context;
  std::unique_ptr<ZmqLmLink> link;
  if (!args.cloud.empty()) {
    auto connected =
        ZmqLmLink::Connect(context, args.cloud, args.timeout_ms, std::chrono::milliseconds(1000));
    if (!connected.ok()) Fail(connected.status());
    link = std::move(*connected);
  } else if (mode != RouteMode::kEdgeOnly) {
    std::cerr << "cleave-edge generate: no --cloud: generating on the edge alone (degraded)\n";
  }
  LmRouter router(std::move(lm->model), options, link.get());
  std::mt19937_64 rng(args.seed);
  Result<RouterStep> step = Status::Internal("no prompt");
  for (size_t i = 0; i < args.prompt.size(); ++i) {
    step = router.Feed(static_cast<unsigned char>(args.prompt[i]), i + 1 == args.prompt.size());
    if (!step.ok()) Fail(step.status());
  }
  std::fputs(args.prompt.c_str(), stdout);
  bool warned = false;
  std::string text;
  for (int n = 0; n < args.max_tokens && !ShutdownRequested(); ++n) {
    if (step->degraded && !warned) {
      std::cerr << "\ncleave-edge generate: cloud unreachable, continuing on the edge (degraded)\n";
      warned = true;
    }
    const int token = Sample(step->log_probs, args.temperature, rng);
    const char c = static_cast<char>(token);
    text += c;
    if (args.show_routing && step->from_cloud) {
      std::printf("[%c]", c);
    } else if (args.show_routing && step->degraded) {
      std::printf("{%c}", c);
    } else {
      std::fputc(c, stdout);
    }
    std::fflush(stdout);
    // The last token's successor is never sampled: feed it without asking for a prediction.
    step = router.Feed(token, n + 1 < args.max_tokens);
    if (!step.ok()) Fail(step.status());
  }
  std::fputc('\n', stdout);
  router.End();
  const RouterStats& s = router.stats();
  const double fed = static_cast<double>(std::max<int64_t>(1, s.tokens));
  const nlohmann::json summary = {
      {"generated", text.size()},   {"tokens", s.tokens},
      {"routed", s.routed},         {"routed_fraction", s.routed / fed},
      {"degraded", s.degraded},     {"resyncs", s.resyncs},
      {"bytes_sent", s.bytes_sent}, {"bytes_per_token", s.bytes_sent / fed},
      {"session", options.session}};
  if (args.json) {
    std::cerr << summary.dump() << "\n";
  } else {
    std::fprintf(
        stderr, "%lld tokens, %lld from the cloud (%.1f%%), %lld degraded, %lld bytes sent\n",
        static_cast<long long>(s.tokens), static_cast<long long>(s.routed), 100.0 * s.routed / fed,
        static_cast<long long>(s.degraded), static_cast<long long>(s.bytes_sent));
  }
}

}  // namespace

CLI::App* AddGenerateCommand(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand(
      "generate",
      "generate text with an lm-split bundle: confident bytes come from the edge's early exit, "
      "hard ones from cleave-cloud (which keeps the session's context); streams as it goes");
  cmd->add_option("--bundle", args->bundle, "lm-split bundle directory (cleave train-lm)")
      ->required();
  cmd->add_option("--cloud", args->cloud,
                  "cleave-cloud endpoint serving the same bundle (empty: edge only)");
  cmd->add_option("--prompt", args->prompt, "text to continue")->required();
  cmd->add_option("--max-tokens", args->max_tokens, "bytes to generate")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature", args->temperature, "sampling temperature (0 = greedy)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", args->seed, "sampling seed")->capture_default_str();
  cmd->add_option("--mode", args->mode, "routed, edge_only or cloud_only")->capture_default_str();
  cmd->add_option("--threshold", args->threshold,
                  "exit when the exit head's max probability >= this (default: the bundle's)");
  cmd->add_option("--timeout-ms", args->timeout_ms, "per cloud request")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--session", args->session, "session id (default: from pid and seed)");
  cmd->add_option("--threads", args->threads, "libtorch intra-op threads")->capture_default_str();
  cmd->add_flag("--show-routing", args->show_routing,
                "mark bytes from the cloud as [x] and degraded ones as {x}");
  cmd->add_flag("--json", args->json, "print the end-of-run summary as JSON (stderr)");
  cmd->callback([args] { RunGenerate(*args); });
  return cmd;
}

}  // namespace cleave::edge
