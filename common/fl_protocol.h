// The federated protocol's version, the size limits every federated decoder applies, and the
// client-id rule. Shared by the round messages (common/fl_round_messages.h), the
// secure-aggregation stage messages (common/fl_secagg_messages.h), their envelope
// (common/fl_wire.h) and the aggregator's checkpoint format (federated/checkpoint_format.h).
// libtorch-free; ValidateClientId is thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/crypto.h"
#include "common/secure_aggregation.h"
#include "common/status.h"

namespace cleave::wire::fl {

// Bumped on any incompatible change to federated.capnp or tensor.capnp. Decoders reject every
// other version with kVersionMismatch.
// Version 2 added secure aggregation (RoundConfig.secure and the SecAgg* messages). It is a
// bump although the change is additive: a version-1 edge would ignore RoundConfig.secure and
// send its trained model in the clear, so it must not get that far.
// RoundConfig.compression and Update.compressed came later without a bump: an edge that
// ignores the compression field sends float32 tensors, which the aggregator still accepts,
// and an edge compresses only when asked, so no peer misreads what it gets.
inline constexpr uint16_t kProtocolVersion = 2;

// Limits applied by the decoders and by ValidateMessage / ValidateCheckpoint.
// A 1M-parameter float32 model is ~4 MiB on the wire; the message limit leaves room for ~64M.
inline constexpr size_t kMaxMessageBytes = size_t{256} << 20;  // packed and unpacked
inline constexpr int kMaxNestingDepth = 16;
inline constexpr size_t kMaxLayoutEntries = 4096;  // tensors per message, mask bits
inline constexpr size_t kMaxClientIdBytes = 128;
inline constexpr size_t kMaxNameBytes = 256;   // model, strategy, layout entry names
inline constexpr size_t kMaxTextBytes = 4096;  // error, reason and message texts
inline constexpr uint64_t kMaxNumExamples = uint64_t{1} << 40;
inline constexpr uint32_t kMaxLocalEpochs = 10000;
inline constexpr uint32_t kMaxBatchSize = uint32_t{1} << 20;
inline constexpr uint32_t kMaxRetryAfterMs = 86400000;  // one day; also pollIntervalMs
// Secure aggregation: keys are X25519 public keys; lists of keys, shares and survivors hold at
// most one entry per roster client; a masked input fits in a message.
inline constexpr size_t kSecAggKeyBytes = crypto::kKeyBytes;
inline constexpr size_t kMaxSecAggEntries = secagg::kMaxClients;
inline constexpr size_t kMaxSecAggVectorWords = kMaxMessageBytes / sizeof(uint32_t) / 2;
inline constexpr uint32_t kMaxFractionalBits = 30;

// Client ids: 1..kMaxClientIdBytes of [A-Za-z0-9._:@-], starting with a letter or digit (safe
// in file names, log lines and metric labels). InvalidArgument saying what is wrong.
Status ValidateClientId(std::string_view client_id);

}  // namespace cleave::wire::fl
