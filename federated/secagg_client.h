// The client side of secure aggregation (SecAgg, Bonawitz et al. CCS 2017; SecAgg+, Bell et
// al. CCS 2020): one SecAggClient per client per round, driven step by step by whatever
// carries the messages (the simulation engine in process, or an edge's federated-learning
// client over ZeroMQ). See common/secure_aggregation.h for the protocol and the messages.
//
//   Advertise()                   -> AdvertiseKeys            (round 0)
//   ShareSecrets(KeyDirectory)    -> ShareKeys                (round 1)
//   MaskInput(ForwardedShares, x) -> MaskedInput              (round 2)
//   RevealShares(UnmaskRequest)   -> UnmaskShares             (round 3)
//
// The steps must be called in this order, each once. Any error (a malformed or inconsistent
// message from the server, too few live share holders, a tampered share) aborts the client:
// it takes no further part in the round, every later call fails with the reason, and the
// server treats it as dropped. The client reveals at most one share per peer, once.
//
// Ownership: the client owns its key pairs and self-mask seed, wiped when it is destroyed or
// done; messages are returned by value and borrowed as arguments. Not thread-safe: one thread
// at a time per client; distinct clients are independent. Move-only.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/secure_aggregation.h"
#include "common/status.h"

namespace cleave::secagg {

class SecAggClient {
 public:
  enum class Stage { kNew, kAdvertised, kShared, kMasked, kDone, kAborted };

  // InvalidArgument when the configuration is invalid or `self` is not in the roster.
  [[nodiscard]] static Result<SecAggClient> Create(const SecAggConfig& config, ClientIndex self);

  SecAggClient(SecAggClient&&) noexcept;
  SecAggClient& operator=(SecAggClient&&) noexcept;
  SecAggClient(const SecAggClient&) = delete;
  SecAggClient& operator=(const SecAggClient&) = delete;
  ~SecAggClient();

  ClientIndex index() const;
  Stage stage() const;
  // Why the client aborted (empty otherwise).
  const std::string& abort_reason() const;

  // Round 0: fresh X25519 key pairs for sealing shares (c) and for pairwise masks (s).
  [[nodiscard]] Result<AdvertiseKeys> Advertise();

  // Round 1: checks the directory (its own keys relayed unchanged, only neighbours, at least
  // `threshold` holders including itself), draws the self-mask seed b, Shamir-shares b and
  // s^SK among the holders and seals each neighbour's pair of shares to it.
  [[nodiscard]] Result<ShareKeys> ShareSecrets(const KeyDirectory& directory);

  // Round 2: opens the shares forwarded to it (each from a neighbour in its directory, at most
  // once, authenticated), then masks `encoded_input` (vector_length words, e.g. from
  // FixedPointCodec) with PRG(b) and the pairwise masks of every neighbour whose shares it
  // received. The input is consumed; only the masked vector leaves the client.
  [[nodiscard]] Result<MaskedInput> MaskInput(const ForwardedShares& forwarded,
                                              std::vector<uint32_t> encoded_input);

  // Round 3: for each client whose shares it holds (itself included), the share of b if the
  // request lists it as a survivor, else the share of s^SK. Refuses a request that leaves
  // this client out, lists fewer than `threshold` survivors, or names as survivor a neighbour
  // that never shared keys with it.
  [[nodiscard]] Result<UnmaskShares> RevealShares(const UnmaskRequest& request);

 private:
  struct State;
  explicit SecAggClient(std::unique_ptr<State> state);
  // Moves to kAborted with `status`'s message and returns it.
  Status Abort(Status status);
  Status CheckStage(Stage expected, const char* step) const;

  std::unique_ptr<State> state_;
};

const char* ClientStageName(SecAggClient::Stage stage);

}  // namespace cleave::secagg
