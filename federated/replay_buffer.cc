#include "federated/replay_buffer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "split/torch_status.h"

namespace cleave::federated {

namespace {

constexpr std::string_view kReplayMagic = "CLVRPLY\n";
constexpr uint16_t kReplayFormatVersion = 1;
constexpr size_t kReplayHeaderBytes = 8 + 2 + 2 + 8 + 32;  // magic, version, flags, length, SHA
constexpr uint16_t kFlagSealed = 1;
constexpr int64_t kMaxReplayRows = int64_t{1} << 24;
constexpr int64_t kMaxRowElements = int64_t{1} << 26;
constexpr uint64_t kMaxReplayFileBytes = uint64_t{8} << 30;

void AppendRaw(std::string& out, const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous();
  out.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
}

// Reads `count` elements of `dtype` at `offset`; false when `bytes` is too short.
bool ReadRaw(std::string_view bytes, size_t& offset, torch::Tensor& out) {
  const size_t n = static_cast<size_t>(out.numel() * out.element_size());
  if (bytes.size() - offset < n) return false;
  std::memcpy(out.data_ptr(), bytes.data() + offset, n);
  offset += n;
  return true;
}

void PutLe(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t GetLe(std::string_view in, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{static_cast<uint8_t>(in[at + i])} << (8 * i);
  return v;
}

std::string HexDecodeSha(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

std::vector<int64_t> ShapeOf(const torch::Tensor& t) {  // a row's shape
  return std::vector<int64_t>(t.sizes().begin() + 1, t.sizes().end());
}

Result<std::vector<int64_t>> ReadShape(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_array() || j[key].size() > 8) {
    return Status::DataLoss(std::string("replay buffer: header field ") + key + " is missing");
  }
  std::vector<int64_t> shape;
  int64_t elements = 1;
  for (const auto& d : j[key]) {
    if (!d.is_number_integer() || d.get<int64_t>() < 1 || d.get<int64_t>() > kMaxRowElements) {
      return Status::DataLoss(std::string("replay buffer: bad dimension in ") + key);
    }
    shape.push_back(d.get<int64_t>());
    elements *= shape.back();
    if (elements > kMaxRowElements) {
      return Status::DataLoss(std::string("replay buffer: ") + key + " is too large");
    }
  }
  return shape;
}

std::vector<int64_t> WithRows(int64_t rows, const std::vector<int64_t>& shape) {
  std::vector<int64_t> s{rows};
  s.insert(s.end(), shape.begin(), shape.end());
  return s;
}

}  // namespace

// ---------------------------------------------------------------- LabeledBatch

LabeledBatch LabeledBatch::Select(const torch::Tensor& index) const {
  LabeledBatch b;
  const auto pick = [&](const torch::Tensor& t) {
    return t.defined() ? t.index_select(0, index) : torch::Tensor();
  };
  b.images = pick(images);
  b.labels = pick(labels);
  b.soft = pick(soft);
  b.has_soft = pick(has_soft);
  b.logits = pick(logits);
  b.has_logits = pick(has_logits);
  b.ids = pick(ids);
  return b;
}

LabeledBatch LabeledBatch::Concat(const LabeledBatch& a, const LabeledBatch& b) {
  if (a.size() == 0) return b;
  if (b.size() == 0) return a;
  const auto cat = [](const torch::Tensor& x, const torch::Tensor& y) {
    return x.defined() && y.defined() ? torch::cat({x, y}) : torch::Tensor();
  };
  LabeledBatch c;
  c.images = cat(a.images, b.images);
  c.labels = cat(a.labels, b.labels);
  c.soft = cat(a.soft, b.soft);
  c.has_soft = cat(a.has_soft, b.has_soft);
  if (!c.soft.defined() || !c.has_soft.defined()) c.soft = c.has_soft = torch::Tensor();
  c.logits = cat(a.logits, b.logits);
  c.has_logits = cat(a.has_logits, b.has_logits);
  if (!c.logits.defined() || !c.has_logits.defined()) c.logits = c.has_logits = torch::Tensor();
  c.ids = cat(a.ids, b.ids);
  return c;
}

LabeledBatch LabeledBatch::Hard(torch::Tensor images, torch::Tensor labels) {
  LabeledBatch b;
  b.images = std::move(images);
  b.labels = std::move(labels);
  return b;
}

// ---------------------------------------------------------------- ReplayBuffer

Status ReplayOptions::Validate() const {
  if (capacity < 1 || capacity > kMaxReplayRows) {
    return Status::InvalidArgument("replay buffer: capacity must be in 1.." +
                                   std::to_string(kMaxReplayRows) + ", got " +
                                   std::to_string(capacity));
  }
  if (max_bytes < 0) return Status::InvalidArgument("replay buffer: max_bytes must be >= 0");
  return Status::Ok();
}

ReplayBuffer::ReplayBuffer(ReplayOptions options)
    : options_(options), rng_(options.seed ^ 0x5deece66dULL) {}

int64_t ReplayBuffer::capacity() const { return slots_ > 0 ? slots_ : options_.capacity; }

int64_t ReplayBuffer::bytes() const {
  int64_t total = 0;
  for (const torch::Tensor* t : {&store_.images, &store_.labels, &store_.soft, &store_.has_soft,
                                 &store_.logits, &store_.has_logits, &store_.ids}) {
    if (t->defined()) total += t->numel() * t->element_size();
  }
  return total;
}

Status ReplayBuffer::Allocate(const LabeledBatch& batch) {
  const std::vector<int64_t> image_shape = ShapeOf(batch.images);
  const int64_t classes = batch.soft.defined() ? batch.soft.size(1) : 0;
  const std::vector<int64_t> logit_shape =
      batch.logits.defined() ? ShapeOf(batch.logits) : std::vector<int64_t>{};
  const int64_t image_elems = batch.images[0].numel();
  const int64_t logit_elems = batch.logits.defined() ? batch.logits[0].numel() : 0;
  if (image_elems > kMaxRowElements || logit_elems > kMaxRowElements || classes > kMaxRowElements) {
    return Status::InvalidArgument("replay buffer: rows are too large");
  }
  // What Allocate stores per row: image, soft label and logits (at least one element each),
  // label and id (int64), two flags.
  const int64_t row_bytes =
      4 * (image_elems + std::max<int64_t>(classes, 1) + std::max<int64_t>(logit_elems, 1)) + 8 +
      8 + 2;
  int64_t slots = options_.capacity;
  if (options_.max_bytes > 0) slots = std::min(slots, options_.max_bytes / row_bytes);
  if (slots < 1) {
    return Status::InvalidArgument("replay buffer: one row needs " + std::to_string(row_bytes) +
                                   " bytes, more than max_bytes " +
                                   std::to_string(options_.max_bytes));
  }
  slots_ = slots;
  slot_class_.assign(slots, -1);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat);
  store_.images = torch::zeros(WithRows(slots, image_shape), f32);
  store_.labels = torch::full({slots}, -1, torch::kLong);
  store_.soft = torch::zeros({slots, std::max<int64_t>(classes, 1)}, f32);
  store_.has_soft = torch::zeros({slots}, torch::kBool);
  store_.logits = torch::zeros(
      WithRows(slots, logit_shape.empty() ? std::vector<int64_t>{1} : logit_shape), f32);
  store_.has_logits = torch::zeros({slots}, torch::kBool);
  store_.ids = torch::zeros({slots}, torch::kLong);
  return Status::Ok();
}

int64_t ReplayBuffer::ClassOf(int64_t row) const { return slot_class_[row]; }

std::vector<int64_t> ReplayBuffer::ClassCounts() const {
  std::vector<int64_t> counts;
  for (int64_t r = 0; r < size_; ++r) {
    const int64_t c = ClassOf(r);
    if (c < 0) continue;
    if (static_cast<size_t>(c) >= counts.size()) counts.resize(c + 1, 0);
    ++counts[c];
  }
  return counts;
}

void ReplayBuffer::Store(int64_t slot, const LabeledBatch& batch, int64_t row) {
  store_.images[slot].copy_(batch.images[row]);
  const int64_t label = batch.labels[row].item<int64_t>();
  store_.labels[slot] = label;
  const bool soft = batch.soft.defined() && batch.has_soft[row].item<bool>();
  slot_class_[slot] = label >= 0 ? label : (soft ? batch.soft[row].argmax().item<int64_t>() : -1);
  store_.has_soft[slot] = soft;
  if (soft) {
    store_.soft[slot].copy_(batch.soft[row]);
  } else {
    store_.soft[slot].zero_();  // no stale teacher of the row this one replaces
  }
  const bool logits = batch.logits.defined() && batch.has_logits[row].item<bool>();
  store_.has_logits[slot] = logits;
  if (logits) {
    store_.logits[slot].copy_(batch.logits[row].reshape(store_.logits[slot].sizes()));
  } else {
    store_.logits[slot].zero_();
  }
  store_.ids[slot] = batch.ids.defined() ? batch.ids[row].item<int64_t>() : 0;
}

int64_t ReplayBuffer::ChooseSlot(int64_t label) {
  if (size_ < slots_) return size_++;
  if (!options_.class_balanced) {
    // Algorithm R: the seen_-th row (1-based) replaces a uniform slot with probability
    // slots / seen.
    std::uniform_int_distribution<int64_t> pick(0, seen_ - 1);
    const int64_t j = pick(rng_);
    return j < slots_ ? j : -1;
  }
  // CBRS. Stored rows per class; unlabelled rows form their own group (-1).
  std::vector<int64_t> classes(slots_);
  int64_t largest = 0;
  std::vector<int64_t> counts;
  int64_t unlabelled = 0;
  for (int64_t r = 0; r < slots_; ++r) {
    classes[r] = ClassOf(r);
    if (classes[r] < 0) {
      ++unlabelled;
      continue;
    }
    if (static_cast<size_t>(classes[r]) >= counts.size()) counts.resize(classes[r] + 1, 0);
    largest = std::max(largest, ++counts[classes[r]]);
  }
  largest = std::max(largest, unlabelled);
  const auto count_of = [&](int64_t c) {
    return c < 0 ? unlabelled : (static_cast<size_t>(c) < counts.size() ? counts[c] : 0);
  };
  const auto random_row_of = [&](const std::function<bool(int64_t)>& in) {
    std::vector<int64_t> rows;
    for (int64_t r = 0; r < slots_; ++r) {
      if (in(classes[r])) rows.push_back(r);
    }
    std::uniform_int_distribution<size_t> pick(0, rows.size() - 1);
    return rows[pick(rng_)];
  };
  if (count_of(label) < largest) {
    // Replace a random row of one of the largest classes.
    return random_row_of([&](int64_t c) { return count_of(c) == largest; });
  }
  const int64_t seen_of_class = label >= 0 && static_cast<size_t>(label) < seen_per_class_.size()
                                    ? seen_per_class_[label]
                                    : seen_;
  std::uniform_real_distribution<double> u(0.0, 1.0);
  if (u(rng_) >= static_cast<double>(count_of(label)) / std::max<int64_t>(seen_of_class, 1)) {
    return -1;
  }
  return random_row_of([&](int64_t c) { return c == label; });
}

Status ReplayBuffer::Add(const LabeledBatch& batch) {
  CLEAVE_RETURN_IF_ERROR(options_.Validate());
  if (!batch.images.defined() || !batch.labels.defined() || batch.images.dim() < 1 ||
      batch.labels.dim() != 1 || batch.labels.size(0) != batch.images.size(0)) {
    return Status::InvalidArgument("replay buffer: a batch needs images and one label per row");
  }
  if (batch.soft.defined() != batch.has_soft.defined() ||
      batch.logits.defined() != batch.has_logits.defined()) {
    return Status::InvalidArgument("replay buffer: soft labels or logits without their mask");
  }
  const int64_t n = batch.size();
  if (n == 0) return Status::Ok();
  return split::CallTorch(split::TorchSource::kExternalInput, "replay buffer", [&]() -> Status {
    torch::NoGradGuard no_grad;
    LabeledBatch b;
    b.images = batch.images.detach().to(torch::kFloat).contiguous();
    b.labels = batch.labels.to(torch::kLong);
    if (batch.soft.defined()) {
      b.soft = batch.soft.detach().to(torch::kFloat);
      b.has_soft = batch.has_soft.to(torch::kBool);
    }
    if (batch.logits.defined()) {
      b.logits = batch.logits.detach().to(torch::kFloat);
      b.has_logits = batch.has_logits.to(torch::kBool);
    }
    b.ids = batch.ids.defined() ? batch.ids.to(torch::kLong) : torch::Tensor();
    if (slots_ == 0) CLEAVE_RETURN_IF_ERROR(Allocate(b));
    if (ShapeOf(b.images) != ShapeOf(store_.images)) {
      return Status::InvalidArgument("replay buffer: rows of another shape than the stored ones");
    }
    if (b.soft.defined() && b.soft.size(1) != store_.soft.size(1)) {
      return Status::InvalidArgument("replay buffer: soft labels of " +
                                     std::to_string(b.soft.size(1)) + " classes, stored " +
                                     std::to_string(store_.soft.size(1)));
    }
    if (b.logits.defined() && b.logits[0].numel() != store_.logits[0].numel()) {
      return Status::InvalidArgument("replay buffer: logits of another shape than the stored");
    }
    for (int64_t r = 0; r < n; ++r) {
      int64_t label = b.labels[r].item<int64_t>();
      if (label < 0 && b.soft.defined() && b.has_soft[r].item<bool>()) {
        label = b.soft[r].argmax().item<int64_t>();
      }
      ++seen_;
      if (label >= 0) {
        if (static_cast<size_t>(label) >= seen_per_class_.size()) {
          seen_per_class_.resize(label + 1, 0);
        }
        ++seen_per_class_[label];
      }
      const int64_t slot = ChooseSlot(label);
      if (slot >= 0) Store(slot, b, r);
    }
    return Status::Ok();
  });
}

LabeledBatch ReplayBuffer::All() const {
  if (size_ == 0) return {};
  const torch::Tensor index = torch::arange(size_, torch::kLong);
  LabeledBatch b = store_.Select(index);
  return b;
}

LabeledBatch ReplayBuffer::Sample(int64_t n) {
  if (size_ == 0 || n <= 0) return {};
  if (n >= size_) return All();
  // Partial Fisher-Yates over the stored rows.
  std::vector<int64_t> rows(size_);
  for (int64_t i = 0; i < size_; ++i) rows[i] = i;
  for (int64_t i = 0; i < n; ++i) {
    std::uniform_int_distribution<int64_t> pick(i, size_ - 1);
    std::swap(rows[i], rows[pick(rng_)]);
  }
  rows.resize(n);
  return store_.Select(torch::tensor(rows, torch::kLong));
}

int64_t ReplayBuffer::SetLabel(int64_t id, int64_t label) {
  if (size_ == 0 || id == 0) return 0;
  const torch::Tensor hit = store_.ids.narrow(0, 0, size_).eq(id);
  const int64_t count = hit.sum().item<int64_t>();
  if (count == 0) return 0;
  store_.labels.narrow(0, 0, size_).masked_fill_(hit, label);
  for (int64_t r = 0; r < size_; ++r) {
    if (hit[r].item<bool>()) slot_class_[r] = label;
  }
  return count;
}

// ---------------------------------------------------------------- persistence

Status ReplayBuffer::Save(const std::filesystem::path& path,
                          const std::optional<crypto::Key256>& key) const {
  nlohmann::json header = {
      {"rows", size_},
      {"seen", seen_},
      {"seen_per_class", seen_per_class_},
      {"image_shape", size_ > 0 ? ShapeOf(store_.images) : std::vector<int64_t>{1}},
      {"soft_shape", size_ > 0 ? ShapeOf(store_.soft) : std::vector<int64_t>{1}},
      {"logit_shape", size_ > 0 ? ShapeOf(store_.logits) : std::vector<int64_t>{1}},
  };
  std::string payload;
  const std::string text = header.dump();
  PutLe(payload, text.size(), 4);
  payload += text;
  if (size_ > 0) {
    const LabeledBatch all = All();
    AppendRaw(payload, all.images);
    AppendRaw(payload, all.labels);
    AppendRaw(payload, all.soft);
    AppendRaw(payload, all.has_soft.to(torch::kUInt8));
    AppendRaw(payload, all.logits);
    AppendRaw(payload, all.has_logits.to(torch::kUInt8));
    AppendRaw(payload, all.ids);
  }
  std::string head(kReplayMagic);
  PutLe(head, kReplayFormatVersion, 2);
  PutLe(head, key ? kFlagSealed : 0, 2);
  if (key) {
    CLEAVE_ASSIGN_OR_RETURN(crypto::Bytes sealed,
                            crypto::AeadSeal(*key, payload, std::string_view(head)));
    payload.assign(sealed.begin(), sealed.end());
  }
  PutLe(head, payload.size(), 8);
  head += HexDecodeSha(Sha256Hex(payload));
  return WriteFileAtomic(path, head + payload, 0600);
}

Result<ReplayBuffer> ReplayBuffer::Load(const std::filesystem::path& path, ReplayOptions options,
                                        const std::optional<crypto::Key256>& key) {
  CLEAVE_RETURN_IF_ERROR(options.Validate());
  const std::string name = "replay buffer " + path.string();
  CLEAVE_ASSIGN_OR_RETURN(std::string bytes, ReadFileToStringBounded(path, kMaxReplayFileBytes));
  if (bytes.size() < kReplayHeaderBytes || bytes.compare(0, 8, kReplayMagic) != 0) {
    return Status::DataLoss(name + ": not a replay buffer file (bad magic or truncated)");
  }
  const uint64_t version = GetLe(bytes, 8, 2);
  const uint64_t flags = GetLe(bytes, 10, 2);
  const uint64_t length = GetLe(bytes, 12, 8);
  if (version != kReplayFormatVersion) {
    return Status::VersionMismatch(name + ": format version " + std::to_string(version) +
                                   ", this build reads " + std::to_string(kReplayFormatVersion));
  }
  if (length != bytes.size() - kReplayHeaderBytes) {
    return Status::DataLoss(name + ": truncated or has trailing bytes");
  }
  std::string payload = bytes.substr(kReplayHeaderBytes);
  if (HexDecodeSha(Sha256Hex(payload)) != bytes.substr(20, 32)) {
    return Status::DataLoss(name + ": digest mismatch (the file is corrupt)");
  }
  const bool sealed = (flags & kFlagSealed) != 0;
  if (sealed != key.has_value()) {
    return Status::DataLoss(name + (sealed ? ": the file is sealed and no key was given"
                                           : ": the file is not sealed but a key was given"));
  }
  if (sealed) {
    Result<crypto::Bytes> open = crypto::AeadOpen(*key, payload, bytes.substr(0, 12));
    if (!open.ok()) return Status::DataLoss(name + ": cannot be opened with this key");
    payload.assign(open->begin(), open->end());
  }
  if (payload.size() < 4) return Status::DataLoss(name + ": payload is truncated");
  const uint64_t text_size = GetLe(payload, 0, 4);
  if (text_size > payload.size() - 4) return Status::DataLoss(name + ": header is truncated");
  const nlohmann::json header =
      nlohmann::json::parse(payload.substr(4, text_size), nullptr, /*allow_exceptions=*/false);
  if (!header.is_object() || !header.contains("rows") || !header["rows"].is_number_integer() ||
      !header.contains("seen") || !header["seen"].is_number_integer() ||
      !header.contains("seen_per_class") || !header["seen_per_class"].is_array()) {
    return Status::DataLoss(name + ": bad header");
  }
  const int64_t rows = header["rows"].get<int64_t>();
  const int64_t seen = header["seen"].get<int64_t>();
  if (rows < 0 || rows > kMaxReplayRows || seen < rows) {
    return Status::DataLoss(name + ": bad row counts");
  }
  std::vector<int64_t> seen_per_class;
  for (const auto& v : header["seen_per_class"]) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || seen_per_class.size() > 65536) {
      return Status::DataLoss(name + ": bad per-class counts");
    }
    seen_per_class.push_back(v.get<int64_t>());
  }
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<int64_t> image_shape, ReadShape(header, "image_shape"));
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<int64_t> soft_shape, ReadShape(header, "soft_shape"));
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<int64_t> logit_shape, ReadShape(header, "logit_shape"));
  if (soft_shape.size() != 1) return Status::DataLoss(name + ": bad soft-label shape");
  ReplayBuffer buffer(options);
  buffer.seen_ = seen;
  buffer.seen_per_class_ = seen_per_class;
  if (rows == 0) return buffer;
  return split::CallTorch(split::TorchSource::kStoredBytes, name, [&]() -> Result<ReplayBuffer> {
    LabeledBatch b;
    b.images = torch::empty(WithRows(rows, image_shape), torch::kFloat);
    b.labels = torch::empty({rows}, torch::kLong);
    b.soft = torch::empty(WithRows(rows, soft_shape), torch::kFloat);
    torch::Tensor has_soft = torch::empty({rows}, torch::kUInt8);
    b.logits = torch::empty(WithRows(rows, logit_shape), torch::kFloat);
    torch::Tensor has_logits = torch::empty({rows}, torch::kUInt8);
    b.ids = torch::empty({rows}, torch::kLong);
    size_t offset = 4 + text_size;
    for (torch::Tensor* t :
         {&b.images, &b.labels, &b.soft, &has_soft, &b.logits, &has_logits, &b.ids}) {
      if (!ReadRaw(payload, offset, *t)) return Status::DataLoss(name + ": data truncated");
    }
    if (offset != payload.size()) return Status::DataLoss(name + ": trailing bytes");
    if (has_soft.gt(1).any().item<bool>() || has_logits.gt(1).any().item<bool>()) {
      return Status::DataLoss(name + ": bad flags");
    }
    b.has_soft = has_soft.to(torch::kBool);
    b.has_logits = has_logits.to(torch::kBool);
    const int64_t classes = soft_shape[0];
    if (b.labels.lt(-1).any().item<bool>() ||
        (b.labels.ge(std::max<int64_t>(classes, 65536))).any().item<bool>()) {
      return Status::DataLoss(name + ": label out of range");
    }
    if (!torch::isfinite(b.images).all().item<bool>() ||
        !torch::isfinite(b.soft).all().item<bool>() ||
        !torch::isfinite(b.logits).all().item<bool>()) {
      return Status::DataLoss(name + ": non-finite values");
    }
    // Into the new buffer: its own storage, cut to a uniform subset if smaller.
    CLEAVE_RETURN_IF_ERROR(buffer.Allocate(b));
    int64_t keep = std::min(rows, buffer.slots_);
    torch::Tensor order = torch::arange(rows, torch::kLong);
    if (keep < rows) {
      std::vector<int64_t> idx(rows);
      for (int64_t i = 0; i < rows; ++i) idx[i] = i;
      std::shuffle(idx.begin(), idx.end(), buffer.rng_);
      idx.resize(keep);
      order = torch::tensor(idx, torch::kLong);
    }
    const LabeledBatch kept = b.Select(order);
    for (int64_t r = 0; r < keep; ++r) buffer.Store(r, kept, r);
    buffer.size_ = keep;
    return std::move(buffer);
  });
}

}  // namespace cleave::federated
