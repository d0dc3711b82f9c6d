// Data partitioners: how a labelled dataset is divided among federated clients.
//
// Three schemes from the non-IID literature (Li et al., "Federated Learning on Non-IID Data
// Silos: An Experimental Study", ICDE 2022 -- NIID-Bench):
//   iid           a seeded shuffle cut into near-equal shares;
//   dirichlet:A   label-distribution skew: for each class, the class's samples are split
//                 among clients in proportions drawn from Dirichlet(A, ..., A), with
//                 NIID-Bench's balancing rule (a client already holding more than
//                 N / clients samples gets no more) and, when `min_size` > 0, redrawing
//                 until every client has at least `min_size` samples;
//   labels:K      quantity-based label imbalance (#C=K): every client holds K distinct
//                 labels (client i always gets label i mod C, the rest drawn at random) and
//                 each label's samples are split evenly among the clients holding it.
// The same (labels, spec) always yields the same partition. A partition stores only sample
// indices (compressed rows: O(samples + clients) memory), so populations of 100,000
// clients are cheap; clients may end up with zero samples when there are more clients
// than samples.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace cleave::federated {

struct PartitionSpec {
  enum class Kind { kIid, kDirichlet, kLabels };
  Kind kind = Kind::kIid;
  double alpha = 0.5;  // dirichlet concentration (> 0)
  int labels_per_client = 2;
  int min_size = 0;  // dirichlet: redraw until every client has this many (0 = off)
  uint64_t seed = 1;

  // "iid", "dirichlet:<alpha>", "labels:<k>". InvalidArgument otherwise.
  static Result<PartitionSpec> Parse(const std::string& text);
  std::string ToString() const;
};

class Partition {
 public:
  Partition() = default;
  Partition(std::vector<int64_t> offsets, std::vector<int64_t> indices)
      : offsets_(std::move(offsets)), indices_(std::move(indices)) {}

  int num_clients() const { return offsets_.empty() ? 0 : static_cast<int>(offsets_.size() - 1); }
  int64_t client_size(int client) const { return offsets_[client + 1] - offsets_[client]; }
  // Sample indices of `client` (sorted ascending). Precondition: 0 <= client < num_clients().
  std::vector<int64_t> ClientIndices(int client) const;
  // The same without a copy: client_size(client) indices from here on.
  const int64_t* client_rows(int client) const { return indices_.data() + offsets_[client]; }
  // Total samples assigned (each sample goes to at most one client).
  int64_t total() const { return indices_.size(); }

 private:
  std::vector<int64_t> offsets_;  // num_clients + 1
  std::vector<int64_t> indices_;
};

// Partitions samples with the given `labels` (values < num_classes) among `num_clients`.
// InvalidArgument on num_clients < 1, labels out of range, labels_per_client outside
// [1, num_classes], alpha <= 0; FailedPrecondition when min_size cannot be reached within
// 1,000 redraws (say how close it came).
Result<Partition> MakePartition(const std::vector<uint8_t>& labels, int num_classes,
                                int num_clients, const PartitionSpec& spec);

// Per-client label histogram (rows = clients, num_classes columns), for reports and tests.
std::vector<std::vector<int64_t>> LabelHistogram(const Partition& partition,
                                                 const std::vector<uint8_t>& labels,
                                                 int num_classes);

}  // namespace cleave::federated
