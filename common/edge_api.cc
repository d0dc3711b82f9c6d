#include "common/edge_api.h"

#include <capnp/message.h>
#include <capnp/serialize-packed.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <cmath>
#include <optional>

#include "common/edge_api.capnp.h"

namespace cleave::edge_api {
namespace {

namespace schema = ::cleave::capnp_edge;

capnp::ReaderOptions HostileReaderOptions() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 2 * kMaxMessageBytes / sizeof(capnp::word);
  options.nestingLimit = 16;
  return options;
}

std::string WritePacked(capnp::MessageBuilder& builder) {
  kj::VectorOutputStream out;
  capnp::writePackedMessage(out, builder);
  auto bytes = out.getArray();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

// Checks and copies a raw image of `channels` bytes per pixel into `r` (width, height, pixels).
Status ReadRawImage(const char* kind, uint64_t channels, uint32_t width, uint32_t height,
                    capnp::Data::Reader pixels, ClassifyRequest& r) {
  if (width == 0 || height == 0 || width > kMaxImageSide || height > kMaxImageSide) {
    return Status::InvalidArgument(std::string(kind) + " image of " + std::to_string(width) + "x" +
                                   std::to_string(height) + " is empty or larger than the limit");
  }
  const uint64_t expected = uint64_t{width} * height * channels;
  if (pixels.size() != expected) {
    return Status::InvalidArgument(std::string(kind) + " image carries " +
                                   std::to_string(pixels.size()) + " bytes but " +
                                   std::to_string(width) + "x" + std::to_string(height) +
                                   " needs " + std::to_string(expected));
  }
  r.width = width;
  r.height = height;
  r.pixels.assign(reinterpret_cast<const char*>(pixels.begin()), pixels.size());
  return Status::Ok();
}

// Runs `read` on a packed reader over `bytes`, turning kj exceptions into InvalidArgument.
template <typename Root, typename Fn>
auto ReadPacked(std::string_view bytes, const char* what, Fn&& read)
    -> decltype(read(std::declval<typename Root::Reader>())) {
  if (bytes.size() > kMaxMessageBytes) {
    return Status::InvalidArgument(std::string(what) + " of " + std::to_string(bytes.size()) +
                                   " bytes exceeds the limit");
  }
  try {
    kj::ArrayInputStream input(
        kj::arrayPtr(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size()));
    // The result lives in a local until the reader is gone: the reader's destructor can throw
    // (input that does not end on a segment boundary), and a return value already built
    // when a local's destructor throws is leaked by GCC < 13 and Clang < 16 (CWG 2176). The
    // edge_api fuzz target found this as a leak of the error Status on such input.
    std::optional<decltype(read(std::declval<typename Root::Reader>()))> result;
    {
      capnp::PackedMessageReader reader(input, HostileReaderOptions());
      result.emplace(read(reader.getRoot<Root>()));
    }
    return std::move(*result);
  } catch (const kj::Exception& e) {
    return Status::InvalidArgument(std::string("malformed ") + what + ": " +
                                   e.getDescription().cStr());
  }
}

Status CheckVersion(uint16_t version, const char* what) {
  if (version != kProtocolVersion) {
    return Status::VersionMismatch(std::string(what) + " has protocol version " +
                                   std::to_string(version) + "; this build speaks version " +
                                   std::to_string(kProtocolVersion));
  }
  return Status::Ok();
}

}  // namespace

const char* AnswerSourceName(AnswerSource source) {
  switch (source) {
    case AnswerSource::kEdgeExit: return "edge_exit";
    case AnswerSource::kCloud: return "cloud";
    case AnswerSource::kDegraded: return "degraded";
    case AnswerSource::kError: return "error";
  }
  return "unknown";
}

namespace {

void WriteClassifyRequest(const ClassifyRequest& request, schema::ClassifyRequest::Builder root) {
  root.setProtocolVersion(request.protocol_version);
  root.setRequestId(request.request_id);
  root.setDeadlineMs(request.deadline_ms);
  root.setExitThreshold(request.exit_threshold);
  const auto bytes_of = [](const std::string& s) {
    return kj::arrayPtr(reinterpret_cast<const kj::byte*>(s.data()), s.size());
  };
  switch (request.kind) {
    case ImageKind::kPng: root.getImage().setPng(bytes_of(request.png)); break;
    case ImageKind::kJpeg: root.getImage().setJpeg(bytes_of(request.jpeg)); break;
    case ImageKind::kRgb8: {
      auto rgb = root.getImage().initRgb8();
      rgb.setWidth(request.width);
      rgb.setHeight(request.height);
      rgb.setPixels(bytes_of(request.pixels));
      break;
    }
    case ImageKind::kGray8: {
      auto gray = root.getImage().initGray8();
      gray.setWidth(request.width);
      gray.setHeight(request.height);
      gray.setPixels(bytes_of(request.pixels));
      break;
    }
  }
}

void WriteClassifyReply(const ClassifyReply& reply, schema::ClassifyReply::Builder root) {
  root.setProtocolVersion(reply.protocol_version);
  root.setRequestId(reply.request_id);
  switch (reply.source) {
    case AnswerSource::kEdgeExit: root.setSource(schema::AnswerSource::EDGE_EXIT); break;
    case AnswerSource::kCloud: root.setSource(schema::AnswerSource::CLOUD); break;
    case AnswerSource::kDegraded: root.setSource(schema::AnswerSource::DEGRADED); break;
    default: root.setSource(schema::AnswerSource::ERROR); break;
  }
  root.setError(reply.error);
  root.setPredictedClass(reply.predicted_class);
  root.setConfidence(reply.confidence);
  auto scores = root.initScores(static_cast<unsigned>(reply.scores.size()));
  for (size_t i = 0; i < reply.scores.size(); ++i) scores.set(i, reply.scores[i]);
  root.setExitIndex(reply.exit_index);
  root.setWireBytes(reply.wire_bytes);
  root.setEdgeMicros(reply.edge_micros);
  root.setTotalMicros(reply.total_micros);
  root.setClassName(reply.class_name);
  root.setSplit(reply.split);
  root.setExitThreshold(reply.exit_threshold);
  root.setProbe(reply.probe);
}

}  // namespace

namespace {

Result<ClassifyRequest> ReadClassifyRequest(schema::ClassifyRequest::Reader root) {
  ClassifyRequest r;
  r.protocol_version = root.getProtocolVersion();
  CLEAVE_RETURN_IF_ERROR(CheckVersion(r.protocol_version, "classify request"));
  r.request_id = root.getRequestId();
  r.deadline_ms = root.getDeadlineMs();
  r.exit_threshold = root.getExitThreshold();
  if (std::isnan(r.exit_threshold) || r.exit_threshold > 1.0f) {
    return Status::InvalidArgument("exitThreshold must be < 0 (calibrated) or in [0, 1]");
  }
  auto image = root.getImage();
  switch (image.which()) {
    case schema::ClassifyRequest::Image::PNG: {
      auto png = image.getPng();
      if (png.size() == 0) return Status::InvalidArgument("empty png image");
      r.kind = ImageKind::kPng;
      r.png.assign(reinterpret_cast<const char*>(png.begin()), png.size());
      break;
    }
    case schema::ClassifyRequest::Image::JPEG: {
      auto jpeg = image.getJpeg();
      if (jpeg.size() == 0) return Status::InvalidArgument("empty jpeg image");
      r.kind = ImageKind::kJpeg;
      r.jpeg.assign(reinterpret_cast<const char*>(jpeg.begin()), jpeg.size());
      break;
    }
    case schema::ClassifyRequest::Image::GRAY8: {
      auto gray = image.getGray8();
      r.kind = ImageKind::kGray8;
      CLEAVE_RETURN_IF_ERROR(
          ReadRawImage("gray8", 1, gray.getWidth(), gray.getHeight(), gray.getPixels(), r));
      break;
    }
    case schema::ClassifyRequest::Image::RGB8: {
      auto rgb = image.getRgb8();
      r.kind = ImageKind::kRgb8;
      CLEAVE_RETURN_IF_ERROR(
          ReadRawImage("rgb8", 3, rgb.getWidth(), rgb.getHeight(), rgb.getPixels(), r));
      break;
    }
    default: return Status::InvalidArgument("classify request carries an unknown image kind");
  }
  return r;
}

Result<ClassifyReply> ReadClassifyReply(schema::ClassifyReply::Reader root) {
  ClassifyReply r;
  r.protocol_version = root.getProtocolVersion();
  CLEAVE_RETURN_IF_ERROR(CheckVersion(r.protocol_version, "classify reply"));
  r.request_id = root.getRequestId();
  switch (root.getSource()) {
    case schema::AnswerSource::EDGE_EXIT: r.source = AnswerSource::kEdgeExit; break;
    case schema::AnswerSource::CLOUD: r.source = AnswerSource::kCloud; break;
    case schema::AnswerSource::DEGRADED: r.source = AnswerSource::kDegraded; break;
    case schema::AnswerSource::ERROR: r.source = AnswerSource::kError; break;
    default: return Status::InvalidArgument("classify reply has an unknown source");
  }
  r.error = root.getError().cStr();
  r.predicted_class = root.getPredictedClass();
  r.confidence = root.getConfidence();
  auto scores = root.getScores();
  if (scores.size() > 100000) return Status::InvalidArgument("too many scores");
  r.scores.reserve(scores.size());
  for (float s : scores) r.scores.push_back(s);
  r.exit_index = root.getExitIndex();
  r.wire_bytes = root.getWireBytes();
  r.edge_micros = root.getEdgeMicros();
  r.total_micros = root.getTotalMicros();
  r.class_name = root.getClassName().cStr();
  if (r.class_name.size() > 1024) return Status::InvalidArgument("class name too long");
  r.split = root.getSplit();
  r.exit_threshold = root.getExitThreshold();
  r.probe = root.getProbe();
  return r;
}

}  // namespace

std::string EncodeClassifyRequest(const ClassifyRequest& request) {
  capnp::MallocMessageBuilder builder;
  WriteClassifyRequest(request, builder.initRoot<schema::ClassifyRequest>());
  return WritePacked(builder);
}

std::string EncodeClassifyReply(const ClassifyReply& reply) {
  capnp::MallocMessageBuilder builder;
  WriteClassifyReply(reply, builder.initRoot<schema::ClassifyReply>());
  return WritePacked(builder);
}

Result<ClassifyRequest> DecodeClassifyRequest(std::string_view bytes) {
  return ReadPacked<schema::ClassifyRequest>(bytes, "classify request", ReadClassifyRequest);
}

Result<ClassifyReply> DecodeClassifyReply(std::string_view bytes) {
  return ReadPacked<schema::ClassifyReply>(bytes, "classify reply", ReadClassifyReply);
}

uint64_t PeekClassifyRequestId(std::string_view bytes) {
  // A well-formed v2 envelope names its request; anything else is read as a v1 request
  // (whatever its version says, so a version mismatch can still be answered).
  if (Result<LocalRequest> local = DecodeLocalRequest(bytes); local.ok() && local->enveloped) {
    return local->kind == LocalRequest::Kind::kFeedback ? local->feedback.request_id
                                                        : local->classify.request_id;
  }
  auto v1 = ReadPacked<schema::ClassifyRequest>(
      bytes, "classify request",
      [](schema::ClassifyRequest::Reader root) -> Result<uint64_t> { return root.getRequestId(); });
  return v1.ok() ? *v1 : 0;
}

// ---------------------------------------------------------------- protocol version 2

uint16_t PeekProtocolVersion(std::string_view bytes) {
  auto version = ReadPacked<schema::LocalRequest>(
      bytes, "request", [](schema::LocalRequest::Reader root) -> Result<uint16_t> {
        return root.getProtocolVersion();
      });
  return version.ok() ? *version : 0;
}

std::string EncodeEnvelopedClassifyRequest(const ClassifyRequest& request) {
  capnp::MallocMessageBuilder builder;
  auto root = builder.initRoot<schema::LocalRequest>();
  root.setProtocolVersion(kEnvelopeProtocolVersion);
  WriteClassifyRequest(request, root.initClassify());
  return WritePacked(builder);
}

std::string EncodeFeedbackRequest(const FeedbackRequest& request) {
  capnp::MallocMessageBuilder builder;
  auto root = builder.initRoot<schema::LocalRequest>();
  root.setProtocolVersion(kEnvelopeProtocolVersion);
  auto f = root.initFeedback();
  f.setRequestId(request.request_id);
  f.setTrueClass(request.true_class);
  return WritePacked(builder);
}

std::string EncodeLocalReply(const LocalReply& reply) {
  capnp::MallocMessageBuilder builder;
  auto root = builder.initRoot<schema::LocalReply>();
  root.setProtocolVersion(kEnvelopeProtocolVersion);
  if (reply.kind == LocalRequest::Kind::kFeedback) {
    auto f = root.initFeedback();
    f.setRequestId(reply.feedback.request_id);
    f.setAccepted(reply.feedback.accepted);
    f.setError(reply.feedback.error);
  } else {
    WriteClassifyReply(reply.classify, root.initClassify());
  }
  return WritePacked(builder);
}

Result<LocalRequest> DecodeLocalRequest(std::string_view bytes) {
  // Every root message starts with its protocolVersion (data word 0, bits 0-15), so the
  // envelope's reader reads a v1 ClassifyRequest's version too.
  Result<uint16_t> version = ReadPacked<schema::LocalRequest>(
      bytes, "request", [](schema::LocalRequest::Reader root) -> Result<uint16_t> {
        return root.getProtocolVersion();
      });
  if (!version.ok()) return version.status();
  if (*version == kProtocolVersion) {
    LocalRequest r;
    CLEAVE_ASSIGN_OR_RETURN(r.classify, DecodeClassifyRequest(bytes));
    return r;
  }
  if (*version != kEnvelopeProtocolVersion) {
    return Status::VersionMismatch("request has protocol version " + std::to_string(*version) +
                                   "; this build speaks versions 1 and 2");
  }
  return ReadPacked<schema::LocalRequest>(
      bytes, "request", [](schema::LocalRequest::Reader root) -> Result<LocalRequest> {
        LocalRequest r;
        r.enveloped = true;
        switch (root.which()) {
          case schema::LocalRequest::CLASSIFY: {
            CLEAVE_ASSIGN_OR_RETURN(r.classify, ReadClassifyRequest(root.getClassify()));
            return r;
          }
          case schema::LocalRequest::FEEDBACK: {
            auto f = root.getFeedback();
            r.kind = LocalRequest::Kind::kFeedback;
            r.feedback.request_id = f.getRequestId();
            r.feedback.true_class = f.getTrueClass();  // the daemon checks its range
            return r;
          }
          default: return Status::InvalidArgument("request carries an unknown message kind");
        }
      });
}

Result<LocalReply> DecodeLocalReply(std::string_view bytes) {
  return ReadPacked<schema::LocalReply>(
      bytes, "reply", [](schema::LocalReply::Reader root) -> Result<LocalReply> {
        if (root.getProtocolVersion() != kEnvelopeProtocolVersion) {
          return Status::VersionMismatch("reply has protocol version " +
                                         std::to_string(root.getProtocolVersion()) + "; expected " +
                                         std::to_string(kEnvelopeProtocolVersion));
        }
        LocalReply r;
        switch (root.which()) {
          case schema::LocalReply::CLASSIFY: {
            CLEAVE_ASSIGN_OR_RETURN(r.classify, ReadClassifyReply(root.getClassify()));
            return r;
          }
          case schema::LocalReply::FEEDBACK: {
            auto f = root.getFeedback();
            r.kind = LocalRequest::Kind::kFeedback;
            r.feedback.request_id = f.getRequestId();
            r.feedback.accepted = f.getAccepted();
            r.feedback.error = f.getError().cStr();
            if (r.feedback.error.size() > 4096) {
              return Status::InvalidArgument("feedback error text too long");
            }
            return r;
          }
          default: return Status::InvalidArgument("reply carries an unknown message kind");
        }
      });
}

}  // namespace cleave::edge_api
