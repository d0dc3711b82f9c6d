#include "cloud/dynamic_batcher.h"

#include <string>

namespace cleave::cloud {

// The template's bodies are compiled (and, in clang builds, their locking checked by
// -Wthread-safety) here, whoever else instantiates it.
template class DynamicBatcher<int>;

Status DynamicBatcherOptions::Validate() const {
  if (max_batch < 1) {
    return Status::InvalidArgument("max_batch must be >= 1, got " + std::to_string(max_batch));
  }
  if (max_queue_delay_us < 0) {
    return Status::InvalidArgument("max_queue_delay_us must be >= 0, got " +
                                   std::to_string(max_queue_delay_us));
  }
  if (max_queue < 1) return Status::InvalidArgument("max_queue must be >= 1");
  if (max_queue_wait_us < 0) {
    return Status::InvalidArgument("max_queue_wait_us must be >= 0, got " +
                                   std::to_string(max_queue_wait_us));
  }
  if (workers < 0) {
    return Status::InvalidArgument("workers must be >= 0, got " + std::to_string(workers));
  }
  return Status::Ok();
}

const char* SubmitResultName(SubmitResult result) {
  switch (result) {
    case SubmitResult::kAccepted: return "accepted";
    case SubmitResult::kOverloaded: return "overloaded";
    case SubmitResult::kWaitTooLong: return "wait_too_long";
    case SubmitResult::kShutDown: return "shut_down";
  }
  return "unknown";
}

std::string RefusalReason(SubmitResult result, size_t max_queue, int64_t estimated_wait_us,
                          int64_t max_queue_wait_us) {
  switch (result) {
    case SubmitResult::kOverloaded:
      return "the queue is full (" + std::to_string(max_queue) + " requests); retry later";
    case SubmitResult::kWaitTooLong:
      return "the estimated queueing time (" + std::to_string(estimated_wait_us) +
             " us) exceeds cloud.max_queue_wait_us (" + std::to_string(max_queue_wait_us) +
             " us); retry later";
    default: return "the service is shutting down";
  }
}

const char* RejectionName(Rejection rejection) {
  switch (rejection) {
    case Rejection::kExpired: return "expired";
    case Rejection::kShutDown: return "shut_down";
    case Rejection::kComputeFailed: return "compute_failed";
  }
  return "unknown";
}

}  // namespace cleave::cloud
