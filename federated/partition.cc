#include "federated/partition.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <sstream>

namespace cleave::federated {
namespace {

Result<double> ParseNumber(const std::string& text, const std::string& what) {
  try {
    size_t used = 0;
    const double value = std::stod(text, &used);
    if (used != text.size() || !std::isfinite(value)) throw std::invalid_argument(text);
    return value;
  } catch (const std::exception&) {
    return Status::InvalidArgument("partition: " + what + " '" + text + "' is not a number");
  }
}

// Splits `indices` into consecutive pieces with the given cumulative cut points.
void Distribute(const std::vector<int64_t>& indices, const std::vector<double>& proportions,
                std::vector<std::vector<int64_t>>& clients) {
  const int64_t n = indices.size();
  double cumulative = 0;
  int64_t begin = 0;
  for (size_t c = 0; c < proportions.size(); ++c) {
    cumulative += proportions[c];
    int64_t end = c + 1 == proportions.size()
                      ? n
                      : std::min<int64_t>(n, static_cast<int64_t>(cumulative * n));
    end = std::max(end, begin);
    for (int64_t i = begin; i < end; ++i) clients[c].push_back(indices[i]);
    begin = end;
  }
}

Partition Compress(std::vector<std::vector<int64_t>>& clients) {
  std::vector<int64_t> offsets(clients.size() + 1, 0);
  int64_t total = 0;
  for (size_t c = 0; c < clients.size(); ++c) {
    offsets[c] = total;
    total += clients[c].size();
  }
  offsets[clients.size()] = total;
  std::vector<int64_t> indices;
  indices.reserve(total);
  for (auto& c : clients) {
    std::sort(c.begin(), c.end());
    indices.insert(indices.end(), c.begin(), c.end());
    std::vector<int64_t>().swap(c);
  }
  return Partition(std::move(offsets), std::move(indices));
}

std::vector<std::vector<int64_t>> ByClass(const std::vector<uint8_t>& labels, int num_classes,
                                          std::mt19937_64& rng) {
  std::vector<std::vector<int64_t>> by_class(num_classes);
  for (size_t i = 0; i < labels.size(); ++i) by_class[labels[i]].push_back(i);
  for (auto& v : by_class) std::shuffle(v.begin(), v.end(), rng);
  return by_class;
}

Partition Iid(size_t n, int num_clients, std::mt19937_64& rng) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::vector<int64_t>> clients(num_clients);
  for (size_t i = 0; i < n; ++i) clients[i % num_clients].push_back(order[i]);
  return Compress(clients);
}

Result<Partition> Dirichlet(const std::vector<uint8_t>& labels, int num_classes, int num_clients,
                            const PartitionSpec& spec, std::mt19937_64& rng) {
  const double cap = static_cast<double>(labels.size()) / num_clients;
  std::gamma_distribution<double> gamma(spec.alpha, 1.0);
  int64_t best_min = -1;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    std::vector<std::vector<int64_t>> clients(num_clients);
    std::vector<std::vector<int64_t>> by_class = ByClass(labels, num_classes, rng);
    std::vector<double> p(num_clients);
    for (int k = 0; k < num_classes; ++k) {
      double sum = 0;
      for (int c = 0; c < num_clients; ++c) {
        p[c] = clients[c].size() < cap ? gamma(rng) : 0.0;  // NIID-Bench balancing rule
        sum += p[c];
      }
      if (sum <= 0) {  // every draw underflowed (tiny alpha): give the class to one client
        std::uniform_int_distribution<int> pick(0, num_clients - 1);
        std::fill(p.begin(), p.end(), 0.0);
        p[pick(rng)] = 1.0;
        sum = 1.0;
      }
      for (double& v : p) v /= sum;
      Distribute(by_class[k], p, clients);
    }
    int64_t smallest = std::numeric_limits<int64_t>::max();
    for (const auto& c : clients) smallest = std::min<int64_t>(smallest, c.size());
    best_min = std::max(best_min, smallest);
    if (smallest >= spec.min_size) return Compress(clients);
  }
  std::ostringstream msg;
  msg << "partition: could not give every one of " << num_clients << " clients at least "
      << spec.min_size << " samples with dirichlet:" << spec.alpha
      << " in 1000 draws (best smallest client: " << best_min << "); lower min_size or raise alpha";
  return Status::FailedPrecondition(msg.str());
}

Partition Labels(const std::vector<uint8_t>& labels, int num_classes, int num_clients, int k,
                 std::mt19937_64& rng) {
  // Which clients hold each label.
  std::vector<std::vector<int>> holders(num_classes);
  std::vector<int> others(num_classes);
  for (int c = 0; c < num_clients; ++c) {
    const int first = c % num_classes;
    holders[first].push_back(c);
    others.clear();
    for (int l = 0; l < num_classes; ++l) {
      if (l != first) others.push_back(l);
    }
    std::shuffle(others.begin(), others.end(), rng);
    for (int j = 0; j < k - 1; ++j) holders[others[j]].push_back(c);
  }
  std::vector<std::vector<int64_t>> by_class = ByClass(labels, num_classes, rng);
  std::vector<std::vector<int64_t>> clients(num_clients);
  for (int l = 0; l < num_classes; ++l) {
    const auto& h = holders[l];
    if (h.empty()) continue;  // nobody holds this label (fewer clients than labels)
    const auto& samples = by_class[l];
    for (size_t i = 0; i < samples.size(); ++i) {
      clients[h[i * h.size() / samples.size()]].push_back(samples[i]);
    }
  }
  return Compress(clients);
}

}  // namespace

Result<PartitionSpec> PartitionSpec::Parse(const std::string& text) {
  PartitionSpec spec;
  const auto colon = text.find(':');
  const std::string kind = text.substr(0, colon);
  const std::string arg = colon == std::string::npos ? "" : text.substr(colon + 1);
  if (kind == "iid" && colon == std::string::npos) {
    spec.kind = Kind::kIid;
    return spec;
  }
  if (kind == "dirichlet" && !arg.empty()) {
    CLEAVE_ASSIGN_OR_RETURN(spec.alpha, ParseNumber(arg, "dirichlet alpha"));
    if (spec.alpha <= 0) return Status::InvalidArgument("partition: dirichlet alpha must be > 0");
    spec.kind = Kind::kDirichlet;
    return spec;
  }
  if (kind == "labels" && !arg.empty()) {
    CLEAVE_ASSIGN_OR_RETURN(const double k, ParseNumber(arg, "labels per client"));
    if (k < 1 || k != std::floor(k) || k > 1000) {
      return Status::InvalidArgument("partition: labels per client must be a positive integer");
    }
    spec.kind = Kind::kLabels;
    spec.labels_per_client = static_cast<int>(k);
    return spec;
  }
  return Status::InvalidArgument("partition: '" + text +
                                 "' is not one of iid, dirichlet:<alpha>, labels:<k>");
}

std::string PartitionSpec::ToString() const {
  std::ostringstream out;
  switch (kind) {
    case Kind::kIid: return "iid";
    case Kind::kDirichlet: out << "dirichlet:" << alpha; return out.str();
    case Kind::kLabels: return "labels:" + std::to_string(labels_per_client);
  }
  return "unknown";
}

std::vector<int64_t> Partition::ClientIndices(int client) const {
  return std::vector<int64_t>(indices_.begin() + offsets_[client],
                              indices_.begin() + offsets_[client + 1]);
}

Result<Partition> MakePartition(const std::vector<uint8_t>& labels, int num_classes,
                                int num_clients, const PartitionSpec& spec) {
  if (num_clients < 1) return Status::InvalidArgument("partition: need at least one client");
  if (num_classes < 1 || num_classes > 256) {
    return Status::InvalidArgument("partition: num_classes must be in [1, 256]");
  }
  for (uint8_t l : labels) {
    if (l >= num_classes) {
      return Status::InvalidArgument("partition: label " + std::to_string(l) +
                                     " is not below num_classes " + std::to_string(num_classes));
    }
  }
  std::mt19937_64 rng(spec.seed);
  switch (spec.kind) {
    case PartitionSpec::Kind::kIid: return Iid(labels.size(), num_clients, rng);
    case PartitionSpec::Kind::kDirichlet:
      if (!(spec.alpha > 0) || !std::isfinite(spec.alpha)) {
        return Status::InvalidArgument("partition: dirichlet alpha must be finite and > 0");
      }
      if (spec.min_size < 0) return Status::InvalidArgument("partition: min_size must be >= 0");
      return Dirichlet(labels, num_classes, num_clients, spec, rng);
    case PartitionSpec::Kind::kLabels:
      if (spec.labels_per_client < 1 || spec.labels_per_client > num_classes) {
        return Status::InvalidArgument("partition: labels per client must be in [1, " +
                                       std::to_string(num_classes) + "]");
      }
      return Labels(labels, num_classes, num_clients, spec.labels_per_client, rng);
  }
  return Status::InvalidArgument("partition: unknown kind");
}

std::vector<std::vector<int64_t>> LabelHistogram(const Partition& partition,
                                                 const std::vector<uint8_t>& labels,
                                                 int num_classes) {
  std::vector<std::vector<int64_t>> histogram(partition.num_clients(),
                                              std::vector<int64_t>(num_classes, 0));
  for (int c = 0; c < partition.num_clients(); ++c) {
    for (int64_t i : partition.ClientIndices(c)) ++histogram[c][labels[i]];
  }
  return histogram;
}

}  // namespace cleave::federated
