// Cap'n Proto plumbing shared by the wire codecs of common/ (inference_wire.cc: split inference,
// fl_*.cc: federated learning) and the checkpoint format (federated/checkpoint_format.cc).
// Internal to those codecs: nothing else includes Cap'n Proto types. Everything here is
// thread-safe.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize-packed.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <cstddef>
#include <exception>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "common/tensor.capnp.h"
#include "common/tensor_codec.h"

namespace cleave::wire::capnp_io {

inline size_t WordsFor(size_t bytes) {
  return (bytes + sizeof(capnp::word) - 1) / sizeof(capnp::word);
}

inline capnp::Data::Reader AsData(const std::string& bytes) {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size());
}

// With an explicit size: converting a std::string implicitly would stop at an embedded NUL.
inline capnp::Text::Reader AsText(const std::string& text) {
  return capnp::Text::Reader(text.data(), text.size());
}

inline std::string ToString(capnp::Data::Reader data) {
  return std::string(reinterpret_cast<const char*>(data.begin()), data.size());
}

inline std::string ToString(capnp::Text::Reader text) {
  return std::string(text.begin(), text.size());
}

// Copies a primitive list (capnp 0.9 list iterators are not standard iterators).
template <typename T, typename Reader>
void CopyList(Reader in, std::vector<T>* out) {
  out->clear();
  out->reserve(in.size());
  for (unsigned i = 0; i < in.size(); ++i) out->push_back(in[i]);
}

// VersionMismatch naming `what` unless `version` == `expected`.
inline Status CheckVersion(uint16_t version, uint16_t expected, const char* what,
                           const char* noun = "protocol version") {
  if (version == expected) return Status::Ok();
  return Status::VersionMismatch(std::string(what) + " has " + noun + " " +
                                 std::to_string(version) + " but this build speaks version " +
                                 std::to_string(expected));
}

// The packed encoding of `message` as bytes.
std::string WritePacked(capnp::MessageBuilder& message);
// The same into `out` (replaced; its capacity is reused).
void WritePacked(capnp::MessageBuilder& message, std::string* out);

// A thread's scratch words, lent to one reader or builder at a time so that decoding or
// encoding a small message allocates nothing. While one lease is alive, another on the same
// thread (a nested decode) gets an empty buffer and the caller falls back to allocating.
class ScratchLease {
 public:
  // Words each thread keeps for readers (and, separately, for builders).
  static constexpr size_t kWords = 1024;
  enum class Use { kReader, kBuilder };
  // Builder scratch is zeroed, as MallocMessageBuilder requires; its destructor zeroes again
  // what it used, so the words stay zeroed between leases.
  explicit ScratchLease(Use use);
  ~ScratchLease();
  ScratchLease(const ScratchLease&) = delete;
  ScratchLease& operator=(const ScratchLease&) = delete;

  // Empty when the thread's buffer is already lent out.
  kj::ArrayPtr<capnp::word> words() const { return words_; }

 private:
  bool* lent_ = nullptr;
  kj::ArrayPtr<capnp::word> words_;
};

// Words a tensor needs, generously, so a message stays in one segment.
inline size_t TensorWords(const EncodedTensor& tensor) {
  return 8 + WordsFor(tensor.shape.size() * 4) + WordsFor(tensor.quant.scale.size() * 4) +
         WordsFor(tensor.quant.zero_point.size()) + WordsFor(tensor.data.size());
}

void WriteTensor(const EncodedTensor& tensor, schema::Tensor::Builder out);

// Copies a tensor's fields after checking its rank (errors name `field`). The dtype value is
// copied as is and nothing else is validated: callers run ValidateTensor (or their own rules).
Result<EncodedTensor> ReadTensorFields(schema::Tensor::Reader in, const std::string& field);

// Unpacks `bytes` (at most `max_bytes`, packed and unpacked) and hands a reader to `read`,
// with a traversal limit equal to the unpacked size: every object is read once, so needing
// more is an amplification attempt. The packed reader unpacks into a word-aligned buffer (the
// thread's scratch words when the message fits, see ScratchLease), so `bytes` may sit at any
// alignment. Trailing bytes are an error. Every exception of the Cap'n Proto layer becomes a
// Status naming `what`.
template <typename T, typename ReadFn>
Result<T> WithPackedReader(std::string_view bytes, const char* what, size_t max_bytes,
                           int nesting_limit, ReadFn&& read) {
  if (bytes.empty()) return Status::InvalidArgument(std::string("empty ") + what);
  if (bytes.size() > max_bytes) {
    return Status::InvalidArgument(std::string(what) + " is " + std::to_string(bytes.size()) +
                                   " bytes, more than the limit of " + std::to_string(max_bytes));
  }
  const kj::ArrayPtr<const kj::byte> input(reinterpret_cast<const kj::byte*>(bytes.data()),
                                           bytes.size());
  try {
    const size_t unpacked_words = capnp::computeUnpackedSizeInWords(input);
    if (unpacked_words > max_bytes / sizeof(capnp::word)) {
      return Status::InvalidArgument(std::string(what) + " unpacks to " +
                                     std::to_string(unpacked_words * sizeof(capnp::word)) +
                                     " bytes, more than the limit of " + std::to_string(max_bytes));
    }
    capnp::ReaderOptions options;
    // Every word once, plus a little for readers that look at the root twice (a version
    // peek before the real decode): still no amplification beyond the message's own size.
    options.traversalLimitInWords = unpacked_words + 64;
    options.nestingLimit = nesting_limit;
    kj::ArrayInputStream stream(input);
    std::optional<Result<T>> result;
    {
      // The reader may load later segments lazily, up to its destruction.
      const ScratchLease scratch(ScratchLease::Use::kReader);
      capnp::PackedMessageReader message(stream, options, scratch.words());
      result.emplace(read(message));
    }
    const size_t trailing = stream.tryGetReadBuffer().size();
    if (result->ok() && trailing != 0) {
      return Status::InvalidArgument(std::string(what) + " has " + std::to_string(trailing) +
                                     " trailing bytes after the message");
    }
    return std::move(*result);
  } catch (const kj::Exception& e) {
    return Status::InvalidArgument(std::string("malformed ") + what + ": " +
                                   e.getDescription().cStr());
  } catch (const std::bad_alloc&) {
    return Status::ResourceExhausted(std::string("out of memory decoding ") + what);
  } catch (const std::exception& e) {
    return Status::InvalidArgument(std::string("malformed ") + what + ": " + e.what());
  }
}

}  // namespace cleave::wire::capnp_io
