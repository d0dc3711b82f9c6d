#include "federated/sim_config.h"

#include "federated/fl_config.h"

namespace cleave::federated {

ConfigSchema SimSchema() {
  ConfigSchema s;
  s.Add("sim.model", ConfigType::kString, "simple_cnn",
        "network: simple_cnn | default_split | residual_split | tiny_split, a model spec "
        "file (.json or .toml, docs/design.md), or a TorchScript model (.pt: forward maps the "
        "data's [N, C, H, W] images in [0, 1] to class logits; export with torch.jit.script "
        "to train it with dropout/BatchNorm in train mode)")
      .Add("sim.clients", ConfigType::kInt, "100", "population of virtual clients")
      .Add("sim.partition", ConfigType::kString, "dirichlet:0.5",
           "iid | dirichlet:<alpha> | labels:<k>")
      .Add("sim.partition_min_size", ConfigType::kInt, "0",
           "dirichlet: redraw until every client has this many samples")
      .Add("sim.rounds", ConfigType::kInt, "10", "federated rounds")
      .Add("sim.workers", ConfigType::kInt, "0", "training threads (0 = one per core)")
      .Add("sim.step_seconds", ConfigType::kDouble, "0.05",
           "simulated time of one local step at speed 1 (for deadlines)")
      .Add("sim.speed_min", ConfigType::kDouble, "1.0", "slowest client speed factor (1 = nominal)")
      .Add("sim.speed_max", ConfigType::kDouble, "1.0",
           "per-client slowdown factor drawn uniformly in [speed_min, speed_max]")
      .Add("sim.dropout", ConfigType::kDouble, "0.0",
           "probability that a sampled client drops out of a round")
      .Add("sim.eval_every", ConfigType::kInt, "1",
           "evaluate the global model on the test set every k rounds (0 = last only)")
      .Add("sim.seed", ConfigType::kInt, "1", "seed of partition, init, sampling and training")
      .Add("sim.checkpoint", ConfigType::kString, "",
           "checkpoint file: written after every round, resumed from when present")
      .Add("sim.data", ConfigType::kString, "fashion-mnist",
           "dataset: fashion-mnist | fashion-mnist:DIR | idx:DIR | cifar:DIR | cifar10:DIR | "
           "cifar100:DIR | folder:DIR (DIR/train/<class>/*.png|*.jpg, DIR/test/...); the "
           "model is sized for its channels, image size and classes")
      .Add("sim.image_size", ConfigType::kInt, "0",
           "resize the images to this side (0 = their own, which must be square)")
      .Add("sim.data_dir", ConfigType::kString, "",
           "Fashion-MNIST directory (older form of sim.data fashion-mnist:DIR)")
      .Add("sim.train_limit", ConfigType::kInt, "0", "use the first N training rows (0 = all)")
      .Add("sim.test_limit", ConfigType::kInt, "0", "evaluate on the first N test rows (0 = all)")
      .Add("sim.memory_mb", ConfigType::kInt, "4096",
           "a split whose converted images (float32) take more than this is read from the "
           "dataset when needed (each client's rows when it trains) instead of held in memory");
  AddRoundConfigKeys(s);  // also compression.*
  AddContinualStreamKeys(s, "sim.rounds",
                         "each client keeps its strategy's state (replay buffer, Fisher) "
                         "across rounds");
  s.Add("attack.kind", ConfigType::kString, "none",
        "Byzantine clients: none | sign_flip (send global - scale x delta) | scale (global + "
        "scale x delta) | random (Gaussian delta, scale x the honest norm) | label_flip "
        "(train on labels 9 - y)")
      .Add("attack.fraction", ConfigType::kDouble, "0.0",
           "share of the population that is malicious, in [0, 1] (chosen from sim.seed; a "
           "malicious client attacks whenever it is sampled)")
      .Add("attack.scale", ConfigType::kDouble, "10.0",
           "sign_flip/scale/random: boost factor of the malicious delta (> 0)");
  return s;
}

Result<SimSetup> SimSetupFromConfig(const Config& c) {
  SimSetup setup;
  SimOptions& o = setup.options;
  o.model = c.GetString("sim.model");
  o.num_clients = static_cast<int>(c.GetInt("sim.clients"));
  CLEAVE_ASSIGN_OR_RETURN(o.partition, PartitionSpec::Parse(c.GetString("sim.partition")));
  o.partition.min_size = static_cast<int>(c.GetInt("sim.partition_min_size"));
  o.rounds = static_cast<int>(c.GetInt("sim.rounds"));
  o.workers = static_cast<int>(c.GetInt("sim.workers"));
  o.step_seconds = c.GetDouble("sim.step_seconds");
  o.speed_min = c.GetDouble("sim.speed_min");
  o.speed_max = c.GetDouble("sim.speed_max");
  o.dropout = c.GetDouble("sim.dropout");
  o.eval_every = static_cast<int>(c.GetInt("sim.eval_every"));
  o.seed = static_cast<uint64_t>(c.GetInt("sim.seed"));
  o.checkpoint = c.GetString("sim.checkpoint");
  setup.data = c.GetString("sim.data");
  const std::string data_dir = c.GetString("sim.data_dir");
  if (!data_dir.empty()) {
    if (setup.data != "fashion-mnist") {
      return Status::InvalidArgument("give sim.data or sim.data_dir, not both");
    }
    setup.data = "fashion-mnist:" + data_dir;
  }
  setup.image_size = static_cast<int>(c.GetInt("sim.image_size"));
  if (setup.image_size < 0 || setup.image_size > 1024) {
    return Status::InvalidArgument("sim.image_size must be in [0, 1024]");
  }
  setup.train_limit = c.GetInt("sim.train_limit");
  setup.test_limit = c.GetInt("sim.test_limit");
  setup.memory_mb = c.GetInt("sim.memory_mb");
  if (setup.memory_mb < 0) return Status::InvalidArgument("sim.memory_mb must be >= 0");
  CLEAVE_RETURN_IF_ERROR(ReadRoundConfigKeys(c, o.engine, o.strategy, o.compression));
  o.engine.seed = o.seed;
  o.compression.seed = o.seed;
  CLEAVE_ASSIGN_OR_RETURN(o.continual, ReadContinualStreamKeys(c));
  CLEAVE_ASSIGN_OR_RETURN(o.attack.kind, ParseAttackKind(c.GetString("attack.kind")));
  o.attack.fraction = c.GetDouble("attack.fraction");
  o.attack.scale = c.GetDouble("attack.scale");
  CLEAVE_RETURN_IF_ERROR(o.Validate());
  if (setup.train_limit < 0 || setup.test_limit < 0) {
    return Status::InvalidArgument("sim.train_limit and sim.test_limit must be >= 0");
  }
  return setup;
}

}  // namespace cleave::federated
