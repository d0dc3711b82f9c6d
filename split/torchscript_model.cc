#include "split/torchscript_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>

#include <algorithm>
#include <iterator>
#include <system_error>
#include <unordered_map>

#include "split/torch_status.h"
#include "split/torchscript_chain.h"

namespace cleave::split {

struct TorchScriptModel::State {
  std::filesystem::path path;
  std::string display;  // the path, for messages
  Options options;
  torch::jit::Module module;
  TorchScriptCutMap cuts;
};

namespace {

// Seed of the sample Load runs through a model when it knows the input shape.
constexpr uint64_t kTsSampleSeed = 20240917;

std::string TsShapeText(c10::IntArrayRef sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(sizes[i]);
  }
  return text + "]";
}

// Shape, dtype, layout and finiteness, before a tensor reaches the model. `item_shape`
// empty: any [N, ...] with N >= 1.
Status TsCheckTensor(const torch::Tensor& tensor, const std::string& what,
                     const std::vector<int64_t>& item_shape) {
  if (!tensor.defined()) return Status::InvalidArgument(what + " is an undefined tensor");
  if (tensor.layout() != torch::kStrided || !tensor.device().is_cpu()) {
    return Status::InvalidArgument(what + " must be a dense CPU tensor");
  }
  if (!tensor.is_floating_point()) {
    return Status::InvalidArgument(what + " has dtype " +
                                   std::string(c10::toString(tensor.scalar_type())) +
                                   "; the model takes floating-point tensors");
  }
  if (tensor.dim() < 1 || tensor.size(0) < 1) {
    return Status::InvalidArgument(what + " has shape " + TsShapeText(tensor.sizes()) +
                                   "; it needs a batch dimension with at least one item");
  }
  if (!item_shape.empty() && tensor.sizes().slice(1) != c10::IntArrayRef(item_shape)) {
    return Status::InvalidArgument(what + " has shape " + TsShapeText(tensor.sizes()) +
                                   "; the model takes [N, " + TsShapeText(item_shape).substr(1));
  }
  CLEAVE_ASSIGN_OR_RETURN(const bool finite, CallTorch(TorchSource::kExternalInput, what, [&] {
                            return torch::isfinite(tensor.detach()).all().item<bool>();
                          }));
  if (!finite) return Status::InvalidArgument(what + " has NaN or infinite values");
  return Status::Ok();
}

// The model runs on a copy of what it is given: layers such as nn.ReLU(inplace=True) write
// into their input, and the caller's tensor must stay as it was. The copy keeps autograd's
// link to the original.
Result<torch::Tensor> TsPrivateCopy(const torch::Tensor& tensor) {
  return CallTorch(TorchSource::kOwnState, "copying the input", [&] { return tensor.clone(); });
}

// Runs one call of the model (`context` names it in errors) and insists on a tensor result.
template <typename Fn>
Result<torch::Tensor> TsRunCall(const std::string& context, Fn&& fn) {
  CLEAVE_ASSIGN_OR_RETURN(c10::IValue out,
                          CallTorch(TorchSource::kExternalInput, context, std::forward<Fn>(fn)));
  if (!out.isTensor()) {
    return Status::InvalidArgument(context + " returned a " + out.tagKind() + ", not a Tensor");
  }
  return out.toTensor();
}

std::string TsJoin(const std::vector<std::string>& names) {
  std::string text;
  for (const std::string& name : names) text += (text.empty() ? "" : ", ") + name;
  return text;
}

std::vector<std::string> TsCutNames(const TorchScriptCutMap& cuts) {
  if (!cuts.not_cuttable.empty()) return {};
  if (cuts.by_methods) return {"head"};
  return std::vector<std::string>(cuts.canonical.begin() + 1, cuts.canonical.end() - 1);
}

// The step of `chain` (names starting with `prefix`) that `name` reaches inside although it
// is not a chain, or null.
const TorchScriptChainStep* TsBlockingStep(const TorchScriptChain& chain, const std::string& prefix,
                                           const std::string& name, std::string* step_name) {
  for (const TorchScriptChainStep& step : chain.steps) {
    const std::string full = prefix + step.path;
    if (name.rfind(full + ".", 0) != 0) continue;
    if (step.chain == nullptr) {
      *step_name = full;
      return &step;
    }
    return TsBlockingStep(*step.chain, full + ".", name, step_name);
  }
  return nullptr;
}

bool TsIsIndex(const std::string& name) {
  return !name.empty() && name.size() <= 9 &&
         std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// --- Extraction -------------------------------------------------------------------------

// A module to copy into one side, with its attribute path from the root.
struct TsSideItem {
  std::vector<std::string> path;
  torch::jit::Module module;
};

std::vector<std::string> TsSplitPath(const std::string& path) {
  std::vector<std::string> parts;
  size_t begin = 0;
  while (begin <= path.size()) {
    size_t end = path.find('.', begin);
    if (end == std::string::npos) end = path.size();
    parts.push_back(path.substr(begin, end - begin));
    begin = end + 1;
  }
  return parts;
}

// The largest steps that together run leaves [begin, end), in order.
void TsCollectSide(const TorchScriptChain& chain, const std::vector<std::string>& prefix,
                   size_t begin, size_t end, std::vector<TsSideItem>& items) {
  for (const TorchScriptChainStep& step : chain.steps) {
    if (step.end_leaf <= begin || step.first_leaf >= end) continue;
    std::vector<std::string> path = prefix;
    for (std::string& part : TsSplitPath(step.path)) path.push_back(std::move(part));
    if (step.first_leaf >= begin && step.end_leaf <= end) {
      items.push_back(TsSideItem{std::move(path), step.module});
    } else {
      // Only a chain spans more than one leaf, so a step cut through has one.
      TsCollectSide(*step.chain, path, begin, end, items);
    }
  }
}

// The attribute tree of one side: containers, with copied modules at the leaves.
struct TsSideTree {
  std::vector<std::pair<std::string, std::unique_ptr<TsSideTree>>> children;
  c10::optional<torch::jit::Module> module;  // set for a copied module
};

void TsInsert(TsSideTree& tree, const TsSideItem& item) {
  TsSideTree* node = &tree;
  for (const std::string& part : item.path) {
    auto it = std::find_if(node->children.begin(), node->children.end(),
                           [&](const auto& child) { return child.first == part; });
    if (it == node->children.end()) {
      node->children.emplace_back(part, std::make_unique<TsSideTree>());
      it = std::prev(node->children.end());
    }
    node = it->second.get();
  }
  node->module = item.module;
}

torch::jit::Module TsNewModule(const std::string& class_name,
                               const std::shared_ptr<torch::jit::CompilationUnit>& unit) {
  torch::jit::Module module(c10::QualifiedName(class_name), unit);
  module.register_attribute("training", c10::BoolType::get(), false);  // train()/eval() need it
  return module;
}

torch::jit::Module TsMaterialize(const TsSideTree& tree, const std::string& class_name,
                                 const std::shared_ptr<torch::jit::CompilationUnit>& unit,
                                 int& containers) {
  torch::jit::Module module = TsNewModule(class_name, unit);
  const std::string base = class_name.substr(0, class_name.find("Part"));
  for (const auto& [name, child] : tree.children) {
    if (child->module.has_value()) {
      module.register_module(name, child->module->deepcopy());
    } else {
      module.register_module(
          name,
          TsMaterialize(*child, base + "Part" + std::to_string(++containers), unit, containers));
    }
  }
  return module;
}

// deepcopy() detaches tensors; parameters get back the original's requires_grad, by name
// (the names are the original's by construction, which this also checks).
void TsRestoreRequiresGrad(const torch::jit::Module& original, torch::jit::Module& side) {
  std::unordered_map<std::string, bool> requires_grad;
  for (const auto& parameter : original.named_parameters(true)) {
    requires_grad[parameter.name] = parameter.value.requires_grad();
  }
  for (const auto& parameter : side.named_parameters(true)) {
    const auto it = requires_grad.find(parameter.name);
    TORCH_CHECK(it != requires_grad.end(), "extracted parameter ", parameter.name,
                " is not in the model");
    parameter.value.set_requires_grad(it->second);
  }
}

torch::jit::Module TsBuildChainSide(const torch::jit::Module& original,
                                    const TorchScriptCutMap& cuts, size_t begin, size_t end,
                                    const std::string& side) {
  std::vector<TsSideItem> items;
  TsCollectSide(*cuts.root, {}, begin, end, items);
  TsSideTree tree;
  std::string source = "def forward(self, x):\n";
  for (const TsSideItem& item : items) {
    TsInsert(tree, item);
    std::string callee = "self";
    for (const std::string& part : item.path) {
      TORCH_CHECK(part.find_first_of("\"\\\n\r") == std::string::npos, "child name '", part,
                  "' cannot be written in TorchScript source");
      callee = "getattr(" + callee + ", \"" + part + "\")";
    }
    // .forward: a module held as a plain attribute is not callable in C++-defined code.
    source += "    x = " + callee + ".forward(x)\n";
  }
  source += "    return x\n";
  auto unit = std::make_shared<torch::jit::CompilationUnit>();
  int containers = 0;
  torch::jit::Module module = TsMaterialize(tree, "__torch__.cleave." + side, unit, containers);
  module.define(source);
  TsRestoreRequiresGrad(original, module);
  module.eval();
  return module;
}

// A copy of `method` (forward_head or forward_tail) as the forward of a new module holding
// copies of just the attributes the method reads.
Result<torch::jit::Module> TsBuildMethodSide(const torch::jit::Module& original,
                                             const std::string& method, const std::string& side) {
  const torch::jit::Method source = original.get_method(method);
  std::shared_ptr<torch::jit::Graph> graph =
      torch::jit::toGraphFunction(source.function()).graph()->copy();
  torch::jit::Value* self = graph->inputs()[0];
  std::vector<std::string> read;
  for (const torch::jit::Use& use : self->uses()) {
    const torch::jit::Node* user = use.user;
    const bool attribute = user->kind() == c10::prim::GetAttr || user->kind() == c10::prim::SetAttr;
    if (attribute && use.offset == 0) {
      read.push_back(user->s(c10::attr::name));
    } else if (user->kind() == c10::prim::CallMethod && use.offset == 0) {
      return Status::Unimplemented(method + " calls self." + user->s(c10::attr::name) +
                                   ", a method of the model itself; cleave copies " + method +
                                   " alone: call child modules only, or inline that method");
    } else {
      return Status::Unimplemented(method + " passes the model itself to " +
                                   user->kind().toQualString());
    }
  }
  auto unit = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module module = TsNewModule("__torch__.cleave." + side, unit);
  const c10::ClassTypePtr& type = original.type();
  for (size_t slot = 0; slot < type->numAttributes(); ++slot) {
    const std::string& name = type->getAttributeName(slot);
    if (name == "training" || std::find(read.begin(), read.end(), name) == read.end()) continue;
    const c10::IValue value = original._ivalue()->getSlot(slot);
    const c10::TypePtr& attribute_type = type->getAttribute(slot);
    const auto class_type = attribute_type->cast<c10::ClassType>();
    if (type->is_parameter(slot)) {
      const torch::Tensor& tensor = value.toTensor();
      torch::Tensor copy = tensor.detach().clone();
      copy.set_requires_grad(tensor.requires_grad());
      module.register_parameter(name, copy, /*is_buffer=*/false);
    } else if (type->is_buffer(slot)) {
      module.register_buffer(name, value.toTensor().detach().clone());
    } else if (class_type != nullptr && class_type->is_module()) {
      module.register_module(name, value.toModule().deepcopy());
    } else {
      module.register_attribute(name, attribute_type, value.deepcopy());
    }
  }
  self->setType(module.type());
  torch::jit::Function* forward =
      unit->create_function(c10::QualifiedName(*module.type()->name(), "forward"), graph);
  module.type()->addMethod(forward);
  TsRestoreRequiresGrad(original, module);
  module.eval();
  return module;
}

}  // namespace

TorchScriptModel::TorchScriptModel(std::unique_ptr<State> state) : state_(std::move(state)) {}
TorchScriptModel::TorchScriptModel(TorchScriptModel&&) noexcept = default;
TorchScriptModel& TorchScriptModel::operator=(TorchScriptModel&&) noexcept = default;
TorchScriptModel::~TorchScriptModel() = default;

Result<TorchScriptModel> TorchScriptModel::Load(const std::filesystem::path& path) {
  return Load(path, Options{});
}

Result<TorchScriptModel> TorchScriptModel::Load(const std::filesystem::path& path,
                                                const Options& options) {
  const std::string display = path.string();
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (status.type() == std::filesystem::file_type::not_found) {
    return Status::NotFound(display + ": no such file");
  }
  if (error) return Status::IoError(display + ": " + error.message());
  if (status.type() != std::filesystem::file_type::regular) {
    return Status::InvalidArgument(display + " is not a regular file");
  }
  for (const int64_t size : options.input_shape) {
    if (size < 1) {
      return Status::InvalidArgument("input shape " + TsShapeText(options.input_shape) +
                                     " has a dimension below 1");
    }
  }
  auto state = std::make_unique<State>();
  state->path = path;
  state->display = display;
  state->options = options;
  // The archive is the user's file: a failure to read it is InvalidArgument (kExternalInput).
  CLEAVE_ASSIGN_OR_RETURN(
      state->module,
      CallTorch(TorchSource::kExternalInput,
                display +
                    " is not a TorchScript archive (write one with "
                    "torch.jit.script(model).save(path) or torch.jit.trace(model, x).save(path); "
                    "torch.save(model) and state_dicts are not)",
                [&] { return torch::jit::load(display, torch::kCPU); }));
  CLEAVE_RETURN_IF_ERROR(
      CallTorch(TorchSource::kExternalInput, display, [&] { state->module.eval(); }));
  Result<TorchScriptCutMap> cuts = MapTorchScriptCuts(state->module);
  if (!cuts.ok()) return cuts.status().WithContext(display);
  state->cuts = std::move(cuts).value();
  TorchScriptModel model(std::move(state));
  if (options.input_shape.empty()) return model;

  std::vector<int64_t> sample_shape{2};
  sample_shape.insert(sample_shape.end(), options.input_shape.begin(), options.input_shape.end());
  const std::string context = "a sample input " + TsShapeText(sample_shape);
  CLEAVE_ASSIGN_OR_RETURN(
      const torch::Tensor sample, CallTorch(TorchSource::kOwnState, context, [&] {
        torch::NoGradGuard no_grad;
        return torch::rand(sample_shape, at::detail::createCPUGenerator(kTsSampleSeed));
      }));
  Result<torch::Tensor> out = model.Forward(sample);
  if (!out.ok()) return out.status().WithContext(context);
  if (model.state_->cuts.by_methods) {
    CLEAVE_ASSIGN_OR_RETURN(const TorchScriptCut cut, model.ResolveCut("head"));
    Status verified = model.VerifyCut(cut, sample);
    if (!verified.ok()) return verified.WithContext(context);
  }
  return model;
}

Status TorchScriptModel::CheckCuttable() const {
  if (state_->cuts.not_cuttable.empty()) return Status::Ok();
  return Status::InvalidArgument(state_->display + ": " + state_->cuts.not_cuttable);
}

std::vector<std::string> TorchScriptModel::CutPoints() const { return TsCutNames(state_->cuts); }

Result<TorchScriptCut> TorchScriptModel::ResolveCut(const std::string& name) const {
  CLEAVE_RETURN_IF_ERROR(CheckCuttable());
  const TorchScriptCutMap& cuts = state_->cuts;
  const std::string valid = "valid cut points: " + TsJoin(TsCutNames(cuts));
  if (cuts.by_methods) {
    if (name == "head") return TorchScriptCut{"head", 0, true};
    return Status::InvalidArgument(
        state_->display + ": no cut point named '" + name + "'; " + cuts.class_name +
        " is cut between forward_head and forward_tail, so the " + valid);
  }
  size_t position = 0;
  const auto found = cuts.positions.find(name);
  const size_t root_children = cuts.root->steps.size();
  if (found != cuts.positions.end()) {
    position = found->second;
  } else if (TsIsIndex(name)) {
    const size_t index = std::stoul(name);
    if (index >= root_children) {
      return Status::InvalidArgument(state_->display + ": there is no child at position " + name +
                                     " of " + cuts.class_name + ", which chains " +
                                     std::to_string(root_children) + " (0 to " +
                                     std::to_string(root_children - 1) + "); " + valid);
    }
    position = cuts.root->steps[index].end_leaf;
  } else {
    std::string step_name;
    const TorchScriptChainStep* blocking = TsBlockingStep(*cuts.root, "", name, &step_name);
    if (blocking != nullptr) {
      return Status::InvalidArgument(state_->display + ": cannot cut inside " + step_name +
                                     ": it " + blocking->not_chain +
                                     ", so it is not a chain of child modules; " + valid);
    }
    return Status::InvalidArgument(state_->display + ": no cut point named '" + name + "'; " +
                                   valid);
  }
  if (position == 0) {
    return Status::InvalidArgument(state_->display + ": '" + name +
                                   "' hands the model's input on unchanged, so a head cut "
                                   "after it would run nothing; " +
                                   valid);
  }
  if (position >= cuts.leaves.size()) {
    return Status::InvalidArgument(state_->display + ": '" + name +
                                   "' ends the model, so cutting after it leaves the cloud "
                                   "nothing to run; " +
                                   valid);
  }
  return TorchScriptCut{cuts.canonical[position], position, false};
}

Status TorchScriptModel::CheckCutIsOurs(const TorchScriptCut& cut) const {
  const TorchScriptCutMap& cuts = state_->cuts;
  bool ours = cuts.not_cuttable.empty() && cut.by_methods == cuts.by_methods;
  if (ours && cut.by_methods) {
    ours = cut.name == "head" && cut.head_steps == 0;
  } else if (ours) {
    ours = cut.head_steps >= 1 && cut.head_steps < cuts.leaves.size() &&
           cuts.canonical[cut.head_steps] == cut.name;
  }
  if (ours) return Status::Ok();
  return Status::InvalidArgument("cut '" + cut.name + "' is not a cut point of " + state_->display +
                                 " (resolve cuts with that model's ResolveCut)");
}

Result<torch::Tensor> TorchScriptModel::RunLeaves(size_t begin, size_t end, torch::Tensor x) {
  for (size_t i = begin; i < end; ++i) {
    TorchScriptLeaf& leaf = state_->cuts.leaves[i];
    CLEAVE_ASSIGN_OR_RETURN(x, TsRunCall(state_->display + ": " + leaf.name + " failed",
                                         [&] { return leaf.module.forward({x}); }));
  }
  return x;
}

Result<torch::Tensor> TorchScriptModel::Forward(const torch::Tensor& x, Autograd autograd) {
  CLEAVE_RETURN_IF_ERROR(TsCheckTensor(x, "the input", state_->options.input_shape));
  torch::AutoGradMode grad_mode(autograd == Autograd::kOn);
  CLEAVE_ASSIGN_OR_RETURN(torch::Tensor input, TsPrivateCopy(x));
  return TsRunCall(state_->display + ": forward failed",
                   [&] { return state_->module.forward({std::move(input)}); });
}

Result<torch::Tensor> TorchScriptModel::ForwardHead(const TorchScriptCut& cut,
                                                    const torch::Tensor& x, Autograd autograd) {
  CLEAVE_RETURN_IF_ERROR(CheckCutIsOurs(cut));
  CLEAVE_RETURN_IF_ERROR(TsCheckTensor(x, "the input", state_->options.input_shape));
  torch::AutoGradMode grad_mode(autograd == Autograd::kOn);
  CLEAVE_ASSIGN_OR_RETURN(torch::Tensor input, TsPrivateCopy(x));
  if (cut.by_methods) {
    return TsRunCall(state_->display + ": forward_head failed",
                     [&] { return state_->module.get_method("forward_head")({std::move(input)}); });
  }
  return RunLeaves(0, cut.head_steps, std::move(input));
}

Result<torch::Tensor> TorchScriptModel::ForwardTail(const TorchScriptCut& cut,
                                                    const torch::Tensor& z, Autograd autograd) {
  CLEAVE_RETURN_IF_ERROR(CheckCutIsOurs(cut));
  CLEAVE_RETURN_IF_ERROR(TsCheckTensor(z, "the features", {}));
  torch::AutoGradMode grad_mode(autograd == Autograd::kOn);
  CLEAVE_ASSIGN_OR_RETURN(torch::Tensor input, TsPrivateCopy(z));
  if (cut.by_methods) {
    return TsRunCall(state_->display + ": forward_tail failed",
                     [&] { return state_->module.get_method("forward_tail")({std::move(input)}); });
  }
  return RunLeaves(cut.head_steps, state_->cuts.leaves.size(), std::move(input));
}

Status TorchScriptModel::VerifyCut(const TorchScriptCut& cut, const torch::Tensor& x, double rtol,
                                   double atol) {
  CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor whole, Forward(x));
  CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor z, ForwardHead(cut, x));
  CLEAVE_ASSIGN_OR_RETURN(const torch::Tensor split, ForwardTail(cut, z));
  if (split.sizes() != whole.sizes()) {
    return Status::InvalidArgument("cut " + cut.name + ": head then tail gives shape " +
                                   TsShapeText(split.sizes()) + ", forward gives " +
                                   TsShapeText(whole.sizes()));
  }
  return CallTorch(TorchSource::kExternalInput, "cut " + cut.name, [&]() -> Status {
    const torch::Tensor a = split.to(torch::kDouble);
    const torch::Tensor b = whole.to(torch::kDouble);
    const torch::Tensor excess = (a - b).abs() - (atol + rtol * b.abs());
    if (!torch::isfinite(a).all().item<bool>() || !torch::isfinite(b).all().item<bool>()) {
      return Status::InvalidArgument("cut " + cut.name + ": the outputs are not finite");
    }
    if (excess.max().item<double>() <= 0) return Status::Ok();
    return Status::InvalidArgument(
        "cut " + cut.name + ": head then tail differs from forward by up to " +
        std::to_string((a - b).abs().max().item<double>()) +
        (cut.by_methods ? " (forward must equal forward_tail(forward_head(x)))" : ""));
  });
}

Result<torch::jit::Module> TorchScriptModel::ExtractHead(const TorchScriptCut& cut) const {
  CLEAVE_RETURN_IF_ERROR(CheckCutIsOurs(cut));
  return CallTorch(TorchSource::kOwnState, state_->display + ": extracting the head",
                   [&]() -> Result<torch::jit::Module> {
                     if (cut.by_methods) {
                       return TsBuildMethodSide(state_->module, "forward_head", "Head");
                     }
                     return TsBuildChainSide(state_->module, state_->cuts, 0, cut.head_steps,
                                             "Head");
                   });
}

Result<torch::jit::Module> TorchScriptModel::ExtractTail(const TorchScriptCut& cut) const {
  CLEAVE_RETURN_IF_ERROR(CheckCutIsOurs(cut));
  return CallTorch(TorchSource::kOwnState, state_->display + ": extracting the tail",
                   [&]() -> Result<torch::jit::Module> {
                     if (cut.by_methods) {
                       return TsBuildMethodSide(state_->module, "forward_tail", "Tail");
                     }
                     return TsBuildChainSide(state_->module, state_->cuts, cut.head_steps,
                                             state_->cuts.leaves.size(), "Tail");
                   });
}

Status TorchScriptModel::SetTraining(bool on) {
  return CallTorch(TorchSource::kOwnState, state_->display + ": switching train mode",
                   [&] { state_->module.train(on); });
}

Result<std::vector<std::pair<std::string, torch::Tensor>>> TorchScriptModel::NamedParameters()
    const {
  return CallTorch(TorchSource::kOwnState, state_->display + ": listing parameters", [&] {
    std::vector<std::pair<std::string, torch::Tensor>> parameters;
    for (const auto& parameter : state_->module.named_parameters(true)) {
      parameters.emplace_back(parameter.name, parameter.value);
    }
    return parameters;
  });
}

Result<torch::jit::Module> TorchScriptModel::CopyModule() const {
  return CallTorch(TorchSource::kOwnState, state_->display + ": copying the model", [&] {
    torch::NoGradGuard no_grad;  // leaf copies, even of parameters with grad
    return state_->module.deepcopy();
  });
}

const std::filesystem::path& TorchScriptModel::path() const { return state_->path; }
const std::string& TorchScriptModel::class_name() const { return state_->cuts.class_name; }

}  // namespace cleave::split
