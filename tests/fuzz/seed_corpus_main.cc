// Writes the seed corpus of every fuzz target (tests/fuzz/corpus/<target>/): for each wire
// decoder a few valid messages made by the real encoders and a few hostile ones (truncated,
// another protocol version, fields that break the documented limits, bytes that are no
// message at all). ctest replays the checked-in corpus through each target in the normal
// build (fuzz_replay_*) and checks that it is what this program writes (fuzz_seed_corpus),
// and scripts/common.sh's fuzz smoke run starts from it.
//
//   fuzz_seed_corpus OUT_DIR             writes OUT_DIR/<target>/<name> (deterministic)
//   fuzz_seed_corpus --check CORPUS_DIR  exit 1 unless CORPUS_DIR holds exactly that
//
// To change the corpus, change this program, run it into an empty folder and copy the
// result over tests/fuzz/corpus.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/edge_api.h"
#include "common/entropy_coder.h"
#include "common/entropy_fit.h"
#include "common/entropy_model.h"
#include "common/file_util.h"
#include "common/fl_wire.h"
#include "common/image_codec.h"
#include "common/inference_wire.h"
#include "common/jpeg_image.h"
#include "common/lm_wire.h"
#include "common/png_image.h"
#include "common/tensor_codec.h"
#include "edge/length_prefixed.h"
#include "federated/checkpoint_format.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;

// Writes the corpus under `root`, or (check mode) compares it with the files there.
class CorpusWriter {
 public:
  CorpusWriter(fs::path root, bool check) : root_(std::move(root)), check_(check) {}

  // Whether `target`'s decoders accept an input. Add checks every "valid-" input against it
  // (accepted) and every "hostile-" one (refused), so the names say what the inputs are.
  using AcceptsFn = std::function<bool(const std::string& bytes)>;
  void SetAccepts(const std::string& target, AcceptsFn accepts) {
    accepts_[target] = std::move(accepts);
  }
  // One input of `target`'s corpus, judged by its SetAccepts function.
  void Add(const std::string& target, const std::string& name, const std::string& bytes) {
    Add(target, name, bytes, accepts_.at(target)(bytes));
  }
  // One input that the decoders accept or not as `accepted` says.
  void Add(const std::string& target, const std::string& name, const std::string& bytes,
           bool accepted) {
    if ((name.rfind("valid-", 0) == 0) != accepted) {
      Problem(target + "/" + name + (accepted ? " is accepted" : " is refused") +
              " by the decoders, against its name");
    }
    const fs::path path = root_ / target / name;
    written_.insert(path);
    if (check_) {
      std::ifstream in(path, std::ios::binary);
      const std::string have((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
      if (!in.is_open() || have != bytes) Problem(path.string() + " is missing or differs");
      return;
    }
    fs::create_directories(path.parent_path());
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) Problem("cannot write " + path.string());
  }
  // Check mode: every file under the root must have been written by Add.
  void CheckNoOthers() {
    std::error_code ec;
    for (const auto& e : fs::recursive_directory_iterator(root_, ec)) {
      if (e.is_regular_file() && written_.count(e.path()) == 0) {
        Problem(e.path().string() + " is not part of the seed corpus");
      }
    }
    if (ec) Problem("cannot list " + root_.string() + ": " + ec.message());
  }
  int problems() const { return problems_; }

 private:
  void Problem(const std::string& what) {
    std::fprintf(stderr, "%s\n", what.c_str());
    ++problems_;
  }

  fs::path root_;
  bool check_;
  std::map<std::string, AcceptsFn> accepts_;
  std::set<fs::path> written_;
  int problems_ = 0;
};

std::string FirstHalf(const std::string& bytes) { return bytes.substr(0, bytes.size() / 2); }

// The value of an encoder call that cannot fail on the inputs written here; exits if it did.
template <typename T>
T Must(Result<T> result, const char* what) {
  if (!result.ok()) {
    std::fprintf(stderr, "error: %s: %s\n", what, result.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(result).value();
}

// `count` values spread over [-1, 1), the same every run.
std::vector<float> Ramp(size_t count) {
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) {
    values[i] = -1.0f + 2.0f * static_cast<float>(i) / static_cast<float>(count);
  }
  return values;
}

wire::EncodedTensor Tensor(const std::vector<uint32_t>& shape, wire::DType dtype,
                           uint32_t channel_axis = 0) {
  size_t count = 1;
  for (uint32_t d : shape) count *= d;
  const std::vector<float> values = Ramp(count);
  return Must(wire::EncodeTensor(values.data(), shape, dtype, channel_axis), "EncodeTensor");
}

std::string Png28() {
  GrayImage image;
  image.width = image.height = 28;
  image.pixels.resize(28 * 28);
  for (size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = static_cast<uint8_t>(i * 7);
  return Must(EncodePngGray8(image), "EncodePngGray8");
}

void SplitInferenceWire(CorpusWriter& out) {  // inference_wire_fuzz
  const std::string t = "inference_wire_fuzz";
  out.SetAccepts(t, [](const std::string& bytes) {
    if (auto request = wire::DecodeInferRequest(bytes); request.ok()) {
      if (request->input == wire::InputKind::kCodedFeatures ||
          request->input == wire::InputKind::kPackedFeatures) {
        return true;
      }
      return request->input == wire::InputKind::kFeatures
                 ? wire::DecodeTensor(request->features).ok()
                 : DecodePng(request->png).ok();
    }
    return wire::DecodeInferReply(bytes).ok() || DecodePng(bytes).ok();
  });
  wire::InferRequest features;
  features.request_id = 41;
  features.model = "fmnist";
  features.deadline_ms = 250;
  features.features = Tensor({1, 8, 7, 7}, wire::DType::kUInt4, 1);
  out.Add(t, "valid-request-u4-features", wire::EncodeInferRequest(features));
  wire::InferRequest png = features;
  png.input = wire::InputKind::kPng;
  png.features = {};
  png.png = Png28();
  out.Add(t, "valid-request-png", wire::EncodeInferRequest(png));
  out.Add(t, "valid-png-image", Png28());  // the target also decodes raw bytes as a PNG
  wire::InferReply reply;
  reply.request_id = 41;
  reply.scores = Ramp(10);
  reply.num_classes = 10;
  reply.batch_size = 4;
  reply.queue_us = 900;
  reply.compute_us = 1200;
  out.Add(t, "valid-reply-scores", wire::EncodeInferReply(reply));
  wire::InferReply error;
  error.request_id = 42;
  error.status = wire::ReplyStatus::kOverloaded;
  error.error = "the queue is full";
  out.Add(t, "valid-reply-overloaded", wire::EncodeInferReply(error));

  out.Add(t, "hostile-truncated-request", FirstHalf(wire::EncodeInferRequest(features)));
  wire::InferRequest version = features;
  version.protocol_version = wire::kCompactProtocolVersion + 1;
  out.Add(t, "hostile-other-version", wire::EncodeInferRequest(version));
  // Version 2: packed u4 features of split 0, entropy-coded bytes, an image; then an empty
  // and a truncated one.
  wire::InferRequest compact;
  compact.protocol_version = wire::kCompactProtocolVersion;
  compact.request_id = 43;
  compact.deadline_ms = 250;
  compact.layout_tag = 0x5eed;
  compact.input = wire::InputKind::kPackedFeatures;
  compact.coded = Tensor({1, 2, 7, 7}, wire::DType::kUInt4, 1).data;
  out.Add(t, "valid-compact-packed", wire::EncodeInferRequest(compact));
  wire::InferRequest coded = compact;
  coded.input = wire::InputKind::kCodedFeatures;
  coded.split = 1;
  coded.coded = std::string("\x3a\x91\x07\xc4\x55\x12\xe8\x6b\x20\x9d\x41\xf3", 12);
  out.Add(t, "valid-compact-coded", wire::EncodeInferRequest(coded));
  wire::InferRequest compact_png = compact;
  compact_png.input = wire::InputKind::kPng;
  compact_png.coded.clear();
  compact_png.png = Png28();
  out.Add(t, "valid-compact-image", wire::EncodeInferRequest(compact_png));
  wire::InferRequest empty = compact;
  empty.coded.clear();
  out.Add(t, "hostile-compact-empty-features", wire::EncodeInferRequest(empty));
  out.Add(t, "hostile-compact-truncated", FirstHalf(wire::EncodeInferRequest(compact)));
  wire::InferRequest huge = features;
  huge.features.shape = {4096, 4096, 64};  // claims far more elements than its bytes
  out.Add(t, "hostile-shape-beyond-data", wire::EncodeInferRequest(huge));
  wire::InferRequest broken_png = png;
  broken_png.png = FirstHalf(Png28());
  out.Add(t, "hostile-truncated-png", wire::EncodeInferRequest(broken_png));
  wire::InferReply nan = reply;
  nan.scores[3] = std::numeric_limits<float>::quiet_NaN();
  out.Add(t, "hostile-reply-nan-score", wire::EncodeInferReply(nan));
  wire::InferReply rows = reply;
  rows.num_classes = 3;  // 10 scores are not whole rows of 3
  out.Add(t, "hostile-reply-ragged-rows", wire::EncodeInferReply(rows));
  out.Add(t, "hostile-not-capnp", "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
}

void HardTokenWire(CorpusWriter& out) {  // lm_wire_fuzz
  const std::string t = "lm_wire_fuzz";
  out.SetAccepts(t, [](const std::string& bytes) {
    return lm_wire::DecodeLmRequest(bytes).ok() || lm_wire::DecodeLmReply(bytes).ok();
  });
  lm_wire::LmRequest states;
  states.request_id = 7;
  states.model = "lm";
  states.session = "session-1";
  states.start = 12;
  states.states = Tensor({3, 24}, wire::DType::kUInt8);
  states.predict = true;
  states.deadline_ms = 500;
  out.Add(t, "valid-request-states", lm_wire::EncodeLmRequest(states));
  lm_wire::LmRequest tokens;
  tokens.request_id = 8;
  tokens.session = "cloud-only";
  tokens.tokens = "The cat ";
  tokens.predict = true;
  tokens.reset_session = true;
  out.Add(t, "valid-request-tokens", lm_wire::EncodeLmRequest(tokens));
  lm_wire::LmRequest end;
  end.request_id = 9;
  end.session = "session-1";
  end.start = 15;
  end.states.dtype = wire::DType::kUInt8;  // no rows, as LmRouter::End sends it
  end.states.channel_axis = 0;
  end.states.shape = {0, 24};
  end.end_session = true;
  out.Add(t, "valid-request-end-session", lm_wire::EncodeLmRequest(end));
  lm_wire::LmReply reply;
  reply.request_id = 7;
  reply.position = 15;
  reply.log_probs.assign(256, std::log(1.0f / 256));
  reply.compute_us = 300;
  reply.macs = 123456;
  out.Add(t, "valid-reply-log-probs", lm_wire::EncodeLmReply(reply));
  lm_wire::LmReply resync;
  resync.request_id = 7;
  resync.status = lm_wire::LmStatus::kResync;
  resync.position = 4;
  resync.error = "context is at position 4, not 12";
  out.Add(t, "valid-reply-resync", lm_wire::EncodeLmReply(resync));

  out.Add(t, "hostile-truncated-request", FirstHalf(lm_wire::EncodeLmRequest(states)));
  lm_wire::LmRequest version = states;
  version.protocol_version = lm_wire::kProtocolVersion + 1;
  out.Add(t, "hostile-other-version", lm_wire::EncodeLmRequest(version));
  lm_wire::LmRequest no_session = states;
  no_session.session.clear();
  out.Add(t, "hostile-empty-session", lm_wire::EncodeLmRequest(no_session));
  lm_wire::LmRequest long_session = states;
  long_session.session.assign(lm_wire::kMaxSessionBytes + 1, 's');
  out.Add(t, "hostile-session-too-long", lm_wire::EncodeLmRequest(long_session));
  lm_wire::LmRequest both = states;
  both.tokens = "ab";  // tokens beside states
  out.Add(t, "hostile-tokens-and-states", lm_wire::EncodeLmRequest(both));
  lm_wire::LmReply positive = reply;
  positive.log_probs[0] = 0.5f;  // a log-probability above 0
  out.Add(t, "hostile-reply-positive-log-prob", lm_wire::EncodeLmReply(positive));
  out.Add(t, "hostile-not-capnp", std::string(64, '\xff'));
}

void EdgeApi(CorpusWriter& out) {  // edge_api_fuzz
  const std::string t = "edge_api_fuzz";
  out.SetAccepts(t, [](const std::string& bytes) {
    return edge_api::DecodeClassifyRequest(bytes).ok() || edge_api::DecodeClassifyReply(bytes).ok();
  });
  edge_api::ClassifyRequest gray;
  gray.request_id = 3;
  gray.deadline_ms = 250;
  gray.exit_threshold = 0.8f;
  gray.width = gray.height = 28;
  gray.pixels.assign(28 * 28, '\x40');
  out.Add(t, "valid-request-gray8", edge_api::EncodeClassifyRequest(gray));
  edge_api::ClassifyRequest png;
  png.request_id = 4;
  png.kind = edge_api::ImageKind::kPng;
  png.png = Png28();
  out.Add(t, "valid-request-png", edge_api::EncodeClassifyRequest(png));
  edge_api::ClassifyRequest rgb = gray;
  rgb.request_id = 6;
  rgb.kind = edge_api::ImageKind::kRgb8;
  rgb.pixels.assign(28 * 28 * 3, '\x60');
  out.Add(t, "valid-request-rgb8", edge_api::EncodeClassifyRequest(rgb));
  edge_api::ClassifyRequest jpeg;
  jpeg.request_id = 7;
  jpeg.kind = edge_api::ImageKind::kJpeg;
  jpeg.jpeg = "\xff\xd8\xff\xe0 a JPEG's first bytes";
  out.Add(t, "valid-request-jpeg", edge_api::EncodeClassifyRequest(jpeg));
  edge_api::ClassifyReply reply;
  reply.request_id = 3;
  reply.source = edge_api::AnswerSource::kCloud;
  reply.predicted_class = 7;
  reply.confidence = 0.93f;
  reply.scores = Ramp(10);
  reply.exit_index = -1;
  reply.wire_bytes = 140;
  reply.edge_micros = 800;
  reply.total_micros = 2100;
  reply.class_name = "Sneaker";
  out.Add(t, "valid-reply-cloud", edge_api::EncodeClassifyReply(reply));
  edge_api::ClassifyReply error;
  error.request_id = 5;
  error.error = "deadline passed";
  out.Add(t, "valid-reply-error", edge_api::EncodeClassifyReply(error));

  out.Add(t, "hostile-truncated-request", FirstHalf(edge_api::EncodeClassifyRequest(gray)));
  edge_api::ClassifyRequest version = gray;
  version.protocol_version = edge_api::kProtocolVersion + 1;
  out.Add(t, "hostile-other-version", edge_api::EncodeClassifyRequest(version));
  edge_api::ClassifyRequest short_pixels = gray;
  short_pixels.pixels.resize(10);  // fewer bytes than width x height
  out.Add(t, "hostile-pixels-not-width-by-height", edge_api::EncodeClassifyRequest(short_pixels));
  edge_api::ClassifyRequest wide = gray;
  wide.width = edge_api::kMaxImageSide + 1;
  out.Add(t, "hostile-image-too-wide", edge_api::EncodeClassifyRequest(wide));
  edge_api::ClassifyRequest threshold = gray;
  threshold.exit_threshold = std::numeric_limits<float>::quiet_NaN();
  out.Add(t, "hostile-nan-threshold", edge_api::EncodeClassifyRequest(threshold));
  out.Add(t, "hostile-empty", "");
}

// tensor_codec_fuzz reads its input as fields, not as a message (see its file comment): a
// mode byte, then either a tensor as a peer could describe it (even mode) or fp32 values to
// encode (odd mode). These build such inputs field by field.
struct FieldBytes {
  std::string bytes;
  FieldBytes& Byte(uint8_t b) {
    bytes.push_back(static_cast<char>(b));
    return *this;
  }
  FieldBytes& U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) Byte(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  FieldBytes& F32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    return U32(bits);
  }
  FieldBytes& Raw(const std::string& raw) {
    bytes += raw;
    return *this;
  }
};

// Even mode: dtype, rank, dims (small: one byte below 240; else a 240+ marker then a u32),
// channel axis, channel count, the scales, the zero-point count (channels + extra & 1) and
// zero points, then the data bytes.
struct PeerTensor {
  uint8_t dtype;
  std::vector<uint32_t> shape;
  std::vector<float> scales;
  std::vector<uint8_t> zero_points;
  std::string data;
  uint8_t channel_axis = 0;

  std::string Bytes() const {
    FieldBytes f;
    f.Byte(0).Byte(dtype).Byte(static_cast<uint8_t>(shape.size()));
    for (uint32_t d : shape) {
      if (d < 9) {
        f.Byte(static_cast<uint8_t>(d));
      } else {
        f.Byte(240).U32(d);
      }
    }
    f.Byte(channel_axis).Byte(static_cast<uint8_t>(scales.size()));
    for (float s : scales) f.F32(s);
    f.Byte(static_cast<uint8_t>(zero_points.size() - scales.size()));
    for (uint8_t z : zero_points) f.Byte(z);
    return f.Raw(data).bytes;
  }
  // What the target's ValidateTensor says of it.
  bool Valid() const {
    wire::EncodedTensor t;
    t.dtype = static_cast<wire::DType>(dtype);
    t.shape = shape;
    t.channel_axis = channel_axis;
    t.quant.scale = scales;
    t.quant.zero_point = zero_points;
    t.data = data;
    return wire::ValidateTensor(t).ok();
  }
};

// Odd mode: dtype, channel count - 1, whether the fixed parameters are used, a scale and
// zero point per channel (always present), then the values.
struct EncodeInput {
  uint8_t dtype;
  std::vector<float> values;
  uint8_t channels = 1;
  std::vector<std::pair<float, uint8_t>> fixed;  // empty: parameters from the values

  std::string Bytes() const {
    FieldBytes f;
    f.Byte(1).Byte(dtype).Byte(static_cast<uint8_t>(channels - 1)).Byte(fixed.empty() ? 0 : 1);
    for (uint8_t c = 0; c < channels; ++c) {
      const auto p = fixed.empty() ? std::pair<float, uint8_t>{0, 0} : fixed[c];
      f.F32(p.first).Byte(p.second);
    }
    for (float v : values) f.F32(v);
    return f.bytes;
  }
  // Whether the target's EncodeTensor call succeeds.
  bool Valid() const {
    wire::QuantParams params;
    for (const auto& [scale, zero_point] : fixed) {
      params.scale.push_back(scale);
      params.zero_point.push_back(zero_point);
    }
    const std::vector<uint32_t> shape = {channels, static_cast<uint32_t>(values.size() / channels)};
    return wire::EncodeTensor(values.data(), shape, static_cast<wire::DType>(dtype), 0,
                              fixed.empty() ? nullptr : &params)
        .ok();
  }
};

void TensorCodec(CorpusWriter& out) {  // tensor_codec_fuzz
  const std::string t = "tensor_codec_fuzz";
  const auto u8 = static_cast<uint8_t>(wire::DType::kUInt8);
  const auto u4 = static_cast<uint8_t>(wire::DType::kUInt4);
  const auto f32 = static_cast<uint8_t>(wire::DType::kFloat32);
  const auto add = [&](const std::string& name, const auto& input) {
    out.Add(t, name, input.Bytes(), input.Valid());
  };
  // A u8 tensor [2, 3], one scale and zero point per row (axis 0).
  add("valid-peer-u8", PeerTensor{u8, {2, 3}, {0.5f, 0.25f}, {0, 128}, "abcdef"});
  // A u4 tensor [1, 3] (one channel): two values a byte, the last high nibble zero.
  add("valid-peer-u4", PeerTensor{u4, {1, 3}, {0.1f}, {8}, "\x12\x03"});
  add("valid-encode-f32", EncodeInput{f32, Ramp(8), 1, {}});
  add("valid-encode-u8-two-channels", EncodeInput{u8, Ramp(8), 2, {}});
  add("valid-encode-u4-fixed-params", EncodeInput{u4, Ramp(6), 1, {{0.125f, 7}}});

  add("hostile-peer-unknown-dtype", PeerTensor{5, {2}, {1.0f}, {0}, "ab"});
  add("hostile-peer-rank-above-limit",
      PeerTensor{u8, std::vector<uint32_t>(wire::kMaxTensorRank + 1, 1), {1.0f}, {0}, "a"});
  add("hostile-peer-huge-dim", PeerTensor{u8, {0x7fffffff, 2}, {1.0f}, {0}, "ab"});
  add("hostile-peer-nan-scale",
      PeerTensor{u8, {2}, {std::numeric_limits<float>::quiet_NaN()}, {0}, "ab"});
  add("hostile-peer-extra-zero-point", PeerTensor{u8, {2}, {1.0f}, {0, 1}, "ab"});
  add("hostile-peer-data-short", PeerTensor{f32, {4}, {}, {}, "abc"});
  add("hostile-encode-inf", EncodeInput{u8, {1.0f, INFINITY, -2.0f, 0.5f}, 1, {}});
}

// entropy_coder_fuzz reads a mode byte (% 4) and then fields (see its file comment): 0 a
// serialized model, 1 model JSON, 2 a model, a symbol count and entropy-coded bytes, 3 a
// dtype, a count and packed tensor data.
std::string EntropyInput(uint8_t mode, const std::string& rest) {
  return std::string(1, static_cast<char>(mode)) + rest;
}

std::string EntropyU16(size_t value) {
  return {static_cast<char>(value & 0xFF), static_cast<char>((value >> 8) & 0xFF)};
}

struct EntropyDecodeInput {
  std::string model;  // serialized
  size_t count;
  std::string coded;

  std::string Bytes() const {
    return EntropyInput(2, EntropyU16(model.size()) + model + EntropyU16(count) + coded);
  }
  // Whether the target's EntropyDecode call succeeds.
  bool Valid() const {
    auto parsed = EntropyModel::Parse(model);
    return parsed.ok() && EntropyDecode(*parsed, coded, count).ok();
  }
};

struct EntropyUnpackInput {
  wire::DType dtype;
  size_t count;
  std::string data;

  std::string Bytes() const {
    return EntropyInput(3, std::string(1, static_cast<char>(dtype)) + EntropyU16(count) + data);
  }
  bool Valid() const { return UnpackSymbols(dtype, data, count).ok(); }
};

// A serialized entropy model written field by field ("CEM", version 1, then varints), to
// break one field at a time.
std::string EntropyModelFields(const std::vector<uint32_t>& fields) {
  std::string out("CEM\x01", 4);
  for (uint32_t value : fields) {
    for (; value >= 0x80; value >>= 7) out.push_back(static_cast<char>((value & 0x7F) | 0x80));
    out.push_back(static_cast<char>(value));
  }
  return out;
}

// A per_element_predicted model spelled out rather than fitted, so its bytes do not depend on
// floating point: [2, 1, 8] u4, 4 buckets of 4 symbols; channel 0 predicted from the left
// neighbour, channel 1 from the same position of channel 0 (x = 0) or the mean of that and
// the left neighbour; bucket b's table favours symbols 4b..4b+3.
EntropyModel SpelledOutPredictedModel() {
  EntropyPredictor predictor;
  predictor.buckets = 4;
  predictor.elements.resize(16);
  for (uint32_t i = 1; i < 16; ++i) {
    EntropyElementPredictor& element = predictor.elements[i];
    element.bias = 512;  // two symbols: bucket b holds predictions in [4b - 2, 4b + 2)
    if (i < 8) {
      element.taps = {{1, 256}};
    } else if (i == 8) {
      element.taps = {{8, 256}};
    } else {
      element.taps = {{1, 128}, {8, 128}};
    }
  }
  std::vector<uint32_t> frequencies;
  for (uint32_t table = 0; table < 16 * 4; ++table) {
    for (uint32_t symbol = 0; symbol < 16; ++symbol) {
      frequencies.push_back(symbol / 4 == table % 4 ? 940 : 28);  // 4 * 940 + 12 * 28 = 4096
    }
  }
  return Must(EntropyModel::Create(16, 12, ContextKind::kPerElementPredicted, 2, 16, frequencies,
                                   EntropyTermination::kPrefixFree, predictor),
              "EntropyModel::Create");
}

void EntropyCoder(CorpusWriter& out) {  // entropy_coder_fuzz
  const std::string t = "entropy_coder_fuzz";
  const auto add = [&](const std::string& name, const auto& input) {
    out.Add(t, name, input.Bytes(), input.Valid());
  };
  // A stand-in for the [2,7,7] u4 bottleneck: 40 samples whose channels peak at 2 and 9.
  std::vector<uint8_t> samples;
  for (uint32_t i = 0; i < 40 * 98; ++i) {
    const uint32_t peak = (i % 98) < 49 ? 2 : 9;
    samples.push_back(static_cast<uint8_t>((peak + (i * 7919 % 13 < 9 ? 0 : i % 5)) % 16));
  }
  EntropyFitOptions options;
  options.channels = 2;
  options.elements = 98;
  const EntropyModel per_channel =
      Must(FitEntropyModel(samples, options, ContextKind::kPerChannel), "FitEntropyModel");
  options.termination = EntropyTermination::kMinimal;
  const EntropyModel minimal =
      Must(FitEntropyModel(samples, options, ContextKind::kPerElement), "FitEntropyModel");
  EntropyFitOptions bytes_options;
  bytes_options.alphabet = 256;
  bytes_options.elements = 16;
  std::vector<uint8_t> byte_samples;
  for (uint32_t i = 0; i < 16 * 8; ++i) byte_samples.push_back(static_cast<uint8_t>(i * i % 251));
  const EntropyModel u8_shared =
      Must(FitEntropyModel(byte_samples, bytes_options, ContextKind::kShared), "FitEntropyModel");
  const std::vector<uint8_t> message(samples.begin(), samples.begin() + 98);
  const std::string coded = Must(EntropyEncode(per_channel, message), "EntropyEncode");
  const std::string coded_minimal = Must(EntropyEncode(minimal, message), "EntropyEncode");
  const std::vector<uint8_t> byte_message(byte_samples.begin(), byte_samples.begin() + 16);
  const std::string coded_u8 = Must(EntropyEncode(u8_shared, byte_message), "EntropyEncode");

  const std::string model_bytes = per_channel.Serialize();
  out.Add(t, "valid-model-per-channel", EntropyInput(0, model_bytes), true);
  out.Add(t, "valid-model-per-element-minimal", EntropyInput(0, minimal.Serialize()), true);
  out.Add(t, "valid-model-json", EntropyInput(1, per_channel.ToJson().dump()), true);
  add("valid-decode-prefix-free", EntropyDecodeInput{model_bytes, 98, coded});
  add("valid-decode-minimal", EntropyDecodeInput{minimal.Serialize(), 98, coded_minimal});
  add("valid-decode-u8", EntropyDecodeInput{u8_shared.Serialize(), 16, coded_u8});
  add("valid-decode-nothing", EntropyDecodeInput{model_bytes, 0, ""});
  const std::string odd_u4 = Must(PackSymbols(wire::DType::kUInt4, message), "PackSymbols");
  add("valid-unpack-u4", EntropyUnpackInput{wire::DType::kUInt4, 98, odd_u4});
  add("valid-unpack-u4-odd", EntropyUnpackInput{wire::DType::kUInt4, 3, "\x21\x03"});
  add("valid-unpack-u8",
      EntropyUnpackInput{wire::DType::kUInt8, 4, std::string("\x00\xff\x10\x7f", 4)});

  const auto refused = [&](const std::string& name, const std::string& model) {
    out.Add(t, name, EntropyInput(0, model), EntropyModel::Parse(model).ok());
  };
  refused("hostile-model-bad-magic", "CEN" + model_bytes.substr(3));
  refused("hostile-model-other-version", "CEM\x02" + model_bytes.substr(4));
  refused("hostile-model-truncated", FirstHalf(model_bytes));
  refused("hostile-model-trailing-byte", model_bytes + "\x01");
  // alphabet 16, precision 12, per-element, prefix-free, 1 channel, 2^22 elements: 64 Mi
  // frequencies announced, refused before anything is allocated.
  refused("hostile-model-huge-element-count",
          std::string("CEM\x01\x10\x0c\x02\x00\x01\x80\x80\x80\x02", 13));
  std::string zero = model_bytes;
  zero[10] = '\0';  // the first frequency (after the 10 header bytes) becomes 0
  refused("hostile-model-zero-frequency", zero);
  nlohmann::json tampered = per_channel.ToJson();
  tampered["fingerprint"] = "00000000";
  out.Add(t, "hostile-json-fingerprint-mismatch", EntropyInput(1, tampered.dump()),
          EntropyModel::FromJson(tampered).ok());
  out.Add(t, "hostile-json-not-json", EntropyInput(1, "{\"alphabet\": 16,"), false);
  add("hostile-decode-truncated",
      EntropyDecodeInput{model_bytes, 98, coded.substr(0, coded.size() - 1)});
  add("hostile-decode-trailing-byte", EntropyDecodeInput{model_bytes, 98, coded + "\x5a"});
  add("hostile-decode-minimal-trailing-zero",
      EntropyDecodeInput{minimal.Serialize(), 98, coded_minimal + std::string(1, '\0')});
  add("hostile-decode-count-beyond-model", EntropyDecodeInput{model_bytes, 99, coded});
  add("hostile-decode-other-model", EntropyDecodeInput{u8_shared.Serialize(), 16, coded});
  add("hostile-decode-random-bytes", EntropyDecodeInput{model_bytes, 98, std::string(40, '\xA7')});
  add("hostile-unpack-padding-nibble", EntropyUnpackInput{wire::DType::kUInt4, 3, "\x21\x13"});
  add("hostile-unpack-short-data", EntropyUnpackInput{wire::DType::kUInt8, 5, "abcd"});
  add("hostile-unpack-f32", EntropyUnpackInput{wire::DType::kFloat32, 1, "abcd"});

  // per_element_predicted: the context depends on the symbols decoded before.
  const EntropyModel predicted = SpelledOutPredictedModel();
  const std::string predicted_bytes = predicted.Serialize();
  const std::vector<uint8_t> row = {3, 4, 4, 5, 6, 6, 7, 8, 3, 4, 5, 5, 6, 7, 7, 8};
  const std::string coded_predicted = Must(EntropyEncode(predicted, row), "EntropyEncode");
  const std::string coded_prefix = Must(EntropyEncode(predicted, row.data(), 5), "EntropyEncode");
  out.Add(t, "valid-model-predicted", EntropyInput(0, predicted_bytes), true);
  out.Add(t, "valid-model-json-predicted", EntropyInput(1, predicted.ToJson().dump()), true);
  add("valid-decode-predicted", EntropyDecodeInput{predicted_bytes, 16, coded_predicted});
  add("valid-decode-predicted-partial", EntropyDecodeInput{predicted_bytes, 5, coded_prefix});
  add("hostile-decode-predicted-truncated",
      EntropyDecodeInput{predicted_bytes, 16, FirstHalf(coded_predicted)});
  add("hostile-decode-predicted-random-bytes",
      EntropyDecodeInput{predicted_bytes, 16, std::string(12, '\x5C')});
  // alphabet 2, precision 8, predicted, prefix-free, 1 channel, 2 or 3 elements, then buckets,
  // per element bias (zigzag), tap count and taps (distance, zigzag weight), then tables.
  const auto predicted_fields = [](std::vector<uint32_t> predictors, uint32_t elements,
                                   uint32_t tables) {
    std::vector<uint32_t> fields = {2, 8, 3, 0, 1, elements};
    fields.insert(fields.end(), predictors.begin(), predictors.end());
    for (uint32_t i = 0; i < tables; ++i) fields.insert(fields.end(), {128, 128});
    return EntropyModelFields(fields);
  };
  out.Add(t, "valid-model-predicted-spelled-out",
          EntropyInput(0, predicted_fields({2, 0, 0, 1, 1, 1, 512}, 2, 4)), true);
  refused("hostile-model-predicted-one-bucket", predicted_fields({1, 0, 0, 0, 0}, 2, 2));
  refused("hostile-model-predicted-tap-beyond-start",
          predicted_fields({2, 0, 0, 1, 1, 2, 512}, 2, 4));
  refused("hostile-model-predicted-tap-into-itself",
          predicted_fields({2, 0, 0, 1, 1, 0, 512}, 2, 4));
  refused("hostile-model-predicted-unsorted-taps",
          predicted_fields({2, 0, 0, 0, 1, 1, 512, 0, 2, 2, 256, 1, 256}, 3, 6));
  refused("hostile-model-predicted-too-many-taps", predicted_fields({2, 0, 0, 1, 65}, 2, 4));
  refused("hostile-model-predicted-truncated-taps", predicted_fields({2, 0, 0, 1, 30}, 2, 4));
  refused("hostile-model-predicted-huge-weight",
          predicted_fields({2, 0, 0, 1, 1, 1}, 2, 0) + std::string("\xFF\xFF\xFF\xFF\x7F", 5));
  nlohmann::json predictor_elsewhere = per_channel.ToJson();
  predictor_elsewhere["predictor"] = predicted.ToJson()["predictor"];
  out.Add(t, "hostile-json-predictor-on-per-channel", EntropyInput(1, predictor_elsewhere.dump()),
          EntropyModel::FromJson(predictor_elsewhere).ok());
  nlohmann::json no_predictor = predicted.ToJson();
  no_predictor.erase("predictor");
  out.Add(t, "hostile-json-predicted-without-predictor", EntropyInput(1, no_predictor.dump()),
          EntropyModel::FromJson(no_predictor).ok());
}

federated::CheckpointData Checkpoint() {
  federated::CheckpointData c;
  c.round = 3;
  c.model_name = "tiny_split";
  c.layout = {{"conv.weight", {4, 1, 3, 3}}, {"conv.bias", {4}}};
  c.weights = {Tensor({4, 1, 3, 3}, wire::DType::kFloat32), Tensor({4}, wire::DType::kFloat32)};
  c.strategy_name = "fedavg";
  c.engine_state = R"({"rounds":[]})";
  return c;
}

void FederatedWire(CorpusWriter& out) {  // fl_wire_fuzz
  const std::string t = "fl_wire_fuzz";
  out.SetAccepts(t, [](const std::string& bytes) { return wire::fl::DecodeMessage(bytes).ok(); });
  const std::string layout = Sha256Hex("conv.weight [4,1,3,3]; conv.bias [4]");
  wire::fl::Register reg;
  reg.client_id = "edge-07";
  reg.num_examples = 6000;
  reg.capabilities.can_train_head = true;
  reg.model_name = "tiny_split";
  reg.layout_sha256 = layout;
  out.Add(t, "valid-register", wire::fl::EncodeMessage(wire::fl::Message(reg)));
  wire::fl::RoundConfig round;
  round.round = 2;
  round.model_name = "tiny_split";
  round.layout_sha256 = layout;
  round.weights = Checkpoint().weights;
  round.trainable = {true, true};
  round.compression.kind = wire::fl::CompressionKind::kInt8;
  out.Add(t, "valid-round-config", wire::fl::EncodeMessage(wire::fl::Message(round)));
  wire::fl::RoundConfig continual = round;
  continual.continual.emplace();
  continual.continual->experience = 2;
  continual.continual->experiences = 5;
  continual.continual->method = wire::fl::ContinualMethod::kDerpp;
  out.Add(t, "valid-round-config-continual", wire::fl::EncodeMessage(wire::fl::Message(continual)));
  wire::fl::Update update;
  update.round = 2;
  update.client_id = "edge-07";
  update.num_examples = 600;
  update.train_loss = 0.75;
  update.tensors = Checkpoint().weights;
  update.train_seconds = 1.5;
  update.steps = 19;
  out.Add(t, "valid-update", wire::fl::EncodeMessage(wire::fl::Message(update)));
  wire::fl::Heartbeat heartbeat;
  heartbeat.client_id = "edge-07";
  heartbeat.has_global = true;
  heartbeat.global_round = 1;
  out.Add(t, "valid-heartbeat", wire::fl::EncodeMessage(wire::fl::Message(heartbeat)));
  out.Add(t, "valid-update-ack",
          wire::fl::EncodeMessage(wire::fl::Message(
              wire::fl::MakeUpdateAck(2, wire::fl::AckReason::kLate, "the round had closed"))));
  wire::fl::Bye bye;
  bye.reason = wire::fl::ByeReason::kShuttingDown;
  out.Add(t, "valid-bye", wire::fl::EncodeMessage(wire::fl::Message(bye)));

  out.Add(t, "hostile-truncated-round-config",
          FirstHalf(wire::fl::EncodeMessage(wire::fl::Message(round))));
  wire::fl::Message version{reg};
  version.protocol_version = wire::fl::kProtocolVersion + 1;
  out.Add(t, "hostile-other-version", wire::fl::EncodeMessage(version));
  wire::fl::Register bad_id = reg;
  bad_id.client_id = "edge\n07";  // a control byte in the id
  out.Add(t, "hostile-client-id-control-byte", wire::fl::EncodeMessage(wire::fl::Message(bad_id)));
  wire::fl::RoundConfig nan_rate = round;
  nan_rate.learning_rate = std::numeric_limits<double>::quiet_NaN();
  out.Add(t, "hostile-nan-learning-rate", wire::fl::EncodeMessage(wire::fl::Message(nan_rate)));
  wire::fl::RoundConfig no_trainable = round;
  no_trainable.trainable = {false, false};
  out.Add(t, "hostile-nothing-trainable", wire::fl::EncodeMessage(wire::fl::Message(no_trainable)));
  wire::fl::RoundConfig past_stream = continual;
  past_stream.continual->experience = 5;  // experiences 0..4
  out.Add(t, "hostile-experience-past-stream",
          wire::fl::EncodeMessage(wire::fl::Message(past_stream)));
}

void CheckpointFormat(CorpusWriter& out) {  // checkpoint_format_fuzz
  const std::string t = "checkpoint_format_fuzz";
  out.SetAccepts(t, [](const std::string& bytes) {
    return federated::DecodeCheckpoint(bytes).ok() ||
           federated::ParseCheckpointFile(bytes, "seed").ok();
  });
  out.Add(t, "valid-checkpoint-payload", federated::EncodeCheckpoint(Checkpoint()));
  const std::string file = federated::SerializeCheckpointFile(Checkpoint());
  out.Add(t, "valid-checkpoint-file", file);
  std::string tampered = file;
  tampered.back() = static_cast<char>(tampered.back() ^ 0x01);  // digest no longer matches
  out.Add(t, "hostile-checkpoint-file-tampered", tampered);
  out.Add(t, "hostile-checkpoint-file-truncated", FirstHalf(file));
}

// An image of `channels` (1 or 3): smooth ramps, the same every run.
PixelImage SeedImage(uint32_t width, uint32_t height, uint32_t channels) {
  PixelImage image{width, height, channels, {}};
  for (uint32_t y = 0; y < height; ++y) {
    for (uint32_t x = 0; x < width; ++x) {
      for (uint32_t c = 0; c < channels; ++c) {
        image.pixels.push_back(static_cast<uint8_t>(16 + 5 * x + 3 * y + 60 * c));
      }
    }
  }
  return image;
}

void ImageCodec(CorpusWriter& out) {  // image_codec_fuzz
  const std::string t = "image_codec_fuzz";
  // An input is the channel count asked for (first byte % 4) and then the file's bytes.
  out.SetAccepts(t, [](const std::string& bytes) {
    return !bytes.empty() &&
           DecodeImagePixels(std::string_view(bytes).substr(1), bytes[0] % 4).ok();
  });
  const auto input = [](int channels, const std::string& file) {
    return std::string(1, static_cast<char>(channels)) + file;
  };
  const std::string png_rgb = Must(EncodePngPixels(SeedImage(12, 9, 3)), "EncodePngPixels");
  const std::string png_gray = Must(EncodePngPixels(SeedImage(9, 12, 1)), "EncodePngPixels");
  const std::string jpeg_rgb = Must(EncodeJpegPixels(SeedImage(20, 13, 3), 90), "EncodeJpeg");
  const std::string jpeg_gray = Must(EncodeJpegPixels(SeedImage(13, 20, 1), 75), "EncodeJpeg");
  out.Add(t, "valid-png-rgb", input(0, png_rgb));
  out.Add(t, "valid-png-gray-as-rgb", input(3, png_gray));
  out.Add(t, "valid-jpeg-rgb", input(0, jpeg_rgb));
  out.Add(t, "valid-jpeg-rgb-as-gray", input(1, jpeg_rgb));
  out.Add(t, "valid-jpeg-gray-as-rgb", input(3, jpeg_gray));

  out.Add(t, "hostile-png-truncated", input(0, FirstHalf(png_rgb)));
  out.Add(t, "hostile-jpeg-truncated", input(0, FirstHalf(jpeg_rgb)));
  std::string huge = jpeg_rgb;  // the frame header (SOF0) claims 60000x60000
  const size_t sof = huge.find("\xFF\xC0", 2);
  if (sof == std::string::npos || sof + 9 > huge.size()) std::exit(1);
  for (size_t i = sof + 5; i < sof + 9; i += 2) {
    huge[i] = static_cast<char>(0xEA);
    huge[i + 1] = static_cast<char>(0x60);
  }
  out.Add(t, "hostile-jpeg-huge-header", input(0, huge));
  out.Add(t, "hostile-two-channels", input(2, png_rgb));
  out.Add(t, "hostile-not-an-image", input(0, "GIF89a, a format this decoder does not read"));
}

// `bytes` as one frame of the stdin stream framing.
std::string LengthPrefixed(const std::string& bytes) {
  const uint32_t n = static_cast<uint32_t>(bytes.size());
  std::string out = {static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff),
                     static_cast<char>((n >> 16) & 0xff), static_cast<char>((n >> 24) & 0xff)};
  return out + bytes;
}

void StreamFraming(CorpusWriter& out) {  // stream_framing_fuzz
  const std::string t = "stream_framing_fuzz";
  // An input is a read size (first byte) and then the stream; accepted: whole frames within
  // the fuzz target's cap of 256 bytes, nothing left over.
  out.SetAccepts(t, [](const std::string& bytes) {
    if (bytes.empty()) return false;
    edge::LengthPrefixedSplitter splitter(256);
    splitter.Feed(std::string_view(bytes).substr(1));
    while (true) {
      auto piece = splitter.Next();
      if (!piece.ok() || piece->kind == edge::LengthPrefixedSplitter::Piece::Kind::kOversized) {
        return false;
      }
      if (piece->kind == edge::LengthPrefixedSplitter::Piece::Kind::kNeedMore) break;
    }
    return splitter.buffered() == 0 && !splitter.skipping();
  });
  const std::string small_png = Must(EncodePngPixels(SeedImage(4, 3, 1)), "EncodePngPixels");
  out.Add(t, "valid-two-frames", "\x05" + LengthPrefixed(small_png) + LengthPrefixed("raw"));
  out.Add(t, "valid-empty-frame", "\x01" + LengthPrefixed(""));
  out.Add(t, "valid-no-input", std::string(1, '\x10'));
  out.Add(t, "hostile-bare-png", "\x07" + small_png);
  out.Add(t, "hostile-bare-jpeg",
          "\x07" + Must(EncodeJpegPixels(SeedImage(8, 8, 3), 80), "EncodeJpeg"));
  out.Add(t, "hostile-oversized-then-frame",
          "\x20" + LengthPrefixed(std::string(300, 'x')) + LengthPrefixed(small_png));
  out.Add(t, "hostile-truncated-frame", "\x02" + FirstHalf(LengthPrefixed(small_png)));
}

}  // namespace
}  // namespace cleave

int main(int argc, char** argv) {
  const bool check = argc == 3 && std::string(argv[1]) == "--check";
  if (argc != 2 && !check) {
    std::fprintf(stderr, "usage: %s OUT_DIR | --check CORPUS_DIR\n", argv[0]);
    return 2;
  }
  cleave::CorpusWriter out(argv[argc - 1], check);
  cleave::SplitInferenceWire(out);
  cleave::HardTokenWire(out);
  cleave::EdgeApi(out);
  cleave::TensorCodec(out);
  cleave::EntropyCoder(out);
  cleave::FederatedWire(out);
  cleave::CheckpointFormat(out);
  cleave::ImageCodec(out);
  cleave::StreamFraming(out);
  if (check) out.CheckNoOthers();
  if (out.problems() > 0) {
    if (check) {
      std::fprintf(stderr,
                   "the checked-in seed corpus is not what this program writes: run it with an "
                   "empty OUT_DIR and copy the result over tests/fuzz/corpus\n");
    }
    return 1;
  }
  std::printf("%s seed corpus under %s\n", check ? "checked the" : "wrote the", argv[argc - 1]);
  return 0;
}
