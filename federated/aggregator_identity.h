// Who may speak for which client at the aggregator: a one-to-one binding between transport
// identities (common/transport.h Envelope::identity) and client ids.
//
// A message's client_id is a claim; the transport identity is a fact. The aggregator binds the
// two at registration and from then on serves a client id only to the identity bound to it:
//   - "curve:<key>" whose key the CURVE allow list binds to an id ("<key> id=<client-id>",
//     common/curve.h): the key speaks for that id only, and the id is reserved for that key -
//     for every other identity it is taken, even before the key ever registered and across
//     aggregator restarts (the list, not the aggregator's memory, holds the binding). The list
//     wins over an earlier first-come binding: a Register from the listed key takes the id
//     over, and the earlier holder is refused. Map every key of a fleet.
//   - "curve:<key>" not bound by the list: first come. The binding lasts as long as the
//     aggregator. A key holds one client id and a client id used by a key belongs to it; the
//     key may come back on any connection (a restarted edge keeps its id).
//   - "conn:<routing id>" (no CURVE): the binding lasts for the client's session. While the
//     session is live (not said Bye, not timed out) no other connection may use the id; once it
//     ended, a Register from another connection takes the id over (an edge that reconnected).
//     A connection keeps the one id it registered, so it cannot mint more.
// Sessions live in the aggregator (AggregatorService::Impl::Client::gone); callers pass the
// claimed id's liveness in. Not thread-safe: the aggregator's thread owns it.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <utility>

#include "common/curve.h"

namespace cleave::federated {

enum class IdentityVerdict {
  kBound,       // the identity is bound to this client id: serve it
  kFree,        // neither is bound: Register may bind them; other messages are "unknown client"
  kReleasable,  // the id's conn binding outlived its session, or the allow list gives the id to
                // this key: Register may take the id over
  kMismatch,    // the identity is bound (or the allow list binds its key) to another client id
  kTaken,       // the id is bound to another identity that still holds it, or the allow list
                // reserves it for another key
};

// "bound", "free", "releasable", "mismatch", "taken".
const char* IdentityVerdictName(IdentityVerdict verdict);

class ClientIdentities {
 public:
  // The CURVE allow list's key <-> client id bindings; by default none (first come for all).
  // The functions are called on every Check and must outlive this object.
  explicit ClientIdentities(CurveClientIds listed = {}) : listed_(std::move(listed)) {}

  // Whether `identity` may speak for `client_id`. `session_live`: the client's session is
  // live (registered, no Bye, not timed out); ignored when the id is unbound.
  IdentityVerdict Check(const std::string& identity, const std::string& client_id,
                        bool session_live) const;
  // Binds `identity` to `client_id`, dropping the id's and the identity's previous bindings.
  // Only after Check said kBound, kFree or kReleasable for the same pair.
  void Bind(const std::string& identity, const std::string& client_id);
  // The client id the allow list binds `identity` (a CURVE key) to; "" when none.
  std::string ListedClientOf(const std::string& identity) const;
  // The identity ("curve:<key>") the allow list reserves `client_id` for; "" when none.
  std::string ListedIdentityOf(const std::string& client_id) const;
  // The client id `identity` speaks for; "" when none.
  std::string ClientOf(const std::string& identity) const;
  // The identity bound to `client_id`; "" when none.
  std::string IdentityOf(const std::string& client_id) const;
  // Whether `identity` is a CURVE key ("curve:<key>").
  static bool IsCurveKey(const std::string& identity);
  size_t size() const { return client_of_.size(); }

  // Human-readable form of an identity for logs and replies: the kind and at most the
  // first 12 characters of the key or routing id.
  static std::string Describe(const std::string& identity);

 private:
  CurveClientIds listed_;
  std::map<std::string, std::string> client_of_;    // identity -> client id
  std::map<std::string, std::string> identity_of_;  // client id -> identity
};

}  // namespace cleave::federated
