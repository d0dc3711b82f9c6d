#include "federated/weights.h"

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>

#include "split/torch_status.h"

namespace cleave::federated {
namespace {

using json = nlohmann::json;

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// Product of `shape`, or -1 when it overflows int64 or a dimension is negative.
int64_t CheckedNumel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return -1;
    n *= d;
  }
  return n;
}

// Calls `fn(name, tensor)` for every exchanged tensor of `module`, in layout order.
template <typename Fn>
void ForEachExchanged(torch::nn::Module& module, Fn&& fn) {
  for (const auto& item : module.named_parameters(/*recurse=*/true)) fn(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    // Integer buffers (num_batches_tracked) are local bookkeeping, not model weights.
    if (item.value().is_floating_point()) fn(item.key(), item.value());
  }
}

// Parses "<prefix><digits>." at the start of `name`; -1 when `name` does not start so.
int LeadingIndex(const std::string& name, const std::string& prefix) {
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  size_t pos = prefix.size();
  int64_t index = 0;
  const size_t digits_begin = pos;
  while (pos < name.size() && std::isdigit(static_cast<unsigned char>(name[pos]))) {
    index = index * 10 + (name[pos] - '0');
    if (index > std::numeric_limits<int>::max()) return -1;
    ++pos;
  }
  if (pos == digits_begin || pos >= name.size() || name[pos] != '.') return -1;
  return static_cast<int>(index);
}

}  // namespace

int64_t WeightsLayout::TotalElements() const {
  int64_t total = 0;
  for (const auto& shape : shapes) total += CheckedNumel(shape);
  return total;
}

int WeightsLayout::IndexOf(const std::string& name) const {
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return static_cast<int>(i);
  }
  return -1;
}

namespace {

// NaN and Inf are the floats whose exponent bits are all ones. Counting them by their bit
// patterns, in fixed-size chunks, is a loop GCC vectorizes at -O2 (std::isfinite per
// value is not): every update and every local training call checks the whole model.
uint32_t IsNonFinite(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return (bits & 0x7f800000u) == 0x7f800000u;
}

int64_t CountNonFinite(const float* values, int64_t n) {
  constexpr int64_t kChunk = 256;
  int64_t bad = 0;
  int64_t k = 0;
  for (; k + kChunk <= n; k += kChunk) {
    uint32_t chunk = 0;
    for (int64_t j = 0; j < kChunk; ++j) chunk += IsNonFinite(values[k + j]);
    bad += chunk;
  }
  for (; k < n; ++k) bad += IsNonFinite(values[k]);
  return bad;
}

// Entry i of a weights vector against the layout's name and shape for it.
Status CheckEntry(size_t i, const std::string& name, c10::IntArrayRef shape, const torch::Tensor& t,
                  bool check_values = true) {
  // Built only on failure: this runs for every update and every local training call.
  const auto where = [&] { return "tensor " + std::to_string(i) + " '" + name + "'"; };
  if (!t.defined()) return Status::InvalidArgument(where() + " is missing (undefined)");
  if (t.scalar_type() != torch::kFloat32) {
    return Status::InvalidArgument(where() + " has dtype " +
                                   std::string(c10::toString(t.scalar_type())) +
                                   ", expected float32");
  }
  if (!t.device().is_cpu()) return Status::InvalidArgument(where() + " is not a CPU tensor");
  if (t.sizes() != shape) {
    return Status::InvalidArgument(where() + " has shape " + ShapeString(t.sizes().vec()) +
                                   ", expected " + ShapeString(shape.vec()));
  }
  if (!check_values) return Status::Ok();
  // One pass over the values, no temporary tensors (contiguous is the normal case).
  const torch::Tensor c = t.is_contiguous() ? t : t.contiguous();
  if (const int64_t bad = CountNonFinite(c.data_ptr<float>(), c.numel()); bad > 0) {
    return Status::InvalidArgument(where() + " has " + std::to_string(bad) +
                                   " non-finite values (NaN or Inf)");
  }
  return Status::Ok();
}

}  // namespace

Status WeightsLayout::Check(const Weights& w) const {
  if (w.size() != names.size()) {
    return Status::InvalidArgument("weights have " + std::to_string(w.size()) +
                                   " tensors, the layout has " + std::to_string(names.size()));
  }
  for (size_t i = 0; i < w.size(); ++i) {
    CLEAVE_RETURN_IF_ERROR(CheckEntry(i, names[i], shapes[i], w[i]));
  }
  return Status::Ok();
}

// {"names": [...], "shapes": [[...], ...]}: the struct's two fields, entry i in both.
json WeightsLayout::ToJson() const { return {{"names", names}, {"shapes", shapes}}; }

Result<WeightsLayout> WeightsLayout::FromJson(const json& j) {
  if (!j.is_object()) return Status::InvalidArgument("weights layout: expected a JSON object");
  auto names_json = j.find("names");
  auto shapes_json = j.find("shapes");
  if (names_json == j.end() || !names_json->is_array() || shapes_json == j.end() ||
      !shapes_json->is_array()) {
    return Status::InvalidArgument("weights layout: needs arrays 'names' and 'shapes'");
  }
  if (names_json->size() != shapes_json->size()) {
    return Status::InvalidArgument("weights layout: " + std::to_string(names_json->size()) +
                                   " names but " + std::to_string(shapes_json->size()) + " shapes");
  }
  WeightsLayout layout;
  std::set<std::string> seen;
  int64_t total = 0;
  for (size_t i = 0; i < names_json->size(); ++i) {
    const json& name = (*names_json)[i];
    const json& shape = (*shapes_json)[i];
    const std::string where = "weights layout entry " + std::to_string(i);
    if (!name.is_string() || name.get<std::string>().empty()) {
      return Status::InvalidArgument(where + ": names must be non-empty strings");
    }
    if (!shape.is_array()) return Status::InvalidArgument(where + ": shape must be an array");
    std::vector<int64_t> dims;
    for (const json& d : shape) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return Status::InvalidArgument(where + ": shape dimensions must be integers >= 0");
      }
      dims.push_back(d.get<int64_t>());
    }
    const int64_t numel = CheckedNumel(dims);
    if (numel < 0 || numel > std::numeric_limits<int64_t>::max() - total) {
      return Status::InvalidArgument(where + ": shape overflows");
    }
    total += numel;
    const std::string n = name.get<std::string>();
    if (!seen.insert(n).second) {
      return Status::InvalidArgument(where + ": duplicate name '" + n + "'");
    }
    layout.names.push_back(n);
    layout.shapes.push_back(std::move(dims));
  }
  return layout;
}

bool WeightsLayout::operator==(const WeightsLayout& other) const {
  return names == other.names && shapes == other.shapes;
}

WeightsLayout LayoutOf(torch::nn::Module& module) {
  WeightsLayout layout;
  ForEachExchanged(module, [&](const std::string& name, const torch::Tensor& t) {
    layout.names.push_back(name);
    layout.shapes.push_back(t.sizes().vec());
  });
  return layout;
}

namespace {

// True when `dst` can take `src`'s values in place without anyone else seeing the change.
bool Reusable(const torch::Tensor& dst, const torch::Tensor& src) {
  return dst.defined() && dst.use_count() == 1 && dst.storage().use_count() == 1 &&
         dst.scalar_type() == torch::kFloat32 && dst.device().is_cpu() && dst.is_contiguous() &&
         dst.sizes() == src.sizes();
}

// dst = src for tensors of equal shape; a plain memcpy when both are contiguous float32
// (the normal case), libtorch's strided copy otherwise (channels-last weights).
void CopyValues(const torch::Tensor& src, torch::Tensor& dst) {
  if (src.is_contiguous() && dst.is_contiguous() && src.scalar_type() == torch::kFloat32 &&
      dst.scalar_type() == torch::kFloat32 && src.device().is_cpu()) {
    std::memcpy(dst.data_ptr<float>(), src.data_ptr<float>(), sizeof(float) * src.numel());
    torch::autograd::impl::bump_version(dst);  // as copy_ would: autograd sees the write
    return;
  }
  torch::NoGradGuard no_grad;
  dst.copy_(src);
}

}  // namespace

ExchangedTensors ExchangedOf(torch::nn::Module& module) {
  ExchangedTensors e;
  ForEachExchanged(module, [&](const std::string& name, const torch::Tensor& t) {
    e.names.push_back(name);
    e.tensors.push_back(t);
  });
  return e;
}

ExchangedTensors ExchangedOf(split::TrainableNet& net) {
  split::TrainableNet::Tensors t = net.Exchanged();
  return {std::move(t.names), std::move(t.tensors)};
}

WeightsLayout LayoutOf(split::TrainableNet& net) {
  const ExchangedTensors e = ExchangedOf(net);
  WeightsLayout layout;
  layout.names = e.names;
  for (const torch::Tensor& t : e.tensors) layout.shapes.push_back(t.sizes().vec());
  return layout;
}

Weights GetWeights(split::TrainableNet& net) {
  Weights w;
  CopyOut(ExchangedOf(net), w);
  return w;
}

Status SetWeights(split::TrainableNet& net, const Weights& w) {
  return CopyIn(ExchangedOf(net), w);
}

Status CopyIn(const ExchangedTensors& target, const Weights& w, bool check_values) {
  if (w.size() != target.tensors.size()) {
    return Status::InvalidArgument("weights have " + std::to_string(w.size()) +
                                   " tensors, the layout has " +
                                   std::to_string(target.tensors.size()));
  }
  for (size_t i = 0; i < w.size(); ++i) {
    CLEAVE_RETURN_IF_ERROR(
        CheckEntry(i, target.names[i], target.tensors[i].sizes(), w[i], check_values));
  }
  // Every entry was checked against the layout above: a failure here is ours.
  return split::CallTorch(split::TorchSource::kOwnState, "SetWeights", [&] {
    for (size_t i = 0; i < w.size(); ++i) {
      torch::Tensor dst = target.tensors[i];
      CopyValues(w[i], dst);
    }
  });
}

void CopyOut(const ExchangedTensors& source, Weights& out) {
  const size_t n = source.tensors.size();
  for (size_t i = 0; i < n; ++i) {
    const torch::Tensor& own = source.tensors[i];  // read only: no detach() needed
    if (i < out.size() && Reusable(out[i], own)) {
      CopyValues(own, out[i]);
      continue;
    }
    const torch::Tensor src = own.detach();
    // A forced, contiguous copy: the module may train channels-last.
    torch::Tensor fresh =
        src.to(torch::TensorOptions().dtype(torch::kFloat32),
               /*non_blocking=*/false, /*copy=*/true, torch::MemoryFormat::Contiguous);
    if (i < out.size()) {
      out[i] = std::move(fresh);
    } else {
      out.push_back(std::move(fresh));
    }
  }
  out.resize(n);
}

Weights GetWeights(torch::nn::Module& module) {
  Weights w;
  CopyOut(ExchangedOf(module), w);
  return w;
}

void GetWeightsInto(torch::nn::Module& module, Weights& out) { CopyOut(ExchangedOf(module), out); }

Status SetWeights(torch::nn::Module& module, const Weights& w) {
  return CopyIn(ExchangedOf(module), w);
}

Weights CloneWeights(const Weights& w) {
  Weights out;
  out.reserve(w.size());
  for (const auto& t : w) {
    out.push_back(t.defined() ? t.clone(torch::MemoryFormat::Contiguous) : torch::Tensor());
  }
  return out;
}

Weights ZerosLike(const WeightsLayout& layout) {
  Weights out;
  out.reserve(layout.size());
  for (const auto& shape : layout.shapes) out.push_back(torch::zeros(shape, torch::kFloat32));
  return out;
}

const char* TrainableSetName(TrainableSet set) {
  switch (set) {
    case TrainableSet::kAll: return "all";
    case TrainableSet::kHeadAndExits: return "head_and_exits";
  }
  return "unknown";
}

Result<TrainableSet> ParseTrainableSet(const std::string& name) {
  for (TrainableSet set : {TrainableSet::kAll, TrainableSet::kHeadAndExits}) {
    if (name == TrainableSetName(set)) return set;
  }
  return Status::InvalidArgument("unknown trainable set '" + name +
                                 "' (expected 'all' or 'head_and_exits')");
}

std::vector<bool> TrainableMask(const WeightsLayout& layout, TrainableSet set, int split_after,
                                bool named_parts) {
  std::vector<bool> mask(layout.size(), set == TrainableSet::kAll);
  if (set == TrainableSet::kAll) return mask;
  for (size_t i = 0; i < layout.size(); ++i) {
    const std::string& name = layout.names[i];
    const int block = LeadingIndex(name, "block");
    mask[i] = (block >= 0 && block <= split_after) || LeadingIndex(name, "exit") >= 0 ||
              (named_parts && (name.rfind("head.", 0) == 0 || name.rfind("encoder.", 0) == 0));
  }
  return mask;
}

}  // namespace cleave::federated
