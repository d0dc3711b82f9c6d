#include "split/torch_status.h"

namespace cleave::split {

StatusCode TorchSourceCode(TorchSource source) {
  switch (source) {
    case TorchSource::kStoredBytes: return StatusCode::kDataLoss;
    case TorchSource::kExternalInput: return StatusCode::kInvalidArgument;
    case TorchSource::kOwnState: return StatusCode::kInternal;
  }
  return StatusCode::kInternal;  // an out-of-range enum value is our own bug
}

std::string TorchErrorFirstLine(const std::exception& error) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&error);
  const std::string_view text =
      torch_error != nullptr ? torch_error->what_without_backtrace() : error.what();
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(begin, end - begin);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) {
      line.remove_suffix(1);
    }
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    if (!line.empty()) return std::string(line);
    begin = end + 1;
  }
  return "unknown libtorch error";
}

Status TorchErrorToStatus(const std::exception& error, TorchSource source,
                          std::string_view context) {
  // std::bad_alloc's own text ("std::bad_alloc") says less than this.
  const bool bad_alloc = dynamic_cast<const std::bad_alloc*>(&error) != nullptr;
  const bool out_of_memory =
      bad_alloc || dynamic_cast<const c10::OutOfMemoryError*>(&error) != nullptr;
  const StatusCode code = out_of_memory ? StatusCode::kResourceExhausted : TorchSourceCode(source);
  std::string line = bad_alloc ? std::string("out of memory") : TorchErrorFirstLine(error);
  if (context.empty()) return Status(code, std::move(line));
  std::string message(context);
  message += ": ";
  message += line;
  return Status(code, std::move(message));
}

}  // namespace cleave::split
