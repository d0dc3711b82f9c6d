// `cleave bench import`: the import path measured end to end, for the Fashion-MNIST example
// and for an RGB image folder the benchmark generates (Fashion-MNIST made 3x32x32 RGB PNGs).
// Per dataset: train the example PyTorch model (examples/train_fashion_mnist.py, run with
// python3; or take a given .pt), `cleave import` it (split after relu2), and run `cleave
// bench split` on the bundle. JSON per dataset key ("fashion_mnist", "rgb_folder"):
// imported_accuracy, configs.<name>.{accuracy, bytes_per_request_mean} (as bench split, with
// cloud_jpeg), int8_ops_fraction, import_seconds, and the targets.
#pragma once

#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::tools {

struct BenchImportOptions {
  std::string json_out;
  std::string work_dir = "build/bench-import";
  std::string python = "/usr/bin/python3";
  std::string example_script = "examples/train_fashion_mnist.py";
  std::string fashion_torchscript;  // a trained .pt for fashion_mnist ("" = train the example)
  std::string rgb_torchscript;      // the same for rgb_folder (3x32x32 input)
  std::string datasets = "fashion_mnist,rgb_folder";
  bool quick = false;  // smoke run: small example training, quick import, 500 test images
  int threads = 2;
};

Result<nlohmann::json> RunBenchImport(const BenchImportOptions& options);

void RegisterBenchImportCommand(CLI::App& bench);

}  // namespace cleave::tools
