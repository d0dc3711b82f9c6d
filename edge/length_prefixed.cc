#include "edge/length_prefixed.h"

#include <algorithm>
#include <cstring>

namespace cleave::edge {

void LengthPrefixedSplitter::Feed(std::string_view bytes) {
  const size_t skipped = static_cast<size_t>(std::min<uint64_t>(skip_, bytes.size()));
  skip_ -= skipped;
  // Bytes already returned go first, so many small frames cost one move per chunk.
  buffer_.erase(0, start_);
  start_ = 0;
  buffer_.append(bytes.data() + skipped, bytes.size() - skipped);
}

Result<LengthPrefixedSplitter::Piece> LengthPrefixedSplitter::Next() {
  Piece piece;
  if (skip_ > 0 || buffered() < 4) return piece;
  const auto* b = reinterpret_cast<const unsigned char*>(buffer_.data() + start_);
  const uint32_t length =
      uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
  piece.length = length;
  if (length > max_frame_bytes_) {
    if (std::memcmp(b, "\x89PNG", 4) == 0 || std::memcmp(b, "\xff\xd8\xff", 3) == 0) {
      return Status::InvalidArgument(
          "not length-prefixed: it holds a bare PNG or JPEG; write each frame as a 4-byte "
          "little-endian length followed by that many bytes");
    }
    const uint64_t have = std::min<uint64_t>(buffered() - 4, length);
    skip_ = length - have;
    start_ += 4 + static_cast<size_t>(have);
    piece.kind = Piece::Kind::kOversized;
    return piece;
  }
  if (buffered() - 4 < length) return piece;
  piece.kind = Piece::Kind::kFrame;
  piece.bytes = buffer_.substr(start_ + 4, length);
  start_ += 4 + size_t{length};
  return piece;
}

}  // namespace cleave::edge
