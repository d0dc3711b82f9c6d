// Federated continual learning in the simulator (SimOptions::continual): which rows a client
// has in each experience, the clients' strategies, and the per-experience evaluation.
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "federated/simulation_internal.h"

namespace cleave::federated::sim_internal {

namespace {

// The class group of `label` among `experiences` groups of `classes` classes.
int ClassExperience(int label, int classes, int experiences) {
  return static_cast<int>(static_cast<int64_t>(label) * experiences / classes);
}

}  // namespace

int Simulation::ExperienceOfRound(int round) const {
  if (!options_.continual.enabled) return 0;
  const int e = static_cast<int>(static_cast<int64_t>(round - 1) * options_.continual.experiences /
                                 options_.rounds);
  return std::clamp(e, 0, options_.continual.experiences - 1);
}

std::vector<int64_t> Simulation::ClientRows(int client, int experience) const {
  const int64_t* rows = partition_.client_rows(client);
  const int64_t n = partition_.client_size(client);
  if (!options_.continual.enabled) return std::vector<int64_t>(rows, rows + n);
  const int experiences = options_.continual.experiences;
  std::vector<int64_t> out;
  if (options_.continual.scenario == "class") {
    const int classes = model_->num_classes();
    for (int64_t k = 0; k < n; ++k) {
      if (ClassExperience(data_.train_labels[rows[k]], classes, experiences) == experience) {
        out.push_back(rows[k]);
      }
    }
  } else {  // domain: the experience's chunk of the client's rows
    const int64_t begin = n * experience / experiences, end = n * (experience + 1) / experiences;
    out.assign(rows + begin, rows + end);
  }
  return out;
}

int64_t Simulation::ClientSize(int client) const {
  if (!options_.continual.enabled) return partition_.client_size(client);
  return static_cast<int64_t>(ClientRows(client, experience_).size());
}

torch::Tensor Simulation::InExperience(const torch::Tensor& images, int experience) const {
  if (permutations_.empty() || experience == 0) return images;
  const torch::Tensor& perm = permutations_[experience];
  const auto sizes = images.sizes().vec();
  return images.flatten(2).index_select(2, perm).reshape(sizes);
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
  const int experiences = options_.continual.experiences;
  const int experience = ExperienceOfRound(round);
  if (experience_tests_.empty()) {
    if (options_.continual.scenario == "class") {
      const int classes = model_->num_classes();
      std::vector<std::vector<int64_t>> rows(experiences);
      const torch::Tensor labels = data_.test.labels();
      const int64_t* l = labels.data_ptr<int64_t>();
      for (int64_t r = 0; r < data_.test.size(); ++r) {
        rows[ClassExperience(static_cast<int>(l[r]), classes, experiences)].push_back(r);
      }
      for (const auto& r : rows) {
        experience_tests_.push_back(data_.test.Select(torch::tensor(r, torch::kLong)));
      }
    } else {
      experience_tests_.push_back(data_.test);
    }
  }
  std::vector<double> accuracies(experiences, 0.0);
  for (int j = 0; j < experiences; ++j) {
    split::ImageRows test;
    if (options_.continual.scenario == "class") {
      test = experience_tests_[j];
      if (test.size() == 0) continue;
    } else {
      CLEAVE_ASSIGN_OR_RETURN(split::LabeledImages all, data_.test.Load());
      all.images = InExperience(all.images, j);
      test = split::ImageRows::InMemory(std::move(all));
    }
    CLEAVE_ASSIGN_OR_RETURN(Evaluation e, EvaluateWeights(*model_, w, test));
    accuracies[j] = e.accuracy;
  }
  const bool end_of_experience =
      round == options_.rounds || ExperienceOfRound(round + 1) != experience;
  double seen = 0;
  for (int j = 0; j <= experience; ++j) seen += accuracies[j];
  record.extra["continual"] = {{"experience", experience},
                               {"accuracies", accuracies},
                               {"accuracy_seen", seen / (experience + 1)},
                               {"end_of_experience", end_of_experience}};
  if (!tracker_) tracker_.emplace(experiences);
  return tracker_->Record(experience, accuracies, end_of_experience);
}

}  // namespace cleave::federated::sim_internal
