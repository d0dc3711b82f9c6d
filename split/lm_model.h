// A small splittable decoder-only transformer for hard-token routing (byte-level).
//
// Architecture (GPT-style, pre-norm): byte embedding, N blocks of
//   x + CausalSelfAttention(LayerNorm(x)),  then  x + MLP(LayerNorm(x))  (GELU, 4x wide),
// a final LayerNorm and LM head. Positions are rotary (RoFormer, Su et al. 2021): queries and
// keys are rotated by their absolute position, so attention depends on relative offsets and
// a KV cache can slide past the training context by dropping its oldest entries.
//
// The split (CE-CoLLM-style edge/cloud collaboration, with the early exit of CALM, Schuster
// et al. 2022, and DeeBERT, Xin et al. 2020): the edge runs the embedding, layers [0, K), an
// early-exit LM head (LayerNorm + linear) and a learned bottleneck encoder that compresses
// each layer-K hidden state to `bottleneck` values for the wire; the cloud decodes the code
// back to d_model and runs layers [K, N) and the final head. Training optimizes the exit
// loss and the final loss together; the final path always goes through the bottleneck, so
// the cloud tail learns on what it will receive.
//
// Every forward takes token ids [B, T] (int64 in [0, vocab)) and, for incremental decoding,
// a KvCache for the layers it runs; `Forward*` without a cache processes a whole sequence.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::split {

struct LmSpec {
  int vocab = 256;    // bytes
  int context = 128;  // training sequence length; the KV cache window when generating
  int d_model = 128;
  int heads = 4;
  // The edge runs two thirds of the layers: the cloud tail keeps every session's KV cache
  // complete, so its share of the work is at least (layers - K) / layers.
  int layers = 6;
  int split_after = 4;  // K: the edge runs layers [0, K); 1 <= K < layers
  int bottleneck = 24;  // values per token on the wire (the layer-K state's code)
  int mlp_ratio = 4;

  nlohmann::json ToJson() const;
  static Result<LmSpec> FromJson(const nlohmann::json& json);
  Status Validate() const;
  int head_dim() const { return d_model / heads; }

  static LmSpec Default();
  // Small enough for unit tests on one core.
  static LmSpec Tiny();
};

// Keys and values of a contiguous range of layers for one batch of sequences, appended as
// tokens are processed. Entry i belongs to the i-th layer of the range. Capacity is the
// spec's context: appending beyond it drops the oldest positions (sliding window).
struct KvCache {
  std::vector<torch::Tensor> keys, values;  // per layer: [B, heads, T, head_dim]
  int64_t position = 0;  // absolute position of the next token (counts dropped ones too)
  int64_t length() const { return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2); }
  void Clear();
  int64_t Bytes() const;
};

class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit CausalSelfAttentionImpl(const LmSpec& spec);
  // x [B, T, D] at absolute positions start..start+T-1. With a cache slot (k, v), attends to
  // the cached keys too and appends this step's keys and values (trimmed to `window`).
  torch::Tensor forward(const torch::Tensor& x, int64_t start, torch::Tensor* cache_k,
                        torch::Tensor* cache_v, int64_t window);

 private:
  int heads_, head_dim_;
  torch::nn::Linear qkv_{nullptr}, proj_{nullptr};
};
TORCH_MODULE(CausalSelfAttention);

class LmBlockImpl : public torch::nn::Module {
 public:
  explicit LmBlockImpl(const LmSpec& spec);
  torch::Tensor forward(const torch::Tensor& x, int64_t start, torch::Tensor* cache_k,
                        torch::Tensor* cache_v, int64_t window);

 private:
  torch::nn::LayerNorm ln1_{nullptr}, ln2_{nullptr};
  CausalSelfAttention attn_{nullptr};
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
};
TORCH_MODULE(LmBlock);

struct LmOutputs {
  torch::Tensor exit_logits;   // [B, T, vocab] from the edge's exit head
  torch::Tensor final_logits;  // [B, T, vocab] through bottleneck and cloud layers
};

class SplitLmImpl : public torch::nn::Module {
 public:
  explicit SplitLmImpl(const LmSpec& spec);
  const LmSpec& spec() const { return spec_; }

  // Edge: embedding and layers [0, K) -> layer-K states [B, T, D]. `cache` covers K layers.
  torch::Tensor EdgeLayers(const torch::Tensor& tokens, KvCache* cache = nullptr);
  // Edge: exit LM head on layer-K states.
  torch::Tensor ExitLogits(const torch::Tensor& state);
  // The bottleneck: layer-K state [.., D] -> code [.., bottleneck] (LayerNorm, linear) and
  // back (linear).
  torch::Tensor Encode(const torch::Tensor& state);
  torch::Tensor Decode(const torch::Tensor& code);
  // Cloud: layers [K, N) and the final head on decoded states [B, T, D]. `cache` covers
  // N - K layers; `start` is the absolute position of the first state when there is no
  // cache (a cache knows its own position).
  torch::Tensor CloudLogits(const torch::Tensor& state, KvCache* cache = nullptr,
                            int64_t start = 0);
  // CloudLogits in two steps, for callers that need the head on some positions only:
  // layers [K, N) (growing the cache), then the final norm and head.
  torch::Tensor CloudHidden(const torch::Tensor& state, KvCache* cache = nullptr,
                            int64_t start = 0);
  torch::Tensor FinalLogits(const torch::Tensor& hidden);
  // The cloud-only configuration: tokens through the embedding, layers [0, K), the
  // bottleneck in fp32 (no wire quantization) and layers [K, N) -> final hidden states
  // [B, T, D] for FinalLogits. `cache` covers all N layers (NewWholeCache).
  torch::Tensor WholeHidden(const torch::Tensor& tokens, KvCache* cache = nullptr);
  // The whole model on full sequences (training and reference): both heads.
  LmOutputs forward(const torch::Tensor& tokens);

  // A cache for the edge's layers or the cloud's layers, empty.
  KvCache NewEdgeCache() const;
  KvCache NewCloudCache() const;
  KvCache NewWholeCache() const;

 private:
  torch::Tensor RunLayers(torch::Tensor x, int first, int last, KvCache* cache, int64_t start);

  LmSpec spec_;
  torch::nn::Embedding embed_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm exit_norm_{nullptr}, code_norm_{nullptr}, final_norm_{nullptr};
  torch::nn::Linear exit_head_{nullptr}, head_{nullptr};
  torch::nn::Linear encoder_{nullptr}, decoder_{nullptr};
};
TORCH_MODULE(SplitLm);

// Multiply-accumulates per token, to account for the cloud's share of the work. A layer:
// the qkv and output projections (4 D^2), the MLP (2 r D^2) and attention (2 D per
// attended position: scores and the weighted sum). Norms, softmax and rotary terms are
// O(D) per token and left out; the embedding is a lookup.
int64_t LmLayerMacs(const LmSpec& spec, int64_t attended);
// `tokens` consecutive tokens through `layers` layers, the first at absolute position
// `position`; the token at position p attends to min(p + 1, context) positions.
int64_t LmLayersMacs(const LmSpec& spec, int layers, int64_t position, int64_t tokens);
inline int64_t LmHeadMacs(const LmSpec& spec) { return int64_t{spec.d_model} * spec.vocab; }
// The bottleneck encoder or decoder.
inline int64_t LmCodecMacs(const LmSpec& spec) { return int64_t{spec.d_model} * spec.bottleneck; }

// Rotary position embedding of x [B, heads, T, head_dim] at positions start..start+T-1.
torch::Tensor ApplyRotary(const torch::Tensor& x, int64_t start);

}  // namespace cleave::split
