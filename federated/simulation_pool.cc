#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>

#include "federated/simulation_internal.h"

namespace cleave::federated::sim_internal {

namespace {

// A client's rows of `all` as a new set: LabeledImages::Select without an index tensor and
// the dispatch of two index_select calls, which matter for clients of a few samples.
split::LabeledImages GatherRows(const split::LabeledImages& all, const int64_t* rows,
                                int64_t count) {
  if (!all.images.is_contiguous() || all.images.scalar_type() != torch::kFloat ||
      !all.labels.is_contiguous() || all.labels.scalar_type() != torch::kLong) {
    return all.Select(torch::tensor(std::vector<int64_t>(rows, rows + count), torch::kLong));
  }
  std::vector<int64_t> shape = all.images.sizes().vec();
  shape[0] = count;
  split::LabeledImages out{torch::empty(shape, all.images.options()),
                           torch::empty({shape[0]}, all.labels.options())};
  const int64_t row = all.images[0].numel();
  const float* src = all.images.data_ptr<float>();
  float* dst = out.images.data_ptr<float>();
  const int64_t* labels = all.labels.data_ptr<int64_t>();
  int64_t* out_labels = out.labels.data_ptr<int64_t>();
  for (int64_t k = 0; k < count; ++k) {
    std::memcpy(dst + k * row, src + rows[k] * row, sizeof(float) * row);
    out_labels[k] = labels[rows[k]];
  }
  return out;
}

}  // namespace

void Simulation::StartPool() {
  // The calling thread is worker 0: a round then wakes one thread fewer, and the caller
  // works instead of waiting.
  for (int w = 1; w < workers_; ++w) pool_.emplace_back([this, w] { PoolThread(w); });
  WarmUp(0);
  MutexLock lock(&pool_mu_);
  done_cv_.Wait(&pool_mu_, [&]() REQUIRES(pool_mu_) { return ready_ == workers_ - 1; });
}

void Simulation::WarmUp(int worker) {
  // One step on two rows: libtorch's per-thread state, the allocator's caches and oneDNN's
  // kernels are set up here, once, instead of inside the first round's clients. Nothing
  // carries over: every client's call reloads the weights, reseeds and resets the optimizer.
  LocalTrainOptions o;
  o.fit = options_.engine.fit;
  o.fit.max_steps = 1;
  o.fit.local_epochs = 1;
  Result<split::LabeledImages> two = data_.train.Head(2).Load();
  if (two.ok()) (void)trainers_[worker]->Train(engine_->global(), *two, o);
}

void Simulation::StopPool() {
  {
    MutexLock lock(&pool_mu_);
    quit_ = true;
  }
  start_cv_.NotifyAll();
  for (auto& t : pool_) t.join();
  pool_.clear();
}

void Simulation::PoolThread(int worker) {
  WarmUp(worker);
  uint64_t seen = 0;
  MutexLock lock(&pool_mu_);
  if (++ready_ == workers_ - 1) done_cv_.NotifyAll();
  for (;;) {
    start_cv_.Wait(&pool_mu_, [&]() REQUIRES(pool_mu_) { return quit_ || generation_ != seen; });
    if (quit_) return;
    seen = generation_;
    if (worker >= active_) continue;
    const RoundPlan& plan = *round_plan_;
    const std::vector<Task>& tasks = *round_tasks_;
    lock.Unlock();
    Worker(worker, plan, tasks);
    lock.Lock();
    if (--running_ == 0) done_cv_.NotifyAll();
  }
}

void Simulation::RunOnPool(const RoundPlan& plan, const std::vector<Task>& tasks, int active) {
  {
    MutexLock lock(&pool_mu_);
    round_plan_ = &plan;
    round_tasks_ = &tasks;
    active_ = active;
    running_ = active - 1;  // the pool's share; worker 0 is this thread
    ++generation_;
  }
  if (active > 1) start_cv_.NotifyAll();
  Worker(0, plan, tasks);
  MutexLock lock(&pool_mu_);
  done_cv_.Wait(&pool_mu_, [&]() REQUIRES(pool_mu_) { return running_ == 0; });
  round_plan_ = nullptr;
  round_tasks_ = nullptr;
}

void Simulation::Worker(int worker, const RoundPlan& plan, const std::vector<Task>& tasks) {
  for (;;) {
    if (options_.cancelled && options_.cancelled()) return;
    const size_t i = next_task_.fetch_add(1);
    if (i >= tasks.size()) return;
    const Task& t = tasks[i];
    Result<LocalTrainResult> result = Status::Internal("not trained");
    bool values_checked = false;
    int64_t upload_bytes = -1;
    std::optional<secagg::MaskedInput> masked;
    if (t.kind == Task::Kind::kTrain) {
      split::LabeledImages local;
      Status read_status = Status::Ok();
      const int experience = options_.continual.enabled ? experience_ : 0;
      if (options_.continual.enabled) {  // the rows of the current experience
        const std::vector<int64_t> rows = ClientRows(t.client, experience);
        Result<split::LabeledImages> read =
            data_.train.Select(torch::tensor(rows, torch::kLong)).Load();
        if (read.ok()) {
          local = std::move(read).value();
          local.images = InExperience(local.images, experience);
        } else {
          read_status = read.status().WithContext("reading the client's rows");
        }
      } else if (const split::LabeledImages* all = data_.train.in_memory()) {
        local =
            GatherRows(*all, partition_.client_rows(t.client), partition_.client_size(t.client));
      } else {  // streamed: read this client's rows now
        const int64_t* rows = partition_.client_rows(t.client);
        Result<split::LabeledImages> read =
            data_.train
                .Select(torch::tensor(
                    std::vector<int64_t>(rows, rows + partition_.client_size(t.client)),
                    torch::kLong))
                .Load();
        if (read.ok()) {
          local = std::move(read).value();
        } else {
          read_status = read.status().WithContext("reading the client's rows");
        }
      }
      const bool malicious = malicious_[t.client];
      if (malicious && options_.attack.kind == AttackKind::kLabelFlip && read_status.ok()) {
        FlipLabels(local, model_->num_classes());
      }
      LocalTrainOptions o;
      o.fit = plan.fit;
      o.trainable = plan.trainable;
      o.freeze_batch_norm_stats = plan.trainable_set == TrainableSet::kHeadAndExits;
      o.seed = StreamSeed(options_.seed, 0x7a1 + plan.round, t.client);
      o.cancelled = options_.cancelled;
      o.global_is_checked = true;  // the engine's own global model
      LabeledBatch consolidate;
      if (options_.continual.enabled) {
        o.continual = ClientStrategy(t.client, experience, consolidate);
        o.consolidate = &consolidate;
      }
      Weights recycled;
      {
        MutexLock lock(&mu_);
        if (!spare_.empty()) {
          recycled = std::move(spare_.back());
          spare_.pop_back();
        }
      }
      const auto call_start = std::chrono::steady_clock::now();
      result = read_status.ok()
                   ? trainers_[worker]->Train(engine_->global(), local, o, std::move(recycled))
                   : Result<LocalTrainResult>(read_status);
      client_micros_ += static_cast<int64_t>(Seconds(call_start) * 1e6);
      if (result.ok()) {
        training_micros_ += static_cast<int64_t>(result->seconds * 1e6);
        if (malicious && options_.attack.poisons_updates()) {
          Status poisoned = PoisonUpdate(options_.attack, engine_->global(), plan.trainable,
                                         StreamSeed(options_.seed, 0xa77a + plan.round, t.client),
                                         result->weights);
          if (!poisoned.ok()) result = poisoned.WithContext("attack");
        }
      }
      if (result.ok()) {
        if (options_.compression.kind != "none") {
          Result<int64_t> encoded = CompressUpdate(plan, t, result->weights);
          if (encoded.ok()) {
            upload_bytes = *encoded;
          } else {
            result = encoded.status().WithContext("compression");
          }
        }
      }
      if (result.ok() && plan.secure) {
        Result<secagg::MaskedInput> m = MaskUpdate(plan, t, *result);
        if (m.ok()) {
          masked = std::move(*m);
        } else {
          result = m.status().WithContext("secure aggregation");
        }
      } else if (result.ok()) {
        // The engine's value scan, here in parallel rather than in the serialized Submit.
        values_checked = engine_->CheckValues(result->weights).ok();
      }
    }
    {
      MutexLock lock(&mu_);
      results_[i].result = std::move(result);
      results_[i].values_checked = values_checked;
      results_[i].upload_bytes = upload_bytes;
      results_[i].masked = std::move(masked);
      results_[i].done = true;
    }
    SubmitInOrder(plan, tasks);
  }
}

void Simulation::SubmitInOrder(const RoundPlan& plan, const std::vector<Task>& tasks) {
  const auto next_ready = [&]() REQUIRES(mu_) {
    return next_submit_ < tasks.size() && results_[next_submit_].done;
  };
  for (;;) {
    if (!submit_mu_.TryLock()) return;  // the holder re-checks after it lets go
    MutexLock submitting(&submit_mu_, std::adopt_lock);
    for (;;) {
      size_t i = 0;
      Result<LocalTrainResult> r = Status::Internal("not run");
      bool values_checked = false;
      int64_t upload_bytes = -1;
      std::optional<secagg::MaskedInput> masked;
      {
        MutexLock lock(&mu_);
        if (!next_ready()) break;
        i = next_submit_++;
        r = std::move(results_[i].result);
        values_checked = results_[i].values_checked;
        upload_bytes = results_[i].upload_bytes;
        masked = std::move(results_[i].masked);
        results_[i] = TaskResult{};
      }
      SubmitOne(plan, tasks[i], std::move(r), values_checked, upload_bytes, std::move(masked));
      if (bar_) bar_->Update(i + 1, "trained " + std::to_string(trained_));
    }
    submitting.Unlock();
    // A worker that finished while this one held the lock returned without submitting.
    MutexLock lock(&mu_);
    if (!next_ready()) return;
  }
}

void Simulation::SubmitOne(const RoundPlan& plan, const Task& t, Result<LocalTrainResult> r,
                           bool values_checked, int64_t upload_bytes,
                           std::optional<secagg::MaskedInput> masked) {
  // Stragglers and drop-outs count at the deadline at the latest: the round is closed by
  // then, and its virtual time ends there.
  clock_.Set(t.kind == Task::Kind::kTrain ? t.arrival_micros
                                          : std::min(t.arrival_micros, plan.deadline_micros + 1));
  if (t.kind == Task::Kind::kDropped) {
    engine_->ReportFailure(plan.round, t.id, "dropped out");
  } else if (t.kind == Task::Kind::kLate) {
    ClientUpdate late;
    late.client_id = t.id;
    (void)engine_->Submit(plan.round, std::move(late));  // counted late by the engine
  } else if (!r.ok()) {
    engine_->ReportFailure(plan.round, t.id, r.status().ToString());
  } else if (masked) {
    // A secure round: only the masked vector reaches the engine; the trained weights stay
    // with the client (and go back to the spare pool).
    const int64_t words = static_cast<int64_t>(masked->masked.size());
    if (engine_->SubmitMasked(plan.round, t.id, *masked) == UpdateVerdict::kAccepted) {
      compressed_bytes_up_ += words * static_cast<int64_t>(sizeof(uint32_t));
    }
    ++trained_;
    MutexLock lock(&mu_);
    if (spare_.size() < 2 * nets_.size()) spare_.push_back(std::move(r->weights));
  } else {
    ClientUpdate u;
    u.client_id = t.id;
    u.num_examples = r->num_examples;
    u.weights = std::move(r->weights);
    u.train_loss = r->train_loss;
    u.values_checked = values_checked;
    Weights handed = u.weights;  // shares the tensors: they come back after aggregation
    const UpdateVerdict verdict = engine_->Submit(plan.round, std::move(u));
    if (verdict == UpdateVerdict::kAccepted && upload_bytes >= 0) {
      compressed_bytes_up_ += upload_bytes;
    }
    ++trained_;
    MutexLock lock(&mu_);
    if (spare_.size() < 2 * nets_.size()) spare_.push_back(std::move(handed));
  }
}

}  // namespace cleave::federated::sim_internal
