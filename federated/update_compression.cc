#include "federated/update_compression.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "federated/splitmix.h"
#include "split/torch_status.h"

namespace cleave::federated {
namespace {

using json = nlohmann::json;

constexpr char kMagic[4] = {'C', 'L', 'U', 'C'};
constexpr size_t kHeaderBytes = 16;  // magic, version, kind, flags, entries, elements
// A chunk longer than this is surely not ours (the encoder writes kInt8ChunkElements).
constexpr uint32_t kMaxInt8Chunk = 1u << 24;
constexpr uint64_t kMaxElements = std::numeric_limits<uint32_t>::max();

enum class Kind : uint8_t { kNone = 0, kInt8 = 1, kTopK = 2 };

Result<Kind> ParseKind(const std::string& kind) {
  if (kind == "none") return Kind::kNone;
  if (kind == "int8") return Kind::kInt8;
  if (kind == "topk") return Kind::kTopK;
  return Status::InvalidArgument("compression.kind must be none, int8 or topk, not '" + kind + "'");
}

int64_t NumelOf(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || (d != 0 && n > std::numeric_limits<int64_t>::max() / d)) return -1;
    n *= d;
  }
  return n;
}

// ---- Little-endian byte writing and bounds-checked reading.

class Writer {
 public:
  explicit Writer(size_t reserve) { out_.reserve(reserve); }
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U16(uint16_t v) {
    U8(v & 0xff);
    U8(v >> 8);
  }
  void U32(uint32_t v) {
    for (int b = 0; b < 4; ++b) U8(static_cast<uint8_t>(v >> (8 * b)));
  }
  void F32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    U32(bits);
  }
  void I8(int8_t v) { U8(static_cast<uint8_t>(v)); }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  size_t remaining() const { return data_.size() - pos_; }
  // Callers check remaining() first: these never read past the end.
  uint8_t U8() { return static_cast<uint8_t>(data_[pos_++]); }
  uint16_t U16() {
    const uint16_t lo = U8();
    return static_cast<uint16_t>(lo | (U8() << 8));
  }
  uint32_t U32() {
    uint32_t v = 0;
    for (int b = 0; b < 4; ++b) v |= static_cast<uint32_t>(U8()) << (8 * b);
    return v;
  }
  float F32() {
    const uint32_t bits = U32();
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  }
  int8_t I8() { return static_cast<int8_t>(U8()); }

 private:
  std::string_view data_;
  size_t pos_ = 0;
};

Status Malformed(const std::string& why) {
  return Status::InvalidArgument("compressed update: " + why);
}

// The trainable entries of a layout: which, how many values each, and their total.
struct TrainableEntries {
  std::vector<size_t> index;    // layout positions
  std::vector<uint32_t> count;  // values of each
  uint64_t total = 0;
};

Result<TrainableEntries> EntriesOf(const std::vector<std::vector<int64_t>>& shapes,
                                   const std::vector<bool>& trainable) {
  if (trainable.size() != shapes.size()) {
    return Status::InvalidArgument("compression: trainable mask has " +
                                   std::to_string(trainable.size()) + " entries, the layout " +
                                   std::to_string(shapes.size()));
  }
  TrainableEntries e;
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (!trainable[i]) continue;
    const int64_t n = NumelOf(shapes[i]);
    if (n < 0) {
      return Status::InvalidArgument("compression: trainable entry " + std::to_string(i) +
                                     " has no valid shape");
    }
    if (static_cast<uint64_t>(n) > kMaxElements - e.total) {
      return Status::InvalidArgument("compression: more than 2^32 - 1 trainable values");
    }
    e.index.push_back(i);
    e.count.push_back(static_cast<uint32_t>(n));
    e.total += static_cast<uint64_t>(n);
  }
  return e;
}

// The values to compress, flattened over the trainable entries: trained - global, plus the
// residual when `residual` is non-null (undefined residual tensors count as zeros).
Result<std::vector<float>> FlatDelta(const Weights& global, const Weights& trained,
                                     const Weights* residual, const TrainableEntries& entries) {
  std::vector<float> x(entries.total);
  size_t offset = 0;
  for (size_t e = 0; e < entries.index.size(); ++e) {
    const size_t i = entries.index[e];
    const torch::Tensor g = global[i].contiguous();
    const torch::Tensor t = trained[i].contiguous();
    const float* gp = g.data_ptr<float>();
    const float* tp = t.data_ptr<float>();
    const float* rp = nullptr;
    torch::Tensor r;
    if (residual != nullptr && (*residual)[i].defined()) {
      r = (*residual)[i].contiguous();
      rp = r.data_ptr<float>();
    }
    float* out = x.data() + offset;
    for (uint32_t j = 0; j < entries.count[e]; ++j) {
      const float v = (tp[j] - gp[j]) + (rp ? rp[j] : 0.0f);
      if (!std::isfinite(v)) {
        return Status::InvalidArgument("compression: non-finite update delta in entry " +
                                       std::to_string(i));
      }
      out[j] = v;
    }
    offset += entries.count[e];
  }
  return x;
}

Status CheckTensor(const torch::Tensor& t, const std::vector<int64_t>& shape, const char* what,
                   size_t i) {
  if (!t.defined() || t.scalar_type() != torch::kFloat || !t.device().is_cpu() ||
      t.sizes().vec() != shape) {
    return Status::InvalidArgument(std::string("compression: ") + what + " entry " +
                                   std::to_string(i) +
                                   " is not a CPU float32 tensor of the global's shape");
  }
  return Status::Ok();
}

// k = ceil(fraction n), at least 1 of a non-empty delta; a product within 1e-9 of an integer
// counts as that integer (0.01 x 100 is 1, not 2).
uint64_t TopKCount(double fraction, uint64_t n) {
  if (n == 0) return 0;
  const double product = fraction * static_cast<double>(n);
  const double nearest = std::round(product);
  double k =
      std::fabs(product - nearest) <= 1e-9 * std::max(1.0, product) ? nearest : std::ceil(product);
  return std::clamp<uint64_t>(static_cast<uint64_t>(k), 1, n);
}

void WriteHeader(Writer& w, Kind kind, const TrainableEntries& entries) {
  for (char c : kMagic) w.U8(static_cast<uint8_t>(c));
  w.U8(kUpdateEncodingVersion);
  w.U8(static_cast<uint8_t>(kind));
  w.U16(0);
  w.U32(static_cast<uint32_t>(entries.count.size()));
  w.U32(static_cast<uint32_t>(entries.total));
  for (uint32_t c : entries.count) w.U32(c);
}

// int8 payload of `x`; `sent` receives the decoded values (what the server will see).
void EncodeInt8(Writer& w, const std::vector<float>& x, const TrainableEntries& entries,
                uint64_t stream, std::vector<float>& sent) {
  w.U32(kInt8ChunkElements);
  std::vector<int8_t> q(x.size());
  size_t offset = 0;
  for (uint32_t count : entries.count) {
    for (uint64_t start = 0; start < count; start += kInt8ChunkElements) {
      const size_t begin = offset + start;
      const size_t end = offset + std::min<uint64_t>(count, start + kInt8ChunkElements);
      float max_abs = 0;
      for (size_t j = begin; j < end; ++j) max_abs = std::max(max_abs, std::fabs(x[j]));
      const float scale = max_abs / 127.0f;
      w.F32(scale);
      for (size_t j = begin; j < end; ++j) {
        int q_j = 0;
        if (scale > 0) {
          const double y = static_cast<double>(x[j]) / scale;
          const double floor_y = std::floor(y);
          // Element j of the client's SplitMix64 stream: drawn without the ones before it.
          const double up = Uniform01(SplitMix64(stream + j * kSplitMixGamma));
          q_j = static_cast<int>(floor_y) + (up < y - floor_y ? 1 : 0);
          q_j = std::clamp(q_j, -127, 127);
        }
        q[j] = static_cast<int8_t>(q_j);
        sent[j] = static_cast<float>(q_j) * scale;  // exactly what DecodeUpdate computes
      }
    }
    offset += count;
  }
  for (int8_t v : q) w.I8(v);
}

void EncodeTopK(Writer& w, const std::vector<float>& x, double fraction, std::vector<float>& sent) {
  const uint64_t n = x.size();
  const uint64_t k = TopKCount(fraction, n);
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  // A strict total order (magnitude, then lower index), so the kept set is unique.
  const auto larger = [&x](uint32_t a, uint32_t b) {
    const float fa = std::fabs(x[a]), fb = std::fabs(x[b]);
    return fa > fb || (fa == fb && a < b);
  };
  if (k < n) std::nth_element(order.begin(), order.begin() + k, order.end(), larger);
  order.resize(k);
  std::sort(order.begin(), order.end());
  w.U32(static_cast<uint32_t>(k));
  for (uint32_t i : order) w.U32(i);
  for (uint32_t i : order) {
    w.F32(x[i]);
    sent[i] = x[i];
  }
}

}  // namespace

// ---- CompressionConfig

json CompressionConfig::ToJson() const {
  return {{"kind", kind},
          {"topk_fraction", topk_fraction},
          {"error_feedback", error_feedback},
          {"seed", seed}};
}

Result<CompressionConfig> CompressionConfig::FromJson(const json& j) {
  if (!j.is_object()) return Status::InvalidArgument("compression: expected a JSON object");
  CompressionConfig c;
  for (const auto& [key, value] : j.items()) {
    const std::string where = "compression." + key;
    if (key == "kind") {
      if (!value.is_string()) return Status::InvalidArgument(where + ": expected a string");
      c.kind = value.get<std::string>();
    } else if (key == "topk_fraction") {
      if (!value.is_number()) return Status::InvalidArgument(where + ": expected a number");
      c.topk_fraction = value.get<double>();
    } else if (key == "error_feedback") {
      if (!value.is_boolean()) return Status::InvalidArgument(where + ": expected true or false");
      c.error_feedback = value.get<bool>();
    } else if (key == "seed") {
      // A parsed document stores 5 as unsigned, a json built in C++ from an int as signed.
      if (!value.is_number_integer() || (!value.is_number_unsigned() && value.get<int64_t>() < 0)) {
        return Status::InvalidArgument(where + ": expected a non-negative integer");
      }
      c.seed = value.get<uint64_t>();
    } else {
      return Status::InvalidArgument("compression: unknown key '" + key + "'");
    }
  }
  CLEAVE_RETURN_IF_ERROR(c.Validate());
  return c;
}

// Every key is checked whatever the kind, so a bad fraction does not hide until someone
// switches to topk.
Status CompressionConfig::Validate() const {
  CLEAVE_RETURN_IF_ERROR(ParseKind(kind).status());
  if (!(topk_fraction > 0 && topk_fraction <= 1)) {
    return Status::InvalidArgument("compression.topk_fraction must be in (0, 1], not " +
                                   std::to_string(topk_fraction));
  }
  return Status::Ok();
}

Status CheckCompressionCompatible(const CompressionConfig& config, bool secure_aggregation,
                                  const std::string& strategy_name) {
  if (config.kind != "topk") return Status::Ok();
  if (secure_aggregation) {
    return Status::FailedPrecondition(
        "compression.kind = topk cannot run with secure aggregation: masking needs every "
        "client to send the same dense coordinates, so a masked sparse update saves nothing "
        "and its indices would reveal what the client changed most (use compression.kind = "
        "int8 or none)");
  }
  if (strategy_name == "fedmedian" || strategy_name == "fedtrimmedavg" ||
      strategy_name == "bulyan") {
    return Status::InvalidArgument(
        "compression.kind = topk cannot run with strategy '" + strategy_name +
        "': its coordinate-wise median/trimmed mean of sparse updates is zero almost "
        "everywhere, so the model would stop moving (use compression.kind = int8, or a "
        "distance-based rule such as krum/multikrum)");
  }
  return Status::Ok();
}

// ---- Encoding

Result<std::string> EncodeUpdate(const CompressionConfig& config, const Weights& global,
                                 const Weights& trained, const std::vector<bool>& trainable,
                                 uint64_t round, uint64_t client, ErrorFeedbackState* feedback) {
  CLEAVE_RETURN_IF_ERROR(config.Validate());
  const Kind kind = *ParseKind(config.kind);
  if (trained.size() != global.size()) {
    return Status::InvalidArgument("compression: update has " + std::to_string(trained.size()) +
                                   " entries, the global model " + std::to_string(global.size()));
  }
  std::vector<std::vector<int64_t>> shapes;
  shapes.reserve(global.size());
  for (const torch::Tensor& g : global) {
    shapes.push_back(g.defined() ? g.sizes().vec() : std::vector<int64_t>{-1});
  }
  CLEAVE_ASSIGN_OR_RETURN(const TrainableEntries entries, EntriesOf(shapes, trainable));
  // Feedback with a lossless kind only flushes an earlier residual.
  const bool use_feedback = feedback != nullptr && config.error_feedback &&
                            (kind != Kind::kNone || !feedback->residual.empty());
  if (use_feedback && !feedback->residual.empty() && feedback->residual.size() != global.size()) {
    return Status::InvalidArgument("compression: error-feedback residual has " +
                                   std::to_string(feedback->residual.size()) +
                                   " entries, the global model " + std::to_string(global.size()));
  }
  const auto encode = [&]() -> Result<std::string> {
    for (size_t i : entries.index) {
      CLEAVE_RETURN_IF_ERROR(CheckTensor(global[i], shapes[i], "global", i));
      CLEAVE_RETURN_IF_ERROR(CheckTensor(trained[i], shapes[i], "update", i));
      if (use_feedback && !feedback->residual.empty() && feedback->residual[i].defined()) {
        CLEAVE_RETURN_IF_ERROR(CheckTensor(feedback->residual[i], shapes[i], "residual", i));
      }
    }
    const Weights* residual =
        use_feedback && !feedback->residual.empty() ? &feedback->residual : nullptr;
    CLEAVE_ASSIGN_OR_RETURN(std::vector<float> x, FlatDelta(global, trained, residual, entries));

    const size_t n = x.size();
    const size_t payload = kind == Kind::kNone ? 4 * n
                           : kind == Kind::kInt8
                               ? 4 + 4 * (n / kInt8ChunkElements + entries.count.size()) + n
                               : 4 + 8 * TopKCount(config.topk_fraction, n);
    Writer w(kHeaderBytes + 4 * entries.count.size() + payload);
    WriteHeader(w, kind, entries);
    std::vector<float> sent(use_feedback ? n : 0);
    switch (kind) {
      case Kind::kNone:
        for (float v : x) w.F32(v);
        if (use_feedback) sent = x;
        break;
      case Kind::kInt8: {
        if (!use_feedback) sent.resize(n);
        const uint64_t stream = SplitMix64(SplitMix64(SplitMix64(config.seed) ^ round) ^ client);
        EncodeInt8(w, x, entries, stream, sent);
        break;
      }
      case Kind::kTopK:
        if (!use_feedback) sent.resize(n);
        EncodeTopK(w, x, config.topk_fraction, sent);
        break;
    }
    if (use_feedback) {
      if (feedback->residual.empty()) feedback->residual.resize(global.size());
      size_t offset = 0;
      for (size_t e = 0; e < entries.index.size(); ++e) {
        torch::Tensor& r = feedback->residual[entries.index[e]];
        if (!r.defined() || !r.is_contiguous()) r = torch::empty(shapes[entries.index[e]]);
        float* rp = r.data_ptr<float>();
        for (uint32_t j = 0; j < entries.count[e]; ++j) {
          rp[j] = x[offset + j] - sent[offset + j];
        }
        offset += entries.count[e];
      }
    }
    return w.Take();
  };
  return split::CallTorch(split::TorchSource::kOwnState, "compression: libtorch error", encode);
}

// ---- Decoding

Result<Weights> DecodeUpdate(std::string_view bytes, const WeightsLayout& layout,
                             const std::vector<bool>& trainable) {
  CLEAVE_ASSIGN_OR_RETURN(const TrainableEntries entries, EntriesOf(layout.shapes, trainable));
  Reader r(bytes);
  if (r.remaining() < kHeaderBytes) {
    return Malformed("truncated header (" + std::to_string(bytes.size()) + " bytes)");
  }
  for (char c : kMagic) {
    if (r.U8() != static_cast<uint8_t>(c)) return Malformed("bad magic (not an update encoding)");
  }
  const uint8_t version = r.U8();
  if (version != kUpdateEncodingVersion) {
    return Status::VersionMismatch(
        "compressed update: encoding version " + std::to_string(version) +
        " is not supported (this build reads " + std::to_string(kUpdateEncodingVersion) + ")");
  }
  const uint8_t kind_byte = r.U8();
  if (kind_byte > static_cast<uint8_t>(Kind::kTopK)) {
    return Malformed("unknown kind " + std::to_string(kind_byte));
  }
  const Kind kind = static_cast<Kind>(kind_byte);
  if (const uint16_t flags = r.U16(); flags != 0) {
    return Malformed("unknown flags " + std::to_string(flags));
  }
  const uint32_t num_entries = r.U32();
  if (num_entries != entries.count.size()) {
    return Malformed(std::to_string(num_entries) + " entries, expected " +
                     std::to_string(entries.count.size()) + " trainable entries");
  }
  const uint32_t total = r.U32();
  if (total != entries.total) {
    return Malformed(std::to_string(total) + " values, expected " + std::to_string(entries.total));
  }
  if (r.remaining() < 4 * uint64_t{num_entries}) return Malformed("truncated entry counts");
  for (size_t e = 0; e < entries.count.size(); ++e) {
    const uint32_t count = r.U32();
    if (count != entries.count[e]) {
      return Malformed("entry " + std::to_string(entries.index[e]) + " has " +
                       std::to_string(count) + " values, expected " +
                       std::to_string(entries.count[e]));
    }
  }
  const uint64_t n = entries.total;
  const auto expect_payload = [&](uint64_t expected, const char* what) -> Status {
    if (r.remaining() == expected) return Status::Ok();
    return Malformed(std::string(what) + " payload: " + std::to_string(r.remaining()) +
                     " bytes, expected " + std::to_string(expected) +
                     (r.remaining() < expected ? " (truncated)" : " (trailing bytes)"));
  };

  // Validated in full before any tensor is allocated.
  std::vector<float> values;
  std::vector<uint32_t> indices;  // topk only
  switch (kind) {
    case Kind::kNone: {
      CLEAVE_RETURN_IF_ERROR(expect_payload(4 * n, "float32"));
      values.resize(n);
      for (uint64_t j = 0; j < n; ++j) {
        values[j] = r.F32();
        if (!std::isfinite(values[j])) return Malformed("non-finite value at " + std::to_string(j));
      }
      break;
    }
    case Kind::kInt8: {
      if (r.remaining() < 4) return Malformed("truncated int8 chunk size");
      const uint32_t chunk = r.U32();
      if (chunk == 0 || chunk > kMaxInt8Chunk) {
        return Malformed("int8 chunk size " + std::to_string(chunk) + " outside [1, 2^24]");
      }
      uint64_t num_scales = 0;
      for (uint32_t count : entries.count) num_scales += (uint64_t{count} + chunk - 1) / chunk;
      CLEAVE_RETURN_IF_ERROR(expect_payload(4 * num_scales + n, "int8"));
      std::vector<float> scales(num_scales);
      for (uint64_t s = 0; s < num_scales; ++s) {
        scales[s] = r.F32();
        // A scale beyond FLT_MAX / 127 would decode 127 to infinity.
        if (!std::isfinite(scales[s]) || scales[s] < 0 ||
            scales[s] > std::numeric_limits<float>::max() / 127) {
          return Malformed("int8 scale " + std::to_string(s) +
                           " must be finite, >= 0 and <= FLT_MAX / 127");
        }
      }
      values.resize(n);
      size_t offset = 0, scale_index = 0;
      for (uint32_t count : entries.count) {
        for (uint32_t j = 0; j < count; ++j) {
          if (j % chunk == 0 && j > 0) ++scale_index;
          const int8_t q = r.I8();
          if (q == -128) return Malformed("int8 value -128 at " + std::to_string(offset + j));
          values[offset + j] = static_cast<float>(q) * scales[scale_index];
        }
        if (count > 0) ++scale_index;
        offset += count;
      }
      break;
    }
    case Kind::kTopK: {
      if (r.remaining() < 4) return Malformed("truncated top-k count");
      const uint32_t k = r.U32();
      if (k > n) {
        return Malformed("top-k count " + std::to_string(k) + " exceeds the " + std::to_string(n) +
                         " values");
      }
      CLEAVE_RETURN_IF_ERROR(expect_payload(8 * uint64_t{k}, "top-k"));
      indices.resize(k);
      values.resize(k);
      for (uint32_t j = 0; j < k; ++j) {
        indices[j] = r.U32();
        if (indices[j] >= n) {
          return Malformed("top-k index " + std::to_string(indices[j]) + " out of range (" +
                           std::to_string(n) + " values)");
        }
        if (j > 0 && indices[j] <= indices[j - 1]) {
          return Malformed("top-k indices not strictly increasing at " + std::to_string(j));
        }
      }
      for (uint32_t j = 0; j < k; ++j) {
        values[j] = r.F32();
        if (!std::isfinite(values[j])) {
          return Malformed("non-finite top-k value at " + std::to_string(indices[j]));
        }
      }
      break;
    }
  }

  // Entries, indices and values were checked above: a libtorch failure here is ours.
  const auto expand = [&] {
    Weights delta = ZerosLike(layout);
    if (kind != Kind::kTopK) {
      size_t offset = 0;
      for (size_t e = 0; e < entries.index.size(); ++e) {
        std::memcpy(delta[entries.index[e]].data_ptr<float>(), values.data() + offset,
                    sizeof(float) * entries.count[e]);
        offset += entries.count[e];
      }
      return delta;
    }
    // Indices ascend, so one cursor walks the entries.
    size_t e = 0;
    uint64_t entry_begin = 0;
    for (size_t j = 0; j < indices.size(); ++j) {
      while (indices[j] >= entry_begin + entries.count[e]) entry_begin += entries.count[e++];
      delta[entries.index[e]].data_ptr<float>()[indices[j] - entry_begin] = values[j];
    }
    return delta;
  };
  return split::CallTorch(split::TorchSource::kOwnState, "compression: libtorch error", expand);
}

Result<int64_t> CompressRoundTrip(const CompressionConfig& config, const WeightsLayout& layout,
                                  const Weights& global, Weights& trained,
                                  const std::vector<bool>& trainable, uint64_t round,
                                  uint64_t client, ErrorFeedbackState* feedback) {
  if (global.size() != layout.size()) {
    return Status::InvalidArgument("compression: global model does not match the layout");
  }
  for (size_t i = 0; i < layout.size(); ++i) {
    if (!global[i].defined() || global[i].sizes().vec() != layout.shapes[i]) {
      return Status::InvalidArgument("compression: global entry " + layout.names[i] +
                                     " does not match the layout");
    }
  }
  CLEAVE_ASSIGN_OR_RETURN(const std::string bytes, EncodeUpdate(config, global, trained, trainable,
                                                                round, client, feedback));
  CLEAVE_ASSIGN_OR_RETURN(const Weights delta, DecodeUpdate(bytes, layout, trainable));
  CLEAVE_RETURN_IF_ERROR(
      split::CallTorch(split::TorchSource::kOwnState, "compression: libtorch error", [&] {
        torch::NoGradGuard no_grad;
        for (size_t i = 0; i < layout.size(); ++i) {
          if (trainable[i]) torch::add_out(trained[i], global[i], delta[i]);
        }
      }));
  return static_cast<int64_t>(bytes.size());
}

}  // namespace cleave::federated
