#include "federated/attack.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <numeric>

#include "federated/splitmix.h"
#include "federated/strategy_internal.h"
#include "split/torch_status.h"

namespace cleave::federated {

using split::CallTorch;
using split::TorchSource;

namespace {

struct KindName {
  AttackKind kind;
  const char* name;
};
constexpr KindName kKinds[] = {{AttackKind::kNone, "none"},
                               {AttackKind::kSignFlip, "sign_flip"},
                               {AttackKind::kScale, "scale"},
                               {AttackKind::kRandom, "random"},
                               {AttackKind::kLabelFlip, "label_flip"}};

// L2 norm of the trainable entries of `w`, flattened into one vector.
double TrainableNorm(const Weights& w, const std::vector<bool>& trainable) {
  double squared = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    if (!trainable[i]) continue;
    const double norm = w[i].norm().item<double>();
    squared += norm * norm;
  }
  return std::sqrt(squared);
}

}  // namespace

const char* AttackKindName(AttackKind kind) {
  for (const auto& k : kKinds) {
    if (k.kind == kind) return k.name;
  }
  return "unknown";
}

Result<AttackKind> ParseAttackKind(const std::string& name) {
  std::string known;
  for (const auto& k : kKinds) {
    if (name == k.name) return k.kind;
    known += (known.empty() ? "" : " | ") + std::string(k.name);
  }
  return Status::InvalidArgument("attack.kind: unknown attack '" + name + "' (" + known + ")");
}

nlohmann::json AttackOptions::ToJson() const {
  return {{"kind", AttackKindName(kind)}, {"fraction", fraction}, {"scale", scale}};
}

Status AttackOptions::Validate() const {
  if (std::none_of(std::begin(kKinds), std::end(kKinds),
                   [this](const KindName& k) { return k.kind == kind; })) {
    return Status::InvalidArgument("attack.kind: not a known attack (" +
                                   std::to_string(static_cast<int>(kind)) + ")");
  }
  if (!(fraction >= 0 && fraction <= 1)) {
    return Status::InvalidArgument("attack.fraction must be in [0, 1], got " +
                                   std::to_string(fraction));
  }
  if (!(scale > 0) || !std::isfinite(scale)) {
    return Status::InvalidArgument("attack.scale must be finite and > 0, got " +
                                   std::to_string(scale));
  }
  return Status::Ok();
}

bool AttackOptions::poisons_updates() const {
  return kind == AttackKind::kSignFlip || kind == AttackKind::kScale || kind == AttackKind::kRandom;
}

std::vector<bool> MaliciousClients(const AttackOptions& attack, int num_clients, uint64_t seed) {
  std::vector<bool> malicious(std::max(num_clients, 0), false);
  if (attack.kind == AttackKind::kNone || num_clients <= 0) return malicious;
  // The epsilon keeps e.g. 0.3 * 10 = 3.0000000000000004 and 0.29 * 100 = 28.999999999999996
  // from landing on the wrong side of an integer.
  const int count = std::clamp(static_cast<int>(std::floor(attack.fraction * num_clients + 1e-9)),
                               0, num_clients);
  // The `count` clients with the smallest keys: a uniform choice, and no distribution whose
  // output differs between standard libraries.
  std::vector<uint64_t> keys(num_clients);
  const uint64_t salt = SplitMix64(seed ^ 0xa77ac3ed5eedULL);
  for (int c = 0; c < num_clients; ++c) {
    keys[c] = SplitMix64(salt ^ SplitMix64(static_cast<uint64_t>(c)));
  }
  std::vector<int> order(num_clients);
  std::iota(order.begin(), order.end(), 0);
  std::nth_element(order.begin(), order.begin() + count, order.end(),
                   [&](int a, int b) { return keys[a] != keys[b] ? keys[a] < keys[b] : a < b; });
  for (int k = 0; k < count; ++k) malicious[order[k]] = true;
  return malicious;
}

Status PoisonUpdate(const AttackOptions& attack, const Weights& global,
                    const std::vector<bool>& trainable, uint64_t seed, Weights& update) {
  if (!attack.poisons_updates()) return Status::Ok();
  CLEAVE_RETURN_IF_ERROR(internal::CheckMask(trainable, global));
  CLEAVE_RETURN_IF_ERROR(internal::CheckSameLayout(update, global, "attacked update"));
  return CallTorch(TorchSource::kOwnState, "attack", [&]() -> Status {
    if (attack.kind == AttackKind::kSignFlip || attack.kind == AttackKind::kScale) {
      const double factor = attack.kind == AttackKind::kSignFlip ? -attack.scale : attack.scale;
      for (size_t i = 0; i < global.size(); ++i) {
        if (trainable[i]) update[i] = torch::add(global[i], update[i] - global[i], factor);
      }
      return Status::Ok();
    }
    // random: a Gaussian direction, rescaled to scale x the honest delta's norm.
    Weights delta(global.size());
    for (size_t i = 0; i < global.size(); ++i) {
      if (trainable[i]) delta[i] = update[i] - global[i];
    }
    const double target = attack.scale * TrainableNorm(delta, trainable);
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    Weights noise(global.size());
    for (size_t i = 0; i < global.size(); ++i) {
      if (trainable[i]) noise[i] = torch::randn(global[i].sizes(), generator, torch::kFloat32);
    }
    const double norm = TrainableNorm(noise, trainable);
    const double factor = norm > 0 ? target / norm : 0.0;
    for (size_t i = 0; i < global.size(); ++i) {
      if (trainable[i]) update[i] = torch::add(global[i], noise[i], factor);
    }
    return Status::Ok();
  });
}

void FlipLabels(split::LabeledImages& data, int num_classes) {
  data.labels = torch::rsub(data.labels, num_classes - 1);  // (C - 1) - y, a new tensor
}

}  // namespace cleave::federated
