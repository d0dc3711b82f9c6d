#include "federated/continual_stream.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <utility>

#include "federated/local_training.h"
#include "split/torch_status.h"

namespace cleave::federated {

using nlohmann::json;

json ContinualStreamOptions::ToJson() const {
  if (!enabled) return {{"enabled", false}};
  return {{"enabled", true},
          {"scenario", scenario},
          {"experiences", experiences},
          {"strategy", strategy.ToJson()}};
}

Status ContinualStreamOptions::Validate(int rounds, const std::string& who) const {
  if (!enabled) return Status::Ok();
  if (scenario != "class" && scenario != "domain") {
    return Status::InvalidArgument(who + ": continual.scenario must be class or domain, got '" +
                                   scenario + "'");
  }
  if (experiences < 1 || experiences > rounds) {
    return Status::InvalidArgument(who + ": continual.experiences must be in 1.." + who +
                                   ".rounds (" + std::to_string(rounds) + "), got " +
                                   std::to_string(experiences));
  }
  return strategy.Validate().WithContext(who + ": continual");
}

namespace {

namespace fl = wire::fl;

constexpr std::pair<const char*, fl::ContinualMethod> kWireMethods[] = {
    {"naive", fl::ContinualMethod::kNaive}, {"er", fl::ContinualMethod::kEr},
    {"ewc", fl::ContinualMethod::kEwc},     {"lwf", fl::ContinualMethod::kLwf},
    {"derpp", fl::ContinualMethod::kDerpp},
};

}  // namespace

fl::ContinualRound ToWireContinual(const ContinualStreamOptions& options, int experience,
                                   uint64_t seed) {
  fl::ContinualRound r;
  r.experience = static_cast<uint32_t>(experience);
  r.experiences = static_cast<uint32_t>(options.experiences);
  r.scenario =
      options.scenario == "domain" ? fl::ContinualScenario::kDomain : fl::ContinualScenario::kClass;
  r.seed = seed;
  for (const auto& [name, method] : kWireMethods) {
    if (options.strategy.strategy == name) r.method = method;
  }
  const ContinualConfig& c = options.strategy;
  r.buffer_rows = static_cast<uint32_t>(std::clamp<int64_t>(c.replay.capacity, 0, UINT32_MAX));
  r.class_balanced = c.replay.class_balanced;
  r.replay_batch = static_cast<uint32_t>(std::clamp<int64_t>(c.replay_batch, 0, UINT32_MAX));
  r.ewc_lambda = c.ewc_lambda;
  r.ewc_gamma = c.ewc_gamma;
  r.ewc_samples = static_cast<uint32_t>(std::clamp<int64_t>(c.ewc_samples, 1, UINT32_MAX));
  r.lwf_alpha = c.lwf_alpha;
  r.lwf_temperature = c.lwf_temperature;
  r.derpp_alpha = c.derpp_alpha;
  r.derpp_beta = c.derpp_beta;
  r.kd_temperature = c.kd_temperature;
  return r;
}

Result<ContinualStreamOptions> FromWireContinual(const fl::ContinualRound& r,
                                                 int64_t replay_max_bytes, uint64_t replay_seed) {
  ContinualStreamOptions o;
  o.enabled = true;
  o.scenario = fl::ContinualScenarioName(r.scenario);
  o.experiences = static_cast<int>(r.experiences);
  ContinualConfig& c = o.strategy;
  c.strategy = fl::ContinualMethodName(r.method);
  c.replay.capacity = std::max<int64_t>(1, r.buffer_rows);
  c.replay.class_balanced = r.class_balanced;
  c.replay.max_bytes = replay_max_bytes;
  c.replay.seed = replay_seed;
  c.replay_batch = r.replay_batch;
  c.ewc_lambda = r.ewc_lambda;
  c.ewc_gamma = r.ewc_gamma;
  c.ewc_samples = r.ewc_samples;
  c.lwf_alpha = r.lwf_alpha;
  c.lwf_temperature = r.lwf_temperature;
  c.derpp_alpha = r.derpp_alpha;
  c.derpp_beta = r.derpp_beta;
  c.kd_temperature = r.kd_temperature;
  if (o.scenario != "class" && o.scenario != "domain") {
    return Status::InvalidArgument("RoundConfig.continual: unknown scenario");
  }
  CLEAVE_RETURN_IF_ERROR(c.Validate().WithContext("RoundConfig.continual"));
  return o;
}

int ExperienceOfRound(int round, int rounds, int experiences) {
  if (rounds < 1 || experiences < 1) return 0;
  const int e = static_cast<int>(static_cast<int64_t>(round - 1) * experiences / rounds);
  return std::clamp(e, 0, experiences - 1);
}

int ClassExperience(int64_t label, int classes, int experiences) {
  if (classes < 1) return 0;
  return static_cast<int>(label * experiences / classes);
}

std::vector<int64_t> ExperienceSelection(const std::vector<int64_t>& labels,
                                         const std::string& scenario, int classes, int experience,
                                         int experiences) {
  const auto n = static_cast<int64_t>(labels.size());
  std::vector<int64_t> out;
  if (scenario == "class") {
    for (int64_t k = 0; k < n; ++k) {
      if (ClassExperience(labels[k], classes, experiences) == experience) out.push_back(k);
    }
  } else {  // domain: the experience's contiguous share
    const int64_t begin = n * experience / experiences;
    const int64_t end = n * (experience + 1) / experiences;
    for (int64_t k = begin; k < end; ++k) out.push_back(k);
  }
  return out;
}

std::vector<torch::Tensor> DomainPermutations(uint64_t seed, int experiences, int64_t pixels) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed ^ 0x9e3779b9ULL);
  std::vector<torch::Tensor> out;
  out.push_back(torch::arange(pixels, torch::kLong));
  for (int e = 1; e < experiences; ++e) {
    out.push_back(torch::randperm(pixels, generator, torch::kLong));
  }
  return out;
}

torch::Tensor InExperience(const torch::Tensor& images,
                           const std::vector<torch::Tensor>& permutations, int experience) {
  if (permutations.empty() || experience <= 0 ||
      experience >= static_cast<int>(permutations.size())) {
    return images;
  }
  const auto sizes = images.sizes().vec();
  return images.flatten(2).index_select(2, permutations[experience]).reshape(sizes);
}

ExperienceEvaluator::ExperienceEvaluator(ContinualStreamOptions options, int classes, uint64_t seed)
    : options_(std::move(options)),
      classes_(classes),
      seed_(seed),
      tracker_(options_.experiences) {}

Status ExperienceEvaluator::Restore(const std::vector<RoundRecord>& history) {
  tracker_ = ContinualTracker(options_.experiences);
  for (const RoundRecord& r : history) {
    if (!r.extra.contains("continual")) continue;
    const json& c = r.extra["continual"];
    CLEAVE_RETURN_IF_ERROR(tracker_.Record(c.value("experience", 0),
                                           c.value("accuracies", std::vector<double>{}),
                                           c.value("end_of_experience", false)));
  }
  return Status::Ok();
}

Result<json> ExperienceEvaluator::Evaluate(split::TrainableNet& net, const Weights& weights,
                                           const split::ImageRows& test, int round, int rounds) {
  const int experiences = options_.experiences;
  const int experience = ExperienceOfRound(round, rounds, experiences);
  const bool by_class = options_.scenario == "class";
  if (by_class && tests_.empty()) {
    std::vector<std::vector<int64_t>> rows(experiences);
    const torch::Tensor labels = test.labels().to(torch::kLong).contiguous();
    const int64_t* l = labels.data_ptr<int64_t>();
    for (int64_t r = 0; r < test.size(); ++r) {
      const int e = ClassExperience(l[r], classes_, experiences);
      if (e >= 0 && e < experiences) rows[e].push_back(r);
    }
    for (const auto& r : rows) tests_.push_back(test.Select(torch::tensor(r, torch::kLong)));
  }
  std::vector<double> accuracies(experiences, 0.0);
  std::optional<split::LabeledImages> all;  // domain: the test set, read once
  for (int j = 0; j < experiences; ++j) {
    split::ImageRows rows;
    if (by_class) {
      rows = tests_[j];
      if (rows.size() == 0) continue;
    } else {
      if (!all) {
        CLEAVE_ASSIGN_OR_RETURN(split::LabeledImages loaded, test.Load());
        all = std::move(loaded);
        if (permutations_.empty()) {
          permutations_ =
              DomainPermutations(seed_, experiences, all->images.size(2) * all->images.size(3));
        }
      }
      split::LabeledImages seen = *all;
      CLEAVE_ASSIGN_OR_RETURN(
          seen.images,
          split::CallTorch(split::TorchSource::kOwnState, "permuting the test set",
                           [&] { return InExperience(all->images, permutations_, j); }));
      rows = split::ImageRows::InMemory(std::move(seen));
    }
    CLEAVE_ASSIGN_OR_RETURN(Evaluation e, EvaluateWeights(net, weights, rows));
    accuracies[j] = e.accuracy;
  }
  const bool end_of_experience =
      round >= rounds || ExperienceOfRound(round + 1, rounds, experiences) != experience;
  double seen = 0;
  for (int j = 0; j <= experience; ++j) seen += accuracies[j];
  CLEAVE_RETURN_IF_ERROR(tracker_.Record(experience, accuracies, end_of_experience));
  return json{{"experience", experience},
              {"accuracies", accuracies},
              {"accuracy_seen", seen / (experience + 1)},
              {"end_of_experience", end_of_experience}};
}

json ExperienceEvaluator::Summary() const {
  json out = {{"scenario", options_.scenario},
              {"experiences", options_.experiences},
              {"strategy", options_.strategy.ToJson()},
              {"matrix", tracker_.matrix()}};
  if (Result<ContinualMetrics> m = tracker_.Metrics(); m.ok()) out["metrics"] = m->ToJson();
  return out;
}

}  // namespace cleave::federated
