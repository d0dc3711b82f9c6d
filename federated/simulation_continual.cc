// Federated continual learning in the simulator (SimOptions::continual): which rows a client
// has in each experience, the clients' strategies, and the per-experience evaluation.
#include <algorithm>

#include "federated/simulation_internal.h"

namespace cleave::federated::sim_internal {

int Simulation::ExperienceOfRound(int round) const {
  if (!options_.continual.enabled) return 0;
  return federated::ExperienceOfRound(round, options_.rounds, options_.continual.experiences);
}

std::vector<int64_t> Simulation::ClientRows(int client, int experience) const {
  const int64_t* rows = partition_.client_rows(client);
  const int64_t n = partition_.client_size(client);
  if (!options_.continual.enabled) return std::vector<int64_t>(rows, rows + n);
  std::vector<int64_t> labels(n);
  for (int64_t k = 0; k < n; ++k) labels[k] = data_.train_labels[rows[k]];
  std::vector<int64_t> out =
      ExperienceSelection(labels, options_.continual.scenario, model_->num_classes(), experience,
                          options_.continual.experiences);
  for (int64_t& k : out) k = rows[k];
  return out;
}

int64_t Simulation::ClientSize(int client) const {
  if (!options_.continual.enabled) return partition_.client_size(client);
  return static_cast<int64_t>(ClientRows(client, experience_).size());
}

torch::Tensor Simulation::InExperience(const torch::Tensor& images, int experience) const {
  return federated::InExperience(images, permutations_, experience);
}

void Simulation::EnterExperience(int experience) {
  experience_ = experience;
  int width = 1;
  for (int n = options_.num_clients - 1; n >= 10; n /= 10) ++width;
  std::vector<ClientInfo> population;
  for (int c = 0; c < options_.num_clients; ++c) {
    const int64_t n = ClientSize(c);
    if (n > 0) population.push_back({ClientId(c, width), n});
  }
  clients_ = ClientPool(population);
}

ContinualStrategy* Simulation::ClientStrategy(int client, int experience,
                                              LabeledBatch& consolidate) {
  ClientContinual* entry = nullptr;
  {
    MutexLock lock(&mu_);
    entry = &continual_[client];  // references stay valid as the map grows
  }
  if (!entry->strategy) {
    ContinualConfig config = options_.continual.strategy;
    config.replay.seed = StreamSeed(options_.seed, 0xb0ffe7, static_cast<uint64_t>(client));
    Result<std::unique_ptr<ContinualStrategy>> made = MakeContinualStrategy(config);
    if (!made.ok()) return nullptr;  // validated with the options: cannot happen
    entry->strategy = std::move(made).value();
  }
  consolidate = LabeledBatch{};
  if (entry->experience >= 0 && entry->experience != experience) {
    // What the client saw in its last experience (at most the rows a Fisher estimate uses).
    std::vector<int64_t> rows = ClientRows(client, entry->experience);
    if (static_cast<int64_t>(rows.size()) > options_.continual.strategy.ewc_samples) {
      rows.resize(options_.continual.strategy.ewc_samples);
    }
    if (!rows.empty()) {
      Result<split::LabeledImages> old =
          data_.train.Select(torch::tensor(rows, torch::kLong)).Load();
      if (old.ok()) {
        consolidate = LabeledBatch::Hard(InExperience(old->images, entry->experience), old->labels);
      }
    }
  }
  entry->experience = experience;
  return entry->strategy.get();
}

Status Simulation::EvaluateExperiences(const Weights& w, int round, RoundRecord& record) {
  if (!evaluator_) evaluator_.emplace(options_.continual, model_->num_classes(), options_.seed);
  CLEAVE_ASSIGN_OR_RETURN(record.extra["continual"],
                          evaluator_->Evaluate(*model_, w, data_.test, round, options_.rounds));
  return Status::Ok();
}

}  // namespace cleave::federated::sim_internal
