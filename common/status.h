// Status and Result<T>: errors as values at every module boundary.
//
// A Status is a code plus a message a user can act on. OK costs one null pointer (the
// LevelDB habit): the message is heap-allocated only on failure. Result<T> holds either a
// value or a non-OK Status. Both are [[nodiscard]] so a dropped error is a compile warning.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace cleave {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,     // the caller (or a peer, or a file) gave something malformed
  kNotFound,            // a file, key, model or peer does not exist
  kAlreadyExists,       // refusing to overwrite
  kFailedPrecondition,  // the system is not in a state to do this (not loaded, not warm)
  kOutOfRange,          // an index/value outside what is allowed
  kDataLoss,            // corrupt or tampered data (hash mismatch, truncated file)
  kDeadlineExceeded,    // a timeout or request deadline passed
  kUnavailable,         // a peer could not be reached; retrying may help
  kResourceExhausted,   // queue full, memory budget hit: the "overloaded" case
  kVersionMismatch,     // wire protocol or file-format version not supported
  kUnimplemented,       // a valid request for something this build does not do
  kIoError,             // the OS refused a file or socket operation
  kInternal,            // an invariant of our own broke: a bug
};

// Returns a stable lowercase name such as "invalid_argument" (used in logs and replies).
const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  // OK.
  Status() = default;
  Status(StatusCode code, std::string message);

  Status(const Status& other);
  Status& operator=(const Status& other);
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string m) {
    return {StatusCode::kInvalidArgument, std::move(m)};
  }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
  static Status FailedPrecondition(std::string m) {
    return {StatusCode::kFailedPrecondition, std::move(m)};
  }
  static Status OutOfRange(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
  static Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
  static Status DeadlineExceeded(std::string m) {
    return {StatusCode::kDeadlineExceeded, std::move(m)};
  }
  static Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
  static Status ResourceExhausted(std::string m) {
    return {StatusCode::kResourceExhausted, std::move(m)};
  }
  static Status VersionMismatch(std::string m) {
    return {StatusCode::kVersionMismatch, std::move(m)};
  }
  static Status Unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
  static Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
  static Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

  bool ok() const { return rep_ == nullptr; }
  StatusCode code() const { return rep_ ? rep_->code : StatusCode::kOk; }
  // Empty for OK.
  const std::string& message() const;
  // "ok" or "<code name>: <message>".
  std::string ToString() const;

  // Returns a copy whose message is "<context>: <message>" (OK stays OK).
  Status WithContext(const std::string& context) const;

 private:
  struct Rep {
    StatusCode code;
    std::string message;
  };
  std::unique_ptr<Rep> rep_;
};

// Holds a T or a non-OK Status. Constructing from an OK Status is a bug and becomes
// kInternal so the caller still sees an error rather than a value-less success.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : data_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : data_(std::move(status)) {  // NOLINT: implicit by design
    if (std::get<Status>(data_).ok()) {
      data_ = Status::Internal("Result constructed from an OK status without a value");
    }
  }

  bool ok() const { return std::holds_alternative<T>(data_); }
  // The error; OK when a value is held.
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(data_); }

  // Precondition: ok(). Accessing the value of an error is a programming bug.
  T& value() & { return std::get<T>(data_); }
  const T& value() const& { return std::get<T>(data_); }
  T&& value() && { return std::get<T>(std::move(data_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  T value_or(T fallback) const& { return ok() ? std::get<T>(data_) : std::move(fallback); }

 private:
  std::variant<T, Status> data_;
};

}  // namespace cleave

#define CLEAVE_STATUS_CONCAT_INNER(a, b) a##b
#define CLEAVE_STATUS_CONCAT(a, b) CLEAVE_STATUS_CONCAT_INNER(a, b)

// Returns the Status from the enclosing function if `expr` is not OK.
#define CLEAVE_RETURN_IF_ERROR(expr)                         \
  do {                                                       \
    ::cleave::Status cleave_status_tmp_ = (expr);            \
    if (!cleave_status_tmp_.ok()) return cleave_status_tmp_; \
  } while (0)

// `CLEAVE_ASSIGN_OR_RETURN(auto x, MaybeX());` declares x from the value, or returns the error.
#define CLEAVE_ASSIGN_OR_RETURN(lhs, expr) \
  CLEAVE_ASSIGN_OR_RETURN_IMPL(CLEAVE_STATUS_CONCAT(cleave_result_, __LINE__), lhs, expr)
#define CLEAVE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
