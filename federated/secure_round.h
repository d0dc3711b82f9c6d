// Secure aggregation of federated updates: what a round's clients send and what the server
// learns when `secure_aggregation.enabled` is set. The protocol itself (SecAgg, Bonawitz et al.
// CCS 2017; SecAgg+, Bell et al. CCS 2020) lives in common/secure_aggregation.h and the two
// state machines in federated/secagg_client.h / federated/secagg_server.h; this file maps
// federated rounds onto them, identically for `cleave sim` and for real edges and the aggregator:
//
//   - SecureRound (server side) is owned by the RoundEngine for a secure round. It knows the
//     roster (the round's sampled client ids, sorted: roster index = position) and relays the
//     four stages by client id, checking that every message's `sender` is the client the
//     transport says sent it. It has no entry point that takes an unmasked update, and
//     RoundEngine::Submit refuses plain updates in a secure round.
//   - SecureClientSession (client side) wraps a SecAggClient and turns a locally trained model
//     into the masked contribution below.
//
// The contribution (one vector of uint32 words modulo 2^32, FixedPointCodec):
//   [ w * (trained - global) over the trainable entries, flattened in layout order,
//     w,  w * train_loss ]                      with  w = num_examples / example_scale
// so the sum the server learns is the example-weighted sum of the survivors' deltas, the total
// weight and the weighted loss. With distributed DP (dpfedavg) every client weighs w = 1 and
// sends its delta clipped to L2 norm C plus its share of the Gaussian noise (see
// DpFedAvg's SecureClientNoise in dp_fedavg.cc), so the sum is the noisy sum of clipped deltas
// DP-FedAvg releases, and no one ever sees it without noise. global + (sum of w delta) / (sum of w)
// is exactly FedAvg's example-weighted mean of the survivors' models (up to the fixed-point
// resolution); this is why only strategies whose aggregate is that weighted mean (fedavg, fedprox,
// and the FedOpt family, which step on it) can run securely, and dpfedavg with client-side clipping
// and noise; the robust ones need each update (CheckSecureAggregationStrategy says so).
//
// Clipping and scaling: every coordinate of the contribution is clamped to [-clip, clip]
// before encoding (default 64: a client with w = 1, i.e. example_scale examples, may move a
// weight by up to 64 in a round before clipping changes its contribution); the fractional
// bits are the most that keep roster_size x ceil(clip 2^f) <= 2^31 - 1, so the modular sum of
// every client of the round never wraps (FixedPointCodec). With 20 clients: f = 20, a
// resolution of 2^-20 ~ 1e-6 per coordinate and client. Rounding is stochastic (unbiased),
// seeded per (round, client).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/secure_aggregation.h"
#include "common/status.h"
#include "federated/fixed_point_codec.h"
#include "federated/secagg_client.h"
#include "federated/secagg_server.h"
#include "federated/weights.h"

namespace cleave::federated {

struct SecureAggregationOptions {
  bool enabled = false;
  double clip = 64;                // bound of each coordinate of a contribution (> 0)
  double example_scale = 1000;     // a client's weight is num_examples / example_scale (> 0)
  uint32_t threshold = 0;          // Shamir t; 0 = the smallest strict majority of the holders
  std::string graph = "complete";  // "complete" (SecAgg) or "harary" (SecAgg+)
  uint32_t degree = 0;             // harary: neighbours per client; 0 = 2 ceil(log2 n), at least 4
  nlohmann::json ToJson() const;
  static Result<SecureAggregationOptions> FromJson(const nlohmann::json& json);
  // InvalidArgument naming the key (secure_aggregation.*).
  Status Validate() const;
};

// OK when `strategy` aggregates by the example-weighted mean (see the header comment);
// InvalidArgument saying why otherwise.
Status CheckSecureAggregationStrategy(const std::string& strategy);

// Everything both sides of one secure round must agree on. Sent with the round plan.
struct SecureRoundParams {
  secagg::SecAggConfig secagg;  // vector_length = trainable elements + 2
  double clip = 64;
  int fractional_bits = 0;
  double example_scale = 1000;
  // Distributed DP (dpfedavg with secure aggregation; 0 = off): every client weighs 1, clips
  // its delta to this L2 norm and adds Gaussian noise of this stddev to every coordinate.
  double dp_clip_norm = 0;
  double dp_noise_stddev = 0;
  nlohmann::json ToJson() const;  // for logs and round records (no secrets in here)
};

// The parameters of a round with `roster_size` clients over `trainable_elements` trainable
// values. `round_id` binds every key and ciphertext to the round; `graph_seed` relabels the
// SecAgg+ graph (public). InvalidArgument when they cannot work (too few clients, vector too
// long, no fractional bits left for this clip and roster).
Result<SecureRoundParams> MakeSecureRoundParams(const SecureAggregationOptions& options,
                                                uint32_t roster_size, int64_t trainable_elements,
                                                uint64_t round_id,
                                                const crypto::Key256& graph_seed);

// Client side: the encoded (unmasked) contribution of `trained` (full layout) against `global`.
// InvalidArgument for a layout mismatch, non-finite values, num_examples <= 0. `clipped`
// receives how many coordinates were clamped.
Result<std::vector<uint32_t>> EncodeContribution(const SecureRoundParams& params,
                                                 const Weights& global, const Weights& trained,
                                                 const std::vector<bool>& trainable,
                                                 int64_t num_examples, double train_loss,
                                                 const crypto::Key256& rounding_seed,
                                                 size_t* clipped = nullptr);

struct SecureAggregate {
  Weights aggregate;      // global + weighted mean delta on trainable entries, global elsewhere
  int contributors = 0;   // clients whose contributions are in the sum
  int recovered = 0;      // clients that dropped after sharing keys (their masks removed)
  double weight_sum = 0;  // sum of w
  int64_t examples = 0;   // round(weight_sum * example_scale)
  double mean_loss = 0;   // example-weighted mean training loss
};
// Server side: the aggregate from the protocol's sum. FailedPrecondition when the total weight
// is not positive (nothing to average).
Result<SecureAggregate> DecodeAggregate(const SecureRoundParams& params,
                                        const secagg::AggregateResult& sum, const Weights& global,
                                        const std::vector<bool>& trainable);

// Client side of one secure round.
class SecureClientSession {
 public:
  static Result<SecureClientSession> Create(const SecureRoundParams& params,
                                            secagg::ClientIndex self);
  secagg::ClientIndex index() const { return client_.index(); }
  const std::string& abort_reason() const { return client_.abort_reason(); }

  Result<secagg::AdvertiseKeys> Advertise() { return client_.Advertise(); }
  Result<secagg::ShareKeys> ShareSecrets(const secagg::KeyDirectory& directory) {
    return client_.ShareSecrets(directory);
  }
  // Encodes the locally trained model (EncodeContribution, rounding seeded from
  // `rounding_seed`) and masks it; only the masked vector leaves the client.
  Result<secagg::MaskedInput> MaskUpdate(const secagg::ForwardedShares& forwarded,
                                         const Weights& global, const Weights& trained,
                                         const std::vector<bool>& trainable, int64_t num_examples,
                                         double train_loss, const crypto::Key256& rounding_seed);
  Result<secagg::UnmaskShares> RevealShares(const secagg::UnmaskRequest& request) {
    return client_.RevealShares(request);
  }

 private:
  SecureClientSession(SecureRoundParams params, secagg::SecAggClient client)
      : params_(std::move(params)), client_(std::move(client)) {}
  SecureRoundParams params_;
  secagg::SecAggClient client_;
};

// Server side of one secure round: the SecAggServer addressed by client id. Every Handle*
// checks that `client` is in the roster and is the message's sender (InvalidArgument
// otherwise: a client cannot speak for another); protocol errors come from SecAggServer. Not
// thread-safe (the engine's thread).
class SecureRound {
 public:
  // `roster`: the round's clients in roster order (distinct ids).
  static Result<std::unique_ptr<SecureRound>> Create(const SecureRoundParams& params,
                                                     std::vector<std::string> roster);

  const SecureRoundParams& params() const { return params_; }
  const std::vector<std::string>& roster() const { return roster_; }
  // The roster index of `client`; NotFound when it is not in this round.
  Result<secagg::ClientIndex> IndexOf(const std::string& client) const;
  secagg::SecAggServer::Stage stage() const { return server_.stage(); }
  const std::string& failure_reason() const { return server_.failure_reason(); }
  secagg::SecAggProgress progress() const { return server_.progress(); }

  Status HandleAdvertiseKeys(const std::string& client, const secagg::AdvertiseKeys& message);
  // Per client id, the directory it must receive.
  Result<std::map<std::string, secagg::KeyDirectory>> CloseAdvertiseKeys();
  Status HandleShareKeys(const std::string& client, const secagg::ShareKeys& message);
  Result<std::map<std::string, secagg::ForwardedShares>> CloseShareKeys();
  Status HandleMaskedInput(const std::string& client, const secagg::MaskedInput& message);
  // The request every survivor must answer, with the survivors' ids.
  struct UnmaskStage {
    secagg::UnmaskRequest request;
    std::vector<std::string> survivors;
  };
  Result<UnmaskStage> CloseMaskedInput();
  Status HandleUnmaskShares(const std::string& client, const secagg::UnmaskShares& message);
  Result<secagg::AggregateResult> Finish() { return server_.Finish(); }

 private:
  SecureRound(SecureRoundParams params, std::vector<std::string> roster,
              secagg::SecAggServer server);
  Status CheckSender(const std::string& client, secagg::ClientIndex sender) const;

  SecureRoundParams params_;
  std::vector<std::string> roster_;
  std::map<std::string, secagg::ClientIndex> index_;
  secagg::SecAggServer server_;
};

}  // namespace cleave::federated
