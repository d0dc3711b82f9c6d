#include "common/entropy_coder.h"

namespace cleave {
namespace {

// ---- The range coder ----
//
// The state is an interval [low, low + range) of the 32-bit window that follows the bytes
// already written; the window's value is a fraction of the last written byte's unit. Symbol
// s of a table with cumulative frequencies cum narrows it to
// [low + r * cum[s], low + r * cum[s + 1]) with r = range >> precision (the sliver
// range - r * 2^precision codes nothing; it costs < log2(1 + 2^-8) bits a symbol). Whenever
// range drops below 2^24 the window's top byte is final up to a carry and is written.

constexpr uint64_t kRangeCoderFull = uint64_t{1} << 32;    // the window: all of [0, 1)
constexpr uint64_t kRangeCoderBottom = uint64_t{1} << 24;  // renormalise below this
constexpr uint64_t kRangeCoderMask = kRangeCoderFull - 1;

// The minimal termination's last word: the value in [low, low + range) with the most trailing
// zero bits, so that the fewest bytes (trailing zeros are dropped) pin the final interval. It
// can be 2^32 or more (a carry into the bytes written).
uint64_t RangeCoderMinimalValue(uint64_t low, uint64_t range) {
  for (int bits = 32; bits > 0; --bits) {
    const uint64_t step = uint64_t{1} << bits;
    const uint64_t value = (low + step - 1) & ~(step - 1);
    if (value < low + range) return value;
  }
  return low;
}

// The prefix-free termination's last bytes: the fewest whole bytes (0 to 2, as range >= 2^24)
// such that every continuation of them lies in [low, low + range): the top `bytes` bytes of
// `value` (which can be 2^32 or more, a carry).
struct RangeCoderTail {
  uint64_t value;
  int bytes;
};
RangeCoderTail RangeCoderPrefixFreeTail(uint64_t low, uint64_t range) {
  for (int bytes = 0; bytes < 4; ++bytes) {
    const uint64_t step = uint64_t{1} << (32 - 8 * bytes);
    const uint64_t value = (low + step - 1) & ~(step - 1);
    if (value + step <= low + range) return {value, bytes};
  }
  return {low, 4};
}

class RangeEncoder {
 public:
  // Appends to `out`, which must start empty (a carry may rewrite any byte of it).
  explicit RangeEncoder(std::string* out) : out_(out) {}

  void Encode(uint32_t start, uint32_t size, uint32_t precision) {
    const uint64_t r = range_ >> precision;
    low_ += r * start;
    range_ = r * size;
    if (low_ >= kRangeCoderFull) {
      PropagateCarry();
      low_ -= kRangeCoderFull;
    }
    while (range_ < kRangeCoderBottom) {
      out_->push_back(static_cast<char>(low_ >> 24));
      low_ = (low_ << 8) & kRangeCoderMask;
      range_ <<= 8;
    }
  }

  // Writes the tail `termination` asks for (see the header).
  void Finish(EntropyTermination termination) {
    if (termination == EntropyTermination::kPrefixFree) {
      RangeCoderTail tail = RangeCoderPrefixFreeTail(low_, range_);
      if (tail.value >= kRangeCoderFull) {
        PropagateCarry();
        tail.value -= kRangeCoderFull;
      }
      for (int i = 0; i < tail.bytes; ++i) {
        out_->push_back(static_cast<char>(tail.value >> (24 - 8 * i)));
      }
      return;
    }
    uint64_t value = RangeCoderMinimalValue(low_, range_);
    if (value >= kRangeCoderFull) {
      PropagateCarry();
      value -= kRangeCoderFull;
    }
    for (int shift = 24; shift >= 0; shift -= 8) out_->push_back(static_cast<char>(value >> shift));
    while (!out_->empty() && out_->back() == '\0') out_->pop_back();
  }

 private:
  // Adds one to the bytes written as a big-endian number. A carry never passes the first
  // byte: every interval lies inside the initial [0, 1). Amortised O(1): a byte turns from
  // 0xFF to 0x00 at most once.
  void PropagateCarry() {
    for (size_t i = out_->size(); i-- > 0;) {
      const auto byte = static_cast<uint8_t>((*out_)[i]);
      (*out_)[i] = static_cast<char>(byte + 1);
      if (byte != 0xFF) return;
    }
  }

  std::string* out_;
  uint64_t low_ = 0;
  uint64_t range_ = kRangeCoderFull;
};

// Mirrors RangeEncoder: code is the input's window value minus low, and low is tracked as
// the encoder tracks it (modulo 2^32) so that the termination can be checked. Reads zero
// bytes past the end of the input.
class RangeDecoder {
 public:
  explicit RangeDecoder(std::string_view bytes)
      : data_(reinterpret_cast<const uint8_t*>(bytes.data())), size_(bytes.size()) {
    for (int i = 0; i < 4; ++i) code_ = (code_ << 8) | NextByte();
  }

  // The symbol whose slot holds the code, or -1 when the code lies in the sliver of the range
  // that codes nothing (bytes no encoder wrote).
  int Decode(const uint32_t* cumulative, uint32_t alphabet, uint32_t precision) {
    // code < range <= 2^32 and r < 2^24, so 32-bit division suffices.
    const auto r = static_cast<uint32_t>(range_ >> precision);
    const uint32_t target = static_cast<uint32_t>(code_) / r;
    if ((target >> precision) != 0) return -1;
    uint32_t lo = 0;  // cumulative[lo] <= target < cumulative[hi]
    uint32_t hi = alphabet;
    while (hi - lo > 1) {
      const uint32_t mid = (lo + hi) / 2;
      if (cumulative[mid] <= target) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    const uint64_t start = uint64_t{r} * cumulative[lo];
    code_ -= start;
    low_ = (low_ + start) & kRangeCoderMask;
    range_ = uint64_t{r} * (cumulative[lo + 1] - cumulative[lo]);
    while (range_ < kRangeCoderBottom) {
      code_ = (code_ << 8) | NextByte();
      low_ = (low_ << 8) & kRangeCoderMask;
      range_ <<= 8;
    }
    return static_cast<int>(lo);
  }

  // Whether the input is exactly the encoder's output for what was decoded.
  Status CheckTermination(EntropyTermination termination) const {
    const size_t written = pos_ - 4;  // bytes the encoder wrote before its tail
    if (termination == EntropyTermination::kPrefixFree) {
      // The tail's bytes and nothing else, and the window (zeros past them) holds its value.
      const RangeCoderTail tail = RangeCoderPrefixFreeTail(low_, range_);
      const size_t expected = written + static_cast<size_t>(tail.bytes);
      if (size_ < expected) {
        return Status::InvalidArgument("entropy-coded data is truncated: " + std::to_string(size_) +
                                       " bytes, its symbols take " + std::to_string(expected));
      }
      if (size_ > expected) {
        return Status::InvalidArgument("entropy-coded data has " +
                                       std::to_string(size_ - expected) +
                                       " bytes after the end of the encoding");
      }
      if (low_ + code_ != tail.value) return NotTheEncoding();
      return Status::Ok();
    }
    // Minimal: no zero byte at the end (the encoder drops them), every byte was read into the
    // window, and the window (zeros past the end) holds the final value.
    if (size_ > 0 && data_[size_ - 1] == 0) {
      return Status::InvalidArgument(
          "entropy-coded data ends in a zero byte, which the encoder never writes");
    }
    if (pos_ < size_) {
      return Status::InvalidArgument("entropy-coded data has " + std::to_string(size_ - pos_) +
                                     " bytes after the end of the encoding");
    }
    if (low_ + code_ != RangeCoderMinimalValue(low_, range_)) return NotTheEncoding();
    return Status::Ok();
  }

 private:
  static Status NotTheEncoding() {
    return Status::InvalidArgument(
        "entropy-coded data does not end where its last symbol's interval does (truncated, "
        "corrupt or coded with another model)");
  }
  uint64_t NextByte() { return pos_ < size_ ? data_[pos_++] : (++pos_, 0); }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  uint64_t code_ = 0;
  uint64_t low_ = 0;
  uint64_t range_ = kRangeCoderFull;
};

// Walks the elements of a sample in order, keeping track of the table that codes each.
// `symbols` is the sample being coded; the table of element i depends on symbols[0..i) only
// (kPerElementPredicted), so a decoder passes the buffer it decodes into.
class EntropyContextCursor {
 public:
  EntropyContextCursor(const EntropyModel& model, const uint8_t* symbols)
      : model_(model),
        symbols_(symbols),
        predicted_(model.kind() == ContextKind::kPerElementPredicted),
        run_length_(model.kind() == ContextKind::kPerChannel ? model.elements() / model.channels()
                    : model.kind() == ContextKind::kShared   ? model.elements()
                                                             : 1) {}

  const uint32_t* cumulative() const {
    return model_.Cumulative(predicted_ ? model_.TableOf(element_, symbols_) : table_);
  }
  void Next() {
    ++element_;
    if (++run_ == run_length_) {
      run_ = 0;
      ++table_;
    }
  }

 private:
  const EntropyModel& model_;
  const uint8_t* symbols_;
  const bool predicted_;
  const uint32_t run_length_;
  uint32_t run_ = 0;
  uint32_t table_ = 0;
  uint32_t element_ = 0;
};

}  // namespace

// ---- Coding ----

Result<std::string> EntropyEncode(const EntropyModel& model, const uint8_t* symbols, size_t count) {
  if (count > model.elements()) {
    return Status::InvalidArgument("cannot entropy-code " + std::to_string(count) +
                                   " symbols with a model of " + std::to_string(model.elements()) +
                                   " elements");
  }
  const uint32_t alphabet = model.alphabet();
  const uint32_t precision = model.precision();
  std::string out;
  // Each symbol narrows the range by at most 2^precision * (1 + 2^-8): one allocation.
  out.reserve(count * (precision + 1) / 8 + 8);
  RangeEncoder encoder(&out);
  EntropyContextCursor context(model, symbols);
  for (size_t i = 0; i < count; ++i, context.Next()) {
    const uint8_t symbol = symbols[i];
    if (symbol >= alphabet) {
      return Status::InvalidArgument("symbol " + std::to_string(symbol) + " at element " +
                                     std::to_string(i) + " is outside the model's alphabet of " +
                                     std::to_string(alphabet));
    }
    const uint32_t* cumulative = context.cumulative();
    encoder.Encode(cumulative[symbol], cumulative[symbol + 1] - cumulative[symbol], precision);
  }
  encoder.Finish(model.termination());
  return out;
}

Result<std::string> EntropyEncode(const EntropyModel& model, const std::vector<uint8_t>& symbols) {
  return EntropyEncode(model, symbols.data(), symbols.size());
}

Result<std::vector<uint8_t>> EntropyDecode(const EntropyModel& model, std::string_view bytes,
                                           size_t count) {
  if (count > model.elements()) {
    return Status::InvalidArgument("cannot entropy-decode " + std::to_string(count) +
                                   " symbols with a model of " + std::to_string(model.elements()) +
                                   " elements");
  }
  std::vector<uint8_t> symbols(count);
  RangeDecoder decoder(bytes);
  EntropyContextCursor context(model, symbols.data());
  for (size_t i = 0; i < count; ++i, context.Next()) {
    const int symbol = decoder.Decode(context.cumulative(), model.alphabet(), model.precision());
    if (symbol < 0) {
      return Status::InvalidArgument("entropy-coded data is invalid at element " +
                                     std::to_string(i) +
                                     " (a value no encoder writes; corrupt or another model)");
    }
    symbols[i] = static_cast<uint8_t>(symbol);
  }
  CLEAVE_RETURN_IF_ERROR(decoder.CheckTermination(model.termination()));
  return symbols;
}

// ---- Quantized wire tensors <-> symbols ----

uint32_t SymbolAlphabet(wire::DType dtype) {
  switch (dtype) {
    case wire::DType::kUInt8: return 256;
    case wire::DType::kUInt4: return 16;
    default: return 0;
  }
}

Result<std::vector<uint8_t>> UnpackSymbols(wire::DType dtype, std::string_view data,
                                           uint64_t count) {
  if (SymbolAlphabet(dtype) == 0) {
    return Status::InvalidArgument(std::string("only u8 and u4 tensors hold symbols, not ") +
                                   wire::DTypeName(dtype));
  }
  if (count > wire::kMaxTensorElements) {
    return Status::InvalidArgument(std::to_string(count) +
                                   " symbols exceed the tensor element limit of " +
                                   std::to_string(wire::kMaxTensorElements));
  }
  if (data.size() != wire::PackedByteSize(dtype, count)) {
    return Status::InvalidArgument(std::to_string(count) + " " + wire::DTypeName(dtype) +
                                   " values take " +
                                   std::to_string(wire::PackedByteSize(dtype, count)) +
                                   " bytes, got " + std::to_string(data.size()));
  }
  const auto* bytes = reinterpret_cast<const uint8_t*>(data.data());
  if (dtype == wire::DType::kUInt8) return std::vector<uint8_t>(bytes, bytes + count);
  if (count % 2 == 1 && (bytes[count / 2] >> 4) != 0) {
    return Status::InvalidArgument(
        "u4 padding nibble (high half of the last byte) must be zero, got " +
        std::to_string(bytes[count / 2] >> 4));
  }
  std::vector<uint8_t> symbols(count);
  for (uint64_t i = 0; i < count; ++i) {
    symbols[i] = (i % 2 == 0) ? (bytes[i / 2] & 0x0F) : (bytes[i / 2] >> 4);
  }
  return symbols;
}

Result<std::string> PackSymbols(wire::DType dtype, const uint8_t* symbols, size_t count) {
  const uint32_t alphabet = SymbolAlphabet(dtype);
  if (alphabet == 0) {
    return Status::InvalidArgument(std::string("only u8 and u4 tensors hold symbols, not ") +
                                   wire::DTypeName(dtype));
  }
  std::string data(wire::PackedByteSize(dtype, count), '\0');
  for (size_t i = 0; i < count; ++i) {
    if (symbols[i] >= alphabet) {
      return Status::InvalidArgument("symbol " + std::to_string(symbols[i]) + " at element " +
                                     std::to_string(i) + " does not fit in " +
                                     wire::DTypeName(dtype));
    }
    if (dtype == wire::DType::kUInt8) {
      data[i] = static_cast<char>(symbols[i]);
    } else {
      data[i / 2] =
          static_cast<char>(static_cast<uint8_t>(data[i / 2]) | (symbols[i] << ((i % 2) * 4)));
    }
  }
  return data;
}

Result<std::string> PackSymbols(wire::DType dtype, const std::vector<uint8_t>& symbols) {
  return PackSymbols(dtype, symbols.data(), symbols.size());
}

}  // namespace cleave
