// FederatedClient, federated continual learning (RoundConfig.continual): the client's share of
// the round's experience and the continual-learning strategy it keeps across rounds, cut as
// cleave sim and the aggregator cut the stream (federated/continual_stream.h).
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "edge/fl_client.h"
#include "edge/fl_client_internal.h"
#include "split/torch_status.h"

namespace cleave::edge {

namespace fl = wire::fl;
using fl_client_internal::Log;

Status FederatedClient::PrepareContinual(const fl::ContinualRound& round,
                                         split::LabeledImages& rows,
                                         federated::LabeledBatch& consolidate) {
  CLEAVE_ASSIGN_OR_RETURN(
      federated::ContinualStreamOptions stream,
      federated::FromWireContinual(round, federated::ReplayOptions().max_bytes,
                                   fl_client_internal::ClientNumber(options_.client_id)));
  if (stream.scenario == "class" && stream.experiences > net_->num_classes()) {
    return Status::InvalidArgument("RoundConfig.continual: " + std::to_string(stream.experiences) +
                                   " class-incremental experiences for a model of " +
                                   std::to_string(net_->num_classes()) + " classes");
  }
  const bool same = continual_ && continual_->seed == round.seed &&
                    continual_->stream.ToJson() == stream.ToJson();
  if (!same) {
    if (continual_) {
      Log()->warn(
          "the federation's continual stream or strategy changed; starting a new {} "
          "strategy (its buffer starts empty)",
          stream.strategy.strategy);
    }
    CLEAVE_ASSIGN_OR_RETURN(std::unique_ptr<federated::ContinualStrategy> strategy,
                            federated::MakeContinualStrategy(stream.strategy));
    ContinualState state;
    state.stream = std::move(stream);
    state.seed = round.seed;
    state.strategy = std::move(strategy);
    if (state.stream.scenario == "domain" && data_.size() > 0) {
      state.permutations = federated::DomainPermutations(
          round.seed, state.stream.experiences, data_.images.size(2) * data_.images.size(3));
    }
    continual_ = std::move(state);
  }
  const ContinualState& state = *continual_;
  const torch::Tensor labels = data_.labels.to(torch::kLong).contiguous();
  const std::vector<int64_t> all(labels.data_ptr<int64_t>(),
                                 labels.data_ptr<int64_t>() + labels.numel());
  // The rows of `experience`, as the experience sees them.
  const auto rows_of = [&](int experience, int64_t limit) -> Result<split::LabeledImages> {
    std::vector<int64_t> pick = federated::ExperienceSelection(
        all, state.stream.scenario, net_->num_classes(), experience, state.stream.experiences);
    if (limit > 0 && static_cast<int64_t>(pick.size()) > limit) pick.resize(limit);
    return split::CallTorch(split::TorchSource::kOwnState, "selecting the experience's rows", [&] {
      split::LabeledImages out = data_.Select(torch::tensor(pick, torch::kLong));
      out.images = federated::InExperience(out.images, state.permutations, experience);
      return out;
    });
  };
  const int experience = static_cast<int>(round.experience);
  CLEAVE_ASSIGN_OR_RETURN(rows, rows_of(experience, 0));
  if (rows.size() == 0) {
    return Status::FailedPrecondition("no examples in experience " + std::to_string(experience) +
                                      " of the " + state.stream.scenario + "-incremental stream");
  }
  consolidate = federated::LabeledBatch{};
  if (state.experience >= 0 && state.experience != experience) {
    CLEAVE_ASSIGN_OR_RETURN(split::LabeledImages old,
                            rows_of(state.experience, state.stream.strategy.ewc_samples));
    if (old.size() > 0) consolidate = federated::LabeledBatch::Hard(old.images, old.labels);
    Log()->info("entering experience {} of {} (consolidating on {} rows of experience {})",
                experience, state.stream.experiences, old.size(), state.experience);
  }
  return Status::Ok();
}

}  // namespace cleave::edge
