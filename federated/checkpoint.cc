#include "federated/checkpoint.h"

#include "federated/checkpoint_format.h"
#include "federated/wire_convert.h"

namespace cleave::federated {

Status SaveCheckpoint(const std::filesystem::path& path, const RoundEngine& engine) {
  CLEAVE_ASSIGN_OR_RETURN(RoundEngine::Snapshot snapshot, engine.Save());
  CheckpointData data;
  data.round = static_cast<uint32_t>(engine.rounds_completed());
  data.model_name = LayoutSha256(engine.layout());
  data.layout = ToWireLayout(engine.layout());
  for (const auto& w : snapshot.global) data.weights.push_back(ToWireTensor(w));
  data.strategy_name = engine.strategy().name();
  for (const auto& [name, tensor] : snapshot.strategy_state) {
    data.strategy_state.push_back({name, ToWireTensor(tensor)});
  }
  data.engine_state = snapshot.engine.dump();
  return WriteCheckpointFile(path, data).WithContext("checkpoint");
}

Status RestoreCheckpoint(const std::filesystem::path& path, RoundEngine& engine) {
  CLEAVE_ASSIGN_OR_RETURN(CheckpointData data, ReadCheckpointFile(path));
  const WeightsLayout layout = FromWireLayout(data.layout);
  if (!(layout == engine.layout())) {
    return Status::InvalidArgument("checkpoint " + path.string() +
                                   " holds a different model (layout differs)");
  }
  if (data.strategy_name != engine.strategy().name()) {
    return Status::InvalidArgument("checkpoint " + path.string() + " was written by strategy '" +
                                   data.strategy_name + "', this run uses '" +
                                   engine.strategy().name() + "'");
  }
  RoundEngine::Snapshot snapshot;
  for (const auto& t : data.weights) {
    CLEAVE_ASSIGN_OR_RETURN(torch::Tensor w, FromWireTensor(t));
    snapshot.global.push_back(std::move(w));
  }
  for (const auto& named : data.strategy_state) {
    CLEAVE_ASSIGN_OR_RETURN(torch::Tensor t, FromWireTensor(named.tensor));
    snapshot.strategy_state.emplace_back(named.name, std::move(t));
  }
  snapshot.engine = nlohmann::json::parse(data.engine_state, nullptr, /*allow_exceptions=*/false);
  if (snapshot.engine.is_discarded()) {
    return Status::DataLoss("checkpoint " + path.string() + ": engine state is not JSON");
  }
  if (snapshot.engine.value("completed_rounds", -1) != static_cast<int>(data.round)) {
    return Status::DataLoss("checkpoint " + path.string() + ": round count disagrees");
  }
  return engine.Restore(snapshot).WithContext("checkpoint " + path.string());
}

}  // namespace cleave::federated
