#include "split/head_int8_serialization.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <zlib.h>

#include <cmath>
#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

namespace cleave::split::int8_graph {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the int8 graph head format stores little-endian numbers by memcpy");

constexpr const char* kGraphHeadFormat = "cleave-int8-graph-head";
constexpr size_t kGraphHeadMaxBytes = size_t{1} << 30;  // a head's int8 weights, with room
constexpr int64_t kGraphHeadMaxDim = int64_t{1} << 20;  // per input dimension

// One stored tensor: where it goes, its dtype and the shape the plan implies.
struct GhsEntry {
  torch::Tensor* tensor;
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  std::string name;
};

std::vector<GhsEntry> GhsEntries(Int8GraphState& state, torch::Tensor& act_scale,
                                 torch::Tensor& act_zero_point) {
  std::vector<GhsEntry> entries;
  for (size_t i = 0; i < state.weights.size(); ++i) {
    QWeights& w = state.weights[i];
    // The plan's fp32 weights have the stored shape: the fp32 head decides it.
    const std::vector<int64_t> shape = w.weight_float.sizes().vec();
    const std::string name = "int8 op " + std::to_string(i);
    entries.push_back({&w.weight_q, torch::kChar, shape, name + " weights"});
    entries.push_back({&w.weight_scale, torch::kFloat, {shape[0]}, name + " weight scales"});
    entries.push_back({&w.bias, torch::kFloat, {shape[0]}, name + " bias"});
  }
  const int64_t points = static_cast<int64_t>(state.acts.size());
  entries.push_back({&act_scale, torch::kFloat, {points}, "activation scales"});
  entries.push_back({&act_zero_point, torch::kByte, {points}, "activation zero points"});
  return entries;
}

int64_t GhsEntryBytes(const GhsEntry& e) {
  int64_t n = static_cast<int64_t>(c10::elementSize(e.dtype));
  for (const int64_t d : e.shape) n *= d;
  return n;
}

uint32_t GhsCrc(uint32_t crc, const void* data, size_t size) {
  return static_cast<uint32_t>(
      crc32(crc, static_cast<const Bytef*>(data), static_cast<uInt>(size)));
}

nlohmann::json GhsOpsJson(const HeadInt8Report& report) {
  nlohmann::json ops = nlohmann::json::array();
  for (const QuantizedOpInfo& op : report.ops) {
    ops.push_back({{"kind", op.kind}, {"int8", op.int8}, {"macs", op.macs}});
  }
  return ops;
}

// The header's required fields and their types; the format and version come first.
Status GhsCheckHeader(const nlohmann::json& header) {
  if (!header.is_object() || !header.contains("format") || header["format"] != kGraphHeadFormat) {
    return Status::DataLoss("int8 graph head bytes: not a cleave int8 graph head");
  }
  if (!header.contains("version") || !header["version"].is_number_integer()) {
    return Status::DataLoss("int8 graph head bytes: no format version");
  }
  if (header["version"].get<int64_t>() != kGraphHeadFormatVersion) {
    return Status::VersionMismatch("int8 graph head bytes: format version " +
                                   header["version"].dump() + ", this build reads " +
                                   std::to_string(kGraphHeadFormatVersion));
  }
  for (const char* key : {"crc32", "fp32_crc32"}) {
    if (!header.contains(key) || !header[key].is_number_unsigned()) {
      return Status::DataLoss(std::string("int8 graph head bytes: bad header field ") + key);
    }
  }
  if (!header.contains("layout") || !header["layout"].is_string()) {
    return Status::DataLoss("int8 graph head bytes: bad header field layout");
  }
  for (const char* key : {"input_shape", "ops"}) {
    if (!header.contains(key) || !header[key].is_array()) {
      return Status::DataLoss(std::string("int8 graph head bytes: bad header field ") + key);
    }
  }
  return Status::Ok();
}

// The CRC the header must carry: its JSON without "crc32", then the entries.
uint32_t GhsMessageCrc(nlohmann::json header,
                       const std::vector<kj::ArrayPtr<const kj::byte>>& blobs) {
  header.erase("crc32");
  const std::string text = header.dump();
  uint32_t crc = GhsCrc(GhsCrc(0, nullptr, 0), text.data(), text.size());
  for (const auto& blob : blobs) crc = GhsCrc(crc, blob.begin(), blob.size());
  return crc;
}

// Input shape [C, H, W] and the report's MACs from a checked header.
Status GhsReadShapeAndOps(const nlohmann::json& header, Int8GraphState& state) {
  std::vector<int64_t> shape;
  for (const nlohmann::json& d : header["input_shape"]) {
    if (!d.is_number_unsigned() || d.get<int64_t>() < 1 || d.get<int64_t>() > kGraphHeadMaxDim) {
      return Status::DataLoss("int8 graph head bytes: bad input shape");
    }
    shape.push_back(d.get<int64_t>());
  }
  if (shape.size() != 3)
    return Status::DataLoss("int8 graph head bytes: input shape is not [C, H, W]");
  const nlohmann::json& ops = header["ops"];
  if (ops.size() != state.report.ops.size()) {
    return Status::InvalidArgument("int8 graph head: the bytes report " +
                                   std::to_string(ops.size()) + " ops, the fp32 head has " +
                                   std::to_string(state.report.ops.size()));
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    QuantizedOpInfo& op = state.report.ops[i];
    const nlohmann::json& stored = ops[i];
    if (!stored.is_object() || !stored.contains("kind") || !stored.contains("int8") ||
        !stored.contains("macs") || !stored["macs"].is_number_unsigned()) {
      return Status::DataLoss("int8 graph head bytes: bad op entry " + std::to_string(i));
    }
    if (stored["kind"] != op.kind || stored["int8"] != op.int8) {
      return Status::InvalidArgument("int8 graph head: op " + std::to_string(i) + " is " +
                                     stored["kind"].dump() + " in the bytes and " + op.kind +
                                     " in the fp32 head");
    }
    op.macs = stored["macs"].get<int64_t>();
  }
  state.input_shape = std::move(shape);
  return Status::Ok();
}

// Scales, biases and zero points of the loaded tensors.
Status GhsCheckValues(Int8GraphState& state, const torch::Tensor& act_scale,
                      const torch::Tensor& act_zero_point) {
  for (size_t i = 0; i < state.weights.size(); ++i) {
    const QWeights& w = state.weights[i];
    if (!int8::AllPositiveFinite(w.weight_scale) || !torch::isfinite(w.bias).all().item<bool>() ||
        (w.weight_q == -128).any().item<bool>()) {
      return Status::DataLoss("int8 graph head bytes: int8 op " + std::to_string(i) +
                              " has invalid weights, scales or biases");
    }
  }
  return int8::ReadActQuants(act_scale, act_zero_point, state.act_zero_based,
                             "int8 graph head bytes", state.acts);
}

}  // namespace

Result<std::string> SerializeGraphHead(const Int8GraphState& const_state) {
  // GhsEntries hands out mutable pointers for the reader's sake; nothing is written here.
  Int8GraphState& state = const_cast<Int8GraphState&>(const_state);
  std::vector<float> scales;
  std::vector<uint8_t> zero_points;
  for (const int8::ActQuant& a : state.acts) {
    scales.push_back(a.scale);
    zero_points.push_back(static_cast<uint8_t>(a.zero_point));
  }
  torch::Tensor act_scale = torch::tensor(scales, torch::kFloat);
  torch::Tensor act_zero_point = torch::tensor(zero_points, torch::kByte);
  const std::vector<GhsEntry> entries = GhsEntries(state, act_scale, act_zero_point);
  std::vector<torch::Tensor> contiguous;
  std::vector<kj::ArrayPtr<const kj::byte>> blobs;
  for (const GhsEntry& e : entries) {
    contiguous.push_back(e.tensor->contiguous());
    if (contiguous.back().scalar_type() != e.dtype || contiguous.back().sizes() != e.shape) {
      return Status::Internal("int8 graph head: " + e.name + " does not match its plan");
    }
    blobs.emplace_back(static_cast<const kj::byte*>(contiguous.back().data_ptr()),
                       static_cast<size_t>(GhsEntryBytes(e)));
  }
  nlohmann::json header = {{"format", kGraphHeadFormat},       {"version", kGraphHeadFormatVersion},
                           {"input_shape", state.input_shape}, {"layout", state.layout},
                           {"fp32_crc32", state.fp32_crc32},   {"ops", GhsOpsJson(state.report)}};
  header["crc32"] = GhsMessageCrc(header, blobs);
  const std::string header_text = header.dump();

  capnp::MallocMessageBuilder message;
  auto list = message.initRoot<capnp::List<capnp::Data>>(static_cast<uint>(blobs.size() + 1));
  list.set(0, capnp::Data::Reader(reinterpret_cast<const kj::byte*>(header_text.data()),
                                  header_text.size()));
  for (size_t i = 0; i < blobs.size(); ++i) {
    list.set(static_cast<uint>(i + 1), capnp::Data::Reader(blobs[i].begin(), blobs[i].size()));
  }
  const kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  const kj::ArrayPtr<const kj::byte> bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

Status DeserializeGraphHead(const std::string& bytes, Int8GraphState& state) {
  if (bytes.empty() || bytes.size() > kGraphHeadMaxBytes ||
      bytes.size() % sizeof(capnp::word) != 0) {
    return Status::DataLoss("int8 graph head bytes: size " + std::to_string(bytes.size()) +
                            " is not a plausible message size");
  }
  // Cap'n Proto needs word-aligned memory; std::string gives no such promise.
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  capnp::ReaderOptions options;
  options.traversalLimitInWords = words.size() + 64;
  options.nestingLimit = 4;
  try {
    capnp::FlatArrayMessageReader reader(words, options);
    if (reader.getEnd() != words.end()) {
      return Status::DataLoss("int8 graph head bytes: trailing bytes after the message");
    }
    const auto list = reader.getRoot<capnp::List<capnp::Data>>();
    if (list.size() < 1) return Status::DataLoss("int8 graph head bytes: empty message");
    const capnp::Data::Reader header_blob = list[0];
    const nlohmann::json header = nlohmann::json::parse(header_blob.begin(), header_blob.end(),
                                                        nullptr, /*allow_exceptions=*/false);
    CLEAVE_RETURN_IF_ERROR(GhsCheckHeader(header));
    std::vector<kj::ArrayPtr<const kj::byte>> blobs;
    for (uint i = 1; i < list.size(); ++i) {
      const capnp::Data::Reader blob = list[i];
      blobs.emplace_back(blob.begin(), blob.size());
    }
    if (uint64_t{GhsMessageCrc(header, blobs)} != header["crc32"].get<uint64_t>()) {
      return Status::DataLoss("int8 graph head bytes: checksum mismatch (corrupt data)");
    }
    // Intact bytes: now whether they belong to this fp32 head.
    if (header["layout"].get<std::string>() != state.layout) {
      return Status::InvalidArgument(
          "int8 graph head: the bytes were quantized from a head with another graph (plan "
          "layouts differ)");
    }
    if (header["fp32_crc32"].get<uint64_t>() != uint64_t{state.fp32_crc32}) {
      return Status::InvalidArgument(
          "int8 graph head: the bytes were quantized from a head with other weights");
    }
    CLEAVE_RETURN_IF_ERROR(GhsReadShapeAndOps(header, state));

    torch::Tensor act_scale, act_zero_point;
    const std::vector<GhsEntry> entries = GhsEntries(state, act_scale, act_zero_point);
    if (blobs.size() != entries.size()) {
      return Status::DataLoss("int8 graph head bytes: " + std::to_string(blobs.size()) +
                              " tensors where the plan has " + std::to_string(entries.size()));
    }
    for (size_t i = 0; i < entries.size(); ++i) {
      const GhsEntry& e = entries[i];
      if (static_cast<int64_t>(blobs[i].size()) != GhsEntryBytes(e)) {
        return Status::DataLoss("int8 graph head bytes: " + e.name + " has " +
                                std::to_string(blobs[i].size()) + " bytes, expected " +
                                std::to_string(GhsEntryBytes(e)));
      }
      *e.tensor = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
      std::memcpy(e.tensor->data_ptr(), blobs[i].begin(), blobs[i].size());
    }
    CLEAVE_RETURN_IF_ERROR(GhsCheckValues(state, act_scale, act_zero_point));
    DequantizeAllWeights(state);
    FinishReport(state);
    return Status::Ok();
  } catch (const kj::Exception& e) {
    return Status::DataLoss(std::string("int8 graph head bytes: malformed message: ") +
                            e.getDescription().cStr());
  }
}

}  // namespace cleave::split::int8_graph
