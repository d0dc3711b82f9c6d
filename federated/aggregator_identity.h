// Who may speak for which client at the aggregator: a one-to-one binding between transport
// identities (common/transport.h Envelope::identity) and client ids.
//
// A message's client_id is a claim; the transport identity is a fact. The aggregator binds the
// two at registration and from then on serves a client id only to the identity bound to it:
//   - "curve:<key>" (CURVE on): the binding lasts as long as the aggregator. A key holds one
//     client id and a client id used by a key belongs to it; the key may come back on any
//     connection (a restarted edge keeps its id).
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

namespace cleave::federated {

enum class IdentityVerdict {
  kBound,       // the identity is bound to this client id: serve it
  kFree,        // neither is bound: Register may bind them; other messages are "unknown client"
  kReleasable,  // the id's conn binding outlived its session: Register may take the id over
  kMismatch,    // the identity is bound to another client id
  kTaken,       // the id is bound to another identity that still holds it
};

// "bound", "free", "releasable", "mismatch", "taken".
const char* IdentityVerdictName(IdentityVerdict verdict);

class ClientIdentities {
 public:
  // Whether `identity` may speak for `client_id`. `session_live`: the client's session is
  // live (registered, no Bye, not timed out); ignored when the id is unbound.
  IdentityVerdict Check(const std::string& identity, const std::string& client_id,
                        bool session_live) const;
  // Binds `identity` to `client_id`, dropping the id's previous binding. Only after Check
  // said kBound, kFree or kReleasable for the same pair.
  void Bind(const std::string& identity, const std::string& client_id);
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
  std::map<std::string, std::string> client_of_;    // identity -> client id
  std::map<std::string, std::string> identity_of_;  // client id -> identity
};

}  // namespace cleave::federated
