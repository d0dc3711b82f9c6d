#include "common/secure_aggregation.h"

#include <algorithm>
#include <numeric>

namespace cleave::secagg {
namespace {

constexpr char kSaltLabel[] = "cleave.secagg.v1";
constexpr uint8_t kSharePairVersion = 1;
constexpr size_t kElementsPerKey = shamir::ElementsFor(crypto::kKeyBytes);

void AppendU32(Bytes& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void AppendU64(Bytes& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint64_t ReadU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

// Every public parameter of the round: keys and seeds derived under one configuration are
// unrelated to those under another, so a server that hands clients different configurations
// makes shares fail to open instead of masks silently failing to cancel.
Bytes ContextSalt(const SecAggConfig& config) {
  Bytes salt(kSaltLabel, kSaltLabel + sizeof(kSaltLabel) - 1);
  AppendU64(salt, config.round_id);
  AppendU32(salt, config.num_clients);
  AppendU32(salt, config.threshold);
  AppendU32(salt, config.vector_length);
  AppendU32(salt, static_cast<uint32_t>(config.graph));
  AppendU32(salt, config.degree);
  salt.insert(salt.end(), config.graph_seed.begin(), config.graph_seed.end());
  return salt;
}

// HKDF(salt = label || round, ikm = X25519(own_secret, peer_public), info = purpose || pair).
Result<Key256> DerivePairKey(const SecAggConfig& config, const Key256& own_secret,
                             const Key256& peer_public, ClientIndex a, ClientIndex b,
                             const std::string& purpose) {
  if (a == b) return Status::InvalidArgument("a pairwise key needs two distinct clients");
  CLEAVE_ASSIGN_OR_RETURN(Key256 shared, crypto::X25519Agree(own_secret, peer_public));
  Bytes info(purpose.begin(), purpose.end());
  AppendU32(info, std::min(a, b));
  AppendU32(info, std::max(a, b));
  auto key = crypto::HkdfKey(ContextSalt(config), shared, info);
  crypto::Cleanse(shared);
  return key;
}

// A uniform integer in [0, bound) from the stream, by rejection (no modulo bias).
Result<uint32_t> UniformBelow(crypto::MaskStream& stream, uint32_t bound) {
  const uint64_t accept_below = ((uint64_t{1} << 32) / bound) * bound;
  while (true) {
    uint32_t word = 0;
    CLEAVE_RETURN_IF_ERROR(stream.NextWords(&word, 1));
    if (word < accept_below) return word % bound;
  }
}

bool IsComplete(const SecAggConfig& config) {
  return config.graph == GraphKind::kComplete || config.degree + 1 >= config.num_clients;
}

}  // namespace

uint32_t HoldersPerClient(const SecAggConfig& config) {
  return IsComplete(config) ? config.num_clients : config.degree + 1;
}

Status ValidateConfig(const SecAggConfig& config) {
  if (config.num_clients < 2 || config.num_clients > kMaxClients) {
    return Status::InvalidArgument("secure aggregation needs 2.." + std::to_string(kMaxClients) +
                                   " clients, not " + std::to_string(config.num_clients));
  }
  if (config.vector_length < 1 || config.vector_length > kMaxVectorLength) {
    return Status::InvalidArgument("the vector length must be 1.." +
                                   std::to_string(kMaxVectorLength) + " words, not " +
                                   std::to_string(config.vector_length));
  }
  if (config.graph == GraphKind::kHarary) {
    if (config.degree < 1) {
      return Status::InvalidArgument("a SecAgg+ neighbour graph needs a degree of at least 1");
    }
    if (!IsComplete(config) && config.degree % 2 == 1 && config.num_clients % 2 == 1) {
      return Status::InvalidArgument("no " + std::to_string(config.degree) + "-regular graph on " +
                                     std::to_string(config.num_clients) +
                                     " clients exists (n * k must be even); use degree " +
                                     std::to_string(config.degree + 1));
    }
  } else if (config.graph != GraphKind::kComplete) {
    return Status::InvalidArgument("unknown neighbour graph kind");
  }
  const uint32_t holders = HoldersPerClient(config);
  if (config.threshold < 2 || config.threshold > holders ||
      2 * static_cast<uint64_t>(config.threshold) <= holders) {
    return Status::InvalidArgument(
        "threshold " + std::to_string(config.threshold) + " must be a strict majority of the " +
        std::to_string(holders) + " share holders of each client (" +
        std::to_string(holders / 2 + 1) + ".." + std::to_string(holders) + ")");
  }
  return Status::Ok();
}

Result<NeighbourGraph> NeighbourGraph::Build(const SecAggConfig& config) {
  CLEAVE_RETURN_IF_ERROR(ValidateConfig(config));
  NeighbourGraph graph;
  graph.size_ = config.num_clients;
  const uint32_t n = config.num_clients;
  if (IsComplete(config)) {
    graph.degree_ = n - 1;
    graph.complete_ = true;
    return graph;
  }
  graph.degree_ = config.degree;
  graph.complete_ = false;

  // Ring order: a Fisher-Yates shuffle driven by a stream keyed from the public seed.
  Bytes info;
  const std::string label = "neighbour-graph";
  info.assign(label.begin(), label.end());
  AppendU32(info, n);
  AppendU32(info, config.degree);
  CLEAVE_ASSIGN_OR_RETURN(Key256 stream_key,
                          crypto::HkdfKey(ContextSalt(config), config.graph_seed, info));
  CLEAVE_ASSIGN_OR_RETURN(crypto::MaskStream stream, crypto::MaskStream::Create(stream_key));
  std::vector<ClientIndex> ring(n);
  std::iota(ring.begin(), ring.end(), 0);
  for (uint32_t i = n - 1; i > 0; --i) {
    CLEAVE_ASSIGN_OR_RETURN(uint32_t j, UniformBelow(stream, i + 1));
    std::swap(ring[i], ring[j]);
  }

  graph.adjacency_.assign(n, {});
  const uint32_t half = config.degree / 2;
  for (uint32_t pos = 0; pos < n; ++pos) {
    std::vector<ClientIndex>& list = graph.adjacency_[ring[pos]];
    for (uint32_t d = 1; d <= half; ++d) {
      list.push_back(ring[(pos + d) % n]);
      list.push_back(ring[(pos + n - d) % n]);
    }
    if (config.degree % 2 == 1) list.push_back(ring[(pos + n / 2) % n]);
    std::sort(list.begin(), list.end());
  }
  return graph;
}

std::vector<ClientIndex> NeighbourGraph::Neighbours(ClientIndex u) const {
  if (!complete_) return adjacency_[u];
  std::vector<ClientIndex> all;
  all.reserve(size_ - 1);
  for (ClientIndex v = 0; v < size_; ++v) {
    if (v != u) all.push_back(v);
  }
  return all;
}

bool NeighbourGraph::Adjacent(ClientIndex u, ClientIndex v) const {
  if (u >= size_ || v >= size_ || u == v) return false;
  if (complete_) return true;
  const auto& list = adjacency_[u];
  return std::binary_search(list.begin(), list.end(), v);
}

Result<Key256> ShareEncryptionKey(const SecAggConfig& config, const Key256& own_secret,
                                  const Key256& peer_public, ClientIndex a, ClientIndex b) {
  return DerivePairKey(config, own_secret, peer_public, a, b, "share-encryption");
}

Result<Key256> PairwiseMaskSeed(const SecAggConfig& config, const Key256& own_secret,
                                const Key256& peer_public, ClientIndex a, ClientIndex b) {
  return DerivePairKey(config, own_secret, peer_public, a, b, "pairwise-mask");
}

Bytes ShareAssociatedData(uint64_t round_id, ClientIndex sender, ClientIndex recipient) {
  const std::string label = "cleave.secagg.v1.share";
  Bytes aad(label.begin(), label.end());
  AppendU64(aad, round_id);
  AppendU32(aad, sender);
  AppendU32(aad, recipient);
  return aad;
}

size_t SealedShareBytes() { return 1 + 2 * kElementsPerKey * 8 + crypto::kAeadOverheadBytes; }

Bytes EncodeSharePair(const shamir::Share& self_mask, const shamir::Share& mask_key) {
  Bytes out;
  out.reserve(1 + 2 * kElementsPerKey * 8);
  out.push_back(kSharePairVersion);
  for (const shamir::Share* share : {&self_mask, &mask_key}) {
    for (size_t e = 0; e < kElementsPerKey; ++e) {
      AppendU64(out, e < share->y.size() ? share->y[e] : 0);
    }
  }
  return out;
}

Status DecodeSharePair(const Bytes& plaintext, uint32_t x, shamir::Share* self_mask,
                       shamir::Share* mask_key) {
  if (plaintext.size() != 1 + 2 * kElementsPerKey * 8) {
    return Status::InvalidArgument("a share pair is " +
                                   std::to_string(1 + 2 * kElementsPerKey * 8) + " bytes, not " +
                                   std::to_string(plaintext.size()));
  }
  if (plaintext[0] != kSharePairVersion) {
    return Status::VersionMismatch("share pair version " + std::to_string(plaintext[0]) +
                                   " is not supported (expected " +
                                   std::to_string(kSharePairVersion) + ")");
  }
  const uint8_t* p = plaintext.data() + 1;
  for (shamir::Share* share : {self_mask, mask_key}) {
    share->x = x;
    share->y.resize(kElementsPerKey);
    for (size_t e = 0; e < kElementsPerKey; ++e, p += 8) {
      share->y[e] = ReadU64(p);
      if (share->y[e] >= shamir::kPrime) {
        return Status::InvalidArgument("a share holds a value outside the field");
      }
    }
  }
  return Status::Ok();
}

Status ApplyPairwiseMask(const Key256& seed, ClientIndex self, ClientIndex peer, bool remove,
                         std::vector<uint32_t>& acc) {
  if (self == peer) return Status::Internal("a client has no pairwise mask with itself");
  // y_self carries +PRG when peer < self and -PRG when peer > self, so the pair cancels.
  const bool subtract = (peer > self) != remove;
  return crypto::AddSeedStream(seed, subtract, acc.data(), acc.size());
}

}  // namespace cleave::secagg
