// libFuzzer target for the framing of cleave-edge's stdin stream source
// (edge/length_prefixed.h: a 4-byte little-endian length, then that many bytes). The first
// input byte chooses how the rest is cut into reads; the splitter must give the same frames
// whatever the cut, never a frame over its cap, and account for every byte it was fed.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "edge/length_prefixed.h"

namespace {

using cleave::edge::LengthPrefixedSplitter;
using Kind = LengthPrefixedSplitter::Piece::Kind;

constexpr uint64_t kFuzzMaxFrame = 256;

void Require(bool condition) {
  if (!condition) std::abort();
}

struct Split {
  std::vector<std::pair<Kind, std::string>> pieces;  // frames' bytes; "" for oversized
  std::vector<uint64_t> lengths;
  bool failed = false;
  uint64_t buffered = 0;
  bool skipping = false;
  bool operator==(const Split& o) const {
    // After a failure what was fed beyond it depends on the cut; nothing else may.
    return pieces == o.pieces && lengths == o.lengths && failed == o.failed &&
           (failed || (buffered == o.buffered && skipping == o.skipping));
  }
};

Split SplitInChunks(std::string_view input, size_t chunk) {
  LengthPrefixedSplitter splitter(kFuzzMaxFrame);
  Split out;
  for (size_t at = 0; at <= input.size() && !out.failed; at += chunk) {
    if (at < input.size()) splitter.Feed(input.substr(at, chunk));
    while (true) {
      auto piece = splitter.Next();
      if (!piece.ok()) {
        out.failed = true;
        break;
      }
      if (piece->kind == Kind::kNeedMore) break;
      Require(piece->kind != Kind::kFrame || piece->bytes.size() == piece->length);
      Require(piece->kind == Kind::kFrame ? piece->length <= kFuzzMaxFrame
                                          : piece->length > kFuzzMaxFrame);
      out.pieces.emplace_back(piece->kind, piece->bytes);
      out.lengths.push_back(piece->length);
    }
    if (at == input.size()) break;
  }
  out.buffered = splitter.buffered();
  out.skipping = splitter.skipping();
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t chunk = 1 + data[0] % 64;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  const Split whole = SplitInChunks(input, input.size() + 1);
  const Split cut = SplitInChunks(input, chunk);
  Require(whole == cut);
  if (!whole.failed && !whole.skipping) {
    // Every byte is in a returned piece (prefix included) or still buffered.
    uint64_t consumed = whole.buffered;
    for (uint64_t length : whole.lengths) consumed += 4 + length;
    Require(consumed == input.size());
  }
  return 0;
}
