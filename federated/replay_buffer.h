// The bounded replay buffer of continual learning: the inputs a learner keeps from the
// stream it has seen, each with what it knows about the input's label.
//
// A row carries up to three label sources, and a strategy (federated/continual.h) uses the
// best one it has:
//   - a hard label (`labels` >= 0): a dataset's label, the application's feedback, or a
//     confident exit's prediction used as a pseudo-label;
//   - a soft label (`soft`, where `has_soft`): a teacher's logits, e.g. the cloud tail's
//     answer to an offloaded request (knowledge distillation);
//   - the learner's own logits when the row was stored (`logits`, where `has_logits`), which
//     DER/DER++ replay (Buzzega et al., "Dark Experience for General Continual Learning",
//     NeurIPS 2020).
//
// Admission is reservoir sampling (Vitter, "Random Sampling with a Reservoir", 1985): after
// n rows have been offered, each of them is in the buffer with probability capacity / n.
// The class-balanced option is Class-Balancing Reservoir Sampling (Chrysakis & Moens, "Online
// Continual Learning from Imbalanced Data", ICML 2020): when the buffer is full, a row of a
// class that is not among the largest replaces a random row of a largest class; a row of a
// largest class c replaces a random row of c with probability m_c / n_c (m_c stored, n_c
// seen). A row's class is its hard label, else its soft label's argmax.
//
// Memory is bounded by `capacity` rows and by `max_bytes`: the storage is allocated once,
// when the first row fixes the rows' shapes, for min(capacity, max_bytes / row bytes) rows.
//
// The file (Save/Load) is "CLVRPLY\n", a format version, the payload length and the
// payload's SHA-256, then the payload: a JSON header and the raw tensors. With a key it is
// sealed with AES-256-GCM (the header's magic and version are the associated data), so the
// inputs a gateway served never rest on its disk in the clear. Load verifies everything
// (digest or tag, every size against the header, label ranges, finite values) before it
// replaces anything.
//
// Thread-safety: none; the owner serializes calls.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "common/crypto.h"
#include "common/status.h"

namespace cleave::federated {

// Rows of inputs with their label sources (see the file comment). `images` and `labels` are
// always defined; `soft`/`has_soft` and `logits`/`has_logits` are both defined or both not.
struct LabeledBatch {
  torch::Tensor images;      // [n, ...] float32
  torch::Tensor labels;      // [n] int64, -1 = no hard label
  torch::Tensor soft;        // [n, classes] float32 teacher logits
  torch::Tensor has_soft;    // [n] bool
  torch::Tensor logits;      // [n, ...] float32 the learner's logits when stored
  torch::Tensor has_logits;  // [n] bool
  torch::Tensor ids;         // [n] int64 caller's ids (e.g. request ids; 0 = none), or undefined

  int64_t size() const { return images.defined() ? images.size(0) : 0; }
  // Rows `index` (int64) of every defined tensor.
  LabeledBatch Select(const torch::Tensor& index) const;
  // Rows of `a` then `b` (the tensors both define; a tensor only one defines is dropped).
  static LabeledBatch Concat(const LabeledBatch& a, const LabeledBatch& b);
  // Hard-labelled rows (`images`, `labels`).
  static LabeledBatch Hard(torch::Tensor images, torch::Tensor labels);
};

struct ReplayOptions {
  int64_t capacity = 500;                 // rows
  int64_t max_bytes = int64_t{64} << 20;  // storage bound; 0 = none
  bool class_balanced = false;            // CBRS instead of plain reservoir sampling
  uint64_t seed = 1;                      // admission and sampling
  Status Validate() const;
};

class ReplayBuffer {
 public:
  explicit ReplayBuffer(ReplayOptions options = {});

  // Offers every row of `batch` to the buffer. The first row fixes the rows' shapes (and the
  // storage); InvalidArgument for a row of another shape or a batch without images/labels.
  Status Add(const LabeledBatch& batch);
  // `n` distinct rows drawn uniformly (all rows when n >= size()); empty batch when empty.
  LabeledBatch Sample(int64_t n);
  // Every stored row.
  LabeledBatch All() const;
  // Sets the hard label of the stored rows whose id is `id`; returns how many it changed.
  int64_t SetLabel(int64_t id, int64_t label);

  int64_t size() const { return size_; }
  int64_t capacity() const;  // rows the storage holds (options' capacity before any row)
  int64_t seen() const { return seen_; }  // rows offered since the buffer was created
  int64_t bytes() const;                  // storage allocated
  // Stored rows per class (index = class; rows without any label are not counted).
  std::vector<int64_t> ClassCounts() const;
  const ReplayOptions& options() const { return options_; }

  // Writes the buffer to `path` atomically (mode 0600), sealed under `key` when given.
  Status Save(const std::filesystem::path& path,
              const std::optional<crypto::Key256>& key = std::nullopt) const;
  // Reads a buffer written by Save. NotFound when absent; DataLoss for a corrupt, truncated
  // or tampered file (or a wrong key); InvalidArgument for a file that breaks the rules
  // (a buffer larger than `options` allows is cut to a uniform subset, never refused).
  static Result<ReplayBuffer> Load(const std::filesystem::path& path, ReplayOptions options,
                                   const std::optional<crypto::Key256>& key = std::nullopt);

 private:
  Status Allocate(const LabeledBatch& batch);
  int64_t ClassOf(int64_t row) const;  // of a stored row, -1 when unlabelled
  void Store(int64_t slot, const LabeledBatch& batch, int64_t row);
  int64_t ChooseSlot(int64_t label_of_new);  // -1 = do not store

  ReplayOptions options_;
  std::mt19937_64 rng_;
  int64_t slots_ = 0;  // allocated rows
  int64_t size_ = 0, seen_ = 0;
  std::vector<int64_t> seen_per_class_;
  std::vector<int64_t> slot_class_;  // ClassOf each slot, kept as rows are stored
  LabeledBatch store_;               // every tensor defined once allocated, `slots_` rows
};

}  // namespace cleave::federated
