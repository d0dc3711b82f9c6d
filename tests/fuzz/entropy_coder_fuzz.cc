// libFuzzer target for the entropy coding of quantized features: the model parsers
// (EntropyModel::Parse, EntropyModel::FromJson), the decoder (EntropyDecode) and the
// unpacking of wire tensor data (UnpackSymbols). The first byte % 4 picks a mode:
//   0: the rest is a serialized model (any context kind; per_element_predicted ones carry a
//      predictor). One that parses must serialize to the same bytes and survive the JSON form.
//   1: the rest is JSON text for FromJson. A model that comes out must survive the binary
//      form.
//   2: a u16 length and that many bytes of serialized model (a model that does not parse
//      ends the run), a u16 symbol count, then entropy-coded bytes. A count above the
//      model's element count must be refused; a decode that succeeds must hold `count`
//      symbols of the alphabet whose encoding is exactly the bytes (decoding accepts the
//      encoder's outputs and nothing else; a predicted model's contexts come from the symbols
//      decoded so far, so a decoder that computed them differently would fail this).
//   3: a dtype byte (% 5, so unknown values too), a u16 count, then packed tensor data. Data
//      that unpacks must pack back to itself.
// Little-endian throughout; missing bytes read as 0. tests/fuzz/seed_corpus_main.cc writes
// seed inputs in this layout.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/entropy_coder.h"
#include "common/entropy_model.h"

namespace {

using namespace cleave;

void Require(bool condition) {
  if (!condition) std::abort();
}

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t U16() { return static_cast<uint16_t>(Byte() | (Byte() << 8)); }
  // Up to `size` bytes (fewer when the input ends).
  std::string_view Bytes(size_t size) {
    size = std::min(size, size_ - pos_);
    std::string_view out(reinterpret_cast<const char*>(data_ + pos_), size);
    pos_ += size;
    return out;
  }
  std::string_view Rest() { return Bytes(size_ - pos_); }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

void FuzzModelBytes(std::string_view bytes) {
  auto model = EntropyModel::Parse(bytes);
  if (!model.ok()) return;
  Require(model->Serialize() == bytes);
  auto again = EntropyModel::FromJson(model->ToJson());
  Require(again.ok() && again->Fingerprint() == model->Fingerprint());
  Require(again->Predictor() == model->Predictor());
}

void FuzzModelJson(std::string_view text) {
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return;
  auto model = EntropyModel::FromJson(json);
  if (!model.ok()) return;
  auto again = EntropyModel::Parse(model->Serialize());
  Require(again.ok() && again->Fingerprint() == model->Fingerprint());
}

void FuzzDecode(Reader& in) {
  const uint16_t model_size = in.U16();
  auto model = EntropyModel::Parse(in.Bytes(model_size));
  if (!model.ok()) return;
  const uint16_t count = in.U16();
  const std::string_view bytes = in.Rest();
  auto symbols = EntropyDecode(*model, bytes, count);
  if (count > model->elements()) Require(!symbols.ok());
  if (!symbols.ok()) return;
  Require(symbols->size() == count);
  for (uint8_t s : *symbols) Require(s < model->alphabet());
  auto encoded = EntropyEncode(*model, *symbols);
  Require(encoded.ok() && *encoded == bytes);
}

void FuzzUnpack(Reader& in) {
  const auto dtype = static_cast<wire::DType>(in.Byte() % 5);
  const uint16_t count = in.U16();
  const std::string_view data = in.Rest();
  auto symbols = UnpackSymbols(dtype, data, count);
  if (!symbols.ok()) return;
  auto packed = PackSymbols(dtype, *symbols);
  Require(packed.ok() && *packed == data);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  switch (in.Byte() % 4) {
    case 0: FuzzModelBytes(in.Rest()); break;
    case 1: FuzzModelJson(in.Rest()); break;
    case 2: FuzzDecode(in); break;
    default: FuzzUnpack(in); break;
  }
  return 0;
}
