#include "federated/fl_config.h"

#include <sstream>

namespace cleave::federated {

void AddRoundConfigKeys(ConfigSchema& s) {
  s.Add("round.fraction", ConfigType::kDouble, "0.1", "share of clients sampled per round")
      .Add("round.min_clients", ConfigType::kInt, "2", "sample at least this many")
      .Add("round.overcommit", ConfigType::kDouble, "0.0",
           "extra share sampled; the round closes when the target share has answered")
      .Add("round.quorum", ConfigType::kInt, "1", "updates needed to apply a round")
      .Add("round.deadline_seconds", ConfigType::kDouble, "600",
           "per-round deadline in seconds (simulated seconds in cleave sim)")
      .Add("round.trainable", ConfigType::kString, "all", "all | head_and_exits")
      .Add("fit.local_epochs", ConfigType::kInt, "1", "local epochs per round")
      .Add("fit.batch_size", ConfigType::kInt, "32", "local mini-batch size")
      .Add("fit.lr", ConfigType::kDouble, "0.05", "client SGD learning rate")
      .Add("fit.momentum", ConfigType::kDouble, "0.9", "client SGD momentum")
      .Add("fit.weight_decay", ConfigType::kDouble, "0.0", "client weight decay")
      .Add("fit.max_steps", ConfigType::kInt, "0", "local step budget (0 = none)")
      .Add("compression.kind", ConfigType::kString, "none",
           "uplink update compression: none | int8 (stochastic rounding, 25-30% of the bytes) | "
           "topk (largest-magnitude coordinates of the delta)")
      .Add("compression.topk_fraction", ConfigType::kDouble, "0.01",
           "topk: share of the trainable coordinates each client sends, in (0, 1]")
      .Add("compression.error_feedback", ConfigType::kBool, "true",
           "int8/topk: each client carries what it did not send into its next round")
      .Add("strategy.name", ConfigType::kString, "fedavg",
           "fedavg | fedprox | fedadam | fedyogi | fedadagrad | fedmedian | fedtrimmedavg | "
           "krum | multikrum | bulyan | dpfedavg")
      .Add("strategy.mu", ConfigType::kDouble, "0.01", "fedprox proximal weight")
      .Add("strategy.server_lr", ConfigType::kDouble, "0.01", "fedopt server learning rate")
      .Add("strategy.beta1", ConfigType::kDouble, "0.9", "fedopt first-moment decay")
      .Add("strategy.beta2", ConfigType::kDouble, "0.99", "fedopt second-moment decay")
      .Add("strategy.tau", ConfigType::kDouble, "0.001", "fedopt adaptivity")
      .Add("strategy.trim_fraction", ConfigType::kDouble, "0.1",
           "fedtrimmedavg: share cut from each end")
      .Add("strategy.byzantine", ConfigType::kInt, "0",
           "krum, multikrum, bulyan: assumed Byzantine clients f")
      .Add("strategy.multikrum_keep", ConfigType::kInt, "0", "multikrum: m (0 = n - f)")
      .Add("strategy.dp_clip_norm", ConfigType::kDouble, "1.0",
           "dpfedavg: L2 bound C of each client's update delta (the initial C when adaptive)")
      .Add("strategy.dp_noise_multiplier", ConfigType::kDouble, "1.0",
           "dpfedavg: z; Gaussian noise of stddev z*C is added to the sum of clipped deltas")
      .Add("strategy.dp_adaptive_clip", ConfigType::kBool, "false",
           "dpfedavg: adapt C towards a quantile of the update norms (Andrew et al. 2021)")
      .Add("strategy.dp_target_quantile", ConfigType::kDouble, "0.5",
           "dpfedavg adaptive: share of updates that should stay unclipped")
      .Add("strategy.dp_clip_lr", ConfigType::kDouble, "0.2",
           "dpfedavg adaptive: learning rate of the geometric clip-norm update")
      .Add("strategy.dp_clip_count_stddev", ConfigType::kDouble, "0",
           "dpfedavg adaptive: noise on the unclipped count (0 = max(updates / 20, noise "
           "multiplier))")
      .Add("strategy.dp_delta", ConfigType::kDouble, "1e-5",
           "dpfedavg: delta of the (epsilon, delta) reported after every round")
      .Add("strategy.dp_seed", ConfigType::kInt, "0",
           "dpfedavg: noise seed for reproducible simulations; 0 = from the OS (deployments)")
      .Add("strategy.norm_bound", ConfigType::kDouble, "0",
           "any strategy: clip each client's update delta to this L2 norm before aggregation "
           "(Sun et al. 2019; 0 = off)")
      .Add("secure_aggregation.enabled", ConfigType::kBool, "false",
           "secure aggregation (SecAgg, Bonawitz et al. 2017): the server learns only the sum "
           "of the clients' updates; fedavg, fedprox and the fedopt strategies only")
      .Add("secure_aggregation.clip", ConfigType::kDouble, "64",
           "bound of each coordinate of a client's contribution (num_examples / example_scale "
           "x its update delta) before fixed-point encoding")
      .Add("secure_aggregation.example_scale", ConfigType::kDouble, "1000",
           "a client's weight in the sum is num_examples / example_scale")
      .Add("secure_aggregation.threshold", ConfigType::kInt, "0",
           "Shamir threshold t: masks of dropped clients are recovered while t share holders "
           "remain (0 = the smallest strict majority of each client's holders)")
      .Add("secure_aggregation.graph", ConfigType::kString, "complete",
           "complete (SecAgg: every client masks with every other) | harary (SecAgg+, Bell et "
           "al. 2020: a random k-regular neighbour graph)")
      .Add("secure_aggregation.degree", ConfigType::kInt, "0",
           "harary: neighbours per client (0 = 2 ceil(log2 n), at least 4)");
}

Status ReadRoundConfigKeys(const Config& c, EngineOptions& engine, StrategyConfig& strategy,
                           CompressionConfig& compression) {
  engine.fraction = c.GetDouble("round.fraction");
  engine.min_clients = static_cast<int>(c.GetInt("round.min_clients"));
  engine.overcommit = c.GetDouble("round.overcommit");
  engine.quorum = static_cast<int>(c.GetInt("round.quorum"));
  engine.deadline_micros = static_cast<int64_t>(c.GetDouble("round.deadline_seconds") * 1e6);
  CLEAVE_ASSIGN_OR_RETURN(engine.trainable, ParseTrainableSet(c.GetString("round.trainable")));
  FitConfig& f = engine.fit;
  f.local_epochs = static_cast<int>(c.GetInt("fit.local_epochs"));
  f.batch_size = static_cast<int>(c.GetInt("fit.batch_size"));
  f.lr = c.GetDouble("fit.lr");
  f.momentum = c.GetDouble("fit.momentum");
  f.weight_decay = c.GetDouble("fit.weight_decay");
  f.max_steps = c.GetInt("fit.max_steps");
  compression.kind = c.GetString("compression.kind");
  compression.topk_fraction = c.GetDouble("compression.topk_fraction");
  compression.error_feedback = c.GetBool("compression.error_feedback");
  StrategyConfig& s = strategy;
  s.name = c.GetString("strategy.name");
  s.proximal_mu = c.GetDouble("strategy.mu");
  s.server_lr = c.GetDouble("strategy.server_lr");
  s.beta1 = c.GetDouble("strategy.beta1");
  s.beta2 = c.GetDouble("strategy.beta2");
  s.tau = c.GetDouble("strategy.tau");
  s.trim_fraction = c.GetDouble("strategy.trim_fraction");
  s.byzantine = static_cast<int>(c.GetInt("strategy.byzantine"));
  s.multikrum_keep = static_cast<int>(c.GetInt("strategy.multikrum_keep"));
  s.dp.clip_norm = c.GetDouble("strategy.dp_clip_norm");
  s.dp.noise_multiplier = c.GetDouble("strategy.dp_noise_multiplier");
  s.dp.adaptive_clip = c.GetBool("strategy.dp_adaptive_clip");
  s.dp.target_quantile = c.GetDouble("strategy.dp_target_quantile");
  s.dp.clip_lr = c.GetDouble("strategy.dp_clip_lr");
  s.dp.clip_count_stddev = c.GetDouble("strategy.dp_clip_count_stddev");
  s.dp.delta = c.GetDouble("strategy.dp_delta");
  s.dp.seed = c.GetInt("strategy.dp_seed");
  s.norm_bound = c.GetDouble("strategy.norm_bound");
  SecureAggregationOptions& sa = engine.secure;
  sa.enabled = c.GetBool("secure_aggregation.enabled");
  sa.clip = c.GetDouble("secure_aggregation.clip");
  sa.example_scale = c.GetDouble("secure_aggregation.example_scale");
  const int64_t threshold = c.GetInt("secure_aggregation.threshold");
  const int64_t degree = c.GetInt("secure_aggregation.degree");
  if (threshold < 0 || threshold > secagg::kMaxClients || degree < 0 ||
      degree > secagg::kMaxClients) {
    return Status::InvalidArgument(
        "secure_aggregation.threshold and secure_aggregation.degree must be in 0.." +
        std::to_string(secagg::kMaxClients));
  }
  sa.threshold = static_cast<uint32_t>(threshold);
  sa.graph = c.GetString("secure_aggregation.graph");
  sa.degree = static_cast<uint32_t>(degree);
  if (sa.enabled) {
    CLEAVE_RETURN_IF_ERROR(sa.Validate());
    CLEAVE_RETURN_IF_ERROR(CheckSecureAggregationStrategy(s.name));
    if (s.name == "dpfedavg" && s.dp.adaptive_clip) {
      return Status::InvalidArgument(
          "strategy.dp_adaptive_clip needs each client's clipped-or-not bit privatized on the "
          "server; with secure aggregation use a fixed strategy.dp_clip_norm");
    }
    if (s.norm_bound > 0) {
      return Status::InvalidArgument(
          "strategy.norm_bound clips each client's update on the server, which secure "
          "aggregation never reveals; turn one of them off");
    }
  }
  return Status::Ok();
}

void AddContinualConfigKeys(ConfigSchema& s, const std::string& prefix, const ContinualConfig& d) {
  const auto num = [](double v) {
    std::ostringstream out;
    out << v;
    return out.str();
  };
  s.Add(prefix + "strategy", ConfigType::kString, d.strategy,
        "continual-learning strategy: naive (fine-tuning) | er (experience replay) | ewc "
        "(online EWC, Schwarz et al. 2018) | lwf (Learning without Forgetting, Li & Hoiem "
        "2016) | derpp (DER++, Buzzega et al. 2020)")
      .Add(prefix + "buffer_size", ConfigType::kInt, std::to_string(d.replay.capacity),
           "er/derpp: replay buffer rows (reservoir sampling)")
      .Add(prefix + "class_balanced", ConfigType::kBool, d.replay.class_balanced ? "true" : "false",
           "er/derpp: class-balanced reservoir (CBRS, Chrysakis & Moens 2020)")
      .Add(prefix + "replay_batch", ConfigType::kInt, std::to_string(d.replay_batch),
           "er/derpp: buffer rows per step (0 = the step's batch size)")
      .Add(prefix + "ewc_lambda", ConfigType::kDouble, num(d.ewc_lambda),
           "ewc: penalty weight lambda in lambda/2 sum F (w - w*)^2")
      .Add(prefix + "ewc_gamma", ConfigType::kDouble, num(d.ewc_gamma),
           "ewc: decay of the accumulated Fisher information at each boundary, in [0, 1]")
      .Add(prefix + "lwf_alpha", ConfigType::kDouble, num(d.lwf_alpha),
           "lwf: weight of the distillation from the model frozen at the last boundary")
      .Add(prefix + "lwf_temperature", ConfigType::kDouble, num(d.lwf_temperature),
           "lwf: distillation temperature")
      .Add(prefix + "derpp_alpha", ConfigType::kDouble, num(d.derpp_alpha),
           "derpp: weight of the stored-logit (MSE) replay term")
      .Add(prefix + "derpp_beta", ConfigType::kDouble, num(d.derpp_beta),
           "derpp: weight of the stored-label (cross-entropy) replay term")
      .Add(prefix + "kd_temperature", ConfigType::kDouble, num(d.kd_temperature),
           "temperature of distillation from soft (teacher) labels");
}

void AddContinualStreamKeys(ConfigSchema& s, const std::string& rounds_key,
                            const std::string& keeps_state) {
  s.Add("continual.enabled", ConfigType::kBool, "false",
        "federated continual learning (also --continual): the clients' data arrive as a "
        "stream of experiences spread evenly over " +
            rounds_key + "; " + keeps_state +
            "; history gets the accuracy matrix, ACC, BWT, forgetting and min-ACC")
      .Add("continual.scenario", ConfigType::kString, "class",
           "class (class-incremental: experience e holds its share of the classes) | domain "
           "(domain-incremental: each experience sees its rows through its own pixel "
           "permutation)")
      .Add("continual.experiences", ConfigType::kInt, "5", "experiences in the stream");
  AddContinualConfigKeys(s, "continual.");
}

Result<ContinualStreamOptions> ReadContinualStreamKeys(const Config& c) {
  ContinualStreamOptions o;
  o.enabled = c.GetBool("continual.enabled");
  o.scenario = c.GetString("continual.scenario");
  o.experiences = static_cast<int>(c.GetInt("continual.experiences"));
  CLEAVE_ASSIGN_OR_RETURN(o.strategy, ReadContinualConfigKeys(c, "continual."));
  return o;
}

Result<ContinualConfig> ReadContinualConfigKeys(const Config& c, const std::string& prefix) {
  ContinualConfig o;
  o.strategy = c.GetString(prefix + "strategy");
  o.replay.capacity = c.GetInt(prefix + "buffer_size");
  o.replay.class_balanced = c.GetBool(prefix + "class_balanced");
  o.replay_batch = c.GetInt(prefix + "replay_batch");
  o.ewc_lambda = c.GetDouble(prefix + "ewc_lambda");
  o.ewc_gamma = c.GetDouble(prefix + "ewc_gamma");
  o.lwf_alpha = c.GetDouble(prefix + "lwf_alpha");
  o.lwf_temperature = c.GetDouble(prefix + "lwf_temperature");
  o.derpp_alpha = c.GetDouble(prefix + "derpp_alpha");
  o.derpp_beta = c.GetDouble(prefix + "derpp_beta");
  o.kd_temperature = c.GetDouble(prefix + "kd_temperature");
  CLEAVE_RETURN_IF_ERROR(o.Validate().WithContext(prefix + "*"));
  return o;
}

}  // namespace cleave::federated
