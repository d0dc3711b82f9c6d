// Head -> wire -> tail equals the whole model, for every split point (STYLE.md item 8).
//
// For each model and each split point k, the head runs blocks [0, k), its output crosses the
// real codec (wire::EncodeTensor / DecodeTensor) and the tail runs blocks [k, N):
//   - f32 on the wire: the logits must be bit-identical to the whole model's (the codec
//     copies floats verbatim and the blocks see exactly the same input);
//   - u8 / u4 at the deployment split (after the bottleneck encoder): every decoded feature
//     is within half a quantization step (scale_c / 2) of the original - the codec's
//     guarantee for min/max parameters - and the logits' normalized MSE
//     ||dz||^2 / ||z||^2 stays below 1e-3 (u8) and 3e-2 (u4). Why those bounds: uniform
//     rounding noise of step s has variance s^2/12; with s = range/255 (u8) or range/15 (u4)
//     and range ~ 6 sigma the features' NMSE is ~5e-5 (u8) and ~1.3e-2 (u4); the bounds leave
//     room for the tail's gain on random weights but would catch a wrong scale/zero point,
//     channel order or nibble order, which all give NMSE ~ 1.
// Perf mode: CLEAVE_EQUIVALENCE_PERF=1 also prints per-split timings (ms per batch of 64
// for head, encode, decode, tail) as one JSON line per case.
#include <chrono>
#include <cstdlib>
#include <iostream>

#include <gtest/gtest.h>

#include "common/tensor_codec.h"
#include "split/vision_bundle.h"
#include "split/vision_model.h"

namespace cleave::split {
namespace {

struct Case {
  std::string model;  // "tiny" | "default" | "residual"
  int split;          // the head runs blocks [0, split)
  wire::DType dtype;
};

std::string Name(const ::testing::TestParamInfo<Case>& info) {
  return info.param.model + "_k" + std::to_string(info.param.split) + "_" +
         wire::DTypeName(info.param.dtype);
}

VisionModelSpec SpecOf(const std::string& model) {
  if (model == "residual") return VisionModelSpec::ResidualSplit();
  return model == "tiny" ? VisionModelSpec::TinySplit() : VisionModelSpec::DefaultSplit(2);
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (const std::string model : {"tiny", "default", "residual"}) {
    const VisionModelSpec spec = SpecOf(model);
    // Every split point: after block 0 .. after the last block before the classifier.
    for (int k = 1; k < static_cast<int>(spec.blocks.size()); ++k) {
      cases.push_back({model, k, wire::DType::kFloat32});
    }
    cases.push_back({model, spec.split_after + 1, wire::DType::kUInt8});
    cases.push_back({model, spec.split_after + 1, wire::DType::kUInt4});
  }
  return cases;
}

// A network with non-trivial BatchNorm statistics, so eval() is not an identity.
SplitVisionNet MakeNet(const VisionModelSpec& spec) {
  torch::manual_seed(42);
  SplitVisionNet net(spec);
  torch::NoGradGuard no_grad;
  for (auto& b : net->named_buffers()) {
    if (b.key().find("running_mean") != std::string::npos) b.value().uniform_(-0.2, 0.2);
    if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 1.5);
  }
  net->eval();
  return net;
}

std::vector<uint32_t> ShapeOf(const torch::Tensor& t) {
  std::vector<uint32_t> shape;
  for (int64_t d : t.sizes()) shape.push_back(static_cast<uint32_t>(d));
  return shape;
}

double Ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since)
      .count();
}

class SplitEquivalenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(SplitEquivalenceTest, HeadWireTailEqualsWholeModel) {
  const Case& c = GetParam();
  torch::set_num_threads(1);
  SplitVisionNet net = MakeNet(SpecOf(c.model));
  torch::NoGradGuard no_grad;
  const VisionModelSpec& spec = net->spec();
  const torch::Tensor images =
      torch::rand({64, spec.input_channels, spec.image_size, spec.image_size});
  const torch::Tensor whole = net->forward(images);

  auto t0 = std::chrono::steady_clock::now();
  const torch::Tensor head = net->ForwardRange(net->Preprocess(images), 0, c.split).contiguous();
  const double head_ms = Ms(t0);
  t0 = std::chrono::steady_clock::now();
  auto encoded = wire::EncodeTensor(head.data_ptr<float>(), ShapeOf(head), c.dtype, 1);
  const double encode_ms = Ms(t0);
  ASSERT_TRUE(encoded.ok()) << encoded.status().ToString();
  t0 = std::chrono::steady_clock::now();
  auto decoded = wire::DecodeTensor(*encoded);
  const double decode_ms = Ms(t0);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  const torch::Tensor features =
      torch::from_blob(decoded->data(), head.sizes(), torch::kFloat).clone();
  t0 = std::chrono::steady_clock::now();
  const torch::Tensor tail = net->ForwardRange(features, c.split, net->num_blocks());
  const double tail_ms = Ms(t0);

  if (c.dtype == wire::DType::kFloat32) {
    EXPECT_TRUE(torch::equal(features, head));
    EXPECT_TRUE(torch::equal(tail, whole))
        << "max |diff| " << (tail - whole).abs().max().item<float>();
  } else {
    // Feature error within half a step per channel.
    const int64_t channels = head.size(1);
    ASSERT_EQ(encoded->quant.scale.size(), static_cast<size_t>(channels));
    const torch::Tensor half_step =
        torch::tensor(encoded->quant.scale).view({1, channels, 1, 1}) / 2 + 1e-6;
    EXPECT_TRUE((features - head).abs().le(half_step).all().item<bool>());
    const double nmse =
        (tail - whole).pow(2).sum().item<double>() / whole.pow(2).sum().item<double>();
    const double bound = c.dtype == wire::DType::kUInt8 ? 1e-3 : 3e-2;
    EXPECT_LT(nmse, bound) << "normalized MSE of the logits";
    // Bytes on the wire per image at the deployment split, e.g. 2x7x7 u4 = 49 bytes.
    auto shape = FeatureShape(net->spec());
    ASSERT_TRUE(shape.ok());
    const uint64_t per_image = (*shape)[0] * (*shape)[1] * (*shape)[2];
    EXPECT_EQ(encoded->data.size(), wire::PackedByteSize(c.dtype, per_image * 64));
  }
  if (std::getenv("CLEAVE_EQUIVALENCE_PERF") != nullptr) {
    std::cout << "{\"case\":\"" << Name({c, 0}) << "\",\"batch\":64,\"head_ms\":" << head_ms
              << ",\"encode_ms\":" << encode_ms << ",\"decode_ms\":" << decode_ms
              << ",\"tail_ms\":" << tail_ms << ",\"wire_bytes\":" << encoded->data.size() << "}"
              << std::endl;
  }
}

INSTANTIATE_TEST_SUITE_P(EverySplitPoint, SplitEquivalenceTest, ::testing::ValuesIn(AllCases()),
                         Name);

}  // namespace
}  // namespace cleave::split
