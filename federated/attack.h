// Byzantine clients for `cleave sim`: which clients of the population are malicious, and
// what a malicious client sends instead of its honest update. A malicious client attacks in
// every round it is sampled; the others are honest.
//
//   sign_flip   global - scale * (update - global): the honest step, reversed and boosted
//               (the "sign flipping" attack of e.g. Li et al. 2019, RSA, and Karimireddy et
//               al. 2021).
//   scale       global + scale * (update - global): the honest step boosted, as in model
//               replacement (Bagdasaryan et al. 2020) without a backdoor task.
//   random      global + Gaussian noise whose L2 norm is scale * ||update - global||: a
//               random direction with a boosted honest magnitude.
//   label_flip  trains honestly on poisoned data, labels y -> C - 1 - y for C classes
//               (9 - y for Fashion-MNIST); the update itself is not changed afterwards.
// Deltas and norms cover the trainable entries only, flattened into one vector; untrainable
// entries are sent as trained (the round engine replaces them by the global values).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "federated/weights.h"
#include "split/train_data.h"

namespace cleave::federated {

enum class AttackKind { kNone, kSignFlip, kScale, kRandom, kLabelFlip };

// "none", "sign_flip", "scale", "random", "label_flip".
const char* AttackKindName(AttackKind kind);
// The inverse of AttackKindName; InvalidArgument naming attack.kind and the choices.
Result<AttackKind> ParseAttackKind(const std::string& name);

struct AttackOptions {
  AttackKind kind = AttackKind::kNone;
  double fraction = 0;  // share of the population that is malicious, in [0, 1]
  double scale = 10;    // sign_flip, scale, random: the boost factor (> 0)
  nlohmann::json ToJson() const;
  // InvalidArgument naming the offending key (attack.fraction, attack.scale).
  Status Validate() const;
  // Whether malicious clients change their trained update (sign_flip, scale, random).
  bool poisons_updates() const;
};

// Which of clients 0 .. num_clients - 1 are malicious: floor(fraction x num_clients) of them
// (none for kNone), a pseudo-random choice that depends on `seed` and num_clients only.
std::vector<bool> MaliciousClients(const AttackOptions& attack, int num_clients, uint64_t seed);

// Replaces a malicious client's honestly trained `update` by what it sends (sign_flip,
// scale, random; a no-op for the other kinds). The trainable entries get new tensors: the
// old ones, which may be shared, are never written. `seed` drives random's noise.
// InvalidArgument when `update` or `trainable` does not match `global`'s layout.
Status PoisonUpdate(const AttackOptions& attack, const Weights& global,
                    const std::vector<bool>& trainable, uint64_t seed, Weights& update);

// label_flip's poisoned data: labels y -> num_classes - 1 - y. `data.labels` becomes a new
// tensor (its old storage, which may be shared, is not written); images are kept.
void FlipLabels(split::LabeledImages& data, int num_classes);

}  // namespace cleave::federated
