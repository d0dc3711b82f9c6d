#include "split/lm_model.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace cleave::split {

using nlohmann::json;
namespace F = torch::nn::functional;

// ---------------------------------------------------------------- spec

json LmSpec::ToJson() const {
  return {{"vocab", vocab},           {"context", context},    {"d_model", d_model},
          {"heads", heads},           {"layers", layers},      {"split_after", split_after},
          {"bottleneck", bottleneck}, {"mlp_ratio", mlp_ratio}};
}

Result<LmSpec> LmSpec::FromJson(const json& j) {
  if (!j.is_object()) return Status::InvalidArgument("lm spec: expected a JSON object");
  LmSpec s;
  const auto read = [&](const char* key, int& field) -> Status {
    auto it = j.find(key);
    if (it == j.end())
      return Status::InvalidArgument(std::string("lm spec: missing '") + key + "'");
    if (!it->is_number_integer()) {
      return Status::InvalidArgument(std::string("lm spec: '") + key + "' must be an integer");
    }
    const int64_t v = it->get<int64_t>();
    if (v < 0 || v > (int64_t{1} << 20)) {
      return Status::InvalidArgument(std::string("lm spec: '") + key + "' out of range");
    }
    field = static_cast<int>(v);
    return Status::Ok();
  };
  CLEAVE_RETURN_IF_ERROR(read("vocab", s.vocab));
  CLEAVE_RETURN_IF_ERROR(read("context", s.context));
  CLEAVE_RETURN_IF_ERROR(read("d_model", s.d_model));
  CLEAVE_RETURN_IF_ERROR(read("heads", s.heads));
  CLEAVE_RETURN_IF_ERROR(read("layers", s.layers));
  CLEAVE_RETURN_IF_ERROR(read("split_after", s.split_after));
  CLEAVE_RETURN_IF_ERROR(read("bottleneck", s.bottleneck));
  CLEAVE_RETURN_IF_ERROR(read("mlp_ratio", s.mlp_ratio));
  CLEAVE_RETURN_IF_ERROR(s.Validate());
  return s;
}

Status LmSpec::Validate() const {
  const auto bad = [](const std::string& what) {
    return Status::InvalidArgument("lm spec: " + what);
  };
  if (vocab < 2 || vocab > 65536) return bad("vocab must be in [2, 65536]");
  if (context < 2 || context > 65536) return bad("context must be in [2, 65536]");
  if (d_model < 2 || heads < 1 || d_model % heads != 0) {
    return bad("d_model must be a positive multiple of heads");
  }
  if (head_dim() % 2 != 0) return bad("d_model / heads must be even (rotary positions)");
  if (layers < 2) return bad("layers must be >= 2 (one on each side of the split)");
  if (split_after < 1 || split_after >= layers) return bad("split_after must be in [1, layers)");
  if (bottleneck < 1 || bottleneck > d_model) return bad("bottleneck must be in [1, d_model]");
  if (mlp_ratio < 1 || mlp_ratio > 16) return bad("mlp_ratio must be in [1, 16]");
  return Status::Ok();
}

LmSpec LmSpec::Default() { return LmSpec{}; }

LmSpec LmSpec::Tiny() {
  LmSpec s;
  s.context = 32;
  s.d_model = 32;
  s.heads = 2;
  s.layers = 3;
  s.split_after = 1;
  s.bottleneck = 8;
  s.mlp_ratio = 2;
  return s;
}

// ---------------------------------------------------------------- cache

void KvCache::Clear() {
  for (auto& k : keys) k = torch::Tensor();
  for (auto& v : values) v = torch::Tensor();
  position = 0;
}

int64_t KvCache::Bytes() const {
  int64_t bytes = 0;
  for (const auto* list : {&keys, &values}) {
    for (const auto& t : *list) {
      if (t.defined()) bytes += t.numel() * static_cast<int64_t>(t.element_size());
    }
  }
  return bytes;
}

// ---------------------------------------------------------------- rotary

torch::Tensor ApplyRotary(const torch::Tensor& x, int64_t start) {
  const int64_t t = x.size(2);
  const int64_t h = x.size(3);
  // Angles in double: positions grow without bound while a cache slides.
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor inv_freq =
      torch::pow(10000.0, -torch::arange(0, h / 2, opts) * (2.0 / static_cast<double>(h)));
  const torch::Tensor pos = torch::arange(start, start + t, opts);
  const torch::Tensor angles = torch::outer(pos, inv_freq);  // [T, h/2]
  const torch::Tensor cos = torch::cat({angles.cos(), angles.cos()}, 1).to(x.scalar_type());
  const torch::Tensor sin = torch::cat({angles.sin(), angles.sin()}, 1).to(x.scalar_type());
  const torch::Tensor first = x.narrow(3, 0, h / 2);
  const torch::Tensor second = x.narrow(3, h / 2, h / 2);
  const torch::Tensor rotated = torch::cat({-second, first}, 3);
  return x * cos + rotated * sin;
}

// ---------------------------------------------------------------- attention

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const LmSpec& spec)
    : heads_(spec.heads), head_dim_(spec.head_dim()) {
  qkv_ = register_module("qkv", torch::nn::Linear(spec.d_model, 3 * spec.d_model));
  proj_ = register_module("proj", torch::nn::Linear(spec.d_model, spec.d_model));
}

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x, int64_t start,
                                               torch::Tensor* cache_k, torch::Tensor* cache_v,
                                               int64_t window) {
  const int64_t b = x.size(0), t = x.size(1);
  const auto heads = [&](const torch::Tensor& y) {
    return y.view({b, t, heads_, head_dim_}).transpose(1, 2);  // [B, H, T, hd]
  };
  const std::vector<torch::Tensor> parts = qkv_(x).chunk(3, 2);
  const torch::Tensor q = ApplyRotary(heads(parts[0]), start);
  torch::Tensor k = ApplyRotary(heads(parts[1]), start);
  torch::Tensor v = heads(parts[2]);
  if (cache_k != nullptr) {
    if (cache_k->defined()) {
      // Keep at most window - t earlier positions, so the step sees at most `window` keys.
      const int64_t keep = std::min<int64_t>(cache_k->size(2), std::max<int64_t>(0, window - t));
      const int64_t from = cache_k->size(2) - keep;
      k = torch::cat({cache_k->narrow(2, from, keep), k}, 2);
      v = torch::cat({cache_v->narrow(2, from, keep), v}, 2);
    }
    *cache_k = k;
    *cache_v = v;
  }
  const int64_t past = k.size(2) - t;
  torch::Tensor scores =
      torch::matmul(q, k.transpose(2, 3)) / std::sqrt(static_cast<double>(head_dim_));
  // Query i (absolute start + i) sees key j when j <= past + i.
  const torch::Tensor future =
      torch::ones({t, past + t}, torch::TensorOptions().dtype(torch::kBool)).triu(past + 1);
  scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
  const torch::Tensor out = torch::matmul(torch::softmax(scores, -1), v);  // [B, H, T, hd]
  return proj_(out.transpose(1, 2).reshape({b, t, heads_ * head_dim_}));
}

// ---------------------------------------------------------------- block

LmBlockImpl::LmBlockImpl(const LmSpec& spec) {
  ln1_ = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({spec.d_model})));
  attn_ = register_module("attn", CausalSelfAttention(spec));
  ln2_ = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({spec.d_model})));
  fc1_ = register_module("fc1", torch::nn::Linear(spec.d_model, spec.mlp_ratio * spec.d_model));
  fc2_ = register_module("fc2", torch::nn::Linear(spec.mlp_ratio * spec.d_model, spec.d_model));
}

torch::Tensor LmBlockImpl::forward(const torch::Tensor& x, int64_t start, torch::Tensor* cache_k,
                                   torch::Tensor* cache_v, int64_t window) {
  torch::Tensor h = x + attn_(ln1_(x), start, cache_k, cache_v, window);
  return h + fc2_(F::gelu(fc1_(ln2_(h))));
}

// ---------------------------------------------------------------- model

SplitLmImpl::SplitLmImpl(const LmSpec& spec) : spec_(spec) {
  const auto norm = [&] {
    return torch::nn::LayerNorm(torch::nn::LayerNormOptions({spec.d_model}));
  };
  embed_ = register_module("embed", torch::nn::Embedding(spec.vocab, spec.d_model));
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int i = 0; i < spec.layers; ++i) blocks_->push_back(LmBlock(spec));
  exit_norm_ = register_module("exit_norm", norm());
  exit_head_ = register_module("exit_head", torch::nn::Linear(spec.d_model, spec.vocab));
  code_norm_ = register_module("code_norm", norm());
  encoder_ = register_module("encoder", torch::nn::Linear(spec.d_model, spec.bottleneck));
  decoder_ = register_module("decoder", torch::nn::Linear(spec.bottleneck, spec.d_model));
  final_norm_ = register_module("final_norm", norm());
  head_ = register_module("head", torch::nn::Linear(spec.d_model, spec.vocab));
  // GPT-2's initialization: small normal weights keep the residual stream tame early on.
  for (auto& p : named_parameters()) {
    if (p.key().find("weight") != std::string::npos && p.value().dim() == 2) {
      torch::NoGradGuard no_grad;
      p.value().normal_(0.0, 0.02);
    }
  }
}

torch::Tensor SplitLmImpl::RunLayers(torch::Tensor x, int first, int last, KvCache* cache,
                                     int64_t start) {
  if (cache != nullptr) {
    const size_t n = static_cast<size_t>(last - first);
    if (cache->keys.size() != n) {
      cache->keys.assign(n, torch::Tensor());
      cache->values.assign(n, torch::Tensor());
    }
    start = cache->position;
  }
  for (int i = first; i < last; ++i) {
    torch::Tensor* k = cache ? &cache->keys[i - first] : nullptr;
    torch::Tensor* v = cache ? &cache->values[i - first] : nullptr;
    x = blocks_[i]->as<LmBlockImpl>()->forward(x, start, k, v, spec_.context);
  }
  if (cache != nullptr) cache->position += x.size(1);
  return x;
}

torch::Tensor SplitLmImpl::EdgeLayers(const torch::Tensor& tokens, KvCache* cache) {
  return RunLayers(embed_(tokens), 0, spec_.split_after, cache, 0);
}

torch::Tensor SplitLmImpl::ExitLogits(const torch::Tensor& state) {
  return exit_head_(exit_norm_(state));
}

torch::Tensor SplitLmImpl::Encode(const torch::Tensor& state) {
  return encoder_(code_norm_(state));
}

torch::Tensor SplitLmImpl::Decode(const torch::Tensor& code) { return decoder_(code); }

torch::Tensor SplitLmImpl::CloudLogits(const torch::Tensor& state, KvCache* cache, int64_t start) {
  return FinalLogits(CloudHidden(state, cache, start));
}

torch::Tensor SplitLmImpl::CloudHidden(const torch::Tensor& state, KvCache* cache, int64_t start) {
  return RunLayers(state, spec_.split_after, spec_.layers, cache, start);
}

torch::Tensor SplitLmImpl::FinalLogits(const torch::Tensor& hidden) {
  return head_(final_norm_(hidden));
}

torch::Tensor SplitLmImpl::WholeHidden(const torch::Tensor& tokens, KvCache* cache) {
  if (cache == nullptr) return CloudHidden(Decode(Encode(EdgeLayers(tokens))));
  // The whole cache's first K layers serve the edge layers, the rest the cloud layers.
  const size_t k = static_cast<size_t>(spec_.split_after);
  const size_t n = static_cast<size_t>(spec_.layers);
  if (cache->keys.size() != n) {
    cache->keys.assign(n, torch::Tensor());
    cache->values.assign(n, torch::Tensor());
  }
  KvCache edge, cloud;
  edge.position = cloud.position = cache->position;
  for (size_t i = 0; i < n; ++i) {
    KvCache& part = i < k ? edge : cloud;
    part.keys.push_back(std::move(cache->keys[i]));
    part.values.push_back(std::move(cache->values[i]));
  }
  torch::Tensor hidden;
  try {
    hidden = CloudHidden(Decode(Encode(EdgeLayers(tokens, &edge))), &cloud);
  } catch (...) {
    cache->Clear();  // half-moved: the caller drops the session
    throw;
  }
  for (size_t i = 0; i < n; ++i) {
    KvCache& part = i < k ? edge : cloud;
    const size_t j = i < k ? i : i - k;
    cache->keys[i] = std::move(part.keys[j]);
    cache->values[i] = std::move(part.values[j]);
  }
  cache->position = cloud.position;
  return hidden;
}

LmOutputs SplitLmImpl::forward(const torch::Tensor& tokens) {
  const torch::Tensor state = EdgeLayers(tokens);
  LmOutputs out;
  out.exit_logits = ExitLogits(state);
  out.final_logits = CloudLogits(Decode(Encode(state)));
  return out;
}

KvCache SplitLmImpl::NewEdgeCache() const {
  KvCache c;
  c.keys.assign(spec_.split_after, torch::Tensor());
  c.values.assign(spec_.split_after, torch::Tensor());
  return c;
}

KvCache SplitLmImpl::NewCloudCache() const {
  KvCache c;
  c.keys.assign(spec_.layers - spec_.split_after, torch::Tensor());
  c.values.assign(spec_.layers - spec_.split_after, torch::Tensor());
  return c;
}

KvCache SplitLmImpl::NewWholeCache() const {
  KvCache c;
  c.keys.assign(spec_.layers, torch::Tensor());
  c.values.assign(spec_.layers, torch::Tensor());
  return c;
}

int64_t LmLayerMacs(const LmSpec& spec, int64_t attended) {
  const int64_t d = spec.d_model;
  return (4 + 2 * int64_t{spec.mlp_ratio}) * d * d + 2 * d * attended;
}

int64_t LmLayersMacs(const LmSpec& spec, int layers, int64_t position, int64_t tokens) {
  int64_t macs = 0;
  for (int64_t p = position; p < position + tokens; ++p) {
    macs += LmLayerMacs(spec, std::min<int64_t>(p + 1, spec.context));
  }
  return macs * layers;
}

}  // namespace cleave::split
