#include <cmath>
#include <filesystem>
#include <sstream>
#include <tuple>

#include "common/datasets.h"
#include "common/file_util.h"
#include "federated/simulation.h"
#include "split/dataset.h"
#include "split/model_spec_file.h"
#include "split/torch_status.h"

namespace cleave::federated {

using nlohmann::json;

Result<split::VisionModelSpec> ModelSpecByName(const std::string& name) {
  if (split::IsModelSpecPath(name)) return split::LoadVisionModelSpecFile(name);
  if (name == "simple_cnn") return split::VisionModelSpec::SimpleCnn();
  if (name == "default_split") return split::VisionModelSpec::DefaultSplit();
  if (name == "residual_split") return split::VisionModelSpec::ResidualSplit();
  if (name == "tiny_split") return split::VisionModelSpec::TinySplit();
  return Status::InvalidArgument(
      "unknown model '" + name +
      "' (simple_cnn, default_split, residual_split, tiny_split, or a .json/.toml spec file)");
}

Result<SimData> LoadSimData(const std::string& spec, int64_t train_limit, int64_t test_limit,
                            int image_size, int64_t memory_mb) {
  // A plain directory is the older sim.data_dir form: Fashion-MNIST files in it.
  const std::string data_spec =
      !spec.empty() && spec.find(':') == std::string::npos && spec != "fashion-mnist"
          ? "fashion-mnist:" + spec
          : spec;
  split::DatasetOptions load;
  load.train_limit = train_limit;
  load.test_limit = test_limit;
  load.image_size = image_size;
  if (memory_mb < 0) return Status::InvalidArgument("sim: memory_mb must be >= 0");
  CLEAVE_ASSIGN_OR_RETURN(split::DatasetRows rows,
                          split::OpenDatasetRows(data_spec, load, memory_mb * (int64_t{1} << 20)));
  if (rows.input.class_names.size() > 256) {
    return Status::InvalidArgument("sim: " + data_spec + " has " +
                                   std::to_string(rows.input.class_names.size()) +
                                   " classes; the partitioners take at most 256");
  }
  SimData data;
  data.train = std::move(rows.train);
  data.test = std::move(rows.test);
  const torch::Tensor labels = data.train.labels().to(torch::kUInt8).contiguous();
  data.train_labels.assign(labels.data_ptr<uint8_t>(), labels.data_ptr<uint8_t>() + labels.numel());
  CLEAVE_ASSIGN_OR_RETURN(std::tie(data.mean, data.std),
                          split::NormalizationForRows(data_spec, data.train));
  data.input = std::move(rows.input);
  return data;
}

Result<split::VisionModelSpec> SimModelSpec(const std::string& name, const SimData& data) {
  CLEAVE_ASSIGN_OR_RETURN(split::VisionModelSpec spec, ModelSpecByName(name));
  if (!data.input) return spec;
  if (data.input->height != data.input->width) {
    return Status::InvalidArgument("sim: cleave's own networks take square images");
  }
  return spec.ForInput(data.input->channels, data.input->height,
                       static_cast<int>(data.input->class_names.size()), data.mean, data.std);
}

Result<std::unique_ptr<split::TrainableNet>> MakeSimModel(const std::string& name,
                                                          const SimData& data, uint64_t seed) {
  if (split::IsTorchScriptPath(name)) {
    const split::InputSpec input =
        data.input ? *data.input : split::InputSpec::Legacy(split::VisionModelSpec::SimpleCnn());
    Result<std::unique_ptr<split::TrainableNet>> net = split::LoadTorchScriptTrainable(name, input);
    if (!net.ok()) return net.status().WithContext("sim model");
    return net;
  }
  CLEAVE_ASSIGN_OR_RETURN(split::VisionModelSpec spec, SimModelSpec(name, data));
  split::InputSpec input = data.input ? *data.input : split::InputSpec::Legacy(spec);
  return split::CallTorch(split::TorchSource::kOwnState, "sim: building the model", [&] {
    torch::manual_seed(seed);
    return split::MakeTrainable(spec, std::move(input));
  });
}

json SimOptions::ToJson() const {
  return {{"model", model},
          {"num_clients", num_clients},
          {"partition", partition.ToString()},
          {"partition_min_size", partition.min_size},
          {"rounds", rounds},
          {"engine", engine.ToJson()},
          {"strategy", strategy.ToJson()},
          {"compression", compression.ToJson()},
          {"attack", attack.ToJson()},
          {"workers", workers},
          {"step_seconds", step_seconds},
          {"speed_min", speed_min},
          {"speed_max", speed_max},
          {"dropout", dropout},
          {"eval_every", eval_every},
          {"seed", seed},
          {"continual", continual.ToJson()}};
}

Status SimOptions::Validate() const {
  if (split::IsTorchScriptPath(model)) {
    // Loaded (and checked against the data) by MakeSimModel; here only its presence.
    std::error_code ec;
    if (!std::filesystem::is_regular_file(model, ec)) {
      return Status::NotFound("sim.model: no TorchScript file " + model);
    }
  } else {
    CLEAVE_RETURN_IF_ERROR(ModelSpecByName(model).status());
  }
  if (num_clients < 1) return Status::InvalidArgument("sim: num_clients must be >= 1");
  if (rounds < 1) return Status::InvalidArgument("sim: rounds must be >= 1");
  if (workers < 0 || workers > 256) return Status::InvalidArgument("sim: workers in [0, 256]");
  if (!(step_seconds > 0) || !std::isfinite(step_seconds)) {
    return Status::InvalidArgument("sim: step_seconds must be > 0");
  }
  if (!(speed_min > 0) || !(speed_max >= speed_min) || !std::isfinite(speed_max)) {
    return Status::InvalidArgument("sim: need 0 < speed_min <= speed_max");
  }
  if (!(dropout >= 0 && dropout < 1)) return Status::InvalidArgument("sim: dropout in [0, 1)");
  if (eval_every < 0) return Status::InvalidArgument("sim: eval_every must be >= 0");
  CLEAVE_RETURN_IF_ERROR(engine.Validate());
  CLEAVE_RETURN_IF_ERROR(compression.Validate());
  CLEAVE_RETURN_IF_ERROR(
      CheckCompressionCompatible(compression, engine.secure.enabled, strategy.name));
  CLEAVE_RETURN_IF_ERROR(attack.Validate());
  CLEAVE_RETURN_IF_ERROR(continual.Validate(rounds, "sim"));
  if (engine.secure.enabled && strategy.name == "dpfedavg" && strategy.dp.adaptive_clip) {
    return Status::InvalidArgument(
        "sim: strategy.dp_adaptive_clip is not available with secure aggregation (the "
        "clients clip with a fixed strategy.dp_clip_norm)");
  }
  if (engine.secure.enabled && strategy.norm_bound > 0) {
    return Status::InvalidArgument(
        "sim: strategy.norm_bound clips each client's update on the server, which secure "
        "aggregation never reveals");
  }
  return strategy.Validate();
}

json SimResult::ToJson() const {
  json rounds = json::array();
  for (const auto& r : history) rounds.push_back(r.ToJson());
  return {{"rounds", rounds},
          {"best_accuracy", best_accuracy},
          {"final_accuracy", final_accuracy},
          {"wall_seconds", wall_seconds},
          {"peak_rss_bytes", peak_rss_bytes},
          {"resumed_from_round", resumed_from_round},
          {"continual", continual}};
}

Status WriteHistoryCsv(const std::vector<RoundRecord>& history, const std::string& path) {
  std::ostringstream out;
  out << "round,applied,accuracy,loss,train_loss,sampled,succeeded,failed,late,rejected,"
         "missing,bytes_up,bytes_down,wall_seconds,training_seconds,peak_rss_bytes,experience,"
         "accuracy_seen\n";
  const auto num = [](const json& extra, const char* key) -> std::string {
    return extra.contains(key) ? extra.at(key).dump() : "";
  };
  for (const auto& r : history) {
    out << r.round << ',' << (r.applied ? 1 : 0) << ','
        << (r.eval_accuracy ? std::to_string(*r.eval_accuracy) : "") << ','
        << (r.eval_loss ? std::to_string(*r.eval_loss) : "") << ',' << r.train_loss << ','
        << r.sampled << ',' << r.succeeded << ',' << r.failed << ',' << r.late << ',' << r.rejected
        << ',' << r.missing << ',' << num(r.extra, "bytes_up") << ',' << num(r.extra, "bytes_down")
        << ',' << num(r.extra, "wall_seconds") << ',' << num(r.extra, "training_seconds") << ','
        << num(r.extra, "peak_rss_bytes") << ',';
    // Continual runs: the round's experience and the mean accuracy over the experiences
    // learned so far (ACC of the matrix row it would make).
    if (r.extra.contains("continual") && r.extra["continual"].is_object()) {
      const json& c = r.extra["continual"];
      out << c.value("experience", -1) << ',' << c.value("accuracy_seen", 0.0);
    } else {
      out << ',';
    }
    out << '\n';
  }
  return WriteFileAtomic(path, out.str());
}

}  // namespace cleave::federated
