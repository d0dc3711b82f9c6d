// Int8 quantization of imported TorchScript heads (split/head_int8_graph.h): which ops run
// int8, accuracy against the fp32 head, serialization and its refusals, engines.
//
// Most heads are TorchScript modules defined here in C++ (Module::define, no python); the
// tests on heads written by PyTorch (nn layers, torchvision, the Fashion-MNIST example) run
// /usr/bin/python3 and skip without python3-torch.
#include "split/head_int8_graph.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/library.h>
#include <zlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "split/int8_ops.h"
#include "split/torchscript_model.h"
#include "unit/split/torchscript_python.h"

// A custom op the int8 plan knows nothing about: it must run fp32 through its own operator.
TORCH_LIBRARY(cleave_hg_test, m) {
  m.def("twice(Tensor x) -> Tensor", [](const torch::Tensor& x) { return x * 2; });
}

namespace cleave::split {
namespace {

namespace fs = std::filesystem;

using HgTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// A TorchScript module with `tensors` as parameters and `source` as its methods, in eval
// mode, as a user's exported head would be.
torch::jit::Module HgModule(const HgTensors& tensors, const std::string& source) {
  torch::jit::Module module(c10::QualifiedName("__torch__.cleave_test.Head"),
                            std::make_shared<torch::jit::CompilationUnit>(),
                            /*shouldMangle=*/true);
  module.register_attribute("training", c10::BoolType::get(), false);
  for (const auto& [name, tensor] : tensors) module.register_parameter(name, tensor, false);
  module.define(source);
  module.eval();
  return module;
}

// Conv weights and a BatchNorm with non-trivial statistics (so folding matters), named
// <prefix>w, <prefix>b and <prefix>bn_{g,beta,m,v}.
void HgAddConvBn(HgTensors& tensors, const std::string& prefix, int64_t in, int64_t out,
                 int64_t kernel, int64_t groups = 1) {
  tensors.emplace_back(prefix + "w", torch::randn({out, in / groups, kernel, kernel}) *
                                         (1.0 / std::sqrt(static_cast<double>(in * kernel))));
  tensors.emplace_back(prefix + "b", torch::randn({out}) * 0.1);
  tensors.emplace_back(prefix + "bn_g", torch::rand({out}) + 0.5);
  tensors.emplace_back(prefix + "bn_beta", torch::randn({out}) * 0.2);
  tensors.emplace_back(prefix + "bn_m", torch::randn({out}) * 0.2);
  tensors.emplace_back(prefix + "bn_v", torch::rand({out}) + 0.5);
}

std::string HgBatchNorm(const std::string& x, const std::string& prefix) {
  return "torch.batch_norm(" + x + ", self." + prefix + "bn_g, self." + prefix + "bn_beta, self." +
         prefix + "bn_m, self." + prefix + "bn_v, False, 0.1, 1e-5, False)";
}

// conv 3->8 + BN + ReLU, max-pool 2, conv 8->8 (no bias) + BN + ReLU: [N, 8, S/2, S/2].
// The first BatchNorm checks its input's rank first, as scripted nn.BatchNorm2d does.
torch::jit::Module HgConvBnReluPoolHead() {
  torch::manual_seed(1);
  HgTensors t;
  HgAddConvBn(t, "c1", 3, 8, 3);
  HgAddConvBn(t, "c2", 8, 8, 3);
  return HgModule(t, R"(
def forward(self, x):
    y = torch.conv2d(x, self.c1w, self.c1b, [1, 1], [1, 1], [1, 1], 1)
    assert y.dim() == 4, "expected 4D input"
    y = )" + HgBatchNorm("y", "c1") +
                         R"(
    y = torch.relu(y)
    y = torch.max_pool2d(y, [2, 2], [2, 2], [0, 0], [1, 1], False)
    y = torch.conv2d(y, self.c2w, None, [1, 1], [1, 1], [1, 1], 1)
    y = )" + HgBatchNorm("y", "c2") +
                         R"(
    return torch.relu(y)
)");
}

// A stem conv + ReLU and a residual block: relu(bn(conv(relu(bn(conv(y))))) + y).
torch::jit::Module HgResidualHead() {
  torch::manual_seed(2);
  HgTensors t;
  HgAddConvBn(t, "s", 3, 8, 3);
  HgAddConvBn(t, "r1", 8, 8, 3);
  HgAddConvBn(t, "r2", 8, 8, 3);
  return HgModule(t, R"(
def forward(self, x):
    y = torch.relu(torch.conv2d(x, self.sw, self.sb, [1, 1], [1, 1], [1, 1], 1))
    z = torch.conv2d(y, self.r1w, None, [1, 1], [1, 1], [1, 1], 1)
    z = torch.relu()" + HgBatchNorm("z", "r1") +
                         R"()
    z = torch.conv2d(z, self.r2w, None, [1, 1], [1, 1], [1, 1], 1)
    z = )" + HgBatchNorm("z", "r2") +
                         R"(
    return torch.relu(z + y)
)");
}

// conv + ReLU, `middle` (an op with no int8 kernel), conv.
torch::jit::Module HgFloatMiddleHead(const std::string& middle) {
  torch::manual_seed(3);
  HgTensors t;
  HgAddConvBn(t, "c1", 3, 8, 3);
  HgAddConvBn(t, "c2", 8, 4, 3);
  return HgModule(t, R"(
def forward(self, x):
    y = torch.relu(torch.conv2d(x, self.c1w, self.c1b, [1, 1], [1, 1], [1, 1], 1))
    y = )" + middle + R"((y)
    return torch.conv2d(y, self.c2w, self.c2b, [2, 2], [1, 1], [1, 1], 1)
)");
}

// conv + ReLU, adaptive average pool, flatten, linear + ReLU, linear: [N, 5].
torch::jit::Module HgLinearHead() {
  torch::manual_seed(4);
  HgTensors t;
  HgAddConvBn(t, "c", 3, 8, 3);
  t.emplace_back("f1w", torch::randn({16, 8 * 2 * 2}) * 0.2);
  t.emplace_back("f1b", torch::randn({16}) * 0.1);
  t.emplace_back("f2w", torch::randn({5, 16}) * 0.3);
  t.emplace_back("f2b", torch::randn({5}) * 0.1);
  return HgModule(t, R"(
def forward(self, x):
    y = torch.relu(torch.conv2d(x, self.cw, self.cb, [1, 1], [1, 1], [1, 1], 1))
    y = torch.adaptive_avg_pool2d(y, [2, 2])
    y = torch.flatten(y, 1, -1)
    y = torch.relu(torch.linear(y, self.f1w, self.f1b))
    return torch.linear(y, self.f2w, self.f2b)
)");
}

// ReLU6 (hardtanh 0..6) fused into a grouped conv, max-pool, a BatchNorm that cannot be
// folded (a pool sits between it and the conv), hardswish, average pool.
torch::jit::Module HgMobileOpsHead() {
  torch::manual_seed(5);
  HgTensors t;
  HgAddConvBn(t, "c", 4, 8, 3, /*groups=*/2);
  HgAddConvBn(t, "p", 8, 8, 1);
  return HgModule(t, R"(
def forward(self, x):
    y = torch.conv2d(x, self.cw, self.cb, [1, 1], [1, 1], [1, 1], 2)
    y = torch.hardtanh(y, 0.0, 6.0)
    y = torch.max_pool2d(y, [2, 2], [2, 2], [0, 0], [1, 1], False)
    y = )" + HgBatchNorm("y", "p") +
                         R"(
    y = torch.hardswish(y)
    return torch.avg_pool2d(y, [2, 2], [2, 2], [0, 0], False, True, None)
)");
}

// Replaces every `from` node of the forward graph with a call of `to` on the same inputs, as
// in a model exported with a custom op (Module::define cannot name custom ops).
void HgReplaceOp(torch::jit::Module& module, const std::string& from, const std::string& to) {
  std::shared_ptr<torch::jit::Graph> graph = module.get_method("forward").graph();
  for (auto it = graph->nodes().begin(); it != graph->nodes().end();) {
    torch::jit::Node* node = *it++;
    if (node->kind() != c10::Symbol::fromQualString(from)) continue;
    torch::jit::Node* call = graph->create(c10::Symbol::fromQualString(to), node->inputs(), 1);
    call->output()->setType(node->output()->type());
    call->insertBefore(node);
    node->output()->replaceAllUsesWith(call->output());
    node->destroy();
  }
}

torch::Tensor HgInputs(int64_t n, int64_t c, int64_t size, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::rand({n, c, size, size});
}

torch::Tensor HgForwardFp32(torch::jit::Module& head, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  return head.forward({x}).toTensor();
}

Int8GraphHead HgQuantizeOk(const torch::jit::Module& head, const torch::Tensor& calibration) {
  Result<Int8GraphHead> q = Int8GraphHead::Quantize(head, calibration);
  EXPECT_TRUE(q.ok()) << q.status().ToString();
  if (!q.ok()) throw std::runtime_error(q.status().ToString());
  return std::move(q).value();
}

torch::Tensor HgForwardOk(Int8GraphHead& head, const torch::Tensor& x) {
  Result<torch::Tensor> y = head.Forward(x);
  EXPECT_TRUE(y.ok()) << y.status().ToString();
  if (!y.ok()) throw std::runtime_error(y.status().ToString());
  return *y;
}

std::vector<std::string> HgKinds(const HeadInt8Report& report) {
  std::vector<std::string> kinds;
  for (const QuantizedOpInfo& op : report.ops) kinds.push_back(op.kind + (op.int8 ? "" : "/fp32"));
  return kinds;
}

// The accuracy bound of the int8 heads here, relative to the fp32 output's range R:
// max |int8 - fp32| <= 0.05 R and mean |int8 - fp32| <= 0.01 R. One uint8 step is R/255
// (0.4% of R); each quantization point (the input, every conv/add/BN output) and the int8
// weights (half a step of 1/127 of each channel's largest weight) add about half a step of
// their own range, which the following layers carry forward. With 2-4 quantization points
// in a row the typical error is 1-2 output steps (mean <= 1% R) and the worst element a few
// steps more (<= 5% R, i.e. ~13 steps). Measured on the heads here, the torchvision ones (13
// and 8 quantization points deep) included: max 0.4-2.2% of R, mean 0.1-0.4%.
void HgExpectClose(const torch::Tensor& int8, const torch::Tensor& fp32) {
  ASSERT_EQ(int8.sizes(), fp32.sizes());
  const double range = (fp32.max() - fp32.min()).item<double>();
  ASSERT_GT(range, 0);
  const torch::Tensor error = (int8 - fp32).abs();
  EXPECT_LE(error.max().item<double>(), 0.05 * range);
  EXPECT_LE(error.mean().item<double>(), 0.01 * range);
}

void HgExpectStatus(const Status& status, StatusCode code, const std::string& needle) {
  EXPECT_EQ(status.code(), code) << status.ToString();
  EXPECT_NE(status.message().find(needle), std::string::npos)
      << "'" << needle << "' not in: " << status.message();
}

torch::jit::Module HgSaveAndLoad(const torch::jit::Module& module) {
  std::stringstream archive;
  module.save(archive);
  torch::jit::Module loaded = torch::jit::load(archive, torch::kCPU);
  loaded.eval();
  return loaded;
}

// Every quantized engine this libtorch has computes what the reference engine computed
// (`reference`, on `x`) up to the kernels' own rounding: a few steps (R/255) of the output.
void HgExpectEnginesMatch(Int8GraphHead& q, const torch::Tensor& x,
                          const torch::Tensor& reference) {
  const double range = (reference.max() - reference.min()).item<double>();
  for (const std::string engine : {"onednn", "qnnpack"}) {
    if (!int8::EngineSupported(engine)) continue;
    SCOPED_TRACE(engine);
    const Status selected = q.SelectEngine(engine);
    ASSERT_TRUE(selected.ok()) << selected.ToString();
    EXPECT_LE((HgForwardOk(q, x) - reference).abs().max().item<double>(), 4 * range / 255);
  }
  ASSERT_TRUE(q.SelectEngine("reference").ok());
}

// Serialize, then Deserialize against `head_fp32` (the fp32 head as a bundle stores it):
// the copy computes exactly what `q` computes, on the reference engine and on oneDNN.
void HgExpectRoundTrip(Int8GraphHead& q, const torch::jit::Module& head_fp32,
                       const torch::Tensor& x) {
  Result<std::string> bytes = q.Serialize();
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  Result<Int8GraphHead> back = Int8GraphHead::Deserialize(*bytes, head_fp32);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->report().ToJson(), q.report().ToJson());
  EXPECT_EQ(back->input_shape(), q.input_shape());
  EXPECT_EQ(back->WeightBytes(), q.WeightBytes());
  EXPECT_EQ(back->engine(), "reference");
  const std::string engine = q.engine();
  ASSERT_TRUE(q.SelectEngine("reference").ok());
  EXPECT_TRUE(torch::equal(HgForwardOk(*back, x), HgForwardOk(q, x)));
  if (int8::EngineSupported("onednn")) {
    const Status selected = q.SelectEngine("onednn");
    ASSERT_TRUE(selected.ok()) << selected.ToString();
    ASSERT_TRUE(back->SelectEngine("onednn").ok());
    EXPECT_TRUE(torch::equal(HgForwardOk(*back, x), HgForwardOk(q, x)));
  }
  Result<std::string> again = back->Serialize();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *bytes);
  ASSERT_TRUE(q.SelectEngine(engine).ok());
}

// The message's JSON header and tensors, and the message built again from them.
struct HgMessage {
  nlohmann::json header;
  std::vector<std::string> blobs;
};

HgMessage HgParse(const std::string& bytes) {
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  capnp::FlatArrayMessageReader reader(words);
  const auto list = reader.getRoot<capnp::List<capnp::Data>>();
  HgMessage message;
  message.header = nlohmann::json::parse(list[0].begin(), list[0].end());
  for (unsigned i = 1; i < list.size(); ++i) {
    message.blobs.emplace_back(reinterpret_cast<const char*>(list[i].begin()), list[i].size());
  }
  return message;
}

std::string HgBuild(const HgMessage& message) {
  capnp::MallocMessageBuilder builder;
  auto list =
      builder.initRoot<capnp::List<capnp::Data>>(static_cast<unsigned>(message.blobs.size() + 1));
  const std::string header = message.header.dump();
  list.set(0, capnp::Data::Reader(reinterpret_cast<const kj::byte*>(header.data()), header.size()));
  for (size_t i = 0; i < message.blobs.size(); ++i) {
    list.set(static_cast<unsigned>(i + 1),
             capnp::Data::Reader(reinterpret_cast<const kj::byte*>(message.blobs[i].data()),
                                 message.blobs[i].size()));
  }
  const kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
  return std::string(reinterpret_cast<const char*>(words.asBytes().begin()),
                     words.asBytes().size());
}

// --- Which ops run int8, and how close to fp32 -----------------------------------------

TEST(HeadInt8GraphTest, ConvBnReluMaxPoolChainRunsAllInt8CloseToFp32) {
  torch::jit::Module head = HgConvBnReluPoolHead();
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(32, 3, 12, 10));
  EXPECT_EQ(HgKinds(q.report()),
            (std::vector<std::string>{"conv2d", "batch_norm(folded)", "relu(fused)", "max_pool2d",
                                      "conv2d", "batch_norm(folded)", "relu(fused)"}));
  EXPECT_DOUBLE_EQ(q.report().int8_ops_fraction, 1.0);
  EXPECT_DOUBLE_EQ(q.report().int8_macs_fraction, 1.0);
  EXPECT_EQ(q.report().quantize_steps, 1);    // the input
  EXPECT_EQ(q.report().dequantize_steps, 1);  // the output
  // MACs per item: 12*12*8 outputs * 3*3*3, then 6*6*8 * 8*3*3.
  EXPECT_EQ(q.report().ops[0].macs, 12 * 12 * 8 * 27);
  EXPECT_EQ(q.report().ops[4].macs, 6 * 6 * 8 * 72);
  EXPECT_EQ(q.input_shape(), (std::vector<int64_t>{3, 12, 12}));

  const torch::Tensor x = HgInputs(8, 3, 12, 11);
  const torch::Tensor fp32 = HgForwardFp32(head, x);
  const torch::Tensor int8 = HgForwardOk(q, x);
  EXPECT_EQ(q.engine(), "reference");
  HgExpectClose(int8, fp32);
  EXPECT_GE(int8.min().item<float>(), 0.0f);  // the fused ReLU
  // Two conv weights (8*3*9 + 8*8*9 int8, 2 * 8 scales and biases), 3 activation points.
  EXPECT_EQ(q.WeightBytes(), 216 + 576 + 2 * 8 * 8 + 3 * 5);
}

TEST(HeadInt8GraphTest, ResidualAddRunsInt8WithItsReluFused) {
  torch::jit::Module head = HgResidualHead();
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(32, 3, 10, 20));
  EXPECT_EQ(HgKinds(q.report()),
            (std::vector<std::string>{"conv2d", "relu(fused)", "conv2d", "batch_norm(folded)",
                                      "relu(fused)", "conv2d", "batch_norm(folded)", "add",
                                      "relu(fused)"}));
  EXPECT_DOUBLE_EQ(q.report().int8_ops_fraction, 1.0);
  EXPECT_EQ(q.report().quantize_steps, 1);
  const torch::Tensor x = HgInputs(8, 3, 10, 21);
  HgExpectClose(HgForwardOk(q, x), HgForwardFp32(head, x));
}

TEST(HeadInt8GraphTest, OpWithoutInt8KernelRunsFp32AndIsReportedSo) {
  torch::jit::Module head = HgFloatMiddleHead("torch.sigmoid");
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(32, 3, 8, 30));
  EXPECT_EQ(HgKinds(q.report()),
            (std::vector<std::string>{"conv2d", "relu(fused)", "sigmoid/fp32", "conv2d"}));
  // Dequantized before the sigmoid, quantized again for the conv after it.
  EXPECT_EQ(q.report().quantize_steps, 2);
  EXPECT_EQ(q.report().dequantize_steps, 2);
  EXPECT_DOUBLE_EQ(q.report().int8_ops_fraction, 0.75);
  EXPECT_DOUBLE_EQ(q.report().int8_macs_fraction, 1.0);  // a sigmoid has no MACs
  const torch::Tensor x = HgInputs(4, 3, 8, 31);
  HgExpectClose(HgForwardOk(q, x), HgForwardFp32(head, x));
}

TEST(HeadInt8GraphTest, CustomOpRunsFp32ThroughItsOwnOperator) {
  torch::jit::Module head = HgFloatMiddleHead("torch.sigmoid");
  HgReplaceOp(head, "aten::sigmoid", "cleave_hg_test::twice");
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(16, 3, 8, 40));
  EXPECT_EQ(
      HgKinds(q.report()),
      (std::vector<std::string>{"conv2d", "relu(fused)", "cleave_hg_test::twice/fp32", "conv2d"}));
  const torch::Tensor x = HgInputs(4, 3, 8, 41);
  HgExpectClose(HgForwardOk(q, x), HgForwardFp32(head, x));
}

TEST(HeadInt8GraphTest, LinearAndFlattenRunInt8) {
  torch::jit::Module head = HgLinearHead();
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(32, 3, 8, 50));
  EXPECT_EQ(HgKinds(q.report()),
            (std::vector<std::string>{"conv2d", "relu(fused)", "adaptive_avg_pool2d", "flatten",
                                      "linear", "relu(fused)", "linear"}));
  EXPECT_EQ(q.report().ops[4].macs, 32 * 16);
  EXPECT_EQ(q.report().ops[6].macs, 16 * 5);
  const torch::Tensor x = HgInputs(8, 3, 8, 51);
  const torch::Tensor int8 = HgForwardOk(q, x);
  EXPECT_EQ(int8.sizes(), torch::IntArrayRef({8, 5}));
  HgExpectClose(int8, HgForwardFp32(head, x));
}

TEST(HeadInt8GraphTest, Relu6HardswishPoolingAndUnfoldedBatchNormRunInt8) {
  torch::jit::Module head = HgMobileOpsHead();
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(32, 4, 8, 60) * 4);
  EXPECT_EQ(HgKinds(q.report()),
            (std::vector<std::string>{"conv2d", "hardtanh(fused)", "max_pool2d", "batch_norm",
                                      "hardswish", "avg_pool2d"}));
  const torch::Tensor x = HgInputs(8, 4, 8, 61) * 4;
  const torch::Tensor int8 = HgForwardOk(q, x);
  HgExpectClose(int8, HgForwardFp32(head, x));
}

// conv -> max-pool -> BatchNorm -> ReLU: with positive BatchNorm scales the BatchNorm and the
// ReLU move before the pool (max commutes with increasing maps) and fuse into the conv; with
// a negative scale they stay after it, as an int8 BatchNorm with the ReLU fused.
TEST(HeadInt8GraphTest, BatchNormAfterAMaxPoolFoldsWhenItsScalesArePositive) {
  for (const bool positive : {true, false}) {
    SCOPED_TRACE(positive ? "positive scales" : "a negative scale");
    torch::manual_seed(6);
    HgTensors t;
    HgAddConvBn(t, "c", 3, 8, 3);
    if (!positive) t[2].second[5] = -0.7;  // cbn_g
    torch::jit::Module head = HgModule(t, R"(
def forward(self, x):
    y = torch.conv2d(x, self.cw, self.cb, [1, 1], [1, 1], [1, 1], 1)
    y = torch.max_pool2d(y, [3, 3], [2, 2], [1, 1], [1, 1], False)
    assert y.dim() == 4, "expected 4D input"
    y = )" + HgBatchNorm("y", "c") + R"(
    return torch.relu(y)
)");
    Int8GraphHead q = HgQuantizeOk(head, HgInputs(32, 3, 10, 65));
    EXPECT_EQ(
        HgKinds(q.report()),
        positive ? (std::vector<std::string>{"conv2d", "batch_norm(folded)", "relu(fused)",
                                             "max_pool2d"})
                 : (std::vector<std::string>{"conv2d", "max_pool2d", "batch_norm", "relu(fused)"}));
    const torch::Tensor x = HgInputs(8, 3, 10, 66);
    const torch::Tensor reference = HgForwardOk(q, x);
    HgExpectClose(reference, HgForwardFp32(head, x));
    HgExpectEnginesMatch(q, x, reference);
  }
}

// The report's fractions count ops by number and MACs by weight, fp32 convs included.
TEST(HeadInt8GraphTest, ReportFractionsCountOpsAndMacs) {
  torch::manual_seed(7);
  HgTensors t;
  HgAddConvBn(t, "a", 3, 4, 3);
  HgAddConvBn(t, "b", 4, 4, 3);
  // The second conv pads with a string ('same'): no int8 kernel takes that, so it runs fp32.
  torch::jit::Module head = HgModule(t, R"(
def forward(self, x):
    y = torch.relu(torch.conv2d(x, self.aw, self.ab, [1, 1], [1, 1], [1, 1], 1))
    y = torch.conv2d(y, self.bw, self.bb, [1, 1], "same", [1, 1], 1)
    return torch.sigmoid(y)
)");
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(8, 3, 6, 70));
  EXPECT_EQ(HgKinds(q.report()),
            (std::vector<std::string>{"conv2d", "relu(fused)", "conv2d/fp32", "sigmoid/fp32"}));
  const int64_t int8_macs = 6 * 6 * 4 * 27, fp32_macs = 6 * 6 * 4 * 36;
  EXPECT_EQ(q.report().ops[2].macs, fp32_macs);
  EXPECT_DOUBLE_EQ(q.report().int8_ops_fraction, 0.5);
  EXPECT_NEAR(q.report().int8_macs_fraction,
              static_cast<double>(int8_macs) / (int8_macs + fp32_macs), 1e-12);
  const nlohmann::json json = q.report().ToJson();
  EXPECT_EQ(json["int8_ops"], 2);
  EXPECT_EQ(json["total_ops"], 4);
  EXPECT_EQ(json["int8_macs"], int8_macs);
  EXPECT_EQ(json["total_macs"], int8_macs + fp32_macs);
  EXPECT_EQ(json["ops"][2]["kind"], "conv2d");
  EXPECT_EQ(json["ops"][2]["int8"], false);
  const torch::Tensor x = HgInputs(4, 3, 6, 71);
  HgExpectClose(HgForwardOk(q, x), HgForwardFp32(head, x));
}

// Quantize works on a frozen clone: the caller's module keeps its mode, weights and graph.
TEST(HeadInt8GraphTest, QuantizeLeavesTheCallersModuleAlone) {
  torch::jit::Module head = HgConvBnReluPoolHead();
  head.train();
  const std::string graph = head.get_method("forward").graph()->toString();
  const torch::Tensor weight = head.attr("c1w").toTensor().clone();
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(8, 3, 12, 80));
  EXPECT_TRUE(head.is_training());
  EXPECT_EQ(head.get_method("forward").graph()->toString(), graph);
  EXPECT_TRUE(torch::equal(head.attr("c1w").toTensor(), weight));
  // And it keeps nothing of it: changing the caller's weights changes nothing in q.
  const torch::Tensor x = HgInputs(2, 3, 12, 81);
  const torch::Tensor before = HgForwardOk(q, x);
  {
    torch::NoGradGuard no_grad;
    head.attr("c1w").toTensor().mul_(-1);
  }
  EXPECT_TRUE(torch::equal(HgForwardOk(q, x), before));
}

// An assertion in the head's graph still guards Forward.
TEST(HeadInt8GraphTest, AssertionsInTheGraphStillRun) {
  torch::manual_seed(9);
  HgTensors t;
  HgAddConvBn(t, "c", 3, 4, 3);
  torch::jit::Module head = HgModule(t, R"(
def forward(self, x):
    assert bool(torch.max(x) < 100.0), "pixel values must be below 100"
    return torch.relu(torch.conv2d(x, self.cw, self.cb, [1, 1], [1, 1], [1, 1], 1))
)");
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(4, 3, 6, 90));
  EXPECT_TRUE(q.Forward(HgInputs(1, 3, 6, 91)).ok());
  HgExpectStatus(q.Forward(HgInputs(1, 3, 6, 91) * 1000).status(), StatusCode::kInvalidArgument,
                 "pixel values must be below 100");
}

TEST(HeadInt8GraphTest, UnrunnableHeadsAreUnimplemented) {
  torch::manual_seed(10);
  HgTensors t;
  HgAddConvBn(t, "c", 3, 4, 3);
  torch::jit::Module branches = HgModule(t, R"(
def forward(self, x):
    y = torch.conv2d(x, self.cw, self.cb, [1, 1], [1, 1], [1, 1], 1)
    if bool(torch.mean(y) > 0.0):
        y = torch.relu(y)
    else:
        y = torch.sigmoid(y)
    return y
)");
  HgExpectStatus(Int8GraphHead::Quantize(branches, HgInputs(2, 3, 6, 100)).status(),
                 StatusCode::kUnimplemented, "branches");
  torch::jit::Module two_outputs = HgModule(t, R"(
def forward(self, x):
    y = torch.conv2d(x, self.cw, self.cb, [1, 1], [1, 1], [1, 1], 1)
    return (y, x)
)");
  HgExpectStatus(Int8GraphHead::Quantize(two_outputs, HgInputs(2, 3, 6, 100)).status(),
                 StatusCode::kUnimplemented, "exactly one tensor");
}

// --- Inputs -----------------------------------------------------------------------------

TEST(HeadInt8GraphTest, CalibrationInputsOfTheWrongShapeAreRefused) {
  torch::jit::Module head = HgConvBnReluPoolHead();
  HgExpectStatus(Int8GraphHead::Quantize(head, torch::rand({3, 12, 12})).status(),
                 StatusCode::kInvalidArgument, "[N >= 1, C, H, W]");
  HgExpectStatus(Int8GraphHead::Quantize(head, torch::rand({0, 3, 12, 12})).status(),
                 StatusCode::kInvalidArgument, "[N >= 1, C, H, W]");
  HgExpectStatus(
      Int8GraphHead::Quantize(head, torch::rand({2, 3, 12, 12}, torch::kDouble)).status(),
      StatusCode::kInvalidArgument, "float32");
  torch::Tensor nan = torch::rand({2, 3, 12, 12});
  nan[1][0][0][0] = std::nanf("");
  HgExpectStatus(Int8GraphHead::Quantize(head, nan).status(), StatusCode::kInvalidArgument, "NaN");
  // Four channels where the first conv takes three: the head itself fails on them.
  HgExpectStatus(Int8GraphHead::Quantize(head, torch::rand({2, 4, 12, 12})).status(),
                 StatusCode::kInvalidArgument, "int8 graph head: quantize");
}

// NaN out of the head's own ops (log of negative values) has no range to quantize.
TEST(HeadInt8GraphTest, ActivationsThatAreNotFiniteAreRefused) {
  torch::manual_seed(11);
  HgTensors t;
  HgAddConvBn(t, "c", 3, 4, 3);
  torch::jit::Module head = HgModule(t, R"(
def forward(self, x):
    y = torch.log(x - 0.5)
    return torch.conv2d(y, self.cw, self.cb, [1, 1], [1, 1], [1, 1], 1)
)");
  HgExpectStatus(Int8GraphHead::Quantize(head, HgInputs(4, 3, 6, 115)).status(),
                 StatusCode::kInvalidArgument, "non-finite activations");
}

TEST(HeadInt8GraphTest, ForwardTakesOnlyTheCalibratedItemShape) {
  Int8GraphHead q = HgQuantizeOk(HgConvBnReluPoolHead(), HgInputs(4, 3, 12, 110));
  HgExpectStatus(q.Forward(torch::rand({1, 3, 16, 16})).status(), StatusCode::kInvalidArgument,
                 "calibrated on [N, 3, 12, 12]");
  HgExpectStatus(q.Forward(torch::rand({3, 12, 12})).status(), StatusCode::kInvalidArgument,
                 "[N >= 1, C, H, W]");
  torch::Tensor inf = torch::rand({1, 3, 12, 12});
  inf[0][1][2][3] = INFINITY;
  HgExpectStatus(q.Forward(inf).status(), StatusCode::kInvalidArgument, "infinite");
  Int8GraphHead moved = std::move(q);
  EXPECT_EQ(
      q.Forward(torch::rand({1, 3, 12, 12})).status().code(),  // NOLINT(bugprone-use-after-move)
      StatusCode::kFailedPrecondition);
  EXPECT_EQ(q.engine(), "");
  EXPECT_TRUE(moved.Forward(torch::rand({1, 3, 12, 12})).ok());
}

// --- Engines ----------------------------------------------------------------------------

TEST(HeadInt8GraphTest, EnginesAgreeWithTheReference) {
  torch::jit::Module head = HgResidualHead();
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(32, 3, 10, 120));
  const torch::Tensor x = HgInputs(4, 3, 10, 121);
  EXPECT_EQ(q.engine(), "reference");
  const torch::Tensor reference = HgForwardOk(q, x);
  HgExpectEnginesMatch(q, x, reference);
  for (const std::string engine : {"onednn", "qnnpack"}) {
    if (!int8::EngineSupported(engine)) {
      EXPECT_EQ(q.SelectEngine(engine).code(), StatusCode::kUnavailable);
      continue;
    }
    ASSERT_TRUE(q.SelectEngine(engine).ok());
    EXPECT_EQ(q.engine(), engine);
    HgExpectClose(HgForwardOk(q, x), HgForwardFp32(head, x));
  }
  HgExpectStatus(q.SelectEngine("fbgemm"), StatusCode::kInvalidArgument, "unknown engine");
  ASSERT_TRUE(q.SelectEngine("auto").ok());
  EXPECT_TRUE(q.engine_timings_ms().count("reference"));
  EXPECT_TRUE(q.engine_timings_ms().count(q.engine()));
  EXPECT_TRUE(q.Forward(x).ok());
}

// --- Serialization ----------------------------------------------------------------------

TEST(HeadInt8GraphTest, SerializeDeserializeComputesExactlyTheSame) {
  torch::jit::Module head = HgLinearHead();
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(32, 3, 8, 130));
  // The bundle stores the fp32 head as a TorchScript file: read it back as the edge would.
  HgExpectRoundTrip(q, HgSaveAndLoad(head), HgInputs(6, 3, 8, 131));
  HgExpectRoundTrip(q, head, HgInputs(6, 3, 8, 132));
}

TEST(HeadInt8GraphTest, DeserializeRefusesDamagedBytesAndOtherHeads) {
  torch::jit::Module head = HgResidualHead();
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(16, 3, 10, 140));
  const std::string bytes = q.Serialize().value();
  ASSERT_TRUE(Int8GraphHead::Deserialize(bytes, head).ok());

  HgExpectStatus(Int8GraphHead::Deserialize(bytes.substr(0, bytes.size() - 8), head).status(),
                 StatusCode::kDataLoss, "malformed");
  HgExpectStatus(Int8GraphHead::Deserialize(bytes.substr(0, 13), head).status(),
                 StatusCode::kDataLoss, "size 13");
  HgExpectStatus(Int8GraphHead::Deserialize("", head).status(), StatusCode::kDataLoss, "size 0");
  std::string flipped = bytes;
  flipped[flipped.size() - 40] ^= 0x10;  // inside the last tensors
  HgExpectStatus(Int8GraphHead::Deserialize(flipped, head).status(), StatusCode::kDataLoss,
                 "checksum mismatch");

  HgMessage message = HgParse(bytes);
  message.header["layout"] = message.header["layout"].get<std::string>() + "x";
  HgExpectStatus(Int8GraphHead::Deserialize(HgBuild(message), head).status(), StatusCode::kDataLoss,
                 "checksum mismatch");
  message = HgParse(bytes);
  message.header["version"] = 2;
  HgExpectStatus(Int8GraphHead::Deserialize(HgBuild(message), head).status(),
                 StatusCode::kVersionMismatch, "format version 2");
  message = HgParse(bytes);
  message.header["format"] = "cleave-int8-head";
  HgExpectStatus(Int8GraphHead::Deserialize(HgBuild(message), head).status(), StatusCode::kDataLoss,
                 "not a cleave int8 graph head");
  message = HgParse(bytes);
  message.blobs.pop_back();
  HgExpectStatus(Int8GraphHead::Deserialize(HgBuild(message), head).status(), StatusCode::kDataLoss,
                 "checksum mismatch");

  // Bytes from this head, given another: same graph with other weights, or another graph.
  torch::jit::Module retrained = HgResidualHead();
  {
    torch::NoGradGuard no_grad;
    retrained.attr("r1w").toTensor().add_(0.01);
  }
  HgExpectStatus(Int8GraphHead::Deserialize(bytes, retrained).status(),
                 StatusCode::kInvalidArgument, "other weights");
  HgExpectStatus(Int8GraphHead::Deserialize(bytes, HgConvBnReluPoolHead()).status(),
                 StatusCode::kInvalidArgument, "another graph");
  // A head the plan cannot be built from at all.
  torch::jit::Module two_outputs = HgModule({}, "def forward(self, x):\n    return (x, x)\n");
  HgExpectStatus(Int8GraphHead::Deserialize(bytes, two_outputs).status(),
                 StatusCode::kUnimplemented, "exactly one tensor");
}

// Tensors of the right size but values no writer produces: caught after the checksum.
TEST(HeadInt8GraphTest, DeserializeRefusesInvalidScalesEvenWithAValidChecksum) {
  torch::jit::Module head = HgConvBnReluPoolHead();
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(8, 3, 12, 150));
  HgMessage message = HgParse(q.Serialize().value());
  // Entry 1 is the first conv's per-channel weight scales: make one negative, and recompute
  // the CRC the way the writer does (header without "crc32", then the tensors).
  float negative = -1.0f;
  std::memcpy(message.blobs[1].data(), &negative, sizeof negative);
  nlohmann::json header = message.header;
  header.erase("crc32");
  const std::string text = header.dump();
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(text.data()), static_cast<uInt>(text.size()));
  for (const std::string& blob : message.blobs) {
    crc = crc32(crc, reinterpret_cast<const Bytef*>(blob.data()), static_cast<uInt>(blob.size()));
  }
  message.header["crc32"] = static_cast<uint64_t>(crc);
  HgExpectStatus(Int8GraphHead::Deserialize(HgBuild(message), head).status(), StatusCode::kDataLoss,
                 "invalid weights, scales or biases");
}

// --- Heads written by PyTorch -----------------------------------------------------------

class HeadInt8GraphPythonTest : public TorchScriptPythonTest {
 protected:
  // The head of `file` up to `cut`, as TorchScriptModel::ExtractHead cuts it for the edge.
  torch::jit::Module ExtractHead(const std::string& file, const std::vector<int64_t>& shape,
                                 const std::string& cut) {
    TorchScriptModel::Options options;
    options.input_shape = shape;
    Result<TorchScriptModel> model = TorchScriptModel::Load(dir_ / file, options);
    EXPECT_TRUE(model.ok()) << model.status().ToString();
    if (!model.ok()) throw std::runtime_error(model.status().ToString());
    Result<TorchScriptCut> resolved = model->ResolveCut(cut);
    EXPECT_TRUE(resolved.ok()) << resolved.status().ToString();
    Result<torch::jit::Module> head = model->ExtractHead(*resolved);
    EXPECT_TRUE(head.ok()) << head.status().ToString();
    if (!head.ok()) throw std::runtime_error(head.status().ToString());
    return std::move(head).value();
  }
};

constexpr char kHgPythonPrelude[] = R"PY(
import os, sys
from collections import OrderedDict
import torch
import torch.nn as nn
torch.manual_seed(0)
OUT = sys.argv[1]

def prepared(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()
)PY";

// nn layers, scripted (functional code with assertions, in-place ReLUs) and traced.
TEST_F(HeadInt8GraphPythonTest, ScriptedAndTracedNnLayersRunAllInt8) {
  RunPythonSource(std::string(kHgPythonPrelude) + R"PY(
model = prepared(nn.Sequential(OrderedDict([
    ("conv1", nn.Conv2d(3, 8, 3, padding=1)), ("bn1", nn.BatchNorm2d(8)),
    ("relu1", nn.ReLU(inplace=True)), ("pool1", nn.MaxPool2d(2)),
    ("conv2", nn.Conv2d(8, 8, 3, padding=1, bias=False)), ("bn2", nn.BatchNorm2d(8)),
    ("relu2", nn.ReLU6(inplace=True)), ("pool2", nn.AdaptiveAvgPool2d(2)),
    ("flatten", nn.Flatten()), ("fc", nn.Linear(32, 10)),
])))
torch.jit.script(model).save(os.path.join(OUT, "scripted.pt"))
with torch.no_grad():
    torch.jit.trace(model, torch.rand(2, 3, 12, 12)).save(os.path.join(OUT, "traced.pt"))
)PY");
  for (const std::string file : {"scripted.pt", "traced.pt"}) {
    SCOPED_TRACE(file);
    torch::jit::Module head = ExtractHead(file, {3, 12, 12}, "flatten");
    Int8GraphHead q = HgQuantizeOk(head, HgInputs(32, 3, 12, 160));
    EXPECT_EQ(HgKinds(q.report()),
              (std::vector<std::string>{"conv2d", "batch_norm(folded)", "relu(fused)", "max_pool2d",
                                        "conv2d", "batch_norm(folded)", "hardtanh(fused)",
                                        "adaptive_avg_pool2d", "flatten"}));
    const torch::Tensor x = HgInputs(8, 3, 12, 161);
    const torch::Tensor reference = HgForwardOk(q, x);
    HgExpectClose(reference, HgForwardFp32(head, x));
    HgExpectEnginesMatch(q, x, reference);
    HgExpectRoundTrip(q, HgSaveAndLoad(head), x);
  }
}

// The first stages of torchvision's MobileNetV3-small and ResNet-18, cut where `cleave
// import` would, report their int8 share (ctest -V shows it; the XML report records it).
TEST_F(HeadInt8GraphPythonTest, TorchvisionHeadsReportTheirInt8Share) {
  TS_REQUIRE_PYTHON_MODULE("torchvision");
  RunPythonSource(std::string(kHgPythonPrelude) + R"PY(
import torchvision
m = torchvision.models.mobilenet_v3_small(num_classes=10, width_mult=0.5)
torch.jit.script(prepared(nn.Sequential(OrderedDict([
    ("features", m.features), ("avgpool", m.avgpool), ("flatten", nn.Flatten()),
    ("classifier", m.classifier)])))).save(os.path.join(OUT, "mobilenet.pt"))
from torchvision.models.resnet import ResNet, BasicBlock
r = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
chain = [(n, getattr(r, n)) for n in names] + [("flatten", nn.Flatten()), ("fc", r.fc)]
torch.jit.script(prepared(nn.Sequential(OrderedDict(chain)))).save(
    os.path.join(OUT, "resnet.pt"))
)PY");
  struct Case {
    std::string file, cut;
    std::vector<std::string> fp32_ops;
  };
  // MobileNetV3's squeeze-excitation scales by hardsigmoid(...) * x: neither has an int8
  // kernel here, so each block dequantizes, runs them fp32 and quantizes again.
  for (const Case& c : {Case{"mobilenet.pt", "features.3", {"hardsigmoid", "mul"}},
                        Case{"resnet.pt", "layer2", {}}}) {
    SCOPED_TRACE(c.file);
    torch::jit::Module head = ExtractHead(c.file, {3, 32, 32}, c.cut);
    Int8GraphHead q = HgQuantizeOk(head, HgInputs(16, 3, 32, 170));
    const HeadInt8Report& report = q.report();
    std::vector<std::string> fp32_ops;
    for (const QuantizedOpInfo& op : report.ops) {
      if (!op.int8) fp32_ops.push_back(op.kind);
    }
    std::cout << c.file << " head to " << c.cut << ": " << report.ops.size() << " ops, int8 "
              << report.int8_ops_fraction << " of the ops, " << report.int8_macs_fraction
              << " of the MACs\n";
    RecordProperty(c.file + "_int8_ops_fraction", std::to_string(report.int8_ops_fraction));
    RecordProperty(c.file + "_int8_macs_fraction", std::to_string(report.int8_macs_fraction));
    EXPECT_EQ(fp32_ops, c.fp32_ops);
    EXPECT_DOUBLE_EQ(report.int8_macs_fraction, 1.0);  // the fp32 ops have no MACs
    const torch::Tensor x = HgInputs(4, 3, 32, 171);
    const torch::Tensor reference = HgForwardOk(q, x);
    HgExpectClose(reference, HgForwardFp32(head, x));
    HgExpectEnginesMatch(q, x, reference);
    HgExpectRoundTrip(q, HgSaveAndLoad(head), x);
  }
}

// The example of examples/README.md, cut after relu2: everything but its normalization
// (x - mean) / std, which runs fp32 before the first quantization point, is int8, and its
// BatchNorms, which follow the max-pools, fold into the convs.
TEST_F(HeadInt8GraphPythonTest, ExampleFashionMnistHeadIsInt8AfterItsNormalization) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "no Fashion-MNIST in /usr/share/datasets (package dataset-fashion-mnist)";
  }
  const fs::path out = dir_ / "fashion.pt";
  ASSERT_FALSE(
      RunScript({std::string(CLEAVE_SOURCE_DIR) + "/examples/train_fashion_mnist.py", "--limit",
                 "200", "--epochs", "1", "--threads", "1", "--out", out.string()})
          .empty());
  torch::jit::Module head = ExtractHead("fashion.pt", {1, 28, 28}, "relu2");
  Int8GraphHead q = HgQuantizeOk(head, HgInputs(32, 1, 28, 180));
  EXPECT_EQ(HgKinds(q.report()),
            (std::vector<std::string>{"sub/fp32", "div/fp32", "conv2d", "batch_norm(folded)",
                                      "relu(fused)", "max_pool2d", "conv2d", "batch_norm(folded)",
                                      "relu(fused)", "max_pool2d"}));
  EXPECT_DOUBLE_EQ(q.report().int8_macs_fraction, 1.0);
  const torch::Tensor x = HgInputs(8, 1, 28, 181);
  HgExpectClose(HgForwardOk(q, x), HgForwardFp32(head, x));
}

}  // namespace
}  // namespace cleave::split
