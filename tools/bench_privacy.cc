#include "tools/bench_privacy.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "common/datasets.h"
#include "common/file_util.h"
#include "common/shutdown.h"
#include "federated/secure_round.h"
#include "federated/simulation.h"
#include "tools/bench_util.h"

namespace cleave::tools {

using federated::PartitionSpec;

using federated::AttackKind;
using federated::EncodeContribution;
using federated::LoadSimData;
using federated::MakeSecureRoundParams;
using federated::RoundRecord;
using federated::RunSimulation;
using federated::SecureAggregationOptions;
using federated::SecureClientSession;
using federated::SecureRound;
using federated::SecureRoundParams;
using federated::SimData;
using federated::SimOptions;
using federated::SimResult;
using federated::Weights;
namespace {

using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

// The shared setting: 100 clients, Dirichlet(0.5), 20 sampled per round, no stragglers.
SimOptions BaseOptions(const BenchPrivacyOptions& args) {
  SimOptions o;
  o.model = "simple_cnn";
  o.num_clients = 100;
  o.partition = *PartitionSpec::Parse("dirichlet:0.5");
  o.partition.min_size = 10;
  o.rounds = args.rounds > 0 ? args.rounds : (args.quick ? 20 : 50);
  o.engine.fraction = 0.2;
  o.engine.min_clients = 20;
  o.engine.quorum = 1;
  o.engine.deadline_micros = int64_t{1} << 50;  // every sampled client finishes
  o.engine.fit.local_epochs = args.local_epochs > 0 ? args.local_epochs : (args.quick ? 1 : 2);
  o.engine.fit.batch_size = 32;
  o.engine.fit.lr = 0.05;
  o.engine.fit.momentum = 0.9;
  o.engine.seed = args.seed;
  o.seed = args.seed;
  o.workers = args.workers;
  o.eval_every = args.quick ? 5 : 10;
  return o;
}

// What one run contributes to the report.
struct RunSummary {
  double accuracy = 0;       // final test accuracy
  double round_seconds = 0;  // sum of the rounds' wall time (server-side evaluation excluded)
  double bytes_up_per_round = 0;
  double epsilon = 0;  // dpfedavg: after the last round
  double secure_client_seconds = 0, secure_server_seconds = 0, aggregate_seconds = 0;
  int recovered_dropouts = 0;
  Weights global;
};

Result<RunSummary> Run(const std::string& label, SimOptions o, const SimData& data) {
  std::fprintf(stderr, "== %s: %s, %d rounds\n", label.c_str(), o.strategy.name.c_str(), o.rounds);
  Result<SimResult> run = RunSimulation(o, data);
  if (!run.ok()) return run.status().WithContext(label);
  SimResult& r = *run;
  RunSummary s;
  s.accuracy = r.final_accuracy;
  s.global = r.global;
  double bytes = 0;
  for (const RoundRecord& rec : r.history) {
    s.round_seconds += rec.extra.value("wall_seconds", 0.0);
    s.aggregate_seconds += rec.extra.value("aggregate_seconds", 0.0);
    s.secure_client_seconds += rec.extra.value("secure_client_seconds", 0.0);
    s.secure_server_seconds += rec.extra.value("secure_server_seconds", 0.0);
    bytes += rec.extra.value("bytes_up", 0.0);
    if (rec.extra.contains("secure_aggregation")) {
      s.recovered_dropouts += rec.extra["secure_aggregation"].value("recovered_dropouts", 0);
    }
    if (rec.extra.contains("strategy") && rec.extra["strategy"].contains("dp")) {
      const json& e = rec.extra["strategy"]["dp"]["epsilon"];
      s.epsilon = e.is_number() ? e.get<double>() : INFINITY;
    }
  }
  if (!r.history.empty()) s.bytes_up_per_round = bytes / static_cast<double>(r.history.size());
  std::fprintf(stderr, "   accuracy %.4f, %.1f s of rounds, %.0f bytes up per round\n", s.accuracy,
               s.round_seconds, s.bytes_up_per_round);
  return s;
}

// One secure round of 20 clients on the real model's layout in which 6 clients (30 %) drop
// after masking (they shared keys, so their masks are in everyone else's input, and never send
// their own): the server's result must equal, word for word, the modular sum of the 14
// survivors' encoded contributions, computed here in the clear.
Result<json> DropoutExactness(const Weights& global, uint64_t seed) {
  constexpr uint32_t kClients = 20;
  const std::set<uint32_t> drop = {2, 5, 9, 12, 16, 19};
  const std::vector<bool> trainable(global.size(), true);
  int64_t elements = 0;
  for (const auto& t : global) elements += t.numel();
  SecureAggregationOptions options;
  options.enabled = true;
  crypto::Key256 graph_seed{};
  graph_seed[0] = static_cast<uint8_t>(seed);
  CLEAVE_ASSIGN_OR_RETURN(SecureRoundParams params,
                          MakeSecureRoundParams(options, kClients, elements, seed, graph_seed));
  std::vector<std::string> roster;
  for (uint32_t u = 0; u < kClients; ++u) roster.push_back("client-" + std::to_string(u));
  CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<SecureRound> server, SecureRound::Create(params, roster));
  std::vector<SecureClientSession> clients;
  const auto start = SteadyClock::now();
  for (uint32_t u = 0; u < kClients; ++u) {
    CLEAVE_ASSIGN_OR_RETURN(SecureClientSession c, SecureClientSession::Create(params, u));
    CLEAVE_ASSIGN_OR_RETURN(secagg::AdvertiseKeys keys, c.Advertise());
    CLEAVE_RETURN_IF_ERROR(server->HandleAdvertiseKeys(roster[u], keys));
    clients.push_back(std::move(c));
  }
  CLEAVE_ASSIGN_OR_RETURN(auto directories, server->CloseAdvertiseKeys());
  for (uint32_t u = 0; u < kClients; ++u) {
    CLEAVE_ASSIGN_OR_RETURN(secagg::ShareKeys shares,
                            clients[u].ShareSecrets(directories.at(roster[u])));
    CLEAVE_RETURN_IF_ERROR(server->HandleShareKeys(roster[u], shares));
  }
  CLEAVE_ASSIGN_OR_RETURN(auto forwarded, server->CloseShareKeys());
  std::vector<uint32_t> expected(params.secagg.vector_length, 0);
  torch::manual_seed(seed);
  for (uint32_t u = 0; u < kClients; ++u) {
    if (drop.count(u)) continue;  // dropped after masking: nothing more from this client
    Weights trained;
    for (const auto& t : global) trained.push_back(t + 0.01f * torch::randn_like(t));
    const int64_t examples = 100 + 45 * u;
    crypto::Key256 rounding{};
    rounding[0] = static_cast<uint8_t>(u);
    rounding[1] = static_cast<uint8_t>(seed);
    CLEAVE_ASSIGN_OR_RETURN(
        std::vector<uint32_t> encoded,
        EncodeContribution(params, global, trained, trainable, examples, 0.5, rounding));
    for (size_t i = 0; i < encoded.size(); ++i) expected[i] += encoded[i];
    CLEAVE_ASSIGN_OR_RETURN(secagg::MaskedInput masked,
                            clients[u].MaskUpdate(forwarded.at(roster[u]), global, trained,
                                                  trainable, examples, 0.5, rounding));
    CLEAVE_RETURN_IF_ERROR(server->HandleMaskedInput(roster[u], masked));
  }
  CLEAVE_ASSIGN_OR_RETURN(SecureRound::UnmaskStage stage, server->CloseMaskedInput());
  for (const std::string& id : stage.survivors) {
    const uint32_t u = static_cast<uint32_t>(std::stoul(id.substr(7)));
    CLEAVE_ASSIGN_OR_RETURN(secagg::UnmaskShares shares, clients[u].RevealShares(stage.request));
    CLEAVE_RETURN_IF_ERROR(server->HandleUnmaskShares(id, shares));
  }
  CLEAVE_ASSIGN_OR_RETURN(secagg::AggregateResult sum, server->Finish());
  const double seconds = SecondsSince(start);
  size_t differing = 0;
  for (size_t i = 0; i < expected.size(); ++i) differing += sum.sum[i] != expected[i];
  return json{{"clients", kClients},
              {"dropped_after_masking", drop.size()},
              {"recovered_dropouts", sum.recovered_dropouts.size()},
              {"vector_words", expected.size()},
              {"differing_words", differing},
              {"seconds", seconds},
              {"exact", differing == 0 && sum.contributors.size() == kClients - drop.size()}};
}

}  // namespace

Result<json> RunBenchPrivacy(const BenchPrivacyOptions& args) {
  const std::string dir = args.data_dir.empty() ? std::string(kFashionMnistDir) : args.data_dir;
  CLEAVE_ASSIGN_OR_RETURN(SimData data, LoadSimData(dir));
  const SimOptions base = BaseOptions(args);
  InstallShutdownHandlers();
  const auto cancelled = [] { return ShutdownRequested(); };
  const auto options = [&](const std::function<void(SimOptions&)>& change) {
    SimOptions o = base;
    o.progress_out = stderr;
    o.cancelled = cancelled;
    change(o);
    return o;
  };
  const auto start = SteadyClock::now();
  json report;
  report["setting"] = {{"dataset", "fashion-mnist"},
                       {"model", base.model},
                       {"clients", base.num_clients},
                       {"partition", base.partition.ToString()},
                       {"sampled_per_round", 20},
                       {"rounds", base.rounds},
                       {"local_epochs", base.engine.fit.local_epochs},
                       {"batch_size", base.engine.fit.batch_size},
                       {"lr", base.engine.fit.lr},
                       {"preset", args.quick ? "quick" : "full"},
                       {"seed", args.seed}};

  // Clean FedAvg: secagg's plain run, byzantine's clean run, compression's `none`.
  CLEAVE_ASSIGN_OR_RETURN(RunSummary clean, Run("fedavg (plain)", base, data));
  CLEAVE_ASSIGN_OR_RETURN(
      RunSummary secure, Run("fedavg (secure aggregation)",
                             options([](SimOptions& o) { o.engine.secure.enabled = true; }), data));
  CLEAVE_ASSIGN_OR_RETURN(json exactness, DropoutExactness(clean.global, args.seed));
  report["secagg"] = {{"plain_accuracy", clean.accuracy},
                      {"secure_accuracy", secure.accuracy},
                      {"plain_seconds", clean.round_seconds},
                      {"secure_seconds", secure.round_seconds},
                      {"plain_aggregate_seconds", clean.aggregate_seconds},
                      {"secure_client_seconds", secure.secure_client_seconds},
                      {"secure_server_seconds", secure.secure_server_seconds},
                      {"secure_bytes_up_per_round", secure.bytes_up_per_round},
                      {"dropout_round", exactness},
                      {"dropout_exact", exactness.at("exact")}};

  json dp_runs = json::array();
  for (double z : {0.5, 1.0}) {
    CLEAVE_ASSIGN_OR_RETURN(RunSummary r, Run("dpfedavg z=" + std::to_string(z).substr(0, 3),
                                              options([z](SimOptions& o) {
                                                o.strategy.name = "dpfedavg";
                                                o.strategy.dp.clip_norm = 0.5;
                                                o.strategy.dp.noise_multiplier = z;
                                                o.strategy.dp.delta = 1e-5;
                                                o.strategy.dp.seed = 7;
                                              }),
                                              data));
    dp_runs.push_back({{"noise_multiplier", z},
                       {"clip_norm", 0.5},
                       {"accuracy", r.accuracy},
                       {"epsilon", std::isfinite(r.epsilon) ? json(r.epsilon) : json("inf")},
                       {"delta", 1e-5}});
  }
  // The same mechanism with secure aggregation: clients clip and add their share of the noise
  // themselves (distributed noise), so the server never sees an update without noise.
  CLEAVE_ASSIGN_OR_RETURN(RunSummary distributed,
                          Run("dpfedavg z=1.0 + secure aggregation", options([](SimOptions& o) {
                                o.strategy.name = "dpfedavg";
                                o.strategy.dp.clip_norm = 0.5;
                                o.strategy.dp.noise_multiplier = 1.0;
                                o.strategy.dp.delta = 1e-5;
                                o.strategy.dp.seed = 7;
                                o.engine.secure.enabled = true;
                              }),
                              data));
  report["dp"] = {
      {"runs", dp_runs},
      {"distributed_noise",
       {{"noise_multiplier", 1.0},
        {"clip_norm", 0.5},
        {"secure_aggregation", true},
        {"accuracy", distributed.accuracy},
        {"epsilon", std::isfinite(distributed.epsilon) ? json(distributed.epsilon) : json("inf")},
        {"delta", 1e-5}}}};

  const auto attacked = [&](const std::string& strategy) {
    return options([strategy](SimOptions& o) {
      o.strategy.name = strategy;
      // 20 % of the population is malicious, so a round of 20 holds 4 attackers on average
      // but up to 6 or 7: the defences are set for the worst round, not the mean. f = 8 is
      // the most Krum tolerates with 20 updates (n >= 2f + 3); the trimmed mean cuts 30 % of
      // the values at each end of every coordinate.
      o.strategy.trim_fraction = 0.3;
      o.strategy.byzantine = 8;
      o.attack.kind = AttackKind::kSignFlip;
      o.attack.fraction = 0.2;
      o.attack.scale = 10;
    });
  };
  json byzantine = {{"attack", "sign_flip x10 from 20 % of the population"},
                    {"clean_fedavg_accuracy", clean.accuracy}};
  for (const auto& [key, strategy] :
       std::vector<std::pair<std::string, std::string>>{{"fedavg_accuracy", "fedavg"},
                                                        {"median_accuracy", "fedmedian"},
                                                        {"trimmed_mean_accuracy", "fedtrimmedavg"},
                                                        {"multikrum_accuracy", "multikrum"}}) {
    CLEAVE_ASSIGN_OR_RETURN(RunSummary r, Run(strategy + " (attacked)", attacked(strategy), data));
    byzantine[key] = r.accuracy;
  }
  report["byzantine"] = byzantine;

  json compression = {
      {"none", {{"accuracy", clean.accuracy}, {"bytes_up_per_round", clean.bytes_up_per_round}}}};
  for (const std::string kind : {"int8", "topk"}) {
    CLEAVE_ASSIGN_OR_RETURN(RunSummary r, Run("compression " + kind, options([kind](SimOptions& o) {
                                                o.compression.kind = kind;
                                                o.compression.topk_fraction = 0.01;
                                              }),
                                              data));
    compression[kind] = {{"accuracy", r.accuracy}, {"bytes_up_per_round", r.bytes_up_per_round}};
  }
  report["compression"] = compression;

  const double best_robust = std::max({byzantine["median_accuracy"].get<double>(),
                                       byzantine["trimmed_mean_accuracy"].get<double>(),
                                       byzantine["multikrum_accuracy"].get<double>()});
  const double int8_bytes = compression["int8"]["bytes_up_per_round"].get<double>();
  report["targets"] = {
      {"secagg_accuracy_within_0.2pt", std::abs(secure.accuracy - clean.accuracy) <= 0.002},
      {"secagg_round_time_le_3x_plain", secure.round_seconds <= 3 * clean.round_seconds},
      {"secagg_dropout_exact", exactness.at("exact").get<bool>()},
      {"byzantine_best_robust_within_3pt_of_clean", best_robust >= clean.accuracy - 0.03},
      {"int8_within_0.5pt_of_none",
       compression["int8"]["accuracy"].get<double>() >= clean.accuracy - 0.005},
      {"int8_bytes_le_30pct_of_none", int8_bytes <= 0.3 * clean.bytes_up_per_round}};
  report["wall_seconds"] = SecondsSince(start);
  return report;
}

std::string BenchPrivacyMarkdown(const json& r) {
  std::ostringstream md;
  const auto pct = [](const json& v) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.2f %%", 100.0 * v.get<double>());
    return std::string(buf);
  };
  const auto num = [](const json& v, const char* format) {
    char buf[48];
    std::snprintf(buf, sizeof(buf), format, v.get<double>());
    return std::string(buf);
  };
  const json& s = r.at("secagg");
  md << "| secure aggregation | value |\n|---|---|\n"
     << "| plain accuracy | " << pct(s.at("plain_accuracy")) << " |\n"
     << "| secure accuracy | " << pct(s.at("secure_accuracy")) << " |\n"
     << "| plain round seconds (sum) | " << num(s.at("plain_seconds"), "%.1f") << " |\n"
     << "| secure round seconds (sum) | " << num(s.at("secure_seconds"), "%.1f") << " |\n"
     << "| of which client-side protocol work | " << num(s.at("secure_client_seconds"), "%.2f")
     << " |\n"
     << "| of which server-side protocol work | " << num(s.at("secure_server_seconds"), "%.2f")
     << " |\n"
     << "| plain server aggregation seconds | " << num(s.at("plain_aggregate_seconds"), "%.2f")
     << " |\n"
     << "| dropout round: words differing from the survivors' sum | "
     << s.at("dropout_round").at("differing_words") << " of "
     << s.at("dropout_round").at("vector_words") << " |\n"
     << "| `dropout_exact` | " << (s.at("dropout_exact").get<bool>() ? "true" : "false")
     << " |\n\n";
  md << "| DP-FedAvg noise multiplier | clip norm | accuracy | epsilon (delta 1e-5) |\n"
     << "|---|---|---|---|\n";
  for (const json& run : r.at("dp").at("runs")) {
    md << "| " << num(run.at("noise_multiplier"), "%.1f") << " | "
       << num(run.at("clip_norm"), "%.2f") << " | " << pct(run.at("accuracy")) << " | "
       << (run.at("epsilon").is_number() ? num(run.at("epsilon"), "%.2f") : "inf") << " |\n";
  }
  if (r.at("dp").contains("distributed_noise")) {
    const json& d = r.at("dp").at("distributed_noise");
    md << "| " << num(d.at("noise_multiplier"), "%.1f") << ", distributed (secure aggregation) | "
       << num(d.at("clip_norm"), "%.2f") << " | " << pct(d.at("accuracy")) << " | "
       << (d.at("epsilon").is_number() ? num(d.at("epsilon"), "%.2f") : "inf") << " |\n";
  }
  const json& b = r.at("byzantine");
  md << "\n| 20 % sign-flip x10 | accuracy |\n|---|---|\n"
     << "| clean FedAvg (no attack) | " << pct(b.at("clean_fedavg_accuracy")) << " |\n"
     << "| FedAvg | " << pct(b.at("fedavg_accuracy")) << " |\n"
     << "| median | " << pct(b.at("median_accuracy")) << " |\n"
     << "| trimmed mean (0.3) | " << pct(b.at("trimmed_mean_accuracy")) << " |\n"
     << "| Multi-Krum (f = 8) | " << pct(b.at("multikrum_accuracy")) << " |\n";
  md << "\n| compression | accuracy | bytes up per round |\n|---|---|---|\n";
  for (const char* kind : {"none", "int8", "topk"}) {
    const json& c = r.at("compression").at(kind);
    md << "| " << kind << " | " << pct(c.at("accuracy")) << " | "
       << num(c.at("bytes_up_per_round"), "%.0f") << " |\n";
  }
  md << "\n| target (issue 6) | met |\n|---|---|\n";
  for (const auto& [name, met] : r.at("targets").items()) {
    md << "| `" << name << "` | " << (met.get<bool>() ? "yes" : "**no**") << " |\n";
  }
  return md.str();
}

void RegisterBenchPrivacyCommand(CLI::App& bench) {
  auto args = std::make_shared<BenchPrivacyOptions>();
  CLI::App* c = bench.add_subcommand(
      "privacy",
      "secure aggregation, DP-FedAvg, Byzantine-robust aggregation and update compression on "
      "Fashion-MNIST (100 clients, Dirichlet 0.5, 20 per round), printed as JSON");
  c->add_option("--json", args->json_out, "write the report here too");
  c->add_option("--markdown", args->markdown_out, "write the report's tables here (markdown)");
  c->add_flag("--quick", args->quick, "short preset: 20 rounds x 1 local epoch (< 10 min)");
  c->add_option("--rounds", args->rounds, "override the preset's rounds")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--local-epochs", args->local_epochs, "override the preset's local epochs")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--workers", args->workers, "training threads (0 = one per core)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--seed", args->seed, "seed of partition, sampling, training")
      ->capture_default_str();
  c->add_option("--data-dir", args->data_dir, "Fashion-MNIST IDX directory");
  c->callback([args] {
    Result<json> report = RunBenchPrivacy(*args);
    if (!report.ok()) {
      std::cerr << "cleave bench privacy: " << report.status().ToString() << "\n";
      throw CLI::RuntimeError(1);
    }
    std::cout << report->dump(2) << std::endl;
    if (!args->json_out.empty()) {
      if (Status s = WriteFileAtomic(args->json_out, report->dump(2) + "\n"); !s.ok()) {
        std::cerr << "cleave bench privacy: " << s.ToString() << "\n";
        throw CLI::RuntimeError(1);
      }
    }
    if (!args->markdown_out.empty()) {
      if (Status s = WriteFileAtomic(args->markdown_out, BenchPrivacyMarkdown(*report)); !s.ok()) {
        std::cerr << "cleave bench privacy: " << s.ToString() << "\n";
        throw CLI::RuntimeError(1);
      }
    }
  });
}

}  // namespace cleave::tools
