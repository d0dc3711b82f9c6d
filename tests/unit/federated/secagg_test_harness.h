// A test driver for secure aggregation: n SecAggClient objects and one SecAggServer with the
// test in the place of the transport. Each step lets the clients that have not dropped send
// their message, hands it to the server and closes the stage; what the server returned is
// kept in public members so a test can inspect or tamper with it before the next step. Every
// message the server received is recorded (the "server-side transcript"). A client the test
// already drove through a step by hand (its stage is past it) is skipped by that step.
#pragma once

#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "federated/secagg_client.h"
#include "federated/secagg_server.h"

namespace cleave::secagg::testing {

// Small non-negative inputs (like encoded updates near zero), reproducible from `seed`.
inline std::vector<std::vector<uint32_t>> SmallInputs(uint32_t clients, uint32_t length,
                                                      uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<uint32_t> value(0, 1000);
  std::vector<std::vector<uint32_t>> inputs(clients, std::vector<uint32_t>(length));
  for (auto& input : inputs) {
    for (auto& w : input) w = value(rng);
  }
  return inputs;
}

// Sum modulo 2^32 of the inputs of `members`.
inline std::vector<uint32_t> PlainSum(const std::vector<std::vector<uint32_t>>& inputs,
                                      const std::vector<ClientIndex>& members) {
  std::vector<uint32_t> sum(inputs.at(0).size(), 0);
  for (ClientIndex u : members) {
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += inputs[u][i];
  }
  return sum;
}

inline SecAggConfig CompleteConfig(uint32_t n, uint32_t t, uint32_t length = 16) {
  SecAggConfig c;
  c.round_id = 42;
  c.num_clients = n;
  c.threshold = t;
  c.vector_length = length;
  return c;
}

inline SecAggConfig HararyConfig(uint32_t n, uint32_t k, uint32_t t, uint32_t length = 16) {
  SecAggConfig c = CompleteConfig(n, t, length);
  c.graph = GraphKind::kHarary;
  c.degree = k;
  for (size_t i = 0; i < c.graph_seed.size(); ++i) c.graph_seed[i] = static_cast<uint8_t>(7 * i);
  return c;
}

class Harness {
 public:
  explicit Harness(const SecAggConfig& config) : config(config) {
    auto created = SecAggServer::Create(config);
    if (created.ok()) server.emplace(std::move(created).value());
    for (ClientIndex u = 0; u < config.num_clients; ++u) {
      auto client = SecAggClient::Create(config, u);
      if (client.ok()) clients.push_back(std::move(client).value());
    }
  }

  bool ready() const { return server.has_value() && clients.size() == config.num_clients; }
  bool Active(ClientIndex u) const { return gone.count(u) == 0; }

  // Round 0: clients not in `drop` advertise; the server closes the stage.
  Status Advertise(const std::set<ClientIndex>& drop = {}) {
    Leave(drop);
    for (ClientIndex u = 0; u < config.num_clients; ++u) {
      if (!Active(u) || Skip(u, SecAggClient::Stage::kNew)) continue;
      auto message = clients[u].Advertise();
      if (!message.ok()) {
        Abort(u);
        continue;
      }
      CLEAVE_RETURN_IF_ERROR(server->HandleAdvertiseKeys(*message));
    }
    CLEAVE_ASSIGN_OR_RETURN(auto out, server->CloseAdvertiseKeys());
    directories.clear();
    for (auto& d : out) directories[d.recipient] = std::move(d);
    return Status::Ok();
  }

  // Round 1: clients not in `drop` that got a directory share their secrets.
  Status ShareKeys(const std::set<ClientIndex>& drop = {}) {
    Leave(drop);
    for (ClientIndex u = 0; u < config.num_clients; ++u) {
      if (!Active(u) || Skip(u, SecAggClient::Stage::kAdvertised)) continue;
      if (directories.count(u) == 0) {
        gone.insert(u);
        continue;
      }
      auto message = clients[u].ShareSecrets(directories[u]);
      if (!message.ok()) {
        Abort(u);
        continue;
      }
      CLEAVE_RETURN_IF_ERROR(server->HandleShareKeys(*message));
    }
    CLEAVE_ASSIGN_OR_RETURN(auto out, server->CloseShareKeys());
    forwarded.clear();
    for (auto& f : out) forwarded[f.recipient] = std::move(f);
    return Status::Ok();
  }

  // Round 2: clients not in `drop` mask inputs[u] and send it.
  Status MaskInputs(const std::vector<std::vector<uint32_t>>& inputs,
                    const std::set<ClientIndex>& drop = {}) {
    Leave(drop);
    for (ClientIndex u = 0; u < config.num_clients; ++u) {
      if (!Active(u) || Skip(u, SecAggClient::Stage::kShared)) continue;
      if (forwarded.count(u) == 0) {
        gone.insert(u);
        continue;
      }
      auto message = clients[u].MaskInput(forwarded[u], inputs[u]);
      if (!message.ok()) {
        Abort(u);
        continue;
      }
      masked_received.push_back(*message);
      CLEAVE_RETURN_IF_ERROR(server->HandleMaskedInput(*message));
    }
    CLEAVE_ASSIGN_OR_RETURN(request, server->CloseMaskedInput());
    return Status::Ok();
  }

  // Round 3: survivors not in `drop` reveal their shares; then the server finishes.
  Result<AggregateResult> Unmask(const std::set<ClientIndex>& drop = {}) {
    Leave(drop);
    for (ClientIndex u : request.survivors) {
      if (!Active(u) || Skip(u, SecAggClient::Stage::kMasked)) continue;
      auto message = clients[u].RevealShares(request);
      if (!message.ok()) {
        Abort(u);
        continue;
      }
      unmask_received.push_back(*message);
      CLEAVE_RETURN_IF_ERROR(server->HandleUnmaskShares(*message));
    }
    return server->Finish();
  }

  // The whole round with the given drop sets (clients leave just before that step).
  Result<AggregateResult> Run(const std::vector<std::vector<uint32_t>>& inputs,
                              const std::set<ClientIndex>& drop_before_advertise = {},
                              const std::set<ClientIndex>& drop_before_share = {},
                              const std::set<ClientIndex>& drop_before_mask = {},
                              const std::set<ClientIndex>& drop_before_unmask = {}) {
    CLEAVE_RETURN_IF_ERROR(Advertise(drop_before_advertise));
    CLEAVE_RETURN_IF_ERROR(ShareKeys(drop_before_share));
    CLEAVE_RETURN_IF_ERROR(MaskInputs(inputs, drop_before_mask));
    return Unmask(drop_before_unmask);
  }

  SecAggConfig config;
  std::optional<SecAggServer> server;
  std::vector<SecAggClient> clients;
  std::set<ClientIndex> gone;                  // dropped or aborted
  std::map<ClientIndex, std::string> aborted;  // client -> abort reason
  std::map<ClientIndex, KeyDirectory> directories;
  std::map<ClientIndex, ForwardedShares> forwarded;
  UnmaskRequest request;
  // Everything the server received in rounds 2 and 3.
  std::vector<MaskedInput> masked_received;
  std::vector<UnmaskShares> unmask_received;

 private:
  void Leave(const std::set<ClientIndex>& drop) { gone.insert(drop.begin(), drop.end()); }
  // True when client u is not at `before` but has not aborted: the test drove it by hand.
  bool Skip(ClientIndex u, SecAggClient::Stage before) const {
    const SecAggClient::Stage stage = clients[u].stage();
    return stage != before && stage != SecAggClient::Stage::kAborted;
  }
  void Abort(ClientIndex u) {
    gone.insert(u);
    aborted[u] = clients[u].abort_reason();
  }
};

}  // namespace cleave::secagg::testing
