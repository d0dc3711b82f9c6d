// The framing of the stdin stream source (edge/frame_source.h): each frame is a 4-byte
// little-endian length, then that many bytes. LengthPrefixedSplitter is the decoder alone -
// bytes in, frames out, no I/O - so it can be fuzzed (tests/fuzz/stream_framing_fuzz.cc) and
// fed by any reader in chunks of any size.
//
// Hostile input: a length over the cap is reported as oversized and its bytes are discarded
// as they arrive (never buffered); a length that is really the start of a bare PNG or JPEG
// (input that is not framed at all) is an error, since nothing after it can be trusted.
// Memory stays below max_frame_bytes + one fed chunk + 4. Not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace cleave::edge {

class LengthPrefixedSplitter {
 public:
  explicit LengthPrefixedSplitter(uint64_t max_frame_bytes) : max_frame_bytes_(max_frame_bytes) {}

  // Appends bytes read from the stream.
  void Feed(std::string_view bytes);

  struct Piece {
    enum class Kind : uint8_t { kNeedMore, kFrame, kOversized } kind = Kind::kNeedMore;
    std::string bytes;    // kFrame: the frame (may be empty: a zero length)
    uint64_t length = 0;  // kFrame, kOversized: the length prefix
  };
  // The next frame, or kOversized (its bytes are skipped from here on), or kNeedMore.
  // InvalidArgument when the stream is not length-prefixed (it starts a frame with a PNG or
  // JPEG signature); the splitter is then of no further use.
  Result<Piece> Next();

  // Bytes of an incomplete frame (prefix included) buffered or still to be skipped: at the
  // end of the stream, > 0 means it ended inside a frame (0 when inside a skipped one).
  uint64_t buffered() const { return buffer_.size() - start_; }
  bool skipping() const { return skip_ > 0; }

 private:
  uint64_t max_frame_bytes_;
  std::string buffer_;  // bytes read; from start_ on not yet returned (a frame's prefix first)
  size_t start_ = 0;
  uint64_t skip_ = 0;  // bytes of an oversized frame still to discard
};

}  // namespace cleave::edge
