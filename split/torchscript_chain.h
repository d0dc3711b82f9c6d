// How cleave finds where a TorchScript module can be cut: the convention stated in
// split/torchscript_model.h, read off the graphs of `forward` (and of forward_head and
// forward_tail). Kept apart from TorchScriptModel so the graph rules read on their own.
//
// The map holds handles to the analysed module's children (torch::jit::Module objects share
// the model's state, they are not copies): it must not outlive the decision to keep using
// that module, and it is used by one thread at a time, like the module.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/script.h>

#include "common/status.h"

namespace cleave::split {

struct TorchScriptChainStep;

// A module whose forward is a chain: its child calls, in order.
struct TorchScriptChain {
  std::vector<TorchScriptChainStep> steps;
  // Children that tracing recorded as a call without argument or used result: modules that
  // hand their input on unchanged (a traced nn.Identity). They run nothing, so they are not
  // steps; their name is an alias of the cut before them. Path, and the number of steps
  // that come before the call.
  std::vector<std::pair<std::string, size_t>> pass_through;
};

struct TorchScriptChainStep {
  std::string path;                         // from the chain's module: "conv", "layers.0"
  torch::jit::Module module;                // the child called
  std::unique_ptr<TorchScriptChain> chain;  // set when the child is itself a chain
  std::string not_chain;                    // why the child is not a chain, when `chain` is null
  // The leaves (see TorchScriptLeaf) this step runs: [first_leaf, end_leaf).
  size_t first_leaf = 0;
  size_t end_leaf = 0;
};

// The chain flattened: one entry per call of a module that is not itself a chain. Running
// the leaves in order is running forward.
struct TorchScriptLeaf {
  std::string name;  // dotted from the root: "features.3"
  torch::jit::Module module;
};

// Where a module can be cut.
struct TorchScriptCutMap {
  std::string class_name;  // of the root module, unmangled: "Sequential", "ResNet"
  // forward_head/forward_tail: the one cut "head" (`root` stays null).
  bool by_methods = false;
  // When forward is a chain.
  std::unique_ptr<TorchScriptChain> root;
  std::vector<TorchScriptLeaf> leaves;
  // canonical[p] (1 <= p < leaves.size()): the outermost name of the cut after p leaves;
  // canonical[0] is empty and canonical[leaves.size()] names the end (not a cut).
  std::vector<std::string> canonical;
  // Every name at every depth ("features.12" as well as "features", pass-through children
  // too) -> p. A pass-through child first in the model maps to 0, which is not a cut.
  std::map<std::string, size_t> positions;
  // Empty when the module has at least one cut point; otherwise what its forward does
  // instead and how to make it cuttable (a whole sentence, for an InvalidArgument).
  std::string not_cuttable;
};

// Reads the cut points of `module`: forward_head/forward_tail if it exports both, otherwise
// the chain of its forward, recursing into every child that is itself a chain. Never throws.
// InvalidArgument if forward is missing or does not take exactly one tensor, or if
// forward_head/forward_tail do not each take one argument; a module without cut points is
// still OK (see `not_cuttable`).
Result<TorchScriptCutMap> MapTorchScriptCuts(const torch::jit::Module& module);

}  // namespace cleave::split
