// The CLI11 side of the config system (common/config.h): every schema key becomes a flag.
//
//   CLI::App app;  std::string path;  std::map<std::string, std::string> flags;
//   cli::AddConfigFlags(app, schema, &path, &flags);
//   CLI11_PARSE(app, argc, argv);
//   Result<Config> config = Config::Load(schema, path, flags);
//
// Only the layer that parses argv (daemon mains, commands) includes this; the libraries
// keep building configs with Config::Load and parse no argv.
#pragma once

#include <map>
#include <string>

#include <CLI/CLI.hpp>

#include "common/config.h"

namespace cleave::cli {

// Adds `--config FILE` and one flag per key (`--cloud.endpoint VALUE`) to `app`. Parsed
// flag text lands in (*flag_values)[key name] only for flags actually given, and the file
// path in *config_path; both pointers (and `schema`) must outlive app's parsing. Values are
// type-checked later, by Config::Load, so errors name the key and the bad value.
void AddConfigFlags(CLI::App& app, const ConfigSchema& schema, std::string* config_path,
                    std::map<std::string, std::string>* flag_values);

}  // namespace cleave::cli
