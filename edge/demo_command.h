// `cleave demo`: the main job. Starts cleave-cloud and cleave-edge as separate processes on
// loopback, pushes the Fashion-MNIST test set through the edge daemon like a local
// application would, prints a small table and writes report.json and a PNG plot of accuracy
// against bytes per request for several exit thresholds.
#pragma once

#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave::edge {

struct DemoOptions {
  std::string bundle;
  std::string out_dir = "build/demo";
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  int limit = 0;           // test images (0 = all)
  int sweep_limit = 2000;  // images per threshold of the sweep
  int window = 16;         // requests in flight
  int deadline_ms = 250;
};

Result<nlohmann::json> RunDemo(const DemoOptions& options);
void RegisterDemoCommand(CLI::App& app);

}  // namespace cleave::edge
