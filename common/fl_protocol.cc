#include "common/fl_protocol.h"

#include <string>

#include "common/fl_wire_internal.h"

namespace cleave::wire::fl {

Status ValidateClientId(std::string_view client_id) {
  if (client_id.empty()) return Status::InvalidArgument("client id is empty");
  if (client_id.size() > kMaxClientIdBytes) {
    return internal::TooLong("client id", client_id.size(), kMaxClientIdBytes, "bytes");
  }
  for (size_t i = 0; i < client_id.size(); ++i) {
    const char c = client_id[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    const bool punct = c == '.' || c == '_' || c == ':' || c == '@' || c == '-';
    if (!alnum && !(punct && i > 0)) {
      return Status::InvalidArgument(
          "client id may use only [A-Za-z0-9._:@-] and must start with a letter or digit; byte " +
          std::to_string(static_cast<uint8_t>(c)) + " at offset " + std::to_string(i));
    }
  }
  return Status::Ok();
}

}  // namespace cleave::wire::fl
