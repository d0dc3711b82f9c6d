#include "common/cli/config_flags.h"

#include <functional>

namespace cleave::cli {
namespace {

const char* FlagTypeName(ConfigType type) {
  switch (type) {
    case ConfigType::kString: return "TEXT";
    case ConfigType::kInt: return "INT";
    case ConfigType::kDouble: return "FLOAT";
    case ConfigType::kBool: return "BOOL";
  }
  return "TEXT";
}

}  // namespace

void AddConfigFlags(CLI::App& app, const ConfigSchema& schema, std::string* config_path,
                    std::map<std::string, std::string>* flag_values) {
  app.add_option("--config", *config_path, "TOML configuration file; flags override its values")
      ->type_name("FILE");
  for (const ConfigKey& key : schema.keys()) {
    const std::string name = key.name;
    std::function<void(const std::string&)> store = [flag_values, name](const std::string& text) {
      (*flag_values)[name] = text;
    };
    app.add_option_function<std::string>("--" + name, store, key.help)
        ->type_name(FlagTypeName(key.type))
        ->default_str(key.default_value);
  }
}

}  // namespace cleave::cli
