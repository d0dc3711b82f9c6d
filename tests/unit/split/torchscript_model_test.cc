// Imported TorchScript models: where they can be cut (split/torchscript_model.h), and the
// equivalence the cut must keep: for every cut point, head -> tail equals the whole model,
// through ForwardHead/ForwardTail and through the extracted head and tail modules after a
// save + torch::jit::load round trip.
//
// The models are written by /usr/bin/python3 (python3-torch, python3-torchvision) into a
// folder of the test's own; without python3-torch the tests skip.
#include "split/torchscript_model.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "unit/split/torchscript_python.h"

namespace cleave::split {
namespace {

namespace fs = std::filesystem;
using Autograd = TorchScriptModel::Autograd;

// Shared by every script: imports, a seeded RNG, and save helpers that put BatchNorm layers
// in eval mode with non-trivial statistics first (so a cut that loses them shows).
constexpr char kTsPythonPrelude[] = R"PY(
import os, sys
from collections import OrderedDict
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
OUT = sys.argv[1]

def prepared(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()

def save_scripted(model, name):
    torch.jit.script(prepared(model)).save(os.path.join(OUT, name))

def save_traced(model, name, shape):
    model = prepared(model)
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(shape))
    traced.save(os.path.join(OUT, name))

def tiny_sequential():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))

class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        x = self.conv(x)
        x = self.act(x)
        x = self.flat(x)
        return self.fc(x)
)PY";

class TorchScriptModelTest : public TorchScriptPythonTest {
 protected:
  // Runs the prelude plus `body` with OUT = dir_; fails the test (with python's output) if
  // the script fails.
  void RunPython(const std::string& body) { RunPythonSource(kTsPythonPrelude + std::string(body)); }

  TorchScriptModel LoadOk(const std::string& name, std::vector<int64_t> input_shape = {}) {
    TorchScriptModel::Options options;
    options.input_shape = std::move(input_shape);
    Result<TorchScriptModel> model = TorchScriptModel::Load(dir_ / name, options);
    EXPECT_TRUE(model.ok()) << model.status().ToString();
    if (!model.ok()) throw std::runtime_error(model.status().ToString());
    return std::move(model).value();
  }
};

// Module::save and torch::jit::load, through memory (the archive bytes are the same as a
// file's; this keeps the many round trips of the equivalence tests quick).
torch::jit::Module TsSaveAndLoad(const torch::jit::Module& module) {
  std::stringstream archive;
  module.save(archive);
  torch::jit::Module loaded = torch::jit::load(archive, torch::kCPU);
  loaded.eval();
  return loaded;
}

std::set<std::string> TsParameterNames(const torch::jit::Module& module) {
  std::set<std::string> names;
  for (const auto& parameter : module.named_parameters(true)) names.insert(parameter.name);
  return names;
}

bool TsClose(const torch::Tensor& a, const torch::Tensor& b) {
  return a.sizes() == b.sizes() && torch::allclose(a, b, /*rtol=*/1e-5, /*atol=*/1e-6);
}

void TsExpectMessage(const Status& status, StatusCode code, const std::string& needle) {
  EXPECT_EQ(status.code(), code) << status.ToString();
  EXPECT_NE(status.message().find(needle), std::string::npos)
      << "'" << needle << "' not in: " << status.message();
}

// The equivalence the issue requires: at every cut point, head then tail equals the whole
// model, both run in place and as extracted modules saved and loaded again; and the head and
// tail hold disjoint parameters that together are the model's.
void TsExpectEquivalentAtEveryCut(TorchScriptModel& model, const torch::Tensor& x) {
  Result<torch::Tensor> whole = model.Forward(x);
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  Result<std::vector<std::pair<std::string, torch::Tensor>>> parameters = model.NamedParameters();
  ASSERT_TRUE(parameters.ok());
  std::set<std::string> all_names;
  for (const auto& [name, tensor] : *parameters) all_names.insert(name);

  const std::vector<std::string> cuts = model.CutPoints();
  ASSERT_FALSE(cuts.empty());
  for (size_t i = 0; i < cuts.size(); ++i) {
    SCOPED_TRACE("cut after " + cuts[i]);
    Result<TorchScriptCut> cut = model.ResolveCut(cuts[i]);
    ASSERT_TRUE(cut.ok()) << cut.status().ToString();
    EXPECT_EQ(cut->name, cuts[i]);
    Result<torch::Tensor> z = model.ForwardHead(*cut, x);
    ASSERT_TRUE(z.ok()) << z.status().ToString();
    Result<torch::Tensor> y = model.ForwardTail(*cut, *z);
    ASSERT_TRUE(y.ok()) << y.status().ToString();
    EXPECT_TRUE(TsClose(*y, *whole));
    EXPECT_TRUE(model.VerifyCut(*cut, x).ok());

    Result<torch::jit::Module> head = model.ExtractHead(*cut);
    ASSERT_TRUE(head.ok()) << head.status().ToString();
    Result<torch::jit::Module> tail = model.ExtractTail(*cut);
    ASSERT_TRUE(tail.ok()) << tail.status().ToString();
    torch::jit::Module head_loaded = TsSaveAndLoad(*head);
    torch::jit::Module tail_loaded = TsSaveAndLoad(*tail);
    torch::NoGradGuard no_grad;
    const torch::Tensor z_loaded = head_loaded.forward({x.clone()}).toTensor();
    EXPECT_TRUE(TsClose(z_loaded, *z))
        << (z_loaded - *z).abs().max().item<float>() << " " << z->abs().max().item<float>();
    EXPECT_TRUE(TsClose(tail_loaded.forward({z_loaded.clone()}).toTensor(), *whole));

    const std::set<std::string> head_names = TsParameterNames(head_loaded);
    const std::set<std::string> tail_names = TsParameterNames(tail_loaded);
    std::set<std::string> both;
    std::set_intersection(head_names.begin(), head_names.end(), tail_names.begin(),
                          tail_names.end(), std::inserter(both, both.end()));
    EXPECT_TRUE(both.empty()) << "shared parameter " << *both.begin();
    std::set<std::string> joined = head_names;
    joined.insert(tail_names.begin(), tail_names.end());
    EXPECT_EQ(joined, all_names);
  }
}

// The names after "cut points (cleave import --split-after NAME): " in an example's output.
std::vector<std::string> TsPrintedCutPoints(const std::string& output) {
  const std::string label = "cut points (cleave import --split-after NAME): ";
  const size_t at = output.find(label);
  if (at == std::string::npos) return {};
  std::vector<std::string> names;
  std::stringstream line(
      output.substr(at + label.size(), output.find('\n', at) - at - label.size()));
  for (std::string name; std::getline(line, name, ',');) {
    names.push_back(name.substr(name.find_first_not_of(' ')));
  }
  return names;
}

TEST_F(TorchScriptModelTest, ScriptedSequentialCutsAfterEveryChildButTheLast) {
  RunPython("save_scripted(tiny_sequential(), 'seq.pt')\n");
  TorchScriptModel model = LoadOk("seq.pt", {1, 8, 8});
  EXPECT_TRUE(model.CheckCuttable().ok());
  EXPECT_EQ(model.class_name(), "Sequential");
  EXPECT_EQ(model.CutPoints(), (std::vector<std::string>{"0", "1", "2", "3", "4", "5"}));
  TsExpectEquivalentAtEveryCut(model, torch::rand({3, 1, 8, 8}));

  // Through files too, as `cleave import` will write them.
  Result<TorchScriptCut> cut = model.ResolveCut("2");
  ASSERT_TRUE(cut.ok());
  Result<torch::jit::Module> head = model.ExtractHead(*cut);
  Result<torch::jit::Module> tail = model.ExtractTail(*cut);
  ASSERT_TRUE(head.ok() && tail.ok());
  head->save((dir_ / "head.pt").string());
  tail->save((dir_ / "tail.pt").string());
  Result<TorchScriptModel> head_file = TorchScriptModel::Load(dir_ / "head.pt");
  Result<TorchScriptModel> tail_file = TorchScriptModel::Load(dir_ / "tail.pt");
  ASSERT_TRUE(head_file.ok()) << head_file.status().ToString();
  ASSERT_TRUE(tail_file.ok()) << tail_file.status().ToString();
  const torch::Tensor x = torch::rand({2, 1, 8, 8});
  Result<torch::Tensor> z = head_file->Forward(x);
  ASSERT_TRUE(z.ok()) << z.status().ToString();
  Result<torch::Tensor> y = tail_file->Forward(*z);
  ASSERT_TRUE(y.ok()) << y.status().ToString();
  EXPECT_TRUE(TsClose(*y, *model.Forward(x)));
}

TEST_F(TorchScriptModelTest, TracedSequentialIsTheSameChain) {
  RunPython("save_traced(tiny_sequential(), 'traced.pt', (2, 1, 8, 8))\n");
  TorchScriptModel model = LoadOk("traced.pt", {1, 8, 8});
  EXPECT_EQ(model.CutPoints(), (std::vector<std::string>{"0", "1", "2", "3", "4", "5"}));
  TsExpectEquivalentAtEveryCut(model, torch::rand({3, 1, 8, 8}));

  // Through files too, as `cleave import` will write them.
  Result<TorchScriptCut> cut = model.ResolveCut("2");
  ASSERT_TRUE(cut.ok());
  Result<torch::jit::Module> head = model.ExtractHead(*cut);
  Result<torch::jit::Module> tail = model.ExtractTail(*cut);
  ASSERT_TRUE(head.ok() && tail.ok());
  head->save((dir_ / "head.pt").string());
  tail->save((dir_ / "tail.pt").string());
  Result<TorchScriptModel> head_file = TorchScriptModel::Load(dir_ / "head.pt");
  Result<TorchScriptModel> tail_file = TorchScriptModel::Load(dir_ / "tail.pt");
  ASSERT_TRUE(head_file.ok()) << head_file.status().ToString();
  ASSERT_TRUE(tail_file.ok()) << tail_file.status().ToString();
  const torch::Tensor x = torch::rand({2, 1, 8, 8});
  Result<torch::Tensor> z = head_file->Forward(x);
  ASSERT_TRUE(z.ok()) << z.status().ToString();
  Result<torch::Tensor> y = tail_file->Forward(*z);
  ASSERT_TRUE(y.ok()) << y.status().ToString();
  EXPECT_TRUE(TsClose(*y, *model.Forward(x)));
}

TEST_F(TorchScriptModelTest, CustomChainModuleScriptedOrTracedCutsByChildName) {
  RunPython(
      "save_scripted(Chain(), 'scripted.pt')\n"
      "save_traced(Chain(), 'traced.pt', (1, 1, 8, 8))\n");
  for (const std::string file : {"scripted.pt", "traced.pt"}) {
    SCOPED_TRACE(file);
    TorchScriptModel model = LoadOk(file);
    EXPECT_EQ(model.class_name(), "Chain");
    EXPECT_EQ(model.CutPoints(), (std::vector<std::string>{"conv", "act", "flat"}));
    // Positions in the root chain name the same cuts.
    Result<TorchScriptCut> by_index = model.ResolveCut("1");
    ASSERT_TRUE(by_index.ok()) << by_index.status().ToString();
    EXPECT_EQ(by_index->name, "act");
    TsExpectEquivalentAtEveryCut(model, torch::rand({2, 1, 8, 8}));
  }
}

TEST_F(TorchScriptModelTest, NestedChainsCutInsideByDottedNames) {
  RunPython(R"PY(
model = nn.Sequential(OrderedDict([
    ("features", nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU()))),
    ("pool", nn.AdaptiveAvgPool2d(1)),
    ("flatten", nn.Flatten()),
    ("classifier", nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))),
]))
save_scripted(model, 'nested.pt')
save_traced(model, 'nested_traced.pt', (2, 3, 8, 8))
)PY");
  const std::vector<std::string> expected{"features.0",   "features.1",   "features.2",
                                          "features.3.0", "features",     "pool",
                                          "flatten",      "classifier.0", "classifier.1"};
  for (const std::string file : {"nested.pt", "nested_traced.pt"}) {
    SCOPED_TRACE(file);
    TorchScriptModel model = LoadOk(file, {3, 8, 8});
    EXPECT_EQ(model.CutPoints(), expected);
    // After the last child of a nested chain is after the chain: one canonical name.
    for (const std::string alias : {"features.3", "features.3.1"}) {
      Result<TorchScriptCut> cut = model.ResolveCut(alias);
      ASSERT_TRUE(cut.ok()) << cut.status().ToString();
      EXPECT_EQ(cut->name, "features");
    }
    Result<TorchScriptCut> index = model.ResolveCut("1");
    ASSERT_TRUE(index.ok()) << index.status().ToString();
    EXPECT_EQ(index->name, "pool");
    // Inside the last child is fine, after it is not.
    EXPECT_TRUE(model.ResolveCut("classifier.1").ok());
    TsExpectMessage(model.ResolveCut("classifier.2").status(), StatusCode::kInvalidArgument,
                    "leaves the cloud nothing to run");
    // A Linear is not a chain: no cut inside it.
    TsExpectMessage(model.ResolveCut("classifier.0.weight").status(), StatusCode::kInvalidArgument,
                    "cannot cut inside classifier.0");
    TsExpectEquivalentAtEveryCut(model, torch::rand({2, 3, 8, 8}));
  }
}

TEST_F(TorchScriptModelTest, ModuleListLoopIsAChain) {
  RunPython(R"PY(
class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(4, 2, 3, padding=1)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

save_scripted(Stack(), 'stack.pt')
)PY");
  TorchScriptModel model = LoadOk("stack.pt");
  EXPECT_EQ(model.CutPoints(), (std::vector<std::string>{"layers.0", "layers.1"}));
  TsExpectEquivalentAtEveryCut(model, torch::rand({2, 1, 8, 8}));
}

constexpr char kTsHeadTailModel[] = R"PY(
class HeadTail(nn.Module):
    def __init__(self, tail_scale: float):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.gain = nn.Parameter(torch.tensor(1.5))
        self.fc = nn.Linear(4 * 4 * 4, 10)
        self.register_buffer("offset", torch.full((10,), 0.25))
        self.tail_scale = tail_scale

    @torch.jit.export
    def forward_head(self, x):
        return F.max_pool2d(F.relu(self.stem(x)) * self.gain, 2)

    @torch.jit.export
    def forward_tail(self, z):
        return self.fc(torch.flatten(z, 1)) + self.offset

    def forward(self, x):
        return self.forward_tail(self.forward_head(x)) * self.tail_scale

class HelperHead(HeadTail):
    @torch.jit.export
    def forward_head(self, x):
        return self.stem_relu(x)

    def stem_relu(self, x):
        return F.relu(self.stem(x))

save_scripted(HeadTail(1.0), 'head_tail.pt')
save_scripted(HelperHead(1.0), 'helper_head.pt')
save_scripted(HeadTail(2.0), 'head_tail_wrong.pt')
)PY";

TEST_F(TorchScriptModelTest, ForwardHeadAndForwardTailMethodsAreTheCut) {
  RunPython(kTsHeadTailModel);
  TorchScriptModel model = LoadOk("head_tail.pt", {1, 8, 8});
  EXPECT_EQ(model.CutPoints(), std::vector<std::string>{"head"});
  TsExpectMessage(model.ResolveCut("stem").status(), StatusCode::kInvalidArgument,
                  "valid cut points: head");
  TsExpectEquivalentAtEveryCut(model, torch::rand({2, 1, 8, 8}));

  // Each side carries only what its method reads.
  Result<TorchScriptCut> cut = model.ResolveCut("head");
  ASSERT_TRUE(cut.ok());
  Result<torch::jit::Module> head = model.ExtractHead(*cut);
  Result<torch::jit::Module> tail = model.ExtractTail(*cut);
  ASSERT_TRUE(head.ok() && tail.ok());
  EXPECT_EQ(TsParameterNames(*head), (std::set<std::string>{"gain", "stem.bias", "stem.weight"}));
  EXPECT_EQ(TsParameterNames(*tail), (std::set<std::string>{"fc.bias", "fc.weight"}));
  EXPECT_TRUE(tail->hasattr("offset"));
  EXPECT_FALSE(head->hasattr("offset"));

  // A head that calls another method of the model runs, but is not copied out alone.
  TorchScriptModel helper = LoadOk("helper_head.pt");
  Result<TorchScriptCut> helper_cut = helper.ResolveCut("head");
  ASSERT_TRUE(helper_cut.ok());
  EXPECT_TRUE(helper.ForwardHead(*helper_cut, torch::rand({1, 1, 8, 8})).ok());
  TsExpectMessage(helper.ExtractHead(*helper_cut).status(), StatusCode::kUnimplemented,
                  "forward_head calls self.stem_relu");
  EXPECT_TRUE(helper.ExtractTail(*helper_cut).ok());
}

TEST_F(TorchScriptModelTest, ForwardThatIsNotTailOfHeadIsRefused) {
  RunPython(kTsHeadTailModel);
  // With the input shape, Load checks forward == forward_tail(forward_head(x)) itself.
  TorchScriptModel::Options options;
  options.input_shape = {1, 8, 8};
  TsExpectMessage(TorchScriptModel::Load(dir_ / "head_tail_wrong.pt", options).status(),
                  StatusCode::kInvalidArgument, "forward must equal forward_tail(forward_head(x))");
  // Without it, the check is VerifyCut's.
  TorchScriptModel model = LoadOk("head_tail_wrong.pt");
  Result<TorchScriptCut> cut = model.ResolveCut("head");
  ASSERT_TRUE(cut.ok());
  TsExpectMessage(model.VerifyCut(*cut, torch::rand({2, 1, 8, 8})), StatusCode::kInvalidArgument,
                  "differs from forward");
}

TEST_F(TorchScriptModelTest, ModelsThatAreNotChainsSayWhatToChange) {
  RunPython(R"PY(
class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)) + x

class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 10)

    def forward(self, x):
        x = self.conv(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

class HalfExported(Chain):
    @torch.jit.export
    def forward_head(self, x):
        return self.act(self.conv(x))

save_scripted(Residual(), 'residual.pt')
save_scripted(Functional(), 'functional.pt')
save_traced(Functional(), 'functional_traced.pt', (1, 1, 8, 8))
save_scripted(HalfExported(), 'half.pt')
save_scripted(nn.Sequential(nn.Sequential(nn.Linear(4, 4))), 'one_leaf.pt')
)PY");
  {
    TorchScriptModel model = LoadOk("residual.pt");
    EXPECT_TRUE(model.CutPoints().empty());
    const Status status = model.CheckCuttable();
    TsExpectMessage(status, StatusCode::kInvalidArgument,
                    "forward of Residual uses its input more than once");
    TsExpectMessage(status, StatusCode::kInvalidArgument, "residual connection");
    TsExpectMessage(status, StatusCode::kInvalidArgument, "wrap the model in torch.nn.Sequential");
    TsExpectMessage(status, StatusCode::kInvalidArgument, "forward_head(x) and forward_tail(z)");
    TsExpectMessage(model.ResolveCut("conv").status(), StatusCode::kInvalidArgument,
                    "residual connection");
    // Not cuttable still runs whole.
    EXPECT_TRUE(model.Forward(torch::rand({1, 1, 8, 8})).ok());
  }
  for (const std::string file : {"functional.pt", "functional_traced.pt"}) {
    SCOPED_TRACE(file);
    TorchScriptModel model = LoadOk(file);
    const Status status = model.CheckCuttable();
    TsExpectMessage(status, StatusCode::kInvalidArgument,
                    "forward of Functional runs aten::flatten on the output of conv");
    TsExpectMessage(status, StatusCode::kInvalidArgument, "nn.Flatten() as a module");
  }
  TsExpectMessage(LoadOk("half.pt").CheckCuttable(), StatusCode::kInvalidArgument,
                  "exports forward_head but no forward_tail");
  TsExpectMessage(LoadOk("one_leaf.pt").CheckCuttable(), StatusCode::kInvalidArgument,
                  "calls one module, 0.0, which is a Linear");
}

TEST_F(TorchScriptModelTest, WrongCutNamesListTheValidOnes) {
  RunPython("save_scripted(Chain(), 'chain.pt')\n");
  TorchScriptModel model = LoadOk("chain.pt");
  const std::string valid = "valid cut points: conv, act, flat";
  TsExpectMessage(model.ResolveCut("conv2").status(), StatusCode::kInvalidArgument,
                  "no cut point named 'conv2'; " + valid);
  TsExpectMessage(model.ResolveCut("fc").status(), StatusCode::kInvalidArgument,
                  "leaves the cloud nothing to run; " + valid);
  TsExpectMessage(model.ResolveCut("3").status(), StatusCode::kInvalidArgument,
                  "leaves the cloud nothing to run");
  TsExpectMessage(model.ResolveCut("4").status(), StatusCode::kInvalidArgument,
                  "no child at position 4");
  TsExpectMessage(model.ResolveCut("").status(), StatusCode::kInvalidArgument, valid);
  TsExpectMessage(model.ResolveCut("conv.weight").status(), StatusCode::kInvalidArgument,
                  "cannot cut inside conv: it is a Conv2d whose forward calls self._conv_forward");
}

TEST_F(TorchScriptModelTest, FilesThatAreNotTorchScriptAreRefused) {
  RunPython(
      "torch.save(tiny_sequential().state_dict(), os.path.join(OUT, 'state_dict.pt'))\n"
      "torch.save(tiny_sequential(), os.path.join(OUT, 'pickled.pt'))\n");
  std::ofstream(dir_ / "text.pt") << "not a model\n";
  for (const std::string file : {"state_dict.pt", "pickled.pt", "text.pt"}) {
    SCOPED_TRACE(file);
    TsExpectMessage(TorchScriptModel::Load(dir_ / file).status(), StatusCode::kInvalidArgument,
                    "is not a TorchScript archive");
  }
  TsExpectMessage(TorchScriptModel::Load(dir_ / "missing.pt").status(), StatusCode::kNotFound,
                  "no such file");
  TsExpectMessage(TorchScriptModel::Load(dir_).status(), StatusCode::kInvalidArgument,
                  "not a regular file");
}

TEST_F(TorchScriptModelTest, BadInputsAndForeignCutsAreInvalidArgument) {
  RunPython(
      "save_scripted(tiny_sequential(), 'seq.pt')\n"
      "save_scripted(Chain(), 'chain.pt')\n");
  TorchScriptModel model = LoadOk("seq.pt", {1, 8, 8});
  Result<TorchScriptCut> cut = model.ResolveCut("2");
  ASSERT_TRUE(cut.ok());
  TsExpectMessage(model.Forward(torch::Tensor()).status(), StatusCode::kInvalidArgument,
                  "undefined");
  TsExpectMessage(model.Forward(torch::ones({1, 1, 8, 8}, torch::kInt)).status(),
                  StatusCode::kInvalidArgument, "floating-point");
  TsExpectMessage(model.ForwardHead(*cut, torch::rand({1, 3, 8, 8})).status(),
                  StatusCode::kInvalidArgument, "the model takes [N, 1, 8, 8]");
  TsExpectMessage(model.Forward(torch::full({1, 1, 8, 8}, NAN)).status(),
                  StatusCode::kInvalidArgument, "NaN");
  TsExpectMessage(model.ForwardTail(*cut, torch::rand({0, 4, 8, 8})).status(),
                  StatusCode::kInvalidArgument, "at least one item");
  // Features of the wrong shape fail inside the model, named, as InvalidArgument.
  TsExpectMessage(model.ForwardTail(*cut, torch::rand({1, 5, 8, 8})).status(),
                  StatusCode::kInvalidArgument, "seq.pt: 3 failed");
  // A cut from another model.
  TorchScriptModel chain = LoadOk("chain.pt");
  Result<TorchScriptCut> foreign = chain.ResolveCut("act");
  ASSERT_TRUE(foreign.ok());
  TsExpectMessage(model.ForwardHead(*foreign, torch::rand({1, 1, 8, 8})).status(),
                  StatusCode::kInvalidArgument, "is not a cut point of");
  TsExpectMessage(model.ExtractTail(*foreign).status(), StatusCode::kInvalidArgument,
                  "is not a cut point of");
  // A shape that does not fit the declared input fails at Load.
  TorchScriptModel::Options options;
  options.input_shape = {1, 9, 9};
  TsExpectMessage(TorchScriptModel::Load(dir_ / "seq.pt", options).status(),
                  StatusCode::kInvalidArgument, "a sample input [2, 1, 9, 9]");
}

TEST_F(TorchScriptModelTest, TailTrainsWithAutogradOn) {
  RunPython("save_scripted(tiny_sequential(), 'seq.pt')\n");
  TorchScriptModel model = LoadOk("seq.pt");
  Result<TorchScriptCut> cut = model.ResolveCut("4");
  ASSERT_TRUE(cut.ok());
  const torch::Tensor x = torch::rand({4, 1, 8, 8});
  Result<torch::Tensor> z = model.ForwardHead(*cut, x);
  ASSERT_TRUE(z.ok());
  EXPECT_FALSE(z->requires_grad());  // kOff by default

  ASSERT_TRUE(model.SetTraining(true).ok());
  Result<torch::Tensor> logits = model.ForwardTail(*cut, *z, Autograd::kOn);
  ASSERT_TRUE(logits.ok()) << logits.status().ToString();
  ASSERT_TRUE(logits->requires_grad());
  torch::nn::functional::cross_entropy(*logits, torch::tensor({0, 1, 2, 3})).backward();
  auto parameters = model.NamedParameters();
  ASSERT_TRUE(parameters.ok());
  std::vector<std::string> names;
  for (const auto& [name, tensor] : *parameters) {
    names.push_back(name);
    // The tail (the Linear, "6") got gradients, the head did not run with autograd.
    if (name.rfind("6.", 0) == 0) {
      ASSERT_TRUE(tensor.grad().defined()) << name;
      EXPECT_GT(tensor.grad().abs().sum().item<float>(), 0.0f) << name;
    } else {
      EXPECT_FALSE(tensor.grad().defined()) << name;
    }
  }
  EXPECT_EQ(names, (std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "3.weight",
                                             "3.bias", "6.weight", "6.bias"}));
  ASSERT_TRUE(model.SetTraining(false).ok());
}

// Torchvision architectures, sized for small images and written as chains the way
// examples/export_torchvision.py does them.
TEST_F(TorchScriptModelTest, TorchvisionMobileNetAsSequentialCutsAtEveryPoint) {
  TS_REQUIRE_PYTHON_MODULE("torchvision");
  RunPython(R"PY(
import torchvision
m = torchvision.models.mobilenet_v3_small(num_classes=10, width_mult=0.5)
save_scripted(nn.Sequential(OrderedDict([
    ("features", m.features), ("avgpool", m.avgpool), ("flatten", nn.Flatten()),
    ("classifier", m.classifier)])), 'mobilenet.pt')
)PY");
  TorchScriptModel model = LoadOk("mobilenet.pt", {3, 16, 16});
  const std::vector<std::string> cuts = model.CutPoints();
  // Conv2dNormActivation is a Sequential, so it can be cut inside; InvertedResidual is not.
  EXPECT_EQ(cuts.front(), "features.0.0");
  EXPECT_NE(std::find(cuts.begin(), cuts.end(), "features.1"), cuts.end());
  EXPECT_EQ(cuts.back(), "classifier.2");
  TsExpectMessage(model.ResolveCut("features.1.block").status(), StatusCode::kInvalidArgument,
                  "cannot cut inside features.1");
  TsExpectEquivalentAtEveryCut(model, torch::rand({2, 3, 16, 16}));
}

// ResNet (one block per stage) with a 3x3 stem and no max-pool, traced as a Sequential; and
// the same network as torchvision writes it, which is refused, scripted or traced.
TEST_F(TorchScriptModelTest, TorchvisionResNetCutsOnlyAsSequential) {
  TS_REQUIRE_PYTHON_MODULE("torchvision");
  RunPython(R"PY(
from torchvision.models.resnet import ResNet, BasicBlock
r = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
r.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
r.maxpool = nn.Identity()
names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
chain = [(n, getattr(r, n)) for n in names] + [("flatten", nn.Flatten()), ("fc", r.fc)]
save_traced(nn.Sequential(OrderedDict(chain)), 'resnet_chain.pt', (2, 3, 16, 16))
save_scripted(r, 'resnet.pt')
save_traced(r, 'resnet_traced.pt', (2, 3, 16, 16))
)PY");
  TorchScriptModel model = LoadOk("resnet_chain.pt", {3, 16, 16});
  // Tracing records nn.Identity as a call that passes nothing on: "maxpool" is no step of
  // its own, but still names the cut before it.
  EXPECT_EQ(model.CutPoints(),
            (std::vector<std::string>{"conv1", "bn1", "relu", "layer1", "layer2", "layer3",
                                      "layer4", "avgpool", "flatten"}));
  Result<TorchScriptCut> maxpool = model.ResolveCut("maxpool");
  ASSERT_TRUE(maxpool.ok()) << maxpool.status().ToString();
  EXPECT_EQ(maxpool->name, "relu");
  TsExpectEquivalentAtEveryCut(model, torch::rand({2, 3, 16, 16}));

  TsExpectMessage(LoadOk("resnet.pt").CheckCuttable(), StatusCode::kInvalidArgument,
                  "forward of ResNet calls self._forward_impl");
  const Status traced = LoadOk("resnet_traced.pt").CheckCuttable();
  TsExpectMessage(traced, StatusCode::kInvalidArgument,
                  "forward of ResNet runs aten::flatten on the output of avgpool");
  TsExpectMessage(traced, StatusCode::kInvalidArgument, "nn.Flatten() as a module");
}

// The examples (examples/README.md) write models cleave can cut, at the names they print.
TEST_F(TorchScriptModelTest, ExampleFashionMnistTrainerExportsACuttableModel) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "no Fashion-MNIST in /usr/share/datasets (package dataset-fashion-mnist)";
  }
  const fs::path out = dir_ / "fashion.pt";
  const std::string output =
      RunScript({std::string(CLEAVE_SOURCE_DIR) + "/examples/train_fashion_mnist.py", "--limit",
                 "200", "--epochs", "1", "--threads", "1", "--out", out.string()});
  ASSERT_FALSE(output.empty());
  TorchScriptModel model = LoadOk("fashion.pt", {1, 28, 28});
  EXPECT_EQ(TsPrintedCutPoints(output), model.CutPoints());
  Result<TorchScriptCut> cut = model.ResolveCut("pool2");
  ASSERT_TRUE(cut.ok()) << cut.status().ToString();
  EXPECT_TRUE(model.VerifyCut(*cut, torch::rand({4, 1, 28, 28})).ok());
}

TEST_F(TorchScriptModelTest, ExampleTorchvisionExportIsCuttableWhereItSays) {
  TS_REQUIRE_PYTHON_MODULE("torchvision");
  const fs::path out = dir_ / "mobilenet.pt";
  const std::string output = RunScript(
      {std::string(CLEAVE_SOURCE_DIR) + "/examples/export_torchvision.py", "--arch",
       "mobilenet_v3_small", "--width-mult", "0.25", "--image-size", "16", "--out", out.string()});
  ASSERT_FALSE(output.empty());
  TorchScriptModel model = LoadOk("mobilenet.pt", {3, 16, 16});
  EXPECT_EQ(TsPrintedCutPoints(output), model.CutPoints());
  Result<TorchScriptCut> cut = model.ResolveCut("features.3");
  ASSERT_TRUE(cut.ok()) << cut.status().ToString();
  EXPECT_TRUE(model.VerifyCut(*cut, torch::rand({2, 3, 16, 16})).ok());
}

}  // namespace
}  // namespace cleave::split
