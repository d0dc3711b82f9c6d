#include "split/torchscript_chain.h"

#include <climits>
#include <unordered_map>
#include <utility>

#include <torch/csrc/jit/ir/ir.h>

#include "split/torch_status.h"

namespace cleave::split {
namespace {

using torch::jit::Node;
using torch::jit::Value;

// Chains nested deeper than this are read as leaves (a guard against pathological models;
// torchvision's deepest Sequential nesting is 3).
constexpr int kTsMaxChainDepth = 32;

std::string TsClassName(const c10::ClassTypePtr& type) {
  if (type == nullptr || !type->name().has_value()) return "module";
  return type->name()->name();  // drops the "__torch__...___torch_mangle_4." qualifier
}

// What a chain reader knows about the values of one forward graph, for messages.
struct TsGraphValues {
  const Value* input = nullptr;
  std::unordered_map<const Value*, std::string> step_outputs;  // output -> child path
};

std::string TsOrigin(const TsGraphValues& values, const Value* value) {
  if (value == values.input) return "its input";
  const auto it = values.step_outputs.find(value);
  if (it != values.step_outputs.end()) return "the output of " + it->second;
  return std::string("the result of ") + value->node()->kind().toQualString();
}

// "runs aten::flatten on the output of avgpool", for a node a chain may not contain.
std::string TsDescribeNode(const TsGraphValues& values, const Node* node) {
  const std::string kind = node->kind().toQualString();
  if (node->kind() == c10::prim::If || node->kind() == c10::prim::Loop) {
    return "has control flow (" + kind + ")";
  }
  std::string origins;
  for (const Value* input : node->inputs()) {
    if (!input->type()->isSubtypeOf(*c10::TensorType::get())) continue;
    const std::string origin = TsOrigin(values, input);
    if (origins.find(origin) != std::string::npos) continue;
    origins += origins.empty() ? origin : " and " + origin;
  }
  return origins.empty() ? "runs " + kind : "runs " + kind + " on " + origins;
}

struct TsChainRead {
  std::unique_ptr<TorchScriptChain> chain;  // null: not a chain
  std::string not_chain;                    // why, e.g. "calls self._forward_impl"
  bool reshapes = false;                    // not a chain because of a flatten/view/reshape
};

TsChainRead TsNotChain(std::string why, bool reshapes = false) {
  TsChainRead read;
  read.not_chain = std::move(why);
  read.reshapes = reshapes;
  return read;
}

torch::jit::Module TsChild(const torch::jit::Module& module, const std::string& path) {
  torch::jit::Module child = module;
  size_t begin = 0;
  while (begin <= path.size()) {
    size_t end = path.find('.', begin);
    if (end == std::string::npos) end = path.size();
    child = child.attr(path.substr(begin, end - begin)).toModule();
    begin = end + 1;
  }
  return child;
}

// Reads `module`'s forward as a chain of child calls, and each child's recursively. May
// throw c10::Error (the caller wraps it).
TsChainRead TsReadChain(const torch::jit::Module& module, int depth) {
  const c10::optional<torch::jit::Method> forward = module.find_method("forward");
  if (!forward.has_value()) return TsNotChain("has no forward method");
  const std::shared_ptr<torch::jit::Graph> graph = forward->graph();
  if (graph->inputs().size() != 2) {
    return TsNotChain("takes " + std::to_string(graph->inputs().size() - 1) + " arguments");
  }
  const Value* self = graph->inputs()[0];
  TsGraphValues values;
  values.input = graph->inputs()[1];
  if (!values.input->type()->isSubtypeOf(*c10::TensorType::get())) {
    return TsNotChain("takes a " + values.input->type()->repr_str() + ", not a Tensor");
  }
  std::unordered_map<const Value*, std::string> module_paths{{self, ""}};
  auto chain = std::make_unique<TorchScriptChain>();
  const Value* current = values.input;
  for (const Node* node : graph->nodes()) {
    if (node->kind() == c10::prim::Constant) continue;  // unused ones; users are refused
    if (node->kind() == c10::prim::GetAttr) {
      const auto parent = module_paths.find(node->input(0));
      const auto type = node->output()->type()->cast<c10::ClassType>();
      // A non-module attribute (a parameter, self.training) is refused where it is used.
      if (parent == module_paths.end() || type == nullptr || !type->is_module()) continue;
      const std::string name = node->s(c10::attr::name);
      module_paths[node->output()] = parent->second.empty() ? name : parent->second + "." + name;
      continue;
    }
    if (node->kind() != c10::prim::CallMethod) {
      const std::string kind = node->kind().toQualString();
      const bool reshapes =
          kind == "aten::flatten" || kind == "aten::view" || kind == "aten::reshape";
      return TsNotChain(TsDescribeNode(values, node), reshapes);
    }
    const std::string method = node->s(c10::attr::name);
    if (node->input(0) == self) return TsNotChain("calls self." + method + " (its own method)");
    const auto target = module_paths.find(node->input(0));
    if (target == module_paths.end()) return TsNotChain("calls " + method + " on a non-child");
    const std::string& path = target->second;
    if (method != "forward") return TsNotChain("calls self." + path + "." + method);
    if (node->inputs().size() == 1 && !node->output()->hasUses()) {
      chain->pass_through.emplace_back(path, chain->steps.size());
      continue;
    }
    if (node->inputs().size() != 2) {
      return TsNotChain("passes " + std::to_string(node->inputs().size() - 1) +
                        " arguments to self." + path);
    }
    if (node->input(1) != current) {
      return TsNotChain("calls " + path + " on " + TsOrigin(values, node->input(1)) +
                        " instead of on " + TsOrigin(values, current) + " (a branch)");
    }
    if (current->uses().size() != 1) {
      return TsNotChain("uses " + TsOrigin(values, current) +
                        " more than once (a branch or a residual connection)");
    }
    for (const TorchScriptChainStep& step : chain->steps) {
      if (step.path == path) {
        return TsNotChain("calls " + path + " more than once (give each call its own module)");
      }
      if (path.rfind(step.path + ".", 0) == 0 || step.path.rfind(path + ".", 0) == 0) {
        return TsNotChain("calls both " + step.path + " and " + path);
      }
    }
    if (!node->output()->type()->isSubtypeOf(*c10::TensorType::get())) {
      return TsNotChain(path + " returns a " + node->output()->type()->repr_str() +
                        ", not a Tensor");
    }
    TorchScriptChainStep step;
    step.path = path;
    step.module = TsChild(module, path);
    chain->steps.push_back(std::move(step));
    current = node->output();
    values.step_outputs[current] = path;
  }
  if (graph->outputs().size() != 1 || graph->outputs()[0] != current) {
    return TsNotChain("returns something other than " + TsOrigin(values, current));
  }
  if (current->uses().size() != 1) {
    return TsNotChain("uses " + TsOrigin(values, current) + " more than once");
  }
  if (chain->steps.empty()) return TsNotChain("calls no child module");
  for (TorchScriptChainStep& step : chain->steps) {
    if (depth + 1 >= kTsMaxChainDepth) {
      step.not_chain = "is nested too deeply";
      continue;
    }
    TsChainRead inner = TsReadChain(step.module, depth + 1);
    step.chain = std::move(inner.chain);
    if (step.chain == nullptr) {
      step.not_chain =
          "is a " + TsClassName(step.module.type()) + " whose forward " + inner.not_chain;
    }
  }
  TsChainRead read;
  read.chain = std::move(chain);
  return read;
}

// Assigns leaves, positions and names below `chain`; `best_depth[p]` is the depth of the
// name chosen so far for position p.
void TsNumberChain(TorchScriptChain& chain, const std::string& prefix, int depth,
                   TorchScriptCutMap& map, std::vector<int>& best_depth) {
  const size_t first_leaf = map.leaves.size();
  for (TorchScriptChainStep& step : chain.steps) {
    const std::string name = prefix + step.path;
    step.first_leaf = map.leaves.size();
    if (step.chain != nullptr) {
      TsNumberChain(*step.chain, name + ".", depth + 1, map, best_depth);
    } else {
      map.leaves.push_back(TorchScriptLeaf{name, step.module});
    }
    step.end_leaf = map.leaves.size();
    map.positions.emplace(name, step.end_leaf);
    if (best_depth.size() <= step.end_leaf) best_depth.resize(step.end_leaf + 1, INT_MAX);
    if (depth < best_depth[step.end_leaf]) {
      best_depth[step.end_leaf] = depth;
      if (map.canonical.size() <= step.end_leaf) map.canonical.resize(step.end_leaf + 1);
      map.canonical[step.end_leaf] = name;
    }
  }
  for (const auto& [path, steps_before] : chain.pass_through) {
    map.positions.emplace(prefix + path,
                          steps_before == 0 ? first_leaf : chain.steps[steps_before - 1].end_leaf);
  }
}

std::string TsHowToCut(bool reshapes) {
  return std::string(
             "cleave cuts a forward that is a chain of child-module calls (x = self.child(x) "
             "for each child): wrap the model in torch.nn.Sequential") +
         (reshapes ? ", with nn.Flatten() as a module instead of torch.flatten or x.view," : "") +
         " or export forward_head(x) and forward_tail(z) methods (@torch.jit.export) with "
         "forward(x) == forward_tail(forward_head(x))";
}

Status TsCheckOneArgument(const torch::jit::Method& method) {
  const size_t arguments = method.function().getSchema().arguments().size();
  if (arguments == 2) return Status::Ok();  // self and the tensor
  return Status::InvalidArgument(method.name() + " takes " + std::to_string(arguments - 1) +
                                 " arguments; cleave runs models of one tensor");
}

Result<TorchScriptCutMap> TsMapCuts(const torch::jit::Module& module) {
  TorchScriptCutMap map;
  map.class_name = TsClassName(module.type());
  const c10::optional<torch::jit::Method> forward = module.find_method("forward");
  if (!forward.has_value()) {
    return Status::InvalidArgument("the model (" + map.class_name + ") has no forward method");
  }
  CLEAVE_RETURN_IF_ERROR(TsCheckOneArgument(*forward));
  const c10::optional<torch::jit::Method> head = module.find_method("forward_head");
  const c10::optional<torch::jit::Method> tail = module.find_method("forward_tail");
  if (head.has_value() && tail.has_value()) {
    CLEAVE_RETURN_IF_ERROR(TsCheckOneArgument(*head));
    CLEAVE_RETURN_IF_ERROR(TsCheckOneArgument(*tail));
    map.by_methods = true;
    map.positions.emplace("head", 0);
    return map;
  }
  if (head.has_value() || tail.has_value()) {
    const std::string has = head.has_value() ? "forward_head" : "forward_tail";
    const std::string lacks = head.has_value() ? "forward_tail" : "forward_head";
    map.not_cuttable = map.class_name + " exports " + has + " but no " + lacks +
                       ", so it has no cut points; export both (@torch.jit.export), with "
                       "forward(x) == forward_tail(forward_head(x))";
    return map;
  }
  TsChainRead read = TsReadChain(module, 0);
  if (read.chain == nullptr) {
    map.not_cuttable = "forward of " + map.class_name + " " + read.not_chain +
                       ", so it has no cut points. " + TsHowToCut(read.reshapes);
    return map;
  }
  map.root = std::move(read.chain);
  std::vector<int> best_depth;
  TsNumberChain(*map.root, "", 0, map, best_depth);
  map.canonical.resize(map.leaves.size() + 1);
  if (map.leaves.size() < 2) {
    const TorchScriptChainStep* only = &map.root->steps.front();
    while (only->chain != nullptr) only = &only->chain->steps.front();
    map.not_cuttable = "forward of " + map.class_name + " calls one module, " +
                       map.leaves.front().name + ", which " + only->not_chain +
                       ", so it has no cut points. " + TsHowToCut(false);
  }
  return map;
}

}  // namespace

Result<TorchScriptCutMap> MapTorchScriptCuts(const torch::jit::Module& module) {
  return CallTorch(TorchSource::kExternalInput, "reading the model's graph",
                   [&]() -> Result<TorchScriptCutMap> { return TsMapCuts(module); });
}

}  // namespace cleave::split
