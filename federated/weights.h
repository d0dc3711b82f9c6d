// Model weights as federated rounds exchange them: an ordered list of named float32 tensors.
//
// The layout (names and shapes, in order) is fixed by the model architecture: every
// participant derives it from the same VisionModelSpec, so tensors travel by position and
// the layout is checked, never trusted. The layout holds the module's parameters followed
// by its floating-point buffers (BatchNorm running mean/variance); integer buffers such as
// `num_batches_tracked` are local bookkeeping and are not exchanged.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/status.h"
#include "split/trainable_net.h"

namespace cleave::federated {

// Float32, contiguous, CPU tensors in layout order. Copies share storage (torch semantics):
// use CloneWeights before mutating something another owner still reads.
using Weights = std::vector<torch::Tensor>;

struct WeightsLayout {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;

  size_t size() const { return names.size(); }
  int64_t TotalElements() const;
  // Index of `name`, or -1.
  int IndexOf(const std::string& name) const;
  // OK when `w` has exactly this layout's count and shapes, every tensor float32 and every
  // value finite. InvalidArgument naming the first offending tensor otherwise.
  Status Check(const Weights& w) const;
  nlohmann::json ToJson() const;
  static Result<WeightsLayout> FromJson(const nlohmann::json& json);
  bool operator==(const WeightsLayout& other) const;
};

// The layout of `module`: parameters (named_parameters order), then float buffers.
WeightsLayout LayoutOf(torch::nn::Module& module);
// A module's exchanged tensors (parameters in named_parameters order, then float buffers)
// found once, for callers that load and read the same module many times.
struct ExchangedTensors {
  std::vector<std::string> names;
  std::vector<torch::Tensor> tensors;  // the module's own tensors (shared, not copies)
};
ExchangedTensors ExchangedOf(torch::nn::Module& module);
// The same for any trainable network (split/trainable_net.h: cleave's own, a TorchScript
// model, an imported split model), whose Exchanged() follows the same order.
ExchangedTensors ExchangedOf(split::TrainableNet& net);
WeightsLayout LayoutOf(split::TrainableNet& net);
Weights GetWeights(split::TrainableNet& net);
Status SetWeights(split::TrainableNet& net, const Weights& w);
// SetWeights and GetWeightsInto on tensors found by ExchangedOf.
// `check_values` = false skips the scan for NaN/Inf (for weights validated already).
Status CopyIn(const ExchangedTensors& target, const Weights& w, bool check_values = true);
void CopyOut(const ExchangedTensors& source, Weights& out);

// Detached clones of `module`'s parameters and float buffers in layout order.
Weights GetWeights(torch::nn::Module& module);
// The same values written into `out`'s tensors where they can be reused (contiguous
// float32 of the right shape that nothing else references), fresh tensors elsewhere; `out`
// ends with exactly the layout's entries. Lets a caller that hands updates on and gets
// them back (the simulator) skip an allocation per tensor per client.
void GetWeightsInto(torch::nn::Module& module, Weights& out);
// Copies `w` into `module` (no autograd history). InvalidArgument when `w` does not match
// LayoutOf(module); the module is unchanged then.
Status SetWeights(torch::nn::Module& module, const Weights& w);
// Deep copy.
Weights CloneWeights(const Weights& w);
// Zero tensors of the layout's shapes.
Weights ZerosLike(const WeightsLayout& layout);
// Bytes of the layout's tensors as float32.
inline int64_t WeightBytes(const WeightsLayout& layout) { return 4 * layout.TotalElements(); }

// Which layout entries a round trains. Rounds may train the whole model or only the edge
// head and its exits (blocks [0, split_after] and the exit heads).
enum class TrainableSet : uint8_t { kAll = 0, kHeadAndExits = 1 };
const char* TrainableSetName(TrainableSet set);  // "all", "head_and_exits"
Result<TrainableSet> ParseTrainableSet(const std::string& name);
// Mask over `layout` for `set` given the model's deployment split (`split_after` as in
// VisionModelSpec; -1 = no split, so kHeadAndExits selects only the exits). Entry names are
// those of split::TrainableNet: the edge's are "block<i>.*" with i <= split_after and
// "exit<j>.*" (cleave's networks), and with `named_parts` (an imported split model, kind
// torchscript-split) also "head.*" and "encoder.*".
std::vector<bool> TrainableMask(const WeightsLayout& layout, TrainableSet set, int split_after,
                                bool named_parts = false);

}  // namespace cleave::federated
