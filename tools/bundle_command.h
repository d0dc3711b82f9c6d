// CLI11 subcommands of the `cleave` tool for keys and bundle signatures:
//   cleave keys generate --out PREFIX [--type ed25519|curve] [--force]
//                                   a key pair: PREFIX.key (secret, mode 0600), PREFIX.pub;
//                                   Ed25519 signs bundles, CURVE secures the transport
//   cleave bundle sign --bundle DIR --key PREFIX.key
//                                   writes DIR/manifest.sig (split/bundle.h)
//   cleave bundle verify --bundle DIR --public-key PREFIX.pub
//                                   exit status 0 only when hashes and signature verify
// Each prints a JSON summary to stdout; on failure one line "cleave <cmd>: <error>" to
// stderr and exit status 1.
#pragma once

#include <CLI/CLI.hpp>

namespace cleave::tools {

void RegisterBundleCommands(CLI::App& app);

}  // namespace cleave::tools
