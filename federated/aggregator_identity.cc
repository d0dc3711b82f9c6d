#include "federated/aggregator_identity.h"

#include <optional>

namespace cleave::federated {
const char* IdentityVerdictName(IdentityVerdict verdict) {
  switch (verdict) {
    case IdentityVerdict::kBound: return "bound";
    case IdentityVerdict::kFree: return "free";
    case IdentityVerdict::kReleasable: return "releasable";
    case IdentityVerdict::kMismatch: return "mismatch";
    case IdentityVerdict::kTaken: return "taken";
  }
  return "unknown";
}

namespace {
constexpr char kCurvePrefix[] = "curve:";
}  // namespace

IdentityVerdict ClientIdentities::Check(const std::string& identity, const std::string& client_id,
                                        bool session_live) const {
  // The allow list first: it outlives the aggregator's memory and wins over first come.
  const std::string listed = ListedClientOf(identity);
  if (!listed.empty()) {
    if (client_id != listed) return IdentityVerdict::kMismatch;
    auto holder = identity_of_.find(client_id);
    if (holder == identity_of_.end()) return IdentityVerdict::kFree;
    return holder->second == identity ? IdentityVerdict::kBound : IdentityVerdict::kReleasable;
  }
  const std::string owner = ListedIdentityOf(client_id);
  if (!owner.empty() && owner != identity) return IdentityVerdict::kTaken;
  auto mine = client_of_.find(identity);
  if (mine != client_of_.end()) {
    return mine->second == client_id ? IdentityVerdict::kBound : IdentityVerdict::kMismatch;
  }
  auto holder = identity_of_.find(client_id);
  if (holder == identity_of_.end()) return IdentityVerdict::kFree;
  // A key owns its id for good; a connection only for its session.
  if (IsCurveKey(holder->second) || session_live) return IdentityVerdict::kTaken;
  return IdentityVerdict::kReleasable;
}

void ClientIdentities::Bind(const std::string& identity, const std::string& client_id) {
  auto previous = identity_of_.find(client_id);
  if (previous != identity_of_.end()) client_of_.erase(previous->second);
  // An identity the allow list moved to another id gives its first-come id up.
  auto held = client_of_.find(identity);
  if (held != client_of_.end()) identity_of_.erase(held->second);
  client_of_[identity] = client_id;
  identity_of_[client_id] = identity;
}

std::string ClientIdentities::ListedClientOf(const std::string& identity) const {
  if (!listed_.client_id_of_key || !IsCurveKey(identity)) return "";
  return listed_.client_id_of_key(identity.substr(sizeof(kCurvePrefix) - 1)).value_or("");
}

std::string ClientIdentities::ListedIdentityOf(const std::string& client_id) const {
  if (!listed_.key_of_client_id) return "";
  const std::optional<std::string> key = listed_.key_of_client_id(client_id);
  return key ? kCurvePrefix + *key : "";
}

std::string ClientIdentities::ClientOf(const std::string& identity) const {
  auto it = client_of_.find(identity);
  return it == client_of_.end() ? std::string() : it->second;
}

std::string ClientIdentities::IdentityOf(const std::string& client_id) const {
  auto it = identity_of_.find(client_id);
  return it == identity_of_.end() ? std::string() : it->second;
}

bool ClientIdentities::IsCurveKey(const std::string& identity) {
  return identity.rfind(kCurvePrefix, 0) == 0;
}

std::string ClientIdentities::Describe(const std::string& identity) {
  const size_t colon = identity.find(':');
  const size_t shown = colon == std::string::npos ? 0 : colon + 1 + 12;
  return identity.size() > shown && shown > 0 ? identity.substr(0, shown) + "..." : identity;
}

}  // namespace cleave::federated
