// libFuzzer target for the split-inference wire decoders: DecodeInferRequest (versions 1 and
// 2), PeekInferRequest (what it reads agrees with the full decode), DecodeInferReply,
// PeekRequestId, and what the cloud does next with a decoded request
// (DecodeTensor on version 1 features, DecodeRequestFeatures with a bundle-like layout -
// packed, and entropy-coded - on version 2 features, DecodePng on a raw image). Anything that
// decodes must survive an encode/decode round trip unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "common/entropy_model.h"
#include "common/feature_coding.h"
#include "common/inference_wire.h"
#include "common/png_image.h"

namespace {

using namespace cleave::wire;

void Require(bool condition) {
  if (!condition) std::abort();
}

bool SameFloats(const std::vector<float>& a, const std::vector<float>& b) {
  // Bitwise, so that -0.0 and 0.0 count as different.
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// u4 [2,7,7] like the default bundle's deployment split, with a per-channel entropy model
// (uniform tables: every symbol sequence is codable).
const FeatureLayout& CodedLayout() {
  static const FeatureLayout layout = [] {
    FeatureLayout l;
    l.dtype = DType::kUInt4;
    l.shape = {2, 7, 7};
    l.quant.scale = {0.25f, 0.5f};
    l.quant.zero_point = {3, 8};
    auto model = cleave::EntropyModel::Create(16, 12, cleave::ContextKind::kPerChannel, 2, 98,
                                              std::vector<uint32_t>(32, 256));
    Require(model.ok());
    l.entropy = std::make_shared<const cleave::EntropyModel>(std::move(model).value());
    return l;
  }();
  return layout;
}

void CheckRequest(std::string_view bytes) {
  // The cloud's admission reads the header only (any bytes: no crash); whatever decodes in full
  // must peek to the same fields.
  auto header = PeekInferRequest(bytes);
  auto request = DecodeInferRequest(bytes);
  if (!request.ok()) return;
  Require(header.ok());
  Require(header->protocol_version == request->protocol_version &&
          header->request_id == request->request_id &&
          header->deadline_ms == request->deadline_ms && header->input == request->input &&
          header->split == request->split && header->layout_tag == request->layout_tag);
  Require(PeekRequestId(bytes) == request->request_id);
  if (request->input == InputKind::kFeatures) {
    auto values = DecodeTensor(request->features);
    Require(values.ok());  // the decoder already validated the tensor
  } else if (request->input == InputKind::kPng) {
    (void)cleave::DecodePng(request->png);
  } else {
    auto values = DecodeRequestFeatures(*request, CodedLayout());
    if (values.ok()) Require(values->size() == 98);
    (void)DecodeRequestFeatures(*request, PackedLayout(CodedLayout()));
  }
  auto again = DecodeInferRequest(EncodeInferRequest(*request));
  Require(again.ok());
  Require(again->protocol_version == request->protocol_version && again->split == request->split &&
          again->layout_tag == request->layout_tag && again->coded == request->coded);
  Require(again->request_id == request->request_id && again->model == request->model &&
          again->deadline_ms == request->deadline_ms && again->input == request->input &&
          again->png == request->png && again->features.data == request->features.data &&
          again->features.shape == request->features.shape &&
          SameFloats(again->features.quant.scale, request->features.quant.scale) &&
          again->features.quant.zero_point == request->features.quant.zero_point);
}

void CheckReply(std::string_view bytes) {
  auto reply = DecodeInferReply(bytes);
  if (!reply.ok()) return;
  Require(PeekRequestId(bytes) == reply->request_id);
  auto again = DecodeInferReply(EncodeInferReply(*reply));
  Require(again.ok());
  Require(again->request_id == reply->request_id && again->status == reply->status &&
          again->error == reply->error && SameFloats(again->scores, reply->scores) &&
          again->num_classes == reply->num_classes && again->batch_size == reply->batch_size &&
          again->queue_us == reply->queue_us && again->compute_us == reply->compute_us);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  CheckRequest(bytes);
  CheckReply(bytes);
  (void)PeekRequestId(bytes);
  // Raw images reach the cloud inside requests; fuzz the PNG decoder directly as well.
  (void)cleave::DecodePng(bytes);
  return 0;
}
