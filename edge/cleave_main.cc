// cleave: the researcher/operator command line.
//   cleave train   — train teacher + split model, write a bundle
//   cleave split   — re-quantize / re-calibrate a bundle
//   cleave sim     — federated learning with many virtual clients in one process
//   cleave bench   — measurements that print JSON (split, lm, serve, fl, sim-scale, aggregate)
//   cleave keys    — key pairs for signing bundles
//   cleave bundle  — sign / verify bundles
//   cleave demo    — the main job: daemons on loopback, the test set through the edge
#include <CLI/CLI.hpp>

#include "edge/bench_lm.h"
#include "edge/bench_serve.h"
#include "edge/bench_split.h"
#include "edge/demo_command.h"
#include "federated/bench_fl.h"
#include "federated/sim_command.h"
#include "split/bundle_command.h"
#include "split/lm_command.h"
#include "split/train_command.h"

int main(int argc, char** argv) {
  CLI::App app{
      "cleave: edge-cloud split inference and federated learning.\n"
      "Train and compress split models, measure accuracy vs bytes vs latency, run the demo."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "show help for every subcommand");
  cleave::split::RegisterTrainCommands(app);
  cleave::split::RegisterLmCommands(app);
  cleave::split::RegisterBundleCommands(app);
  CLI::App* bench = app.add_subcommand("bench", "benchmarks that print JSON");
  bench->require_subcommand(1);
  cleave::edge::RegisterBenchSplitCommand(*bench);
  cleave::edge::RegisterBenchLmCommand(*bench);
  cleave::edge::RegisterBenchServeCommand(*bench);
  cleave::federated::RegisterFederatedBenchCommands(*bench);
  cleave::federated::RegisterSimCommand(app);
  cleave::edge::RegisterDemoCommand(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return 0;
}
