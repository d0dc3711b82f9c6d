// cleave: the researcher/operator command line.
//   cleave train   — train teacher + split model, write a bundle
//   cleave split   — re-quantize / re-calibrate a bundle
//   cleave import  — a TorchScript model -> a split bundle (bottleneck, exit)
//   cleave sim     — federated learning with many virtual clients in one process
//   cleave bench   — measurements that print JSON (split, lm, serve, stream, adaptive, fl,
//                    sim-scale, aggregate)
//   cleave keys    — key pairs for signing bundles
//   cleave bundle  — sign / verify bundles
//   cleave demo    — the main job: daemons on loopback, the test set through the edge
#include <CLI/CLI.hpp>

#include "tools/bench_adaptive.h"
#include "tools/bench_continual.h"
#include "tools/bench_fl.h"
#include "tools/bench_import.h"
#include "tools/bench_lm.h"
#include "tools/bench_serve.h"
#include "tools/bench_split.h"
#include "tools/bench_stream.h"
#include "tools/bundle_command.h"
#include "tools/demo_command.h"
#include "tools/import_command.h"
#include "tools/lm_command.h"
#include "tools/sim_command.h"
#include "tools/train_command.h"

int main(int argc, char** argv) {
  CLI::App app{
      "cleave: edge-cloud split inference and federated learning.\n"
      "Train and compress split models, measure accuracy vs bytes vs latency, run the demo."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "show help for every subcommand");
  cleave::tools::RegisterTrainCommands(app);
  cleave::tools::RegisterImportCommand(app);
  cleave::tools::RegisterLmCommands(app);
  cleave::tools::RegisterBundleCommands(app);
  CLI::App* bench = app.add_subcommand("bench", "benchmarks that print JSON");
  bench->require_subcommand(1);
  cleave::tools::RegisterBenchSplitCommand(*bench);
  cleave::tools::RegisterBenchImportCommand(*bench);
  cleave::tools::RegisterBenchLmCommand(*bench);
  cleave::tools::RegisterBenchServeCommand(*bench);
  cleave::tools::RegisterBenchStreamCommand(*bench);
  cleave::tools::RegisterBenchAdaptiveCommand(*bench);
  cleave::tools::RegisterFederatedBenchCommands(*bench);
  cleave::tools::RegisterBenchContinualCommand(*bench);
  cleave::tools::RegisterSimCommand(app);
  cleave::tools::RegisterDemoCommand(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return 0;
}
