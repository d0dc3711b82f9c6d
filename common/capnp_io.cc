#include "common/capnp_io.h"

#include <memory>

namespace cleave::wire::capnp_io {
namespace {

// Appends everything written to a std::string (writePackedMessage buffers in front of it).
class StringOutputStream final : public kj::OutputStream {
 public:
  explicit StringOutputStream(std::string* out) : out_(out) {}
  void write(const void* buffer, size_t size) override {
    out_->append(static_cast<const char*>(buffer), size);
  }

 private:
  std::string* out_;
};

// One thread's scratch words (allocated on first use) and whether they are lent out.
struct ThreadScratch {
  std::unique_ptr<capnp::word[]> words;
  bool lent = false;
};

}  // namespace

ScratchLease::ScratchLease(Use use) {
  thread_local ThreadScratch reader, builder;
  ThreadScratch& scratch = use == Use::kReader ? reader : builder;
  if (scratch.lent) return;
  // Value-initialized: zeroed, as builders need (readers do not care).
  if (!scratch.words) scratch.words = std::make_unique<capnp::word[]>(kWords);
  scratch.lent = true;
  lent_ = &scratch.lent;
  words_ = kj::arrayPtr(scratch.words.get(), kWords);
}

ScratchLease::~ScratchLease() {
  if (lent_ != nullptr) *lent_ = false;
}

std::string WritePacked(capnp::MessageBuilder& message) {
  std::string out;
  WritePacked(message, &out);
  return out;
}

void WritePacked(capnp::MessageBuilder& message, std::string* out) {
  out->clear();
  StringOutputStream stream(out);
  capnp::writePackedMessage(stream, message);
}

void WriteTensor(const EncodedTensor& tensor, schema::Tensor::Builder out) {
  out.setDtype(static_cast<schema::Tensor::DType>(tensor.dtype));
  if (!tensor.shape.empty()) {
    auto shape = out.initShape(static_cast<unsigned>(tensor.shape.size()));
    for (unsigned i = 0; i < shape.size(); ++i) shape.set(i, tensor.shape[i]);
  }
  out.setChannelAxis(tensor.channel_axis);
  if (!tensor.quant.scale.empty()) {
    auto scale = out.initScale(static_cast<unsigned>(tensor.quant.scale.size()));
    for (unsigned i = 0; i < scale.size(); ++i) scale.set(i, tensor.quant.scale[i]);
  }
  if (!tensor.quant.zero_point.empty()) {
    auto zero_point = out.initZeroPoint(static_cast<unsigned>(tensor.quant.zero_point.size()));
    for (unsigned i = 0; i < zero_point.size(); ++i) zero_point.set(i, tensor.quant.zero_point[i]);
  }
  if (!tensor.data.empty()) out.setData(AsData(tensor.data));
}

Result<EncodedTensor> ReadTensorFields(schema::Tensor::Reader in, const std::string& field) {
  EncodedTensor out;
  out.dtype = static_cast<DType>(in.getDtype());
  const auto shape = in.getShape();
  if (shape.size() > kMaxTensorRank) {
    return Status::InvalidArgument(field + ": tensor rank " + std::to_string(shape.size()) +
                                   " exceeds the limit of " + std::to_string(kMaxTensorRank));
  }
  CopyList(shape, &out.shape);
  out.channel_axis = in.getChannelAxis();
  CopyList(in.getScale(), &out.quant.scale);
  CopyList(in.getZeroPoint(), &out.quant.zero_point);
  out.data = ToString(in.getData());
  return out;
}

}  // namespace cleave::wire::capnp_io
