// The server side of secure aggregation (SecAgg, Bonawitz et al. CCS 2017; SecAgg+, Bell et
// al. CCS 2020; protocol and messages in common/secure_aggregation.h): one SecAggServer per
// round, fed the clients' messages and closing each stage when the driver decides (quorum,
// deadline) — the driver owns time, this class owns the protocol.
//
//   stage            accepts                 closed by                  returns
//   kAdvertiseKeys   HandleAdvertiseKeys     CloseAdvertiseKeys()       a KeyDirectory per client
//   kShareKeys       HandleShareKeys         CloseShareKeys()           ForwardedShares per client
//   kMaskedInput     HandleMaskedInput       CloseMaskedInput()         the UnmaskRequest
//   kUnmask          HandleUnmaskShares      Finish()                   the aggregate
//
// What the server sees: public keys, sealed shares it cannot open, masked vectors (added to a
// running sum on arrival and not kept), and in the last stage the shares of the self-mask seeds
// of survivors and of the masking keys of dropped clients. There is deliberately no entry
// point that takes an unmasked input.
//
// Failures: a malformed, replayed, duplicate, out-of-stage or wrong-round message is rejected
// with a Status and leaves the state unchanged; the round itself fails only when fewer than
// `threshold` clients remain at a stage close, or when a secret needed to unmask cannot be
// reconstructed (fewer than `threshold` of its shares arrived, or they are inconsistent). The
// server then moves to kFailed and every call returns FailedPrecondition with the reason.
//
// Not thread-safe: one thread at a time (the aggregator's round loop). Move-only.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/secure_aggregation.h"
#include "common/status.h"

namespace cleave::secagg {

struct AggregateResult {
  std::vector<uint32_t> sum;                    // sum of the contributors' inputs modulo 2^32
  std::vector<ClientIndex> contributors;        // clients whose inputs are in the sum (increasing)
  std::vector<ClientIndex> recovered_dropouts;  // shared keys, no masked input: masks removed
};

// How many clients got through each stage so far (for logs and metrics).
struct SecAggProgress {
  uint32_t advertised = 0;  // U1
  uint32_t shared = 0;      // U2
  uint32_t masked = 0;      // U3
  uint32_t unmasked = 0;    // U4: sent their unmasking shares
};

class SecAggServer {
 public:
  enum class Stage { kAdvertiseKeys, kShareKeys, kMaskedInput, kUnmask, kDone, kFailed };

  // InvalidArgument for an invalid configuration.
  [[nodiscard]] static Result<SecAggServer> Create(const SecAggConfig& config);

  SecAggServer(SecAggServer&&) noexcept;
  SecAggServer& operator=(SecAggServer&&) noexcept;
  SecAggServer(const SecAggServer&) = delete;
  SecAggServer& operator=(const SecAggServer&) = delete;
  ~SecAggServer();

  const SecAggConfig& config() const;
  Stage stage() const;
  // Why the round failed (empty unless stage() == kFailed).
  const std::string& failure_reason() const;
  SecAggProgress progress() const;

  // Round 0. Rejects unknown or repeated senders, low-order public keys and keys another
  // client already advertised.
  [[nodiscard]] Status HandleAdvertiseKeys(const AdvertiseKeys& message);
  [[nodiscard]] Result<std::vector<KeyDirectory>> CloseAdvertiseKeys();

  // Round 1. The sender must have advertised, and send exactly one sealed share of the exact
  // size to each neighbour listed in its directory.
  [[nodiscard]] Status HandleShareKeys(const ShareKeys& message);
  [[nodiscard]] Result<std::vector<ForwardedShares>> CloseShareKeys();

  // Round 2. The sender must have shared keys; the vector must have vector_length words.
  [[nodiscard]] Status HandleMaskedInput(const MaskedInput& message);
  [[nodiscard]] Result<UnmaskRequest> CloseMaskedInput();

  // Round 3. The sender must be a survivor and reveal exactly the shares it holds: of b_v for
  // every survivor v among itself and its neighbours that shared keys, of s_d^SK for every
  // such neighbour d that dropped, each at its own evaluation point.
  [[nodiscard]] Status HandleUnmaskShares(const UnmaskShares& message);
  // Reconstructs the secrets, removes every mask and returns the sum of the survivors' inputs.
  [[nodiscard]] Result<AggregateResult> Finish();

 private:
  struct State;
  explicit SecAggServer(std::unique_ptr<State> state);
  Status CheckStage(Stage expected, const std::string& what) const;
  Status CheckMessage(Stage expected, const char* what, uint64_t round_id,
                      ClientIndex sender) const;
  // Moves to kFailed with `reason` and returns it as FailedPrecondition.
  Status Fail(const std::string& reason);
  Status RequireSurvivors(uint32_t count, const char* what);
  Status RemoveMasks(std::vector<uint32_t>& sum, std::vector<ClientIndex>& recovered);

  std::unique_ptr<State> state_;
};

const char* ServerStageName(SecAggServer::Stage stage);

}  // namespace cleave::secagg
