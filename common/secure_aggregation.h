// Secure aggregation of integer vectors modulo 2^32: the round configuration, the neighbour
// graph, the messages, and the primitives the client (federated/secagg_client.h) and the server
// (federated/secagg_server.h) state machines share.
//
// The protocol is SecAgg, Bonawitz et al., "Practical Secure Aggregation for
// Privacy-Preserving Machine Learning", ACM CCS 2017 (the semi-honest variant of its Figure 4),
// generalized as in SecAgg+, Bell et al., "Secure Single-Server Aggregation with
// (Poly)Logarithmic Overhead", ACM CCS 2020: each client masks and shares only with its
// neighbours in a sparse k-regular graph instead of with every other client. A complete graph
// is plain SecAgg.
//
//   round 0  AdvertiseKeys    client u -> server: c_u^PK (share encryption), s_u^PK (masking)
//            KeyDirectory     server -> u: the keys of u and of its neighbours that advertised
//   round 1  ShareKeys        u Shamir-shares (t of its holders N(u) + u) its self-mask seed b_u
//                             and its masking secret key s_u^SK; the share for v travels through
//                             the server AES-256-GCM-sealed under HKDF(X25519(c_u^SK, c_v^PK))
//            ForwardedShares  server -> v: the sealed shares addressed to v
//   round 2  MaskedInput      y_u = x_u + PRG(b_u) + sum_{v in N(u), v<u} PRG(s_uv)
//                                              - sum_{v in N(u), v>u} PRG(s_uv)   (mod 2^32)
//                             with s_uv = HKDF(X25519(s_u^SK, s_v^PK)) and v ranging over the
//                             neighbours whose shares u received (those still in the round)
//            UnmaskRequest    server -> survivors: who sent a masked input
//   round 3  UnmaskShares     u reveals, for each client whose shares it holds, the share of
//                             b_v if v survived, else the share of s_v^SK (never both)
//   server: sum of y_u - PRG(b_u) of survivors, plus the masks survivors shared with dropped
//           clients recomputed from their reconstructed s_d^SK = the sum of the survivors' x_u.
//
// Threat model: an honest-but-curious server and clients authenticated by the transport
// (ZeroMQ CURVE with an allow-list). The server learns only the sum of the inputs of the
// clients that sent masked inputs, as long as fewer than `threshold` of a client's share
// holders collude with it. The active-adversary additions of Bonawitz et al. (signed keys and
// the consistency-check round) are not implemented. Messages from peers are hostile: every
// field is checked and a bad message is rejected with a Status, never a crash.
//
// Identities: clients are positions 0..num_clients-1 in the round's roster (the caller maps
// its own client ids onto them, in the same order on every side); the Shamir evaluation
// point of the share held by client v is v + 1.
//
// Cryptography: common/crypto.h (X25519, HKDF-SHA256, AES-256-GCM, AES-256-CTR mask stream),
// common/shamir.h (GF(2^61 - 1)). The byte layout inside the sealed shares is internal to this
// file and versioned; the messages themselves are plain structs until the Cap'n Proto wire
// carries them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/crypto.h"
#include "common/shamir.h"
#include "common/status.h"

namespace cleave::secagg {

using ClientIndex = uint32_t;
using crypto::Bytes;
using crypto::Key256;

inline constexpr uint32_t kMaxClients = 1 << 16;
inline constexpr uint32_t kMaxVectorLength = 1 << 28;

enum class GraphKind {
  kComplete,  // SecAgg: every client is every other client's neighbour
  kHarary,    // SecAgg+: a randomly relabelled Harary graph H(k, n), k-regular
};

// Public parameters of one round, identical on the server and every client.
struct SecAggConfig {
  uint64_t round_id = 0;       // binds keys, seeds and ciphertexts to this round
  uint32_t num_clients = 0;    // roster size n (2..kMaxClients); clients are 0..n-1
  uint32_t threshold = 0;      // Shamir threshold t, see ValidateConfig
  uint32_t vector_length = 0;  // words per input (1..kMaxVectorLength)
  GraphKind graph = GraphKind::kComplete;
  uint32_t degree = 0;  // kHarary: neighbours per client (k); k >= n - 1 means complete
  Key256 graph_seed{};  // kHarary: public randomness of the round that relabels the graph
};

// Share holders of a client: its neighbours plus itself (n for a complete graph, else k + 1).
uint32_t HoldersPerClient(const SecAggConfig& config);

// OK when the configuration is usable. The threshold must satisfy 2 <= t <= holders and be a
// strict majority of the holders (2t > holders): a client then reveals, for any peer, only one
// kind of share, and two disjoint sets of holders cannot both reach t, so not even a server
// that lies about who dropped can learn both b_v and s_v^SK of one client.
[[nodiscard]] Status ValidateConfig(const SecAggConfig& config);

// Who masks with whom. Complete graph: implicit (no O(n^2) storage). Harary graph H(k, n)
// (Harary 1962; used for SecAgg+ as in Bell et al.'s instantiation): vertices on a ring, each
// joined to the k/2 nearest on either side (and, for odd k, to the opposite vertex), the ring
// order being a uniformly random permutation of the roster drawn from the AES-CTR stream of
// HKDF(graph_seed). Immutable after Build; thread-safe to read.
class NeighbourGraph {
 public:
  [[nodiscard]] static Result<NeighbourGraph> Build(const SecAggConfig& config);

  uint32_t size() const { return size_; }
  // Neighbours of every vertex (n - 1 for a complete graph).
  uint32_t degree() const { return degree_; }
  // The neighbours of `u` in increasing order, never `u` itself. Precondition: u < size().
  std::vector<ClientIndex> Neighbours(ClientIndex u) const;
  // Whether u and v are distinct neighbours; false for out-of-range vertices.
  bool Adjacent(ClientIndex u, ClientIndex v) const;

 private:
  NeighbourGraph() = default;
  uint32_t size_ = 0;
  uint32_t degree_ = 0;
  bool complete_ = true;
  std::vector<std::vector<ClientIndex>> adjacency_;  // sorted; empty when complete_
};

// ---- Messages (plain structs; a Cap'n Proto schema will carry them on the wire) ----

struct PublicKeys {
  ClientIndex client = 0;
  Key256 cipher_public_key{};  // c^PK: agreement for sealing shares
  Key256 mask_public_key{};    // s^PK: agreement for pairwise masks
};

// Round 0, client -> server.
struct AdvertiseKeys {
  uint64_t round_id = 0;
  ClientIndex sender = 0;
  Key256 cipher_public_key{};
  Key256 mask_public_key{};
};

// Round 0 result, server -> `recipient`: the keys of the recipient itself and of its
// neighbours that advertised.
struct KeyDirectory {
  uint64_t round_id = 0;
  ClientIndex recipient = 0;
  std::vector<PublicKeys> keys;
};

// One sealed pair of shares (of b_sender and s_sender^SK) for `recipient`.
struct EncryptedShare {
  ClientIndex sender = 0;
  ClientIndex recipient = 0;
  Bytes ciphertext;
};

// Round 1, client -> server: one sealed share per neighbour in its key directory.
struct ShareKeys {
  uint64_t round_id = 0;
  ClientIndex sender = 0;
  std::vector<EncryptedShare> shares;
};

// Round 1 result, server -> `recipient`: the sealed shares its neighbours addressed to it.
struct ForwardedShares {
  uint64_t round_id = 0;
  ClientIndex recipient = 0;
  std::vector<EncryptedShare> shares;
};

// Round 2, client -> server: the masked input y_u (vector_length words).
struct MaskedInput {
  uint64_t round_id = 0;
  ClientIndex sender = 0;
  std::vector<uint32_t> masked;
};

// Round 2 result, server -> every survivor: the clients whose masked input counts.
struct UnmaskRequest {
  uint64_t round_id = 0;
  std::vector<ClientIndex> survivors;  // strictly increasing
};

struct RevealedShare {
  ClientIndex owner = 0;  // whose secret this is a share of
  shamir::Share share;    // share.x is the sender's point (sender + 1)
};

// Round 3, client -> server.
struct UnmaskShares {
  uint64_t round_id = 0;
  ClientIndex sender = 0;
  std::vector<RevealedShare> self_mask_shares;  // shares of b_v, for survivors v
  std::vector<RevealedShare> mask_key_shares;   // shares of s_d^SK, for dropped clients d
};

// ---- Primitives shared by client and server (internal to the protocol) ----

// Shamir evaluation point of the shares client `u` holds.
inline uint32_t SharePoint(ClientIndex u) { return u + 1; }

// The key that seals shares between `a` and `b` (symmetric in a, b):
// HKDF-SHA256(salt = label || every field of `config`, ikm = X25519(own_secret, peer_public),
//             info = "share-encryption" || min(a, b) || max(a, b)).
[[nodiscard]] Result<Key256> ShareEncryptionKey(const SecAggConfig& config,
                                                const Key256& own_secret, const Key256& peer_public,
                                                ClientIndex a, ClientIndex b);
// The pairwise mask seed s_ab, derived like ShareEncryptionKey with info "pairwise-mask".
[[nodiscard]] Result<Key256> PairwiseMaskSeed(const SecAggConfig& config, const Key256& own_secret,
                                              const Key256& peer_public, ClientIndex a,
                                              ClientIndex b);
// Associated data of the sealed shares from `sender` to `recipient`.
Bytes ShareAssociatedData(uint64_t round_id, ClientIndex sender, ClientIndex recipient);

// Exact ciphertext size of one EncryptedShare.
size_t SealedShareBytes();
// The plaintext inside an EncryptedShare: a version byte and the two shares' field elements.
Bytes EncodeSharePair(const shamir::Share& self_mask, const shamir::Share& mask_key);
// Parses EncodeSharePair's output into shares at point `x`; InvalidArgument when malformed.
[[nodiscard]] Status DecodeSharePair(const Bytes& plaintext, uint32_t x, shamir::Share* self_mask,
                                     shamir::Share* mask_key);

// Adds to `acc` the term the pairwise seed of (self, peer) contributes to y_self:
// +PRG(seed) when peer < self, -PRG(seed) when peer > self. With `remove`, the opposite.
[[nodiscard]] Status ApplyPairwiseMask(const Key256& seed, ClientIndex self, ClientIndex peer,
                                       bool remove, std::vector<uint32_t>& acc);

}  // namespace cleave::secagg
