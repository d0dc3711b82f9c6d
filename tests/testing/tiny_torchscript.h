// A tiny TorchScript chain model built in C++ (no python needed), for the import tests:
// conv(C->4) - relu - conv(4->4) - relu - maxpool 2 - flatten - linear(64 -> 2) on
// C x 8 x 8 images, each child a jit module with its own forward, so `cleave import` can cut
// it after any child ("conv1", "relu1", "conv2", "relu2", "pool", "flat").
#pragma once

#include <string>

#include <torch/script.h>
#include <torch/torch.h>

#include "split/exit_policy.h"
#include "split/imported_model.h"

namespace cleave::testing {

inline constexpr int kTinyChainSide = 8;

inline torch::jit::Module TinyChainLeaf(const std::string& name, const std::string& source) {
  torch::jit::Module m("__torch__.cleave_test." + name);
  m.define(source);
  return m;
}

inline torch::jit::Module TinyChainConv(const std::string& name, int in, int out) {
  torch::jit::Module m("__torch__.cleave_test." + name);
  m.register_parameter("weight", torch::randn({out, in, 3, 3}) * 0.5, false);
  m.register_parameter("bias", torch::zeros({out}), false);
  m.define(R"(
def forward(self, x):
    return torch.conv2d(x, self.weight, self.bias, [1, 1], [1, 1])
)");
  return m;
}

// `designed`: weights that solve the left/right task (conv1 and conv2 pass channel 0 on,
// the linear layer compares the left and right halves of the pooled map); else random.
inline torch::jit::Module TinyChainModel(int channels, bool designed = false) {
  torch::manual_seed(3);
  torch::jit::Module root("__torch__.cleave_test.ImpNet");
  root.register_module("conv1", TinyChainConv("TinyChainConv1", channels, 4));
  root.register_module(
      "relu1", TinyChainLeaf("ImpRelu1", "def forward(self, x):\n    return torch.relu(x)\n"));
  root.register_module("conv2", TinyChainConv("TinyChainConv2", 4, 4));
  root.register_module(
      "relu2", TinyChainLeaf("ImpRelu2", "def forward(self, x):\n    return torch.relu(x)\n"));
  root.register_module(
      "pool",
      TinyChainLeaf("ImpPool", "def forward(self, x):\n    return torch.max_pool2d(x, [2, 2])\n"));
  root.register_module(
      "flat", TinyChainLeaf("ImpFlat", "def forward(self, x):\n    return torch.flatten(x, 1)\n"));
  torch::jit::Module fc("__torch__.cleave_test.ImpFc");
  fc.register_parameter("weight", torch::randn({2, 64}) * 0.1, false);
  fc.register_parameter("bias", torch::zeros({2}), false);
  fc.define("def forward(self, x):\n    return torch.linear(x, self.weight, self.bias)\n");
  if (designed) {
    torch::NoGradGuard no_grad;
    torch::Tensor w1 = torch::zeros({4, channels, 3, 3});
    for (int c = 0; c < channels; ++c) w1[0][c][1][1] = 1.0 / channels;
    torch::Tensor w2 = torch::zeros({4, 4, 3, 3});
    w2[0][0][1][1] = 1.0;
    torch::Tensor wfc = torch::zeros({2, 64});
    for (int y = 0; y < 4; ++y) {
      for (int x = 0; x < 4; ++x) {
        const double side = x < 2 ? 0.05 : -0.05;  // channel 0 of the 4x4 pooled map
        wfc[1][y * 4 + x] = side;
        wfc[0][y * 4 + x] = -side;
      }
    }
    root.attr("conv1").toModule().setattr("weight", w1);
    root.attr("conv2").toModule().setattr("weight", w2);
    fc.setattr("weight", wfc);
  }
  root.register_module("fc", fc);
  root.define(R"(
def forward(self, x):
    x = self.conv1.forward(x)
    x = self.relu1.forward(x)
    x = self.conv2.forward(x)
    x = self.relu2.forward(x)
    x = self.pool.forward(x)
    x = self.flat.forward(x)
    return self.fc.forward(x)
)");
  return root;
}

// An imported split model (split/imported_model.h) built by hand from the tiny chain cut after
// relu2 (h: 4 x 8 x 8).
inline split::ImportedSplitModel TinyImportedModel() {
  torch::jit::Module whole = TinyChainModel(1);
  split::ImportedSplitModel m;
  m.input.channels = 1;
  m.input.height = m.input.width = kTinyChainSide;
  m.input.class_names = {"0", "1"};
  m.head_output_shape = {4, kTinyChainSide, kTinyChainSide};
  m.bottleneck_channels = 2;
  m.bottleneck_stride = 2;
  m.exit_hidden = {8};
  // Head: conv1..relu2 of the chain; tail: pool, flatten, fc.
  torch::jit::Module head("__torch__.cleave_test.TnHead");
  head.register_attribute("training", c10::BoolType::get(), false);
  for (const char* name : {"conv1", "relu1", "conv2", "relu2"}) {
    head.register_module(name, whole.attr(name).toModule());
  }
  head.define(R"(
def forward(self, x):
    return self.relu2.forward(self.conv2.forward(self.relu1.forward(self.conv1.forward(x))))
)");
  torch::jit::Module tail("__torch__.cleave_test.TnTail");
  tail.register_attribute("training", c10::BoolType::get(), false);
  tail.register_module("fc", whole.attr("fc").toModule());
  tail.define(R"(
def forward(self, x):
    return self.fc.forward(torch.flatten(torch.max_pool2d(x, [2, 2]), 1))
)");
  m.head = head;
  m.tail = tail;
  m.has_head = m.has_tail = true;
  TORCH_CHECK(m.BuildBottleneck().ok(), "tiny imported model: bottleneck");
  m.wire_quant.scale = {0.05f, 0.05f};
  m.wire_quant.zero_point = {8, 8};
  m.exit_policy = split::ExitPolicy(split::ExitCriterion::kMaxSoftmax, {0.9});
  return m;
}

}  // namespace cleave::testing
