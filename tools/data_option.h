// The dataset options every command that reads images shares: `--data SPEC` (a dataset spec,
// common/image_data.h: fashion-mnist, idx:DIR, cifar:DIR, folder:DIR, ...) and the older
// `--data-dir DIR`, which means fashion-mnist:DIR.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "common/status.h"

namespace cleave::tools {

inline constexpr char kDataSpecHelp[] =
    "dataset: fashion-mnist (the embedded default, from the Debian package), "
    "fashion-mnist:DIR, idx:DIR (MNIST-family IDX files), cifar:DIR / cifar10:DIR / "
    "cifar100:DIR (CIFAR binary batches), folder:DIR (DIR/train/<class>/*.png|*.jpg, "
    "DIR/test/<class>/...)";

// Adds --data and --data-dir to `cmd`; `data` keeps its value as the default.
inline void AddDataOptions(CLI::App* cmd, std::string* data, std::string* data_dir) {
  cmd->add_option("--data", *data, kDataSpecHelp)->capture_default_str();
  cmd->add_option("--data-dir", *data_dir,
                  "Fashion-MNIST IDX directory (= --data fashion-mnist:DIR)");
}

// The spec the two options give: `data_dir` non-empty means fashion-mnist:DIR, and then
// `data` must be left at `default_spec` (InvalidArgument otherwise: they contradict).
inline Result<std::string> ResolveDataSpec(const std::string& data, const std::string& data_dir,
                                           const std::string& default_spec = "fashion-mnist") {
  if (data_dir.empty()) return data;
  if (data != default_spec) {
    return Status::InvalidArgument("give --data or --data-dir, not both");
  }
  return "fashion-mnist:" + data_dir;
}

}  // namespace cleave::tools
