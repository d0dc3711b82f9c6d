#include "common/inference_wire.h"

#include <capnp/message.h>
#include <capnp/serialize-packed.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <cmath>
#include <exception>
#include <new>
#include <optional>
#include <utility>

#include "common/capnp_io.h"
#include "common/inference.capnp.h"
#include "common/tensor.capnp.h"

namespace cleave::wire {
namespace {

// The plain enums are cast to and from the schema enums, so their values must agree.
static_assert(static_cast<uint16_t>(schema::Tensor::DType::FLOAT32) ==
              static_cast<uint16_t>(DType::kFloat32));
static_assert(static_cast<uint16_t>(schema::Tensor::DType::FLOAT16) ==
              static_cast<uint16_t>(DType::kFloat16));
static_assert(static_cast<uint16_t>(schema::Tensor::DType::UINT8) ==
              static_cast<uint16_t>(DType::kUInt8));
static_assert(static_cast<uint16_t>(schema::Tensor::DType::UINT4) ==
              static_cast<uint16_t>(DType::kUInt4));
static_assert(static_cast<uint16_t>(schema::InferReply::Status::OK) ==
              static_cast<uint16_t>(ReplyStatus::kOk));
static_assert(static_cast<uint16_t>(schema::InferReply::Status::ERROR) ==
              static_cast<uint16_t>(ReplyStatus::kError));
static_assert(static_cast<uint16_t>(schema::InferReply::Status::OVERLOADED) ==
              static_cast<uint16_t>(ReplyStatus::kOverloaded));
static_assert(static_cast<uint16_t>(schema::InferReply::Status::DEADLINE_EXCEEDED) ==
              static_cast<uint16_t>(ReplyStatus::kDeadlineExceeded));

using capnp_io::AsData;
using capnp_io::AsText;
using capnp_io::TensorWords;
using capnp_io::ToString;
using capnp_io::WordsFor;
using capnp_io::WritePacked;
using capnp_io::WriteTensor;

template <typename T, typename ReadFn>
Result<T> WithPackedReader(std::string_view bytes, const char* what, ReadFn&& read) {
  return capnp_io::WithPackedReader<T>(bytes, what, kMaxMessageBytes, kMaxNestingDepth,
                                       std::forward<ReadFn>(read));
}

Result<std::string> ReadBlob(capnp::Data::Reader data, size_t limit, const char* what) {
  if (data.size() == 0) return Status::InvalidArgument(std::string(what) + " is empty");
  if (data.size() > limit) {
    return Status::InvalidArgument(std::string(what) + " is " + std::to_string(data.size()) +
                                   " bytes, more than the limit of " + std::to_string(limit));
  }
  return ToString(data);
}

Result<std::string> ReadModelName(capnp::Text::Reader model) {
  if (model.size() > kMaxModelNameBytes) {
    return Status::InvalidArgument("model name is " + std::to_string(model.size()) +
                                   " bytes, more than the limit of " +
                                   std::to_string(kMaxModelNameBytes));
  }
  for (size_t i = 0; i < model.size(); ++i) {
    const auto byte = static_cast<uint8_t>(model[i]);
    if (byte < 0x20 || byte == 0x7F) {
      return Status::InvalidArgument("model name contains control byte " + std::to_string(byte) +
                                     " at offset " + std::to_string(i));
    }
  }
  return std::string(model.begin(), model.size());
}

Result<EncodedTensor> ReadTensor(schema::Tensor::Reader in) {
  const auto dtype = in.getDtype();
  switch (dtype) {
    case schema::Tensor::DType::FLOAT32:
    case schema::Tensor::DType::FLOAT16:
    case schema::Tensor::DType::UINT8:
    case schema::Tensor::DType::UINT4: break;
    default:
      return Status::InvalidArgument("features: unknown tensor dtype value " +
                                     std::to_string(static_cast<uint16_t>(dtype)));
  }
  CLEAVE_ASSIGN_OR_RETURN(EncodedTensor out, capnp_io::ReadTensorFields(in, "features"));
  CLEAVE_RETURN_IF_ERROR(ValidateTensor(out).WithContext("features"));
  return out;
}

Result<InferRequest> ReadRequestV2(schema::InferRequestV2::Reader in) {
  InferRequest out;
  out.protocol_version = in.getProtocolVersion();
  out.layout_tag = in.getLayoutTag();
  out.request_id = in.getRequestId();
  out.deadline_ms = in.getDeadlineMs();
  out.split = in.getSplit();
  const auto input = in.getInput();
  switch (input.which()) {
    case schema::InferRequestV2::Input::FEATURES: {
      out.input = InputKind::kCodedFeatures;
      CLEAVE_ASSIGN_OR_RETURN(out.coded,
                              ReadBlob(input.getFeatures(), kMaxCodedFeatureBytes, "features"));
      break;
    }
    case schema::InferRequestV2::Input::PACKED: {
      out.input = InputKind::kPackedFeatures;
      CLEAVE_ASSIGN_OR_RETURN(
          out.coded, ReadBlob(input.getPacked(), kMaxCodedFeatureBytes, "packed features"));
      break;
    }
    case schema::InferRequestV2::Input::IMAGE: {
      out.input = InputKind::kPng;
      CLEAVE_ASSIGN_OR_RETURN(out.png, ReadBlob(input.getImage(), kMaxPngBytes, "image input"));
      break;
    }
    default:
      return Status::InvalidArgument("unknown input kind " +
                                     std::to_string(static_cast<uint16_t>(input.which())));
  }
  return out;
}

Status RequestVersionMismatch(uint16_t version) {
  return Status::VersionMismatch("InferRequest has protocol version " + std::to_string(version) +
                                 " but this build speaks versions 1 and 2");
}

Result<InferRequest> ReadRequest(schema::InferRequest::Reader in) {
  InferRequest out;
  out.protocol_version = in.getProtocolVersion();
  if (out.protocol_version != kProtocolVersion) return RequestVersionMismatch(out.protocol_version);
  out.request_id = in.getRequestId();
  out.deadline_ms = in.getDeadlineMs();
  CLEAVE_ASSIGN_OR_RETURN(out.model, ReadModelName(in.getModel()));
  const auto input = in.getInput();
  const auto kind = input.which();
  switch (kind) {
    case schema::InferRequest::Input::FEATURES: {
      out.input = InputKind::kFeatures;
      CLEAVE_ASSIGN_OR_RETURN(out.features, ReadTensor(input.getFeatures()));
      break;
    }
    case schema::InferRequest::Input::PNG: {
      out.input = InputKind::kPng;
      const auto png = input.getPng();
      if (png.size() == 0) return Status::InvalidArgument("png input is empty");
      if (png.size() > kMaxPngBytes) {
        return Status::InvalidArgument("png input is " + std::to_string(png.size()) +
                                       " bytes, more than the limit of " +
                                       std::to_string(kMaxPngBytes));
      }
      out.png = ToString(png);
      break;
    }
    default:
      return Status::InvalidArgument("unknown input kind " +
                                     std::to_string(static_cast<uint16_t>(kind)));
  }
  return out;
}

Result<InferReply> ReadReply(schema::InferReply::Reader in) {
  InferReply out;
  out.protocol_version = in.getProtocolVersion();
  CLEAVE_RETURN_IF_ERROR(
      capnp_io::CheckVersion(out.protocol_version, kProtocolVersion, "InferReply"));
  out.request_id = in.getRequestId();
  const auto status = in.getStatus();
  switch (status) {
    case schema::InferReply::Status::OK:
    case schema::InferReply::Status::ERROR:
    case schema::InferReply::Status::OVERLOADED:
    case schema::InferReply::Status::DEADLINE_EXCEEDED:
      out.status = static_cast<ReplyStatus>(status);
      break;
    default:
      return Status::InvalidArgument("unknown reply status value " +
                                     std::to_string(static_cast<uint16_t>(status)));
  }
  const auto error = in.getError();
  out.error.assign(error.begin(), error.size());
  out.num_classes = in.getNumClasses();
  out.batch_size = in.getBatchSize();
  out.queue_us = in.getQueueUs();
  out.compute_us = in.getComputeUs();

  const auto scores = in.getScores();
  if (out.status == ReplyStatus::kOk || scores.size() > 0) {
    if (out.num_classes < 1 || out.num_classes > kMaxNumClasses) {
      return Status::InvalidArgument("reply num_classes " + std::to_string(out.num_classes) +
                                     " is outside 1.." + std::to_string(kMaxNumClasses));
    }
    if (scores.size() == 0 || scores.size() % out.num_classes != 0) {
      return Status::InvalidArgument("reply has " + std::to_string(scores.size()) +
                                     " scores, not a positive multiple of num_classes " +
                                     std::to_string(out.num_classes));
    }
  }
  out.scores.reserve(scores.size());
  for (float score : scores) out.scores.push_back(score);
  for (size_t i = 0; i < out.scores.size(); ++i) {
    if (!std::isfinite(out.scores[i])) {
      return Status::InvalidArgument("reply score " + std::to_string(i) + " is not finite");
    }
  }
  return out;
}

}  // namespace

const char* ReplyStatusName(ReplyStatus status) {
  switch (status) {
    case ReplyStatus::kOk: return "ok";
    case ReplyStatus::kError: return "error";
    case ReplyStatus::kOverloaded: return "overloaded";
    case ReplyStatus::kDeadlineExceeded: return "deadline_exceeded";
    default: return "unknown";
  }
}

namespace {

// A builder whose first segment is this thread's scratch when `words` fit in it, else a
// fresh one of `words` (either way the message stays one segment).
class OneSegmentBuilder {
 public:
  explicit OneSegmentBuilder(size_t words) : scratch_(capnp_io::ScratchLease::Use::kBuilder) {
    if (words <= scratch_.words().size()) {
      builder_.emplace(scratch_.words());
    } else {
      builder_.emplace(static_cast<unsigned>(words));
    }
  }
  capnp::MallocMessageBuilder& message() { return *builder_; }

 private:
  const capnp_io::ScratchLease scratch_;
  std::optional<capnp::MallocMessageBuilder> builder_;  // destroyed before the lease ends
};

size_t RequestV2Words(const InferRequest& request) {
  const std::string& blob = request.input == InputKind::kPng ? request.png : request.coded;
  return 8 + WordsFor(blob.size());
}

void BuildRequestV2(const InferRequest& request, capnp::MessageBuilder& message) {
  auto root = message.initRoot<schema::InferRequestV2>();
  root.setProtocolVersion(request.protocol_version);
  root.setLayoutTag(request.layout_tag);
  root.setRequestId(static_cast<uint32_t>(request.request_id));
  root.setDeadlineMs(request.deadline_ms);
  root.setSplit(request.split);
  auto input = root.initInput();
  if (request.input == InputKind::kPng) {
    input.setImage(AsData(request.png));
  } else if (request.input == InputKind::kPackedFeatures) {
    input.setPacked(AsData(request.coded));
  } else {
    input.setFeatures(AsData(request.coded));
  }
}

size_t RequestV1Words(const InferRequest& request) {
  return 16 + WordsFor(request.model.size() + 1) + WordsFor(request.png.size()) +
         (request.input == InputKind::kFeatures ? TensorWords(request.features) : 0);
}

void BuildRequestV1(const InferRequest& request, capnp::MessageBuilder& message) {
  auto root = message.initRoot<schema::InferRequest>();
  root.setProtocolVersion(request.protocol_version);
  root.setRequestId(request.request_id);
  if (!request.model.empty()) root.setModel(AsText(request.model));
  root.setDeadlineMs(request.deadline_ms);
  auto input = root.initInput();
  if (request.input == InputKind::kPng) {
    input.setPng(AsData(request.png));
  } else {
    WriteTensor(request.features, input.initFeatures());
  }
}

size_t ReplyWords(const InferReply& reply) {
  return 16 + WordsFor(reply.error.size() + 1) + WordsFor(reply.scores.size() * 4);
}

void BuildReply(const InferReply& reply, capnp::MessageBuilder& message) {
  auto root = message.initRoot<schema::InferReply>();
  root.setProtocolVersion(reply.protocol_version);
  root.setRequestId(reply.request_id);
  root.setStatus(static_cast<schema::InferReply::Status>(reply.status));
  if (!reply.error.empty()) root.setError(AsText(reply.error));
  if (!reply.scores.empty()) {
    auto scores = root.initScores(static_cast<unsigned>(reply.scores.size()));
    for (unsigned i = 0; i < scores.size(); ++i) scores.set(i, reply.scores[i]);
  }
  root.setNumClasses(reply.num_classes);
  root.setBatchSize(reply.batch_size);
  root.setQueueUs(reply.queue_us);
  root.setComputeUs(reply.compute_us);
}

}  // namespace

std::string EncodeInferRequest(const InferRequest& request) {
  std::string out;
  EncodeInferRequest(request, &out);
  return out;
}

void EncodeInferRequest(const InferRequest& request, std::string* out) {
  const bool compact = request.protocol_version == kCompactProtocolVersion;
  OneSegmentBuilder builder(compact ? RequestV2Words(request) : RequestV1Words(request));
  if (compact) {
    BuildRequestV2(request, builder.message());
  } else {
    BuildRequestV1(request, builder.message());
  }
  WritePacked(builder.message(), out);
}

std::string EncodeInferReply(const InferReply& reply) {
  std::string out;
  EncodeInferReply(reply, &out);
  return out;
}

void EncodeInferReply(const InferReply& reply, std::string* out) {
  OneSegmentBuilder builder(ReplyWords(reply));
  BuildReply(reply, builder.message());
  WritePacked(builder.message(), out);
}

Result<InferRequest> DecodeInferRequest(std::string_view bytes) {
  return WithPackedReader<InferRequest>(bytes, "InferRequest", [](capnp::MessageReader& message) {
    // Both request structs keep protocolVersion as the first UInt16 of the data section.
    if (message.getRoot<schema::InferRequest>().getProtocolVersion() == kCompactProtocolVersion) {
      return ReadRequestV2(message.getRoot<schema::InferRequestV2>());
    }
    return ReadRequest(message.getRoot<schema::InferRequest>());
  });
}

Result<InferReply> DecodeInferReply(std::string_view bytes) {
  return WithPackedReader<InferReply>(bytes, "InferReply", [](capnp::MessageReader& message) {
    return ReadReply(message.getRoot<schema::InferReply>());
  });
}

Result<InferRequestHeader> PeekInferRequest(std::string_view bytes) {
  return WithPackedReader<InferRequestHeader>(
      bytes, "InferRequest", [](capnp::MessageReader& message) -> Result<InferRequestHeader> {
        InferRequestHeader out;
        // Both request structs keep protocolVersion as the first UInt16 of the data section.
        out.protocol_version = message.getRoot<schema::InferRequest>().getProtocolVersion();
        if (out.protocol_version == kCompactProtocolVersion) {
          const auto in = message.getRoot<schema::InferRequestV2>();
          out.request_id = in.getRequestId();
          out.deadline_ms = in.getDeadlineMs();
          out.split = in.getSplit();
          out.layout_tag = in.getLayoutTag();
          const auto which = in.getInput().which();
          switch (which) {
            case schema::InferRequestV2::Input::FEATURES:
              out.input = InputKind::kCodedFeatures;
              break;
            case schema::InferRequestV2::Input::PACKED:
              out.input = InputKind::kPackedFeatures;
              break;
            case schema::InferRequestV2::Input::IMAGE: out.input = InputKind::kPng; break;
            default:
              return Status::InvalidArgument("unknown input kind " +
                                             std::to_string(static_cast<uint16_t>(which)));
          }
          return out;
        }
        if (out.protocol_version != kProtocolVersion) {
          return RequestVersionMismatch(out.protocol_version);
        }
        const auto in = message.getRoot<schema::InferRequest>();
        out.request_id = in.getRequestId();
        out.deadline_ms = in.getDeadlineMs();
        const auto which = in.getInput().which();
        switch (which) {
          case schema::InferRequest::Input::FEATURES: out.input = InputKind::kFeatures; break;
          case schema::InferRequest::Input::PNG: out.input = InputKind::kPng; break;
          default:
            return Status::InvalidArgument("unknown input kind " +
                                           std::to_string(static_cast<uint16_t>(which)));
        }
        return out;
      });
}

uint64_t PeekRequestId(std::string_view bytes) {
  // requestId is field @1, a UInt64 in data word 1, in both InferRequest and InferReply; a
  // version 2 request keeps a UInt32 in the high half of data word 0.
  Result<uint64_t> id =
      WithPackedReader<uint64_t>(bytes, "message", [](capnp::MessageReader& message) {
        if (message.getRoot<schema::InferRequest>().getProtocolVersion() ==
            kCompactProtocolVersion) {
          return Result<uint64_t>(message.getRoot<schema::InferRequestV2>().getRequestId());
        }
        return Result<uint64_t>(message.getRoot<schema::InferRequest>().getRequestId());
      });
  return id.value_or(0);
}

}  // namespace cleave::wire
