#include "federated/secagg_server.h"

#include <algorithm>
#include <optional>
#include <set>

namespace cleave::secagg {

struct SecAggServer::State {
  SecAggConfig config;
  NeighbourGraph graph;
  Stage stage = Stage::kAdvertiseKeys;
  std::string failure;
  // A throwaway scalar: X25519 with a low-order public key gives all zeros for any clamped
  // scalar, so one agreement per advertised key rejects such keys up front.
  Key256 probe_secret{};
  std::vector<std::optional<PublicKeys>> keys;     // U1, by client
  std::set<Key256> advertised_keys;                // every public key seen, to refuse copies
  std::vector<uint8_t> shared, masked, unmasked;   // membership of U2, U3, U4
  std::vector<std::vector<EncryptedShare>> inbox;  // sealed shares, by recipient
  std::vector<uint32_t> sum;                       // running sum of masked inputs
  std::vector<std::vector<shamir::Share>> self_mask_shares;  // revealed, by owner
  std::vector<std::vector<shamir::Share>> mask_key_shares;   // revealed, by owner
  SecAggProgress progress;

  State(const SecAggConfig& c, NeighbourGraph g) : config(c), graph(std::move(g)) {
    const uint32_t n = config.num_clients;
    keys.resize(n);
    shared.assign(n, 0);
    masked.assign(n, 0);
    unmasked.assign(n, 0);
    inbox.resize(n);
    self_mask_shares.resize(n);
    mask_key_shares.resize(n);
  }
  ~State() {
    WipeShares();
    crypto::Cleanse(probe_secret);
  }

  void WipeShares() {
    for (auto* by_owner : {&self_mask_shares, &mask_key_shares}) {
      for (auto& shares : *by_owner) {
        for (auto& share : shares) {
          crypto::Cleanse(share.y.data(), share.y.size() * sizeof(uint64_t));
        }
        shares.clear();
      }
    }
  }

  // `u` and its neighbours for which `member` holds, in increasing order.
  template <typename Member>
  std::vector<ClientIndex> Closed(ClientIndex u, Member member) const {
    std::vector<ClientIndex> out;
    if (member(u)) out.push_back(u);
    for (ClientIndex v : graph.Neighbours(u)) {
      if (member(v)) out.push_back(v);
    }
    std::sort(out.begin(), out.end());
    return out;
  }
};

const char* ServerStageName(SecAggServer::Stage stage) {
  switch (stage) {
    case SecAggServer::Stage::kAdvertiseKeys: return "advertise_keys";
    case SecAggServer::Stage::kShareKeys: return "share_keys";
    case SecAggServer::Stage::kMaskedInput: return "masked_input";
    case SecAggServer::Stage::kUnmask: return "unmask";
    case SecAggServer::Stage::kDone: return "done";
    case SecAggServer::Stage::kFailed: return "failed";
    default: return "unknown";
  }
}

Result<SecAggServer> SecAggServer::Create(const SecAggConfig& config) {
  CLEAVE_ASSIGN_OR_RETURN(NeighbourGraph graph, NeighbourGraph::Build(config));
  auto state = std::make_unique<State>(config, std::move(graph));
  CLEAVE_ASSIGN_OR_RETURN(state->probe_secret, crypto::RandomKey());
  return SecAggServer(std::move(state));
}

SecAggServer::SecAggServer(std::unique_ptr<State> state) : state_(std::move(state)) {}
SecAggServer::SecAggServer(SecAggServer&&) noexcept = default;
SecAggServer& SecAggServer::operator=(SecAggServer&&) noexcept = default;
SecAggServer::~SecAggServer() = default;

const SecAggConfig& SecAggServer::config() const { return state_->config; }
SecAggServer::Stage SecAggServer::stage() const { return state_->stage; }
const std::string& SecAggServer::failure_reason() const { return state_->failure; }
SecAggProgress SecAggServer::progress() const { return state_->progress; }

Status SecAggServer::CheckStage(Stage expected, const std::string& what) const {
  if (!state_) return Status::FailedPrecondition("the server was moved from");
  const State& s = *state_;
  if (s.stage == Stage::kFailed) {
    return Status::FailedPrecondition("the secure aggregation round failed: " + s.failure);
  }
  if (s.stage != expected) {
    return Status::FailedPrecondition(what + " is not allowed in stage '" +
                                      ServerStageName(s.stage) + "'; it belongs to '" +
                                      ServerStageName(expected) + "'");
  }
  return Status::Ok();
}

Status SecAggServer::CheckMessage(Stage expected, const char* what, uint64_t round_id,
                                  ClientIndex sender) const {
  if (!state_) return Status::FailedPrecondition("the server was moved from");
  const State& s = *state_;
  if (s.stage != Stage::kFailed && round_id != s.config.round_id) {
    return Status::InvalidArgument(std::string(what) + " for round " + std::to_string(round_id) +
                                   " reached round " + std::to_string(s.config.round_id));
  }
  if (s.stage != Stage::kFailed && sender >= s.config.num_clients) {
    return Status::NotFound(std::string(what) + " from client " + std::to_string(sender) +
                            ", which is not in this round of " +
                            std::to_string(s.config.num_clients) + " clients");
  }
  return CheckStage(expected, std::string(what) + " from client " + std::to_string(sender));
}

Status SecAggServer::Fail(const std::string& reason) {
  state_->stage = Stage::kFailed;
  state_->failure = reason;
  state_->WipeShares();
  state_->sum.clear();
  return Status::FailedPrecondition(reason);
}

Status SecAggServer::RequireSurvivors(uint32_t count, const char* what) {
  if (count >= state_->config.threshold) return Status::Ok();
  return Fail("only " + std::to_string(count) + " of " +
              std::to_string(state_->config.num_clients) + " clients " + what +
              "; secure aggregation needs at least the threshold of " +
              std::to_string(state_->config.threshold));
}

// ---- Round 0 ----

Status SecAggServer::HandleAdvertiseKeys(const AdvertiseKeys& m) {
  CLEAVE_RETURN_IF_ERROR(
      CheckMessage(Stage::kAdvertiseKeys, "AdvertiseKeys", m.round_id, m.sender));
  State& s = *state_;
  const std::string who = "client " + std::to_string(m.sender);
  if (s.keys[m.sender]) return Status::AlreadyExists(who + " already advertised its keys");
  if (m.cipher_public_key == m.mask_public_key) {
    return Status::InvalidArgument(who + " advertised the same key for both purposes");
  }
  for (const Key256* key : {&m.cipher_public_key, &m.mask_public_key}) {
    if (s.advertised_keys.count(*key) != 0) {
      return Status::InvalidArgument(who + " advertised a public key another client uses");
    }
    auto probe = crypto::X25519Agree(s.probe_secret, *key);
    if (!probe.ok()) return probe.status().WithContext(who + " advertised an unusable key");
    crypto::Cleanse(*probe);
  }
  s.keys[m.sender] = PublicKeys{m.sender, m.cipher_public_key, m.mask_public_key};
  s.advertised_keys.insert(m.cipher_public_key);
  s.advertised_keys.insert(m.mask_public_key);
  ++s.progress.advertised;
  return Status::Ok();
}

Result<std::vector<KeyDirectory>> SecAggServer::CloseAdvertiseKeys() {
  CLEAVE_RETURN_IF_ERROR(CheckStage(Stage::kAdvertiseKeys, "CloseAdvertiseKeys"));
  State& s = *state_;
  CLEAVE_RETURN_IF_ERROR(RequireSurvivors(s.progress.advertised, "advertised keys"));
  std::vector<KeyDirectory> directories;
  for (ClientIndex u = 0; u < s.config.num_clients; ++u) {
    if (!s.keys[u]) continue;
    KeyDirectory directory{s.config.round_id, u, {}};
    for (ClientIndex v : s.Closed(u, [&](ClientIndex c) { return s.keys[c].has_value(); })) {
      directory.keys.push_back(*s.keys[v]);
    }
    directories.push_back(std::move(directory));
  }
  s.stage = Stage::kShareKeys;
  return directories;
}

// ---- Round 1 ----

Status SecAggServer::HandleShareKeys(const ShareKeys& m) {
  CLEAVE_RETURN_IF_ERROR(CheckMessage(Stage::kShareKeys, "ShareKeys", m.round_id, m.sender));
  State& s = *state_;
  const std::string who = "client " + std::to_string(m.sender);
  if (!s.keys[m.sender]) {
    return Status::FailedPrecondition(who + " did not advertise keys in this round");
  }
  if (s.shared[m.sender]) return Status::AlreadyExists(who + " already shared its keys");
  std::set<ClientIndex> expected;
  for (ClientIndex v : s.graph.Neighbours(m.sender)) {
    if (s.keys[v]) expected.insert(v);
  }
  std::set<ClientIndex> seen;
  for (const EncryptedShare& share : m.shares) {
    if (share.sender != m.sender) {
      return Status::InvalidArgument(who + " sent a share labelled as from client " +
                                     std::to_string(share.sender));
    }
    if (expected.count(share.recipient) == 0) {
      return Status::InvalidArgument(who + " sent a share for client " +
                                     std::to_string(share.recipient) +
                                     ", which is not one of its neighbours with keys");
    }
    if (!seen.insert(share.recipient).second) {
      return Status::AlreadyExists(who + " sent two shares for client " +
                                   std::to_string(share.recipient));
    }
    if (share.ciphertext.size() != SealedShareBytes()) {
      return Status::InvalidArgument(who + "'s share for client " +
                                     std::to_string(share.recipient) + " is " +
                                     std::to_string(share.ciphertext.size()) + " bytes, not " +
                                     std::to_string(SealedShareBytes()));
    }
  }
  if (seen.size() != expected.size()) {
    return Status::InvalidArgument(who + " sent shares for " + std::to_string(seen.size()) +
                                   " of its " + std::to_string(expected.size()) +
                                   " neighbours with keys");
  }
  for (const EncryptedShare& share : m.shares) s.inbox[share.recipient].push_back(share);
  s.shared[m.sender] = 1;
  ++s.progress.shared;
  return Status::Ok();
}

Result<std::vector<ForwardedShares>> SecAggServer::CloseShareKeys() {
  CLEAVE_RETURN_IF_ERROR(CheckStage(Stage::kShareKeys, "CloseShareKeys"));
  State& s = *state_;
  CLEAVE_RETURN_IF_ERROR(RequireSurvivors(s.progress.shared, "shared keys"));
  std::vector<ForwardedShares> forwarded;
  for (ClientIndex u = 0; u < s.config.num_clients; ++u) {
    // Clients that did not share keys are out of the round: their inboxes are discarded.
    if (s.shared[u]) forwarded.push_back({s.config.round_id, u, std::move(s.inbox[u])});
    s.inbox[u].clear();
  }
  s.sum.assign(s.config.vector_length, 0);
  s.stage = Stage::kMaskedInput;
  return forwarded;
}

// ---- Round 2 ----

Status SecAggServer::HandleMaskedInput(const MaskedInput& m) {
  CLEAVE_RETURN_IF_ERROR(CheckMessage(Stage::kMaskedInput, "MaskedInput", m.round_id, m.sender));
  State& s = *state_;
  const std::string who = "client " + std::to_string(m.sender);
  if (!s.shared[m.sender]) {
    return Status::FailedPrecondition(who +
                                      " did not share its keys, so its input could not "
                                      "be unmasked");
  }
  if (s.masked[m.sender]) return Status::AlreadyExists(who + " already sent its masked input");
  if (m.masked.size() != s.config.vector_length) {
    return Status::InvalidArgument(who + "'s masked input has " + std::to_string(m.masked.size()) +
                                   " words, not " + std::to_string(s.config.vector_length));
  }
  for (size_t i = 0; i < m.masked.size(); ++i) s.sum[i] += m.masked[i];  // mod 2^32
  s.masked[m.sender] = 1;
  ++s.progress.masked;
  return Status::Ok();
}

Result<UnmaskRequest> SecAggServer::CloseMaskedInput() {
  CLEAVE_RETURN_IF_ERROR(CheckStage(Stage::kMaskedInput, "CloseMaskedInput"));
  State& s = *state_;
  CLEAVE_RETURN_IF_ERROR(RequireSurvivors(s.progress.masked, "sent masked inputs"));
  UnmaskRequest request{s.config.round_id, {}};
  for (ClientIndex u = 0; u < s.config.num_clients; ++u) {
    if (s.masked[u]) request.survivors.push_back(u);
  }
  s.stage = Stage::kUnmask;
  return request;
}

// ---- Round 3 ----

Status SecAggServer::HandleUnmaskShares(const UnmaskShares& m) {
  CLEAVE_RETURN_IF_ERROR(CheckMessage(Stage::kUnmask, "UnmaskShares", m.round_id, m.sender));
  State& s = *state_;
  const std::string who = "client " + std::to_string(m.sender);
  if (!s.masked[m.sender]) {
    return Status::FailedPrecondition(who +
                                      " did not send a masked input; only survivors "
                                      "unmask");
  }
  if (s.unmasked[m.sender]) {
    return Status::AlreadyExists(who + " already sent its unmasking shares");
  }
  // The owners whose shares the sender holds: itself and its neighbours that shared keys.
  const std::vector<ClientIndex> owners =
      s.Closed(m.sender, [&](ClientIndex c) { return s.shared[c] != 0; });
  std::set<ClientIndex> expect_self_mask, expect_mask_key;
  for (ClientIndex v : owners) (s.masked[v] ? expect_self_mask : expect_mask_key).insert(v);

  const size_t elements = shamir::ElementsFor(crypto::kKeyBytes);
  auto check = [&](const std::vector<RevealedShare>& revealed, const std::set<ClientIndex>& want,
                   const char* kind) -> Status {
    std::set<ClientIndex> seen;
    for (const RevealedShare& r : revealed) {
      const std::string what = who + "'s " + kind + " share of client " + std::to_string(r.owner);
      if (r.owner >= s.config.num_clients) {
        return Status::NotFound(what + ": no such client in this round");
      }
      if (want.count(r.owner) == 0) {
        return Status::InvalidArgument(what + ": not a share this client holds and may reveal");
      }
      if (!seen.insert(r.owner).second) return Status::AlreadyExists(what + ": sent twice");
      if (r.share.x != SharePoint(m.sender)) {
        return Status::InvalidArgument(
            what + " is at point " + std::to_string(r.share.x) + ", not the sender's point " +
            std::to_string(SharePoint(m.sender)) + " (a replayed share?)");
      }
      if (r.share.y.size() != elements) {
        return Status::InvalidArgument(what + " has " + std::to_string(r.share.y.size()) +
                                       " field elements, not " + std::to_string(elements));
      }
      for (uint64_t y : r.share.y) {
        if (y >= shamir::kPrime) return Status::OutOfRange(what + " is outside the field");
      }
    }
    if (seen.size() != want.size()) {
      return Status::InvalidArgument(who + " revealed " + std::to_string(seen.size()) + " " + kind +
                                     " shares; it holds " + std::to_string(want.size()));
    }
    return Status::Ok();
  };
  CLEAVE_RETURN_IF_ERROR(check(m.self_mask_shares, expect_self_mask, "self-mask"));
  CLEAVE_RETURN_IF_ERROR(check(m.mask_key_shares, expect_mask_key, "masking-key"));

  for (const RevealedShare& r : m.self_mask_shares) s.self_mask_shares[r.owner].push_back(r.share);
  for (const RevealedShare& r : m.mask_key_shares) s.mask_key_shares[r.owner].push_back(r.share);
  s.unmasked[m.sender] = 1;
  ++s.progress.unmasked;
  return Status::Ok();
}

Status SecAggServer::RemoveMasks(std::vector<uint32_t>& sum, std::vector<ClientIndex>& recovered) {
  State& s = *state_;
  const uint32_t t = s.config.threshold;
  const std::string need = "; threshold is " + std::to_string(t);
  for (ClientIndex v = 0; v < s.config.num_clients; ++v) {
    if (!s.masked[v]) continue;
    const auto& shares = s.self_mask_shares[v];
    if (shares.size() < t) {
      return Status::FailedPrecondition("cannot remove the self-mask of client " +
                                        std::to_string(v) + ": " + std::to_string(shares.size()) +
                                        " of its share holders sent unmasking shares" + need);
    }
    auto seed = shamir::Reconstruct(shares, t, crypto::kKeyBytes);
    if (!seed.ok()) {
      return seed.status().WithContext("self-mask seed of client " + std::to_string(v));
    }
    Key256 b{};
    std::copy(seed->begin(), seed->end(), b.begin());
    crypto::Cleanse(seed->data(), seed->size());
    Status removed = crypto::AddSeedStream(b, /*subtract=*/true, sum.data(), sum.size());
    crypto::Cleanse(b);
    CLEAVE_RETURN_IF_ERROR(removed);
  }
  for (ClientIndex d = 0; d < s.config.num_clients; ++d) {
    if (!s.shared[d] || s.masked[d]) continue;
    std::vector<ClientIndex> partners;  // survivors that masked with d
    for (ClientIndex v : s.graph.Neighbours(d)) {
      if (s.masked[v]) partners.push_back(v);
    }
    if (partners.empty()) continue;
    const auto& shares = s.mask_key_shares[d];
    if (shares.size() < t) {
      return Status::FailedPrecondition("cannot recover the masking key of dropped client " +
                                        std::to_string(d) + ": " + std::to_string(shares.size()) +
                                        " of its share holders sent unmasking shares" + need);
    }
    auto secret = shamir::Reconstruct(shares, t, crypto::kKeyBytes);
    if (!secret.ok()) {
      return secret.status().WithContext("masking key of client " + std::to_string(d));
    }
    Key256 mask_secret{};
    std::copy(secret->begin(), secret->end(), mask_secret.begin());
    crypto::Cleanse(secret->data(), secret->size());
    Status status = Status::Ok();
    auto pair = crypto::X25519FromSecret(mask_secret);
    if (!pair.ok()) {
      status = pair.status();
    } else if (pair->public_key != s.keys[d]->mask_public_key) {
      status = Status::DataLoss("the masking key reconstructed for client " + std::to_string(d) +
                                " does not match the key it advertised (corrupt shares)");
    }
    for (size_t i = 0; status.ok() && i < partners.size(); ++i) {
      const ClientIndex v = partners[i];
      auto seed = PairwiseMaskSeed(s.config, mask_secret, s.keys[v]->mask_public_key, d, v);
      if (!seed.ok()) {
        status = seed.status();
        break;
      }
      status = ApplyPairwiseMask(*seed, /*self=*/v, /*peer=*/d, /*remove=*/true, sum);
      crypto::Cleanse(*seed);
    }
    crypto::Cleanse(mask_secret);
    if (pair.ok()) crypto::Cleanse(pair->secret_key);
    CLEAVE_RETURN_IF_ERROR(status);
    recovered.push_back(d);
  }
  return Status::Ok();
}

Result<AggregateResult> SecAggServer::Finish() {
  CLEAVE_RETURN_IF_ERROR(CheckStage(Stage::kUnmask, "Finish"));
  State& s = *state_;
  CLEAVE_RETURN_IF_ERROR(RequireSurvivors(s.progress.unmasked, "sent unmasking shares"));
  AggregateResult result;
  result.sum = s.sum;
  Status removed = RemoveMasks(result.sum, result.recovered_dropouts);
  if (!removed.ok()) return Fail(removed.message());
  for (ClientIndex u = 0; u < s.config.num_clients; ++u) {
    if (s.masked[u]) result.contributors.push_back(u);
  }
  s.WipeShares();
  s.stage = Stage::kDone;
  return result;
}

}  // namespace cleave::secagg
