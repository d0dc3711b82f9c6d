// Lossless entropy coding of quantized bottleneck features with an EntropyModel
// (common/entropy_model.h): a range coder with a short termination, a decoder that treats
// its bytes as hostile, and the conversion from and to the packed u4/u8 data of a wire
// tensor.
//
// The coder (why not rANS). Messages are ~40-60 bytes, so what the coder spends beyond the
// information content -log2 P(symbols) matters byte by byte. This is a range coder (G. N. N.
// Martin, "Range encoding", 1979, in the carry-propagating form of M. Schindler, "A fast
// renormalisation for arithmetic-like coding", DCC 1998): 32-bit range, byte-wise output,
// renormalised below 2^24. Carries propagate into the bytes already written (never past the
// first: every interval lies inside [0, 1)), so no range is cut as in Subbotin's carry-less
// coder. What matters is the end. A 32-bit rANS coder must write its whole final state and
// starts from a state of 2^23; a range coder's usual flush writes 4 bytes of `low`. Both cost
// ~3.5 bytes a message above the information content (measured on 98-symbol u4 messages
// like the [2,7,7] bottleneck's). Here the encoder instead ends with the fewest bytes that pin
// the final interval, in one of two ways (EntropyTermination, a property of the model):
//
//   prefix_free (default)  the fewest whole bytes (0-2) every continuation of which lies in
//                          the final interval: 0.57 bytes above the information content on
//                          average, 1.11 at worst. No valid encoding is a prefix of another.
//   minimal                the shortest bytes that, continued by zero bytes (the decoder
//                          reads zeros past the end), lie in the final interval, trailing
//                          zeros dropped: 0.32 bytes on average, 0.99 at worst.
//
// (EntropyCoderTest.TerminationOverheadIsAboutOneByteAtMost prints these figures.) Encoding
// or decoding 98 symbols takes ~0.5 / ~1.4 us on one core with per-element tables, ~2.2 /
// ~2.9 us with per_element_predicted ones of 32 taps an element (the context costs a dot
// product per symbol).
//
// What a decoder can check. Decoding recomputes the encoder's termination and accepts bytes
// only if they are exactly what EntropyEncode writes for the symbols decoded (valid
// encodings and symbol sequences correspond one to one); any other bytes, including a value
// in the sliver of range that frequency rounding leaves unused, are InvalidArgument.
//   - Prefix-free: every truncation and every extension of a valid encoding is refused,
//     since no valid encoding is a prefix of another. Decoding with another model's tables
//     is refused for ~98% of messages (the decoded symbols rarely end exactly where the
//     bytes do) and otherwise yields other symbols without complaint.
//   - Minimal: the shortest code uses the byte length the framing carries as information,
//     so it has no redundancy left to detect damage: in the test, 99.6% of truncations and
//     3% of one-byte extensions are the valid encoding of other symbols and decode to them,
//     and another model's tables are refused for only ~48% of messages.
// Either way the wrong tables can decode *something* without complaint, so agreement on
// the model is the fingerprint's job: peers compare EntropyModel::Fingerprint()
// (shipped with the model) before trusting a decode. Integrity of the bytes themselves is
// the transport's (Cap'n Proto framing carries the exact length; CurveZMQ authenticates).
//
// Everything here is pure and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/entropy_model.h"
#include "common/status.h"
#include "common/tensor_codec.h"

namespace cleave {

// ---- Coding ----

// Codes symbols[0..count), element i with table TableOf(i, symbols) (for
// kPerElementPredicted a function of symbols[0..i), which the decoder has decoded by then).
// InvalidArgument when count > model.elements() or a symbol is >= model.alphabet(). One
// output allocation per call, none per symbol. Symbols the model finds unlikely cost more
// than their packed size (up to ~precision bits each), so a caller that must never expand a
// message compares the result with the packed data and sends whichever is shorter, with a
// flag.
Result<std::string> EntropyEncode(const EntropyModel& model, const uint8_t* symbols, size_t count);
Result<std::string> EntropyEncode(const EntropyModel& model, const std::vector<uint8_t>& symbols);

// Decodes `count` symbols from `bytes` (hostile). Succeeds exactly when `bytes` is what
// EntropyEncode writes for the result (see the file comment for what that can and cannot
// catch); InvalidArgument otherwise, and for count > model.elements(). Work is O(count)
// whatever `bytes` holds.
Result<std::vector<uint8_t>> EntropyDecode(const EntropyModel& model, std::string_view bytes,
                                           size_t count);

// ---- Quantized wire tensors <-> symbols ----

// Symbols of a quantized dtype: 16 for u4, 256 for u8, 0 for f32/f16.
uint32_t SymbolAlphabet(wire::DType dtype);

// The `count` values of EncodedTensor::data (`data`, of u8 or u4 `dtype`) as one symbol a
// byte. InvalidArgument for another dtype, count above wire::kMaxTensorElements, a data size
// other than wire::PackedByteSize(dtype, count), or (u4, odd count) a non-zero padding nibble,
// so PackSymbols gives `data` back.
Result<std::vector<uint8_t>> UnpackSymbols(wire::DType dtype, std::string_view data,
                                           uint64_t count);
// The inverse: u8 one byte a symbol; u4 two a byte, low nibble first, an odd count's last
// high nibble zero. InvalidArgument for another dtype or a symbol >= SymbolAlphabet(dtype).
Result<std::string> PackSymbols(wire::DType dtype, const uint8_t* symbols, size_t count);
Result<std::string> PackSymbols(wire::DType dtype, const std::vector<uint8_t>& symbols);

}  // namespace cleave
