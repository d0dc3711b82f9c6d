#include "split/int8_serialization.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <zlib.h>

#include <cmath>
#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

namespace cleave::split::int8 {
namespace {

// The spec's normalization vector as the header stores it: a number for one value (the
// format of heads written before per-channel normalization), else an array.
nlohmann::json NormalizationHeader(const std::vector<float>& values) {
  if (values.size() == 1) return values[0];
  return values;
}

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the int8 head format stores little-endian numbers by memcpy");

constexpr const char* kFormat = "cleave-int8-head";
constexpr size_t kMaxBytes = size_t{256} << 20;  // a head is tens of KB

// Every tensor of the head in canonical order, with the dtype and shape the spec implies.
struct Entry {
  torch::Tensor* tensor;
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  std::string name;
};

std::vector<Entry> Entries(Int8HeadState& state, torch::Tensor& act_scale,
                           torch::Tensor& act_zero_point) {
  std::vector<Entry> entries;
  int index = 0;
  ForEachConv(state, [&](QConv& c) {
    const std::string name = "conv " + std::to_string(index++);
    entries.push_back({&c.weight_q,
                       torch::kChar,
                       {c.out_channels, c.in_channels, c.kernel, c.kernel},
                       name + " weight"});
    entries.push_back({&c.weight_scale, torch::kFloat, {c.out_channels}, name + " scale"});
    entries.push_back({&c.bias, torch::kFloat, {c.out_channels}, name + " bias"});
  });
  index = 0;
  ForEachLinear(state, [&](QLinear& l) {
    const std::string name = "linear " + std::to_string(index++);
    entries.push_back(
        {&l.weight_q, torch::kChar, {l.out_features, l.in_features}, name + " weight"});
    entries.push_back({&l.weight_scale, torch::kFloat, {l.out_features}, name + " scale"});
    entries.push_back({&l.bias, torch::kFloat, {l.out_features}, name + " bias"});
  });
  const int64_t points = static_cast<int64_t>(state.acts.size());
  entries.push_back({&act_scale, torch::kFloat, {points}, "activation scales"});
  entries.push_back({&act_zero_point, torch::kByte, {points}, "activation zero points"});
  return entries;
}

int64_t EntryBytes(const Entry& e) {
  int64_t n = static_cast<int64_t>(c10::elementSize(e.dtype));
  for (int64_t d : e.shape) n *= d;
  return n;
}

uint32_t Crc32(uint32_t crc, const void* data, size_t size) {
  return static_cast<uint32_t>(
      crc32(crc, static_cast<const Bytef*>(data), static_cast<uInt>(size)));
}

// Validates the loaded tensors' values (shapes and sizes were checked on the way in).
Status CheckValues(Int8HeadState& state, const torch::Tensor& act_scale,
                   const torch::Tensor& act_zero_point) {
  Status status;
  auto check = [&status](const torch::Tensor& scale, const torch::Tensor& bias,
                         const std::string& what) {
    if (status.ok() &&
        (!int8::AllPositiveFinite(scale) || !torch::isfinite(bias).all().item<bool>())) {
      status = Status::DataLoss("int8 head bytes: " + what + " has invalid scales or biases");
    }
  };
  ForEachConv(state, [&](QConv& c) { check(c.weight_scale, c.bias, "a conv"); });
  ForEachLinear(state, [&](QLinear& l) { check(l.weight_scale, l.bias, "a linear"); });
  CLEAVE_RETURN_IF_ERROR(status);
  return int8::ReadActQuants(act_scale, act_zero_point, state.act_after_relu, "int8 head bytes",
                             state.acts);
}

Result<nlohmann::json> ParseHeader(capnp::Data::Reader blob) {
  nlohmann::json header = nlohmann::json::parse(blob.begin(), blob.end(), nullptr,
                                                /*allow_exceptions=*/false);
  if (!header.is_object() || !header.contains("format") || header["format"] != kFormat) {
    return Status::DataLoss("int8 head bytes: not a cleave int8 head");
  }
  if (!header.contains("version") || !header["version"].is_number_integer()) {
    return Status::DataLoss("int8 head bytes: no format version");
  }
  if (header["version"].get<int64_t>() != kHeadFormatVersion) {
    return Status::VersionMismatch("int8 head bytes: format version " + header["version"].dump() +
                                   ", this build reads " + std::to_string(kHeadFormatVersion));
  }
  for (const char* key : {"end_block", "crc32"}) {
    if (!header.contains(key) || !header[key].is_number_unsigned()) {
      return Status::DataLoss(std::string("int8 head bytes: bad header field ") + key);
    }
  }
  for (const char* key : {"input_mean", "input_std"}) {
    if (!header.contains(key) || !(header[key].is_number() || header[key].is_array())) {
      return Status::DataLoss(std::string("int8 head bytes: bad header field ") + key);
    }
  }
  if (!header.contains("layout") || !header["layout"].is_string()) {
    return Status::DataLoss("int8 head bytes: bad header field layout");
  }
  return header;
}

}  // namespace

std::string LayoutString(const VisionModelSpec& spec, int end_block) {
  std::string s = "in=" + std::to_string(spec.input_channels) + "x" +
                  std::to_string(spec.image_size) + ";classes=" + std::to_string(spec.num_classes);
  for (int i = 0; i < end_block && i < static_cast<int>(spec.blocks.size()); ++i) {
    const BlockSpec& b = spec.blocks[i];
    s += ";" + b.type + ":" + std::to_string(b.in_channels) + ">" + std::to_string(b.out_channels) +
         ",k" + std::to_string(b.kernel) + ",s" + std::to_string(b.stride) + ",e" +
         std::to_string(b.expansion) + (b.relu ? ",r" : "");
    for (const ExitSpec& e : spec.exits) {
      if (e.after_block == i) s += ";exit:" + std::to_string(e.hidden_channels);
    }
  }
  return s;
}

Result<std::string> SerializeHead(const Int8HeadState& const_state) {
  // Entries() hands out mutable pointers for the reader's sake; nothing is written here.
  Int8HeadState& state = const_cast<Int8HeadState&>(const_state);
  std::vector<float> scales;
  std::vector<uint8_t> zero_points;
  for (const ActQuant& a : state.acts) {
    scales.push_back(a.scale);
    zero_points.push_back(static_cast<uint8_t>(a.zero_point));
  }
  torch::Tensor act_scale = torch::tensor(scales, torch::kFloat);
  torch::Tensor act_zero_point = torch::tensor(zero_points, torch::kByte);
  const std::vector<Entry> entries = Entries(state, act_scale, act_zero_point);

  std::vector<torch::Tensor> contiguous;
  uint32_t crc = Crc32(0, nullptr, 0);
  for (const Entry& e : entries) {
    contiguous.push_back(e.tensor->contiguous());
    if (contiguous.back().scalar_type() != e.dtype || contiguous.back().sizes() != e.shape) {
      return Status::Internal("int8 head: " + e.name + " does not match its layout");
    }
    crc = Crc32(crc, contiguous.back().data_ptr(), EntryBytes(e));
  }
  const nlohmann::json header = {{"format", kFormat},
                                 {"version", kHeadFormatVersion},
                                 {"end_block", state.end_block},
                                 {"layout", state.layout},
                                 {"input_mean", NormalizationHeader(state.input_mean)},
                                 {"input_std", NormalizationHeader(state.input_std)},
                                 {"crc32", crc}};
  const std::string header_text = header.dump();

  capnp::MallocMessageBuilder message;
  auto list = message.initRoot<capnp::List<capnp::Data>>(static_cast<uint>(entries.size() + 1));
  list.set(0, capnp::Data::Reader(reinterpret_cast<const kj::byte*>(header_text.data()),
                                  header_text.size()));
  for (size_t i = 0; i < entries.size(); ++i) {
    list.set(static_cast<uint>(i + 1),
             capnp::Data::Reader(static_cast<const kj::byte*>(contiguous[i].data_ptr()),
                                 static_cast<size_t>(EntryBytes(entries[i]))));
  }
  const kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  const kj::ArrayPtr<const kj::byte> bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

Result<std::unique_ptr<Int8HeadState>> DeserializeHead(const std::string& bytes,
                                                       const VisionModelSpec& spec) {
  if (bytes.empty() || bytes.size() > kMaxBytes || bytes.size() % sizeof(capnp::word) != 0) {
    return Status::DataLoss("int8 head bytes: size " + std::to_string(bytes.size()) +
                            " is not a plausible message size");
  }
  CLEAVE_RETURN_IF_ERROR(spec.Validate());
  // Cap'n Proto needs word-aligned memory; std::string gives no such promise.
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  capnp::ReaderOptions options;
  options.traversalLimitInWords = words.size() + 64;
  options.nestingLimit = 4;
  try {
    capnp::FlatArrayMessageReader reader(words, options);
    if (reader.getEnd() != words.end()) {
      return Status::DataLoss("int8 head bytes: trailing bytes after the message");
    }
    const auto list = reader.getRoot<capnp::List<capnp::Data>>();
    if (list.size() < 1) return Status::DataLoss("int8 head bytes: empty message");
    CLEAVE_ASSIGN_OR_RETURN(nlohmann::json header, ParseHeader(list[0]));

    const int64_t end_block = header["end_block"].get<int64_t>();
    if (end_block < 1 || end_block > static_cast<int64_t>(spec.blocks.size())) {
      return Status::InvalidArgument("int8 head: end_block " + std::to_string(end_block) +
                                     " does not fit the spec");
    }
    if (header["layout"].get<std::string>() != LayoutString(spec, static_cast<int>(end_block))) {
      return Status::InvalidArgument("int8 head: quantized for a different model layout");
    }
    if (header["input_mean"] != NormalizationHeader(spec.input_mean) ||
        header["input_std"] != NormalizationHeader(spec.input_std)) {
      return Status::InvalidArgument("int8 head: input normalization differs from the spec");
    }
    CLEAVE_ASSIGN_OR_RETURN(Int8HeadState skeleton,
                            BuildSkeleton(spec, static_cast<int>(end_block)));
    auto state = std::make_unique<Int8HeadState>(std::move(skeleton));
    state->layout = header["layout"].get<std::string>();

    torch::Tensor act_scale, act_zero_point;
    const std::vector<Entry> entries = Entries(*state, act_scale, act_zero_point);
    if (list.size() != entries.size() + 1) {
      return Status::DataLoss("int8 head bytes: " + std::to_string(list.size() - 1) +
                              " tensors where the layout has " + std::to_string(entries.size()));
    }
    uint32_t crc = Crc32(0, nullptr, 0);
    for (size_t i = 0; i < entries.size(); ++i) {
      const Entry& e = entries[i];
      const capnp::Data::Reader blob = list[static_cast<uint>(i + 1)];
      if (static_cast<int64_t>(blob.size()) != EntryBytes(e)) {
        return Status::DataLoss("int8 head bytes: " + e.name + " has " +
                                std::to_string(blob.size()) + " bytes, expected " +
                                std::to_string(EntryBytes(e)));
      }
      *e.tensor = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
      std::memcpy(e.tensor->data_ptr(), blob.begin(), blob.size());
      crc = Crc32(crc, blob.begin(), blob.size());
    }
    if (uint64_t{crc} != header["crc32"].get<uint64_t>()) {
      return Status::DataLoss("int8 head bytes: checksum mismatch (corrupt data)");
    }
    CLEAVE_RETURN_IF_ERROR(CheckValues(*state, act_scale, act_zero_point));
    DequantizeAllWeights(*state);
    return state;
  } catch (const kj::Exception& e) {
    return Status::DataLoss(std::string("int8 head bytes: malformed message: ") +
                            e.getDescription().cStr());
  }
}

}  // namespace cleave::split::int8
