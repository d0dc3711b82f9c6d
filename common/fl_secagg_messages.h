// Secure-aggregation stage messages: the secagg:: protocol messages of
// common/secure_aggregation.h, each wrapped with its federated round and (from a client) the
// sending client. Plain C++ mirrors of the SecAgg* FlMessage bodies of common/federated.capnp;
// they travel in the envelope of common/fl_wire.h. libtorch-free.
#pragma once

#include <cstdint>
#include <string>

#include "common/fl_protocol.h"
#include "common/secure_aggregation.h"

namespace cleave::wire::fl {

// ---- Secure aggregation stages (protocol: common/secure_aggregation.h). Every message names
// the federated round (>= 1); client messages also name the client (ValidateClientId). The
// protocol fields (round_id, indices, keys, shares) are checked here only for shape: sizes
// (keys kSecAggKeyBytes, sealed shares secagg::SealedShareBytes(), revealed shares one field
// element below shamir::kPrime per chunk of a 32-byte secret), counts (<= kMaxSecAggEntries),
// indices (< secagg::kMaxClients); the state machines check the rest. ----

// Client -> aggregator, stage 0.
struct SecAggKeys {
  uint32_t round = 1;
  std::string client_id;
  secagg::AdvertiseKeys keys;
};
// Aggregator -> client, end of stage 0.
struct SecAggKeyDirectory {
  uint32_t round = 1;
  secagg::KeyDirectory directory;
};
// Client -> aggregator, stage 1.
struct SecAggShareKeys {
  uint32_t round = 1;
  std::string client_id;
  secagg::ShareKeys shares;
};
// Aggregator -> client, end of stage 1.
struct SecAggForwardedShares {
  uint32_t round = 1;
  secagg::ForwardedShares forwarded;
};
// Client -> aggregator, stage 2 (instead of Update). 1..kMaxSecAggVectorWords words.
struct SecAggMaskedInput {
  uint32_t round = 1;
  std::string client_id;
  secagg::MaskedInput input;
};
// Aggregator -> each survivor, end of stage 2. Survivors strictly increasing.
struct SecAggUnmaskRequest {
  uint32_t round = 1;
  secagg::UnmaskRequest request;
};
// Client -> aggregator, stage 3.
struct SecAggUnmaskShares {
  uint32_t round = 1;
  std::string client_id;
  secagg::UnmaskShares shares;
};

}  // namespace cleave::wire::fl
