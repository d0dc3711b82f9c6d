// split::TrainableNet over its three kinds: cleave's own network, a whole TorchScript model
// and an imported split model. Layout (names, order, parameters before buffers), forward,
// train modes, independent clones, and every rejection path of the loaders.
#include "split/trainable_net.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "split/vision_bundle.h"
#include "split/wire_quant.h"
#include "testing/tiny_bundle.h"
#include "testing/tiny_torchscript.h"

namespace cleave::split {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int kTnSide = cleave::testing::kTinyChainSide;

// Two classes of 1 x 8 x 8 images: what the tiny chain model takes.
InputSpec TnInput(int classes = 2) {
  InputSpec input;
  input.channels = 1;
  input.height = kTnSide;
  input.width = kTnSide;
  for (int c = 0; c < classes; ++c) input.class_names.push_back(std::to_string(c));
  return input;
}

// A module whose class name says BatchNorm, normalizing channel 0..C-1 with running stats.
torch::jit::Module TnBatchNorm(int channels) {
  torch::jit::Module m("__torch__.cleave_test.TnBatchNorm2d");
  m.register_attribute("training", c10::BoolType::get(), false);
  m.register_parameter("weight", torch::ones({channels}), false);
  m.register_parameter("bias", torch::zeros({channels}), false);
  m.register_buffer("running_mean", torch::zeros({channels}));
  m.register_buffer("running_var", torch::ones({channels}));
  m.register_buffer("num_batches_tracked", torch::zeros({}, torch::kLong));
  m.define(R"(
def forward(self, x):
    return torch.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            self.training, 0.1, 1e-5, False)
)");
  return m;
}

// conv(1 -> 2) - batchnorm - flatten - linear(128 -> 2), with a training attribute.
torch::jit::Module TnBatchNormModel() {
  torch::manual_seed(5);
  torch::jit::Module root("__torch__.cleave_test.TnBnNet");
  root.register_attribute("training", c10::BoolType::get(), false);
  root.register_module("conv", cleave::testing::TinyChainConv("TnConv", 1, 2));
  root.register_module("bn", TnBatchNorm(2));
  torch::jit::Module fc("__torch__.cleave_test.TnFc");
  fc.register_parameter("weight", torch::randn({2, 2 * kTnSide * kTnSide}) * 0.1, false);
  fc.register_parameter("bias", torch::zeros({2}), false);
  fc.define("def forward(self, x):\n    return torch.linear(x, self.weight, self.bias)\n");
  root.register_module("fc", fc);
  root.define(R"(
def forward(self, x):
    x = self.conv.forward(x)
    x = self.bn.forward(x)
    return self.fc.forward(torch.flatten(x, 1))
)");
  return root;
}

class TrainableNetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cleave_test_trainable_" + UniqueSuffix());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Save(torch::jit::Module module, const std::string& name) {
    const fs::path path = dir_ / name;
    module.save(path.string());
    return path.string();
  }
  fs::path dir_;
};

TEST_F(TrainableNetTest, CleavesOwnNetworkExposesParametersThenFloatBuffers) {
  const VisionModelSpec spec = VisionModelSpec::TinySplit();
  torch::manual_seed(1);
  std::unique_ptr<TrainableNet> net = MakeTrainable(spec, InputSpec::Legacy(spec));
  EXPECT_EQ(net->kind(), kVisionSplitKind);
  EXPECT_EQ(net->split_after(), spec.split_after);
  EXPECT_EQ(net->num_classes(), spec.num_classes);
  const TrainableNet::Tensors t = net->Exchanged();
  ASSERT_GT(t.num_parameters, 0u);
  ASSERT_GT(t.tensors.size(), t.num_parameters);  // BatchNorm running statistics follow
  for (size_t i = 0; i < t.tensors.size(); ++i) {
    EXPECT_TRUE(t.tensors[i].is_floating_point()) << t.names[i];
    EXPECT_EQ(i < t.num_parameters, t.tensors[i].requires_grad()) << t.names[i];
  }
  EXPECT_THAT(t.names.front(), HasSubstr("block0."));
  const torch::Tensor x = torch::rand({3, spec.input_channels, spec.image_size, spec.image_size});
  net->SetMode(TrainableNet::Mode::kEval);
  EXPECT_EQ(net->Forward(x).sizes(), (std::vector<int64_t>{3, spec.num_classes}));
}

TEST_F(TrainableNetTest, ATorchScriptModelLoadsTrainsAndClonesIndependently) {
  const std::string path = Save(cleave::testing::TinyChainModel(1), "chain.pt");
  Result<std::unique_ptr<TrainableNet>> loaded = LoadTorchScriptTrainable(path, TnInput());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  TrainableNet& net = **loaded;
  EXPECT_EQ(net.kind(), "torchscript");
  EXPECT_EQ(net.split_after(), -1);
  const TrainableNet::Tensors t = net.Exchanged();
  EXPECT_EQ(t.names, (std::vector<std::string>{"conv1.weight", "conv1.bias", "conv2.weight",
                                               "conv2.bias", "fc.weight", "fc.bias"}));
  EXPECT_EQ(t.num_parameters, 6u);
  for (const torch::Tensor& p : t.tensors) EXPECT_TRUE(p.requires_grad());

  // Its own weights as exported: the loaded model computes what the archive computes.
  torch::jit::Module reference = torch::jit::load(path);
  const torch::Tensor x = torch::rand({4, 1, kTnSide, kTnSide});
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::allclose(net.Forward(x), reference.forward({x}).toTensor()));
  }
  // The input is not modified (the model runs on a copy).
  const torch::Tensor before = x.clone();
  net.Forward(x);
  EXPECT_TRUE(torch::equal(x, before));

  // Gradient steps reach the model's own tensors.
  Result<std::unique_ptr<TrainableNet>> clone = net.Clone();
  ASSERT_TRUE(clone.ok()) << clone.status().ToString();
  const torch::Tensor labels = torch::tensor({0, 1, 0, 1}, torch::kLong);
  torch::optim::SGD sgd(net.Exchanged().tensors, torch::optim::SGDOptions(0.5));
  net.SetMode(TrainableNet::Mode::kTrain);
  const double first = torch::nn::functional::cross_entropy(net.Forward(x), labels).item<double>();
  for (int step = 0; step < 20; ++step) {
    sgd.zero_grad();
    torch::nn::functional::cross_entropy(net.Forward(x), labels).backward();
    sgd.step();
  }
  const double last = torch::nn::functional::cross_entropy(net.Forward(x), labels).item<double>();
  EXPECT_LT(last, first);
  // The clone kept the weights it was made with.
  const TrainableNet::Tensors cloned = (*clone)->Exchanged();
  const TrainableNet::Tensors trained = net.Exchanged();
  EXPECT_TRUE(torch::equal(cloned.tensors[0],
                           reference.attr("conv1").toModule().attr("weight").toTensor()));
  EXPECT_FALSE(torch::equal(cloned.tensors[0], trained.tensors[0]));
  // A clone of a net whose parameters require grad trains too (its tensors are leaves).
  Result<std::unique_ptr<TrainableNet>> second = net.Clone();
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  for (const torch::Tensor& p : (*second)->Exchanged().tensors) EXPECT_TRUE(p.is_leaf());
  torch::optim::SGD second_sgd((*second)->Exchanged().tensors, torch::optim::SGDOptions(0.5));
  (*second)->SetMode(TrainableNet::Mode::kTrain);
  second_sgd.zero_grad();
  torch::nn::functional::cross_entropy((*second)->Forward(x), labels).backward();
  EXPECT_NO_THROW(second_sgd.step());
}

TEST_F(TrainableNetTest, FrozenBatchNormKeepsRunningStatisticsInTorchScript) {
  const std::string path = Save(TnBatchNormModel(), "bn.pt");
  Result<std::unique_ptr<TrainableNet>> loaded = LoadTorchScriptTrainable(path, TnInput());
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  TrainableNet& net = **loaded;
  const TrainableNet::Tensors t = net.Exchanged();
  // Float buffers follow the parameters; num_batches_tracked (int64) is not exchanged.
  EXPECT_EQ(t.names, (std::vector<std::string>{"conv.weight", "conv.bias", "bn.weight", "bn.bias",
                                               "fc.weight", "fc.bias", "bn.running_mean",
                                               "bn.running_var"}));
  EXPECT_EQ(t.num_parameters, 6u);
  const torch::Tensor running_mean = t.tensors[6];
  const torch::Tensor start = running_mean.clone();
  const torch::Tensor x = torch::rand({4, 1, kTnSide, kTnSide}) + 1.0;
  torch::NoGradGuard no_grad;
  net.SetMode(TrainableNet::Mode::kTrainFrozenBatchNorm);
  net.Forward(x);
  EXPECT_TRUE(torch::equal(running_mean, start)) << "frozen statistics moved";
  net.SetMode(TrainableNet::Mode::kEval);
  net.Forward(x);
  EXPECT_TRUE(torch::equal(running_mean, start)) << "eval mode moved the statistics";
  net.SetMode(TrainableNet::Mode::kTrain);
  net.Forward(x);
  EXPECT_FALSE(torch::equal(running_mean, start)) << "train mode must update the statistics";
}

TEST_F(TrainableNetTest, RejectsWhatItCannotTrain) {
  // No such file.
  EXPECT_EQ(LoadTorchScriptTrainable(dir_ / "absent.pt", TnInput()).status().code(),
            StatusCode::kNotFound);
  // Not a TorchScript archive.
  ASSERT_TRUE(WriteFileAtomic(dir_ / "junk.pt", "not a zip archive").ok());
  Result<std::unique_ptr<TrainableNet>> junk =
      LoadTorchScriptTrainable(dir_ / "junk.pt", TnInput());
  EXPECT_EQ(junk.status().code(), StatusCode::kInvalidArgument);
  // Logits for 2 classes, data with 3.
  const std::string path = Save(cleave::testing::TinyChainModel(1), "chain.pt");
  Result<std::unique_ptr<TrainableNet>> classes = LoadTorchScriptTrainable(path, TnInput(3));
  EXPECT_EQ(classes.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(classes.status().message(), HasSubstr("[N, 3] logits"));
  // Images of another shape (3 channels into a 1-channel conv).
  InputSpec rgb = TnInput();
  rgb.channels = 3;
  EXPECT_EQ(LoadTorchScriptTrainable(path, rgb).status().code(), StatusCode::kInvalidArgument);
  // An input description that does not validate.
  InputSpec bad = TnInput();
  bad.class_names.clear();
  EXPECT_EQ(LoadTorchScriptTrainable(path, bad).status().code(), StatusCode::kInvalidArgument);
  // An imported model without its parts.
  ImportedSplitModel empty;
  EXPECT_EQ(MakeTrainable(std::move(empty)).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(TrainableNetTest, RecognizesTorchScriptPathsByExtension) {
  EXPECT_TRUE(IsTorchScriptPath("model.pt"));
  EXPECT_TRUE(IsTorchScriptPath("dir/Model.PTH"));
  EXPECT_TRUE(IsTorchScriptPath("m.ptc"));
  EXPECT_FALSE(IsTorchScriptPath("model.json"));
  EXPECT_FALSE(IsTorchScriptPath("simple_cnn"));
  EXPECT_FALSE(IsTorchScriptPath("pt"));
}

TEST_F(TrainableNetTest, AnImportedModelRunsTheWirePathAndNamesItsParts) {
  ImportedSplitModel model = cleave::testing::TinyImportedModel();
  ImportedSplitModel view = model;  // shares the modules
  Result<std::unique_ptr<TrainableNet>> made = MakeTrainable(std::move(model));
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  TrainableNet& net = **made;
  EXPECT_EQ(net.kind(), kTorchScriptSplitKind);
  const TrainableNet::Tensors t = net.Exchanged();
  std::vector<std::string> parts;
  for (size_t i = 0; i < t.num_parameters; ++i) {
    const std::string part = t.names[i].substr(0, t.names[i].find('.'));
    if (parts.empty() || parts.back() != part) parts.push_back(part);
  }
  EXPECT_EQ(parts, (std::vector<std::string>{"head", "encoder", "exit0", "decoder", "tail"}));
  EXPECT_EQ(t.names.front(), "head.conv1.weight");

  // Forward = tail(decoder(fake-quantized wire code of encoder(head(x)))).
  const torch::Tensor x = torch::rand({3, 1, kTnSide, kTnSide});
  torch::NoGradGuard no_grad;
  net.SetMode(TrainableNet::Mode::kEval);
  const torch::Tensor code =
      FakeQuantizeWire(view.encoder->forward(view.RunHead(x)), view.wire_quant, view.wire_dtype);
  EXPECT_TRUE(torch::allclose(net.Forward(x), view.RunTail(code)));

  // Writing the exchanged tensors writes the model's own.
  t.tensors[0].mul_(0);
  EXPECT_EQ(view.head.attr("conv1").toModule().attr("weight").toTensor().abs().sum().item<float>(),
            0.0f);
  // A clone does not share them.
  Result<std::unique_ptr<TrainableNet>> clone = net.Clone();
  ASSERT_TRUE(clone.ok()) << clone.status().ToString();
  const TrainableNet::Tensors c = (*clone)->Exchanged();
  ASSERT_EQ(c.names, t.names);
  c.tensors[0].fill_(1);
  EXPECT_EQ(t.tensors[0].abs().sum().item<float>(), 0.0f);
  EXPECT_EQ((*clone)->Forward(x).sizes(), net.Forward(x).sizes());
}

TEST_F(TrainableNetTest, FromBundleReadsEitherKindAndRefusesOthers) {
  // cleave's own.
  ASSERT_TRUE(cleave::testing::WriteTinyBundle(dir_ / "vision").ok());
  Result<Bundle> vb = Bundle::Open(dir_ / "vision");
  ASSERT_TRUE(vb.ok()) << vb.status().ToString();
  Result<VisionSplitModel> vision = ReadVisionBundle(*vb, VisionBundleParts());
  ASSERT_TRUE(vision.ok()) << vision.status().ToString();
  Result<std::unique_ptr<TrainableNet>> vnet = TrainableFromBundle(*vb);
  ASSERT_TRUE(vnet.ok()) << vnet.status().ToString();
  EXPECT_EQ((*vnet)->kind(), kVisionSplitKind);
  EXPECT_TRUE(torch::equal((*vnet)->Exchanged().tensors[0], vision->net->parameters()[0]));

  // Imported.
  ASSERT_TRUE(WriteImportedBundle(dir_ / "imported", cleave::testing::TinyImportedModel()).ok());
  Result<Bundle> ib = Bundle::Open(dir_ / "imported");
  ASSERT_TRUE(ib.ok()) << ib.status().ToString();
  Result<std::unique_ptr<TrainableNet>> inet = TrainableFromBundle(*ib);
  ASSERT_TRUE(inet.ok()) << inet.status().ToString();
  EXPECT_EQ((*inet)->kind(), kTorchScriptSplitKind);
  EXPECT_EQ((*inet)->num_classes(), 2);

  // Another kind.
  BundleWriter writer(dir_ / "other");
  ASSERT_TRUE(writer.Commit("lm-split", nlohmann::json::object()).ok());
  Result<Bundle> ob = Bundle::Open(dir_ / "other");
  ASSERT_TRUE(ob.ok()) << ob.status().ToString();
  Result<std::unique_ptr<TrainableNet>> other = TrainableFromBundle(*ob);
  EXPECT_EQ(other.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(other.status().message(), HasSubstr("lm-split"));
}

}  // namespace
}  // namespace cleave::split
