// Pieces shared by the FederatedClient implementation files (fl_client.cc,
// fl_client_training.cc, fl_client_secure.cc, fl_client_continual.cc). Not part of the public API:
// include only from edge/fl_client*.cc. Defined in fl_client.cc.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/logging.h"

namespace cleave::edge::fl_client_internal {

// The client's logger ("fl-client").
std::shared_ptr<spdlog::logger> Log();

// The first 12 characters of a SHA-256 hex digest and "...", for log lines and errors.
std::string ShortSha(const std::string& sha);

// A tensor shape as text: "[1,28,28]".
std::string ShapeText(const std::vector<int64_t>& shape);

// A stable 64-bit number for the client id (FNV-1a): the `client` input of the int8 rounding
// stream, so two clients in one round draw different coins, and the seed of the client's
// replay buffer in continual rounds, so two edges do not keep the same rows.
uint64_t ClientNumber(const std::string& client_id);

}  // namespace cleave::edge::fl_client_internal
