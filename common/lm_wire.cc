#include "common/lm_wire.h"

#include <cmath>

#include "common/capnp_io.h"
#include "common/lm.capnp.h"

namespace cleave::lm_wire {
namespace {

static_assert(static_cast<uint16_t>(schema::LmReply::Status::OK) ==
              static_cast<uint16_t>(LmStatus::kOk));
static_assert(static_cast<uint16_t>(schema::LmReply::Status::ERROR) ==
              static_cast<uint16_t>(LmStatus::kError));
static_assert(static_cast<uint16_t>(schema::LmReply::Status::OVERLOADED) ==
              static_cast<uint16_t>(LmStatus::kOverloaded));
static_assert(static_cast<uint16_t>(schema::LmReply::Status::DEADLINE_EXCEEDED) ==
              static_cast<uint16_t>(LmStatus::kDeadlineExceeded));
static_assert(static_cast<uint16_t>(schema::LmReply::Status::RESYNC) ==
              static_cast<uint16_t>(LmStatus::kResync));

using wire::capnp_io::AsText;
using wire::capnp_io::TensorWords;
using wire::capnp_io::WordsFor;
using wire::capnp_io::WritePacked;

constexpr int kMaxNestingDepth = 16;

template <typename T, typename ReadFn>
Result<T> WithPackedReader(std::string_view bytes, const char* what, ReadFn&& read) {
  return wire::capnp_io::WithPackedReader<T>(bytes, what, kMaxMessageBytes, kMaxNestingDepth,
                                             std::forward<ReadFn>(read));
}

Status CheckVersion(uint16_t version, const char* what) {
  return wire::capnp_io::CheckVersion(version, kProtocolVersion, what);
}

// Printable ASCII only: names travel into logs and metrics labels.
Result<std::string> ReadName(capnp::Text::Reader text, const char* field, size_t max_bytes,
                             bool allow_empty) {
  if (text.size() > max_bytes) {
    return Status::InvalidArgument(std::string(field) + " is " + std::to_string(text.size()) +
                                   " bytes, more than the limit of " + std::to_string(max_bytes));
  }
  if (text.size() == 0 && !allow_empty)
    return Status::InvalidArgument(std::string(field) + " is empty");
  for (size_t i = 0; i < text.size(); ++i) {
    const auto byte = static_cast<uint8_t>(text[i]);
    if (byte < 0x20 || byte >= 0x7F) {
      return Status::InvalidArgument(std::string(field) + " contains byte " + std::to_string(byte) +
                                     " at offset " + std::to_string(i));
    }
  }
  return std::string(text.begin(), text.size());
}

Result<LmRequest> ReadRequest(schema::LmRequest::Reader in) {
  LmRequest out;
  out.protocol_version = in.getProtocolVersion();
  CLEAVE_RETURN_IF_ERROR(CheckVersion(out.protocol_version, "LmRequest"));
  out.request_id = in.getRequestId();
  CLEAVE_ASSIGN_OR_RETURN(out.model,
                          ReadName(in.getModel(), "model", wire::kMaxModelNameBytes, true));
  CLEAVE_ASSIGN_OR_RETURN(out.session,
                          ReadName(in.getSession(), "session", kMaxSessionBytes, false));
  out.start = in.getStart();
  out.predict = in.getPredict();
  out.end_session = in.getEndSession();
  out.deadline_ms = in.getDeadlineMs();
  out.reset_session = in.getResetSession();
  if (in.hasTokens()) {
    const auto tokens = in.getTokens();
    if (tokens.size() > kMaxStatesPerRequest) {
      return Status::InvalidArgument("tokens: " + std::to_string(tokens.size()) +
                                     ", more than the limit of " +
                                     std::to_string(kMaxStatesPerRequest));
    }
    out.tokens.assign(reinterpret_cast<const char*>(tokens.begin()), tokens.size());
  }
  if (!in.hasStates()) {
    if (out.tokens.empty()) return Status::InvalidArgument("states: missing");
  } else {
    const auto states = in.getStates();
    switch (states.getDtype()) {
      case schema::Tensor::DType::FLOAT32:
      case schema::Tensor::DType::FLOAT16:
      case schema::Tensor::DType::UINT8:
      case schema::Tensor::DType::UINT4: break;
      default:
        return Status::InvalidArgument("states: unknown tensor dtype value " +
                                       std::to_string(static_cast<uint16_t>(states.getDtype())));
    }
    CLEAVE_ASSIGN_OR_RETURN(out.states, wire::capnp_io::ReadTensorFields(states, "states"));
    if (out.states.shape.size() != 2) {
      return Status::InvalidArgument("states: expected 2 dimensions [tokens, width], got " +
                                     std::to_string(out.states.shape.size()));
    }
    if (out.states.shape[0] > kMaxStatesPerRequest) {
      return Status::InvalidArgument("states: " + std::to_string(out.states.shape[0]) +
                                     " tokens, more than the limit of " +
                                     std::to_string(kMaxStatesPerRequest));
    }
    if (out.states.shape[1] < 1 || out.states.shape[1] > kMaxStateWidth) {
      return Status::InvalidArgument("states: width " + std::to_string(out.states.shape[1]) +
                                     " outside 1.." + std::to_string(kMaxStateWidth));
    }
    CLEAVE_RETURN_IF_ERROR(wire::ValidateTensor(out.states).WithContext("states"));
    if (!out.tokens.empty() && out.states.shape[0] > 0) {
      return Status::InvalidArgument("a request carries states or tokens, not both");
    }
  }
  const size_t rows = out.tokens.empty() ? out.states.shape[0] : out.tokens.size();
  if (out.predict && rows == 0) {
    return Status::InvalidArgument("predict needs at least one state or token");
  }
  if (out.start > (uint64_t{1} << 62))
    return Status::InvalidArgument("start position out of range");
  return out;
}

Result<LmReply> ReadReply(schema::LmReply::Reader in) {
  LmReply out;
  out.protocol_version = in.getProtocolVersion();
  CLEAVE_RETURN_IF_ERROR(CheckVersion(out.protocol_version, "LmReply"));
  out.request_id = in.getRequestId();
  const auto status = in.getStatus();
  switch (status) {
    case schema::LmReply::Status::OK:
    case schema::LmReply::Status::ERROR:
    case schema::LmReply::Status::OVERLOADED:
    case schema::LmReply::Status::DEADLINE_EXCEEDED:
    case schema::LmReply::Status::RESYNC: out.status = static_cast<LmStatus>(status); break;
    default:
      return Status::InvalidArgument("unknown reply status value " +
                                     std::to_string(static_cast<uint16_t>(status)));
  }
  const auto error = in.getError();
  out.error.assign(error.begin(), error.size());
  out.position = in.getPosition();
  out.compute_us = in.getComputeUs();
  out.macs = in.getMacs();
  const auto log_probs = in.getLogProbs();
  if (log_probs.size() > kMaxVocab) {
    return Status::InvalidArgument("reply has " + std::to_string(log_probs.size()) +
                                   " log-probabilities, more than the limit of " +
                                   std::to_string(kMaxVocab));
  }
  out.log_probs.reserve(log_probs.size());
  for (unsigned i = 0; i < log_probs.size(); ++i) {
    const float v = log_probs[i];
    if (!std::isfinite(v) || v > 1e-4f) {
      return Status::InvalidArgument("reply log-probability " + std::to_string(i) +
                                     " is not a finite value <= 0");
    }
    out.log_probs.push_back(v);
  }
  return out;
}

}  // namespace

const char* LmStatusName(LmStatus status) {
  switch (status) {
    case LmStatus::kOk: return "ok";
    case LmStatus::kError: return "error";
    case LmStatus::kOverloaded: return "overloaded";
    case LmStatus::kDeadlineExceeded: return "deadline_exceeded";
    case LmStatus::kResync: return "resync";
    default: return "unknown";
  }
}

std::string EncodeLmRequest(const LmRequest& request) {
  const size_t words = 16 + WordsFor(request.model.size() + 1) +
                       WordsFor(request.session.size() + 1) + TensorWords(request.states) +
                       WordsFor(request.tokens.size());
  capnp::MallocMessageBuilder message(static_cast<unsigned>(words));
  auto root = message.initRoot<schema::LmRequest>();
  root.setProtocolVersion(request.protocol_version);
  root.setRequestId(request.request_id);
  if (!request.model.empty()) root.setModel(AsText(request.model));
  root.setSession(AsText(request.session));
  root.setStart(request.start);
  if (request.tokens.empty() || !request.states.shape.empty()) {
    wire::capnp_io::WriteTensor(request.states, root.initStates());
  }
  if (!request.tokens.empty()) {
    root.setTokens(kj::arrayPtr(reinterpret_cast<const kj::byte*>(request.tokens.data()),
                                request.tokens.size()));
  }
  root.setPredict(request.predict);
  root.setEndSession(request.end_session);
  root.setDeadlineMs(request.deadline_ms);
  root.setResetSession(request.reset_session);
  return WritePacked(message);
}

std::string EncodeLmReply(const LmReply& reply) {
  const size_t words = 16 + WordsFor(reply.error.size() + 1) + WordsFor(reply.log_probs.size() * 4);
  capnp::MallocMessageBuilder message(static_cast<unsigned>(words));
  auto root = message.initRoot<schema::LmReply>();
  root.setProtocolVersion(reply.protocol_version);
  root.setRequestId(reply.request_id);
  root.setStatus(static_cast<schema::LmReply::Status>(reply.status));
  if (!reply.error.empty()) root.setError(AsText(reply.error));
  root.setPosition(reply.position);
  if (!reply.log_probs.empty()) {
    auto lp = root.initLogProbs(static_cast<unsigned>(reply.log_probs.size()));
    for (unsigned i = 0; i < lp.size(); ++i) lp.set(i, reply.log_probs[i]);
  }
  root.setComputeUs(reply.compute_us);
  root.setMacs(reply.macs);
  return WritePacked(message);
}

Result<LmRequest> DecodeLmRequest(std::string_view bytes) {
  return WithPackedReader<LmRequest>(bytes, "LmRequest", [](capnp::MessageReader& message) {
    return ReadRequest(message.getRoot<schema::LmRequest>());
  });
}

Result<LmReply> DecodeLmReply(std::string_view bytes) {
  return WithPackedReader<LmReply>(bytes, "LmReply", [](capnp::MessageReader& message) {
    return ReadReply(message.getRoot<schema::LmReply>());
  });
}

}  // namespace cleave::lm_wire
