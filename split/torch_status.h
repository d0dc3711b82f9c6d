// The one boundary between libtorch's exceptions and cleave's Status values.
//
// libtorch reports failures by throwing c10::Error (and, from a few corners such as the
// serializer, std::exception subclasses). Every libtorch call whose failure must not escape
// goes through CallTorch (or, where the exception is already caught, TorchErrorToStatus),
// so the StatusCode of a libtorch failure is decided by one rule, here:
//
//   The code follows what libtorch was working on when it failed, as the caller declares
//   it with a TorchSource, never the wording of the exception:
//     kStoredBytes   serialized bytes being decoded (a weight archive, a bundle part, a
//                    serialized int8 head): they are corrupt or truncated    -> kDataLoss
//     kExternalInput tensors, shapes or specs that came from outside cleave's own state
//                    (a peer's request, a user's tensors or config, a manifest's model
//                    description) and reached libtorch unvalidated or only partly
//                    validated: the input is malformed                       -> kInvalidArgument
//     kOwnState      cleave's own models and state, with every outside input already
//                    checked: a failure is an invariant of ours breaking     -> kInternal
//   Whatever the source, running out of memory (std::bad_alloc, c10::OutOfMemoryError) is
//   kResourceExhausted: retrying later or with less data may succeed.
//
// Messages are "<context>: <first line of libtorch's message>": libtorch's text after its
// first line (backtraces, "Exception raised from ..." notes, frames) helps nobody reading a
// log or a reply, so it is dropped. The caller's context says what cleave was doing and,
// where it can, what the user should do ("head_fp32.pt is not a readable libtorch archive").
//
// Everything here is stateless and safe to call from any thread.
#pragma once

#include <exception>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <c10/util/Exception.h>

#include "common/status.h"

namespace cleave::split {

// Where the data that libtorch failed on came from; see the rule above.
enum class TorchSource {
  kStoredBytes,    // -> kDataLoss
  kExternalInput,  // -> kInvalidArgument
  kOwnState,       // -> kInternal
};

// The code the rule above gives a non-memory failure from `source`.
StatusCode TorchSourceCode(TorchSource source);

// The first non-empty line of an exception's message, without libtorch's backtrace
// (c10::Error::what_without_backtrace for libtorch errors, what() otherwise). Never empty:
// "unknown libtorch error" stands in for a blank message.
std::string TorchErrorFirstLine(const std::exception& error);

// Turns an exception thrown by a libtorch call into a non-OK Status, by the rule above:
// kResourceExhausted for std::bad_alloc and c10::OutOfMemoryError, TorchSourceCode(source)
// otherwise. The message is "<context>: <first line>" (just the first line if `context` is
// empty).
Status TorchErrorToStatus(const std::exception& error, TorchSource source,
                          std::string_view context);

namespace torch_status_internal {
// What CallTorch returns for a callable returning T: void and Status become Status,
// Result<U> stays Result<U>, any other T becomes Result<T>.
template <typename T>
struct Wrapped {
  using type = Result<T>;
};
template <>
struct Wrapped<void> {
  using type = Status;
};
template <>
struct Wrapped<Status> {
  using type = Status;
};
template <typename T>
struct Wrapped<Result<T>> {
  using type = Result<T>;
};
}  // namespace torch_status_internal

template <typename Fn>
using TorchCallResult =
    typename torch_status_internal::Wrapped<std::decay_t<std::invoke_result_t<Fn&>>>::type;

// Runs `fn()` and returns what it returns (void -> OK Status, a plain T -> Result<T>,
// Status/Result<T> as they are). If `fn` throws a std::exception (c10::Error included),
// returns TorchErrorToStatus(error, source, context) instead: no exception leaves CallTorch.
// `fn` runs once, on the calling thread; `context` is read only if it throws.
template <typename Fn>
TorchCallResult<Fn> CallTorch(TorchSource source, std::string_view context, Fn&& fn) {
  using Returned = std::decay_t<std::invoke_result_t<Fn&>>;
  try {
    if constexpr (std::is_void_v<Returned>) {
      fn();
      return Status::Ok();
    } else {
      return fn();
    }
  } catch (const std::exception& error) {
    return TorchErrorToStatus(error, source, context);
  }
}

}  // namespace cleave::split
