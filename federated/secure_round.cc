#include "federated/secure_round.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include <ATen/CPUGeneratorImpl.h>

namespace cleave::federated {

using json = nlohmann::json;

namespace {

const std::vector<std::string>& SecureStrategies() {
  static const std::vector<std::string> names = {"fedavg",  "fedprox",    "fedadam",
                                                 "fedyogi", "fedadagrad", "dpfedavg"};
  return names;
}

// The trainable elements of `global` in layout order.
int64_t TrainableElements(const Weights& global, const std::vector<bool>& trainable) {
  int64_t n = 0;
  for (size_t i = 0; i < global.size(); ++i) {
    if (trainable[i]) n += global[i].numel();
  }
  return n;
}

}  // namespace

json SecureAggregationOptions::ToJson() const {
  return {{"enabled", enabled},     {"clip", clip},   {"example_scale", example_scale},
          {"threshold", threshold}, {"graph", graph}, {"degree", degree}};
}

Result<SecureAggregationOptions> SecureAggregationOptions::FromJson(const json& j) {
  try {
    SecureAggregationOptions o;
    o.enabled = j.value("enabled", o.enabled);
    o.clip = j.value("clip", o.clip);
    o.example_scale = j.value("example_scale", o.example_scale);
    o.threshold = j.value("threshold", o.threshold);
    o.graph = j.value("graph", o.graph);
    o.degree = j.value("degree", o.degree);
    CLEAVE_RETURN_IF_ERROR(o.Validate());
    return o;
  } catch (const json::exception& e) {
    return Status::InvalidArgument(std::string("secure_aggregation: ") + e.what());
  }
}

Status SecureAggregationOptions::Validate() const {
  if (!(clip > 0) || !std::isfinite(clip)) {
    return Status::InvalidArgument("secure_aggregation.clip must be a positive number");
  }
  if (!(example_scale > 0) || !std::isfinite(example_scale)) {
    return Status::InvalidArgument("secure_aggregation.example_scale must be a positive number");
  }
  if (graph != "complete" && graph != "harary") {
    return Status::InvalidArgument(
        "secure_aggregation.graph must be 'complete' (SecAgg) or "
        "'harary' (SecAgg+), not '" +
        graph + "'");
  }
  if (threshold == 1) {
    return Status::InvalidArgument(
        "secure_aggregation.threshold must be 0 (automatic) or at least 2");
  }
  return Status::Ok();
}

Status CheckSecureAggregationStrategy(const std::string& strategy) {
  const auto& ok = SecureStrategies();
  if (std::find(ok.begin(), ok.end(), strategy) != ok.end()) return Status::Ok();
  std::string list;
  for (const auto& s : ok) list += (list.empty() ? "" : ", ") + s;
  std::string why = "it aggregates something other than the example-weighted mean";
  if (strategy == "fedmedian" || strategy == "fedtrimmedavg" || strategy == "krum" ||
      strategy == "multikrum" || strategy == "bulyan") {
    why =
        "robust aggregation needs every individual update, and secure aggregation reveals "
        "only their sum";
  }
  return Status::InvalidArgument("strategy '" + strategy +
                                 "' cannot run with secure aggregation: " + why +
                                 " (supported: " + list + ")");
}

json SecureRoundParams::ToJson() const {
  return {{"round_id", secagg.round_id},
          {"clients", secagg.num_clients},
          {"threshold", secagg.threshold},
          {"vector_length", secagg.vector_length},
          {"graph", secagg.graph == secagg::GraphKind::kComplete ? "complete" : "harary"},
          {"degree", secagg.degree},
          {"clip", clip},
          {"fractional_bits", fractional_bits},
          {"example_scale", example_scale},
          {"dp_clip_norm", dp_clip_norm},
          {"dp_noise_stddev", dp_noise_stddev}};
}

Result<SecureRoundParams> MakeSecureRoundParams(const SecureAggregationOptions& options,
                                                uint32_t roster_size, int64_t trainable_elements,
                                                uint64_t round_id,
                                                const crypto::Key256& graph_seed) {
  CLEAVE_RETURN_IF_ERROR(options.Validate());
  if (trainable_elements < 1 ||
      trainable_elements + 2 > static_cast<int64_t>(secagg::kMaxVectorLength)) {
    return Status::InvalidArgument("secure aggregation: " + std::to_string(trainable_elements) +
                                   " trainable values do not fit one masked vector");
  }
  SecureRoundParams p;
  p.clip = options.clip;
  p.example_scale = options.example_scale;
  secagg::SecAggConfig& c = p.secagg;
  c.round_id = round_id;
  c.num_clients = roster_size;
  c.vector_length = static_cast<uint32_t>(trainable_elements + 2);
  c.graph_seed = graph_seed;
  if (options.graph == "harary") {
    c.graph = secagg::GraphKind::kHarary;
    uint32_t k = options.degree;
    if (k == 0) {
      const uint32_t log2n =
          static_cast<uint32_t>(std::ceil(std::log2(std::max<uint32_t>(2, roster_size))));
      k = std::max<uint32_t>(4, 2 * log2n);
    }
    if (k % 2 == 1 && roster_size % 2 == 1) ++k;  // a k-regular graph needs n k even
    c.degree = k;
  }
  const uint32_t holders = secagg::HoldersPerClient(c);
  c.threshold = options.threshold != 0 ? options.threshold : holders / 2 + 1;
  CLEAVE_RETURN_IF_ERROR(secagg::ValidateConfig(c).WithContext("secure aggregation"));
  // The most fractional bits with roster_size * ceil(clip 2^f) <= 2^31 - 1.
  int bits = -1;
  for (int f = FixedPointCodec::kMaxFractionalBits; f >= 0; --f) {
    const double q = std::ceil(std::ldexp(options.clip, f));
    if (q * roster_size <= static_cast<double>(std::numeric_limits<int32_t>::max())) {
      bits = f;
      break;
    }
  }
  if (bits < 0) {
    return Status::InvalidArgument("secure aggregation: clip " + std::to_string(options.clip) +
                                   " leaves no headroom for " + std::to_string(roster_size) +
                                   " clients in 32-bit words; lower secure_aggregation.clip");
  }
  p.fractional_bits = bits;
  return p;
}

Result<std::vector<uint32_t>> EncodeContribution(const SecureRoundParams& params,
                                                 const Weights& global, const Weights& trained,
                                                 const std::vector<bool>& trainable,
                                                 int64_t num_examples, double train_loss,
                                                 const crypto::Key256& rounding_seed,
                                                 size_t* clipped) {
  if (num_examples <= 0) {
    return Status::InvalidArgument("secure contribution: the example count must be positive");
  }
  if (!std::isfinite(train_loss)) {
    return Status::InvalidArgument("secure contribution: the training loss is not finite");
  }
  if (trained.size() != global.size() || trainable.size() != global.size()) {
    return Status::InvalidArgument("secure contribution: " + std::to_string(trained.size()) +
                                   " tensors against a model of " + std::to_string(global.size()));
  }
  const int64_t n = TrainableElements(global, trainable);
  if (n + 2 != static_cast<int64_t>(params.secagg.vector_length)) {
    return Status::InvalidArgument("secure contribution: the model has " + std::to_string(n) +
                                   " trainable values, the round expects " +
                                   std::to_string(params.secagg.vector_length - 2));
  }
  CLEAVE_ASSIGN_OR_RETURN(
      FixedPointCodec codec,
      FixedPointCodec::Create(params.clip, params.fractional_bits, params.secagg.num_clients));
  const bool dp = params.dp_clip_norm > 0;
  const double w = dp ? 1.0 : static_cast<double>(num_examples) / params.example_scale;
  std::vector<float> values;
  values.reserve(static_cast<size_t>(n) + 2);
  for (size_t i = 0; i < global.size(); ++i) {
    if (!trainable[i]) continue;
    const torch::Tensor& t = trained[i];
    if (!t.defined() || t.scalar_type() != torch::kFloat32 ||
        !t.sizes().equals(global[i].sizes())) {
      return Status::InvalidArgument("secure contribution: tensor " + std::to_string(i) +
                                     " does not match the model");
    }
    const torch::Tensor delta = (t - global[i]).mul_(w).contiguous();
    const float* d = delta.data_ptr<float>();
    values.insert(values.end(), d, d + delta.numel());
  }
  if (dp) {
    // Clip the whole delta (one L2 norm over every trainable value) to C, then add this
    // client's share of the noise, from a generator seeded by the client's rounding seed.
    torch::Tensor v = torch::from_blob(values.data(), {n}, torch::kFloat32);
    const double norm = v.norm().item<double>();
    if (!std::isfinite(norm)) {
      return Status::InvalidArgument("secure contribution: the update is not finite");
    }
    if (norm > params.dp_clip_norm) v.mul_(params.dp_clip_norm / norm);
    uint64_t seed = 0;
    for (int i = 0; i < 8; ++i) seed |= static_cast<uint64_t>(rounding_seed[16 + i]) << (8 * i);
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    v.add_(torch::randn({n}, generator, torch::kFloat32).mul_(params.dp_noise_stddev));
  }
  values.push_back(static_cast<float>(w));
  values.push_back(static_cast<float>(w * train_loss));
  // EncodeStochastic refuses NaN and infinities.
  return codec.EncodeStochastic(values.data(), values.size(), rounding_seed, clipped);
}

Result<SecureAggregate> DecodeAggregate(const SecureRoundParams& params,
                                        const secagg::AggregateResult& sum, const Weights& global,
                                        const std::vector<bool>& trainable) {
  if (sum.sum.size() != params.secagg.vector_length || trainable.size() != global.size()) {
    return Status::InvalidArgument("secure aggregate: the sum has " +
                                   std::to_string(sum.sum.size()) + " words, the round " +
                                   std::to_string(params.secagg.vector_length));
  }
  CLEAVE_ASSIGN_OR_RETURN(
      FixedPointCodec codec,
      FixedPointCodec::Create(params.clip, params.fractional_bits, params.secagg.num_clients));
  CLEAVE_ASSIGN_OR_RETURN(std::vector<double> decoded,
                          codec.DecodeSum(sum.sum, static_cast<uint32_t>(sum.contributors.size())));
  SecureAggregate out;
  out.contributors = static_cast<int>(sum.contributors.size());
  out.recovered = static_cast<int>(sum.recovered_dropouts.size());
  out.weight_sum = decoded[decoded.size() - 2];
  if (!(out.weight_sum > 0)) {
    return Status::FailedPrecondition("secure aggregate: the total client weight is " +
                                      std::to_string(out.weight_sum) + ", nothing to average");
  }
  out.examples = std::llround(out.weight_sum * params.example_scale);
  out.mean_loss = decoded.back() / out.weight_sum;
  out.aggregate.resize(global.size());
  size_t at = 0;
  for (size_t i = 0; i < global.size(); ++i) {
    if (!trainable[i]) {
      out.aggregate[i] = global[i];
      continue;
    }
    const int64_t count = global[i].numel();
    if (at + static_cast<size_t>(count) > decoded.size() - 2) {
      return Status::InvalidArgument(
          "secure aggregate: the model has more trainable values "
          "than the round's vector");
    }
    torch::Tensor mean = torch::empty({count}, torch::kFloat64);
    double* m = mean.data_ptr<double>();
    for (int64_t k = 0; k < count; ++k) m[k] = decoded[at + k] / out.weight_sum;
    at += static_cast<size_t>(count);
    out.aggregate[i] = global[i] + mean.to(torch::kFloat32).view(global[i].sizes());
  }
  if (at != decoded.size() - 2) {
    return Status::InvalidArgument("secure aggregate: the round's vector has " +
                                   std::to_string(decoded.size() - 2 - at) +
                                   " values more than the model's trainable entries");
  }
  return out;
}

Result<SecureClientSession> SecureClientSession::Create(const SecureRoundParams& params,
                                                        secagg::ClientIndex self) {
  CLEAVE_ASSIGN_OR_RETURN(secagg::SecAggClient client,
                          secagg::SecAggClient::Create(params.secagg, self));
  return SecureClientSession(params, std::move(client));
}

Result<secagg::MaskedInput> SecureClientSession::MaskUpdate(
    const secagg::ForwardedShares& forwarded, const Weights& global, const Weights& trained,
    const std::vector<bool>& trainable, int64_t num_examples, double train_loss,
    const crypto::Key256& rounding_seed) {
  CLEAVE_ASSIGN_OR_RETURN(std::vector<uint32_t> encoded,
                          EncodeContribution(params_, global, trained, trainable, num_examples,
                                             train_loss, rounding_seed));
  return client_.MaskInput(forwarded, std::move(encoded));
}

SecureRound::SecureRound(SecureRoundParams params, std::vector<std::string> roster,
                         secagg::SecAggServer server)
    : params_(std::move(params)), roster_(std::move(roster)), server_(std::move(server)) {
  for (size_t i = 0; i < roster_.size(); ++i) {
    index_.emplace(roster_[i], static_cast<secagg::ClientIndex>(i));
  }
}

Result<std::unique_ptr<SecureRound>> SecureRound::Create(const SecureRoundParams& params,
                                                         std::vector<std::string> roster) {
  if (roster.size() != params.secagg.num_clients) {
    return Status::InvalidArgument("secure round: a roster of " + std::to_string(roster.size()) +
                                   " clients for a configuration of " +
                                   std::to_string(params.secagg.num_clients));
  }
  std::vector<std::string> sorted = roster;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    return Status::InvalidArgument("secure round: a client appears twice in the roster");
  }
  CLEAVE_ASSIGN_OR_RETURN(secagg::SecAggServer server, secagg::SecAggServer::Create(params.secagg));
  return std::unique_ptr<SecureRound>(
      new SecureRound(params, std::move(roster), std::move(server)));
}

Result<secagg::ClientIndex> SecureRound::IndexOf(const std::string& client) const {
  auto it = index_.find(client);
  if (it == index_.end()) {
    return Status::NotFound("client '" + client + "' is not in this secure round");
  }
  return it->second;
}

Status SecureRound::CheckSender(const std::string& client, secagg::ClientIndex sender) const {
  CLEAVE_ASSIGN_OR_RETURN(secagg::ClientIndex index, IndexOf(client));
  if (index != sender) {
    return Status::InvalidArgument("client '" + client + "' (roster index " +
                                   std::to_string(index) + ") sent a message as client " +
                                   std::to_string(sender));
  }
  return Status::Ok();
}

Status SecureRound::HandleAdvertiseKeys(const std::string& client,
                                        const secagg::AdvertiseKeys& message) {
  CLEAVE_RETURN_IF_ERROR(CheckSender(client, message.sender));
  return server_.HandleAdvertiseKeys(message);
}

Result<std::map<std::string, secagg::KeyDirectory>> SecureRound::CloseAdvertiseKeys() {
  CLEAVE_ASSIGN_OR_RETURN(std::vector<secagg::KeyDirectory> directories,
                          server_.CloseAdvertiseKeys());
  std::map<std::string, secagg::KeyDirectory> out;
  for (auto& d : directories) out.emplace(roster_.at(d.recipient), std::move(d));
  return out;
}

Status SecureRound::HandleShareKeys(const std::string& client, const secagg::ShareKeys& message) {
  CLEAVE_RETURN_IF_ERROR(CheckSender(client, message.sender));
  return server_.HandleShareKeys(message);
}

Result<std::map<std::string, secagg::ForwardedShares>> SecureRound::CloseShareKeys() {
  CLEAVE_ASSIGN_OR_RETURN(std::vector<secagg::ForwardedShares> forwarded, server_.CloseShareKeys());
  std::map<std::string, secagg::ForwardedShares> out;
  for (auto& f : forwarded) out.emplace(roster_.at(f.recipient), std::move(f));
  return out;
}

Status SecureRound::HandleMaskedInput(const std::string& client,
                                      const secagg::MaskedInput& message) {
  CLEAVE_RETURN_IF_ERROR(CheckSender(client, message.sender));
  return server_.HandleMaskedInput(message);
}

Result<SecureRound::UnmaskStage> SecureRound::CloseMaskedInput() {
  UnmaskStage stage;
  CLEAVE_ASSIGN_OR_RETURN(stage.request, server_.CloseMaskedInput());
  for (secagg::ClientIndex u : stage.request.survivors) stage.survivors.push_back(roster_.at(u));
  return stage;
}

Status SecureRound::HandleUnmaskShares(const std::string& client,
                                       const secagg::UnmaskShares& message) {
  CLEAVE_RETURN_IF_ERROR(CheckSender(client, message.sender));
  return server_.HandleUnmaskShares(message);
}

}  // namespace cleave::federated
