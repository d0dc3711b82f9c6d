#include "federated/weights.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "split/vision_model.h"

namespace cleave::federated {
namespace {

split::SplitVisionNet TinyNet(uint64_t seed) {
  torch::manual_seed(seed);
  return split::SplitVisionNet(split::VisionModelSpec::TinySplit());
}

WeightsLayout SmallLayout() {
  WeightsLayout layout;
  layout.names = {"a.weight", "b.bias"};
  layout.shapes = {{2, 3}, {4}};
  return layout;
}

Weights SmallWeights() { return {torch::ones({2, 3}), torch::zeros({4})}; }

TEST(WeightsLayoutTest, ParametersFirstThenFloatBuffersWithoutCounters) {
  auto net = TinyNet(1);
  const WeightsLayout layout = LayoutOf(*net);
  const size_t num_params = net->named_parameters().size();
  size_t num_float_buffers = 0;
  for (const auto& b : net->named_buffers()) num_float_buffers += b.value().is_floating_point();
  ASSERT_EQ(layout.size(), num_params + num_float_buffers);
  ASSERT_GT(num_float_buffers, 0u);
  EXPECT_EQ(layout.names.front(), "block0.conv.weight");
  EXPECT_EQ(layout.shapes.front(), (std::vector<int64_t>{4, 1, 3, 3}));
  for (size_t i = 0; i < layout.size(); ++i) {
    EXPECT_EQ(layout.names[i].find("num_batches_tracked"), std::string::npos) << layout.names[i];
    const bool is_buffer = layout.names[i].find("running_") != std::string::npos;
    EXPECT_EQ(is_buffer, i >= num_params) << layout.names[i];
  }
  EXPECT_EQ(layout.IndexOf("block0.bn.running_var"),
            static_cast<int>(num_params) + 1);  // running_mean, then running_var
  EXPECT_EQ(layout.IndexOf("block0.bn.num_batches_tracked"), -1);
  int64_t total = 0;
  for (const auto& shape : layout.shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    total += n;
  }
  EXPECT_EQ(layout.TotalElements(), total);
  EXPECT_EQ(WeightBytes(layout), 4 * total);
}

TEST(WeightsLayoutTest, GetAndSetWeightsRoundTripBetweenModels) {
  auto a = TinyNet(1);
  auto b = TinyNet(2);
  const Weights wa = GetWeights(*a);
  ASSERT_TRUE(LayoutOf(*a).Check(wa).ok());
  EXPECT_FALSE(torch::equal(wa[0], GetWeights(*b)[0]));
  ASSERT_TRUE(SetWeights(*b, wa).ok());
  const Weights wb = GetWeights(*b);
  ASSERT_EQ(wa.size(), wb.size());
  for (size_t i = 0; i < wa.size(); ++i) EXPECT_TRUE(torch::equal(wa[i], wb[i])) << i;
  // GetWeights returns detached copies: changing them leaves the module alone.
  Weights copy = GetWeights(*b);
  copy[0].fill_(7);
  EXPECT_TRUE(torch::equal(GetWeights(*b)[0], wa[0]));
  EXPECT_FALSE(copy[0].requires_grad());
}

TEST(WeightsLayoutTest, SetWeightsRejectsMismatchAndLeavesModuleUnchanged) {
  auto net = TinyNet(1);
  const Weights before = GetWeights(*net);
  Weights bad = CloneWeights(before);
  for (auto& t : bad) t.fill_(3);
  bad.pop_back();
  const Status s = SetWeights(*net, bad);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  Weights nan = CloneWeights(before);
  for (auto& t : nan) t.fill_(3);
  nan.back()[0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(SetWeights(*net, nan).code(), StatusCode::kInvalidArgument);
  const Weights after = GetWeights(*net);
  for (size_t i = 0; i < before.size(); ++i) EXPECT_TRUE(torch::equal(before[i], after[i]));
}

TEST(WeightsLayoutTest, CheckRejectsEachDefectNamingTheTensor) {
  const WeightsLayout layout = SmallLayout();
  EXPECT_TRUE(layout.Check(SmallWeights()).ok());

  Weights fewer = SmallWeights();
  fewer.pop_back();
  EXPECT_EQ(layout.Check(fewer).code(), StatusCode::kInvalidArgument);

  Weights shape = SmallWeights();
  shape[1] = torch::zeros({5});
  Status s = layout.Check(shape);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("b.bias"), std::string::npos) << s.ToString();

  Weights dtype = SmallWeights();
  dtype[0] = torch::ones({2, 3}, torch::kFloat64);
  s = layout.Check(dtype);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("a.weight"), std::string::npos) << s.ToString();

  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    Weights w = SmallWeights();
    w[1][2] = bad;
    s = layout.Check(w);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("b.bias"), std::string::npos) << s.ToString();
  }

  Weights undefined = SmallWeights();
  undefined[0] = torch::Tensor();
  EXPECT_EQ(layout.Check(undefined).code(), StatusCode::kInvalidArgument);
}

TEST(WeightsLayoutTest, CheckCountsNonFiniteValuesAcrossVectorChunks) {
  // 1000 values: full 256-value chunks and a ragged tail; one bad value in each part.
  WeightsLayout layout;
  layout.names = {"big"};
  layout.shapes = {{1000}};
  for (int64_t at : {0, 255, 256, 767, 768, 999}) {
    Weights w = {torch::ones({1000})};
    w[0][at] = std::numeric_limits<float>::infinity();
    const Status s = layout.Check(w);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << at;
    EXPECT_NE(s.message().find("has 1 non-finite"), std::string::npos) << s.ToString();
  }
  Weights many = {torch::ones({1000})};
  many[0].narrow(0, 100, 300).fill_(std::numeric_limits<float>::quiet_NaN());
  EXPECT_NE(layout.Check(many).message().find("has 300 non-finite"), std::string::npos);
  // The largest finite floats and denormals are finite.
  Weights edge = {torch::full({1000}, std::numeric_limits<float>::max())};
  edge[0][1] = -std::numeric_limits<float>::max();
  edge[0][2] = std::numeric_limits<float>::denorm_min();
  EXPECT_TRUE(layout.Check(edge).ok());
  // Non-contiguous input is checked too.
  Weights strided = {torch::ones({2000}).slice(0, 0, 2000, 2)};
  strided[0][10] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(layout.Check(strided).code(), StatusCode::kInvalidArgument);
}

TEST(WeightsLayoutTest, GetWeightsIntoReusesOnlyTensorsNobodyElseHolds) {
  auto net = TinyNet(1);
  Weights out = GetWeights(*net);
  const void* first = out[0].data_ptr();
  const void* second = out[1].data_ptr();
  Weights held_elsewhere = {out[1]};  // someone (a strategy) still holds entry 1
  const Weights snapshot = CloneWeights(held_elsewhere);
  for (auto& t : out) t.fill_(5);
  GetWeightsInto(*net, out);
  const Weights expected = GetWeights(*net);
  ASSERT_EQ(out.size(), expected.size());
  for (size_t i = 0; i < out.size(); ++i) EXPECT_TRUE(torch::equal(out[i], expected[i])) << i;
  EXPECT_EQ(out[0].data_ptr(), first);   // written in place
  EXPECT_NE(out[1].data_ptr(), second);  // fresh: the other holder keeps its values
  EXPECT_TRUE(torch::equal(held_elsewhere[0], torch::full_like(snapshot[0], 5)));
  // Wrong shapes, wrong dtype and a vector of the wrong size are replaced, not written.
  Weights odd = {torch::zeros({1}), torch::zeros({2, 2}, torch::kFloat64)};
  for (int i = 0; i < 40; ++i) odd.push_back(torch::zeros({3}));
  GetWeightsInto(*net, odd);
  ASSERT_EQ(odd.size(), expected.size());
  for (size_t i = 0; i < odd.size(); ++i) EXPECT_TRUE(torch::equal(odd[i], expected[i])) << i;
}

TEST(WeightsLayoutTest, CopyInCanSkipTheValueScanButNeverTheShapes) {
  auto net = TinyNet(1);
  const ExchangedTensors tensors = ExchangedOf(*net);
  Weights w = GetWeights(*net);
  w[0].fill_(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(CopyIn(tensors, w).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(CopyIn(tensors, w, /*check_values=*/false).ok());  // the caller vouches
  EXPECT_TRUE(std::isnan(GetWeights(*net)[0].view(-1)[0].item<float>()));
  Weights wrong = GetWeights(*net);
  wrong[0] = torch::zeros({1});
  EXPECT_EQ(CopyIn(tensors, wrong, false).code(), StatusCode::kInvalidArgument);
  wrong.pop_back();
  EXPECT_EQ(CopyIn(tensors, wrong, false).code(), StatusCode::kInvalidArgument);
}

TEST(WeightsLayoutTest, JsonRoundTripAndMalformedInputRejected) {
  const WeightsLayout layout = SmallLayout();
  auto back = WeightsLayout::FromJson(layout.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(*back == layout);
  EXPECT_EQ(back->TotalElements(), 10);

  using json = nlohmann::json;
  const std::vector<json> bad = {
      json::array(),
      json::parse(R"({"names": ["a"]})"),
      json::parse(R"({"shapes": [[1]]})"),
      json::parse(R"({"names": ["a", "b"], "shapes": [[1]]})"),
      json::parse(R"({"names": [""], "shapes": [[1]]})"),
      json::parse(R"({"names": [3], "shapes": [[1]]})"),
      json::parse(R"({"names": ["a"], "shapes": [1]})"),
      json::parse(R"({"names": ["a"], "shapes": [[-1]]})"),
      json::parse(R"({"names": ["a"], "shapes": [[1.5]]})"),
      json::parse(R"({"names": ["a", "a"], "shapes": [[1], [2]]})"),
      json::parse(R"({"names": ["a"], "shapes": [[4294967296, 4294967296]]})"),
  };
  for (const auto& j : bad) {
    EXPECT_EQ(WeightsLayout::FromJson(j).status().code(), StatusCode::kInvalidArgument) << j;
  }
}

TEST(WeightsLayoutTest, CloneIsDeepAndZerosMatchTheLayout) {
  const Weights w = SmallWeights();
  Weights c = CloneWeights(w);
  c[0].fill_(5);
  EXPECT_EQ(w[0].sum().item<float>(), 6.0f);
  const Weights z = ZerosLike(SmallLayout());
  EXPECT_TRUE(SmallLayout().Check(z).ok());
  EXPECT_EQ(z[0].abs().sum().item<float>(), 0.0f);
}

TEST(TrainableMaskTest, NamesRoundTripAndUnknownRejected) {
  for (auto set : {TrainableSet::kAll, TrainableSet::kHeadAndExits}) {
    auto parsed = ParseTrainableSet(TrainableSetName(set));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, set);
  }
  EXPECT_EQ(ParseTrainableSet("head").status().code(), StatusCode::kInvalidArgument);
}

TEST(TrainableMaskTest, HeadAndExitsSelectsBlocksUpToSplitAndEveryExit) {
  WeightsLayout layout;
  layout.names = {"block0.conv.weight", "block2.bn.running_mean",
                  "block3.conv.weight", "block12.fc.weight",
                  "exit0.fc.bias",      "exit3.bn.weight",
                  "blockx.conv.weight", "block1",
                  "exits.weight",       "other.weight"};
  layout.shapes.assign(layout.names.size(), {1});
  EXPECT_EQ(TrainableMask(layout, TrainableSet::kHeadAndExits, 2),
            (std::vector<bool>{true, true, false, false, true, true, false, false, false, false}));
  EXPECT_EQ(TrainableMask(layout, TrainableSet::kHeadAndExits, 12),
            (std::vector<bool>{true, true, true, true, true, true, false, false, false, false}));
  // No split: only the exits.
  EXPECT_EQ(
      TrainableMask(layout, TrainableSet::kHeadAndExits, -1),
      (std::vector<bool>{false, false, false, false, true, true, false, false, false, false}));
  EXPECT_EQ(TrainableMask(layout, TrainableSet::kAll, -1), std::vector<bool>(layout.size(), true));
}

TEST(TrainableMaskTest, TinyModelHeadCoversItsEdgeBlocks) {
  auto net = TinyNet(1);
  const WeightsLayout layout = LayoutOf(*net);
  const auto mask = TrainableMask(layout, TrainableSet::kHeadAndExits, 2);
  int trained = 0;
  for (size_t i = 0; i < layout.size(); ++i) {
    const std::string& n = layout.names[i];
    const bool expected = n.rfind("block0.", 0) == 0 || n.rfind("block1.", 0) == 0 ||
                          n.rfind("block2.", 0) == 0 || n.rfind("exit0.", 0) == 0;
    EXPECT_EQ(mask[i], expected) << n;
    trained += mask[i];
  }
  EXPECT_GT(trained, 0);
  EXPECT_LT(trained, static_cast<int>(layout.size()));
}

}  // namespace
}  // namespace cleave::federated
