// Configuration: a schema of typed, dotted keys; values from defaults < a TOML file <
// command-line flags.
//
//   ConfigSchema schema;
//   schema.Add("cloud.endpoint", ConfigType::kString, "tcp://127.0.0.1:5555", "tail service")
//         .Add("cloud.timeout_ms", ConfigType::kInt, "2000", "request deadline");
//   Result<Config> config = Config::Load(schema, "cleave.toml", {{"cloud.timeout_ms", "500"}});
//
// Command lines reach Load through common/cli/config_flags.h, which turns every key into a
// flag (`--cloud.endpoint VALUE`); this library parses no argv.
//
// TOML sections map to dotted names: `[cloud]` + `endpoint = "..."` is "cloud.endpoint"
// (TOML dotted keys and nested tables work the same way). Every file and flag value is
// checked against the schema; nothing unknown or mistyped is silently ignored.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace cleave {

enum class ConfigType { kString, kInt, kDouble, kBool };

// "string", "integer", "float" or "boolean" (the words used in error messages).
const char* ConfigTypeName(ConfigType type);

struct ConfigKey {
  std::string name;  // dotted: "cloud.endpoint"
  ConfigType type = ConfigType::kString;
  std::string default_value;  // in flag syntax: "42", "0.5", "true", "text"
  std::string help;
};

// The set of keys a program accepts. Mistakes in the schema itself (duplicate names, a
// name that is also a section of another key, a default that does not parse as its type)
// are programming errors that Config::Load reports as Internal.
class ConfigSchema {
 public:
  // Appends a key; returns *this for chaining.
  ConfigSchema& Add(std::string name, ConfigType type, std::string default_value, std::string help);
  // Keys in insertion order.
  const std::vector<ConfigKey>& keys() const { return keys_; }
  // The key called `name`, or nullptr.
  const ConfigKey* Find(const std::string& name) const;

 private:
  std::vector<ConfigKey> keys_;
};

// An immutable, fully typed configuration. Safe to read from many threads.
class Config {
 public:
  using Value = std::variant<std::string, int64_t, double, bool>;

  // Builds the effective config: schema defaults, then the TOML file at `path` (skipped if
  // empty), then `overrides` (key name -> flag text). Errors:
  //   NotFound / IoError     the file cannot be read (names the file);
  //   InvalidArgument        TOML syntax error ("file:line:col: ..."), unknown key in the
  //                          file or overrides (names key and file and suggests close
  //                          keys), wrong type ("cloud.port must be an integer, got
  //                          string"), unparsable override text;
  //   Internal               the schema itself is inconsistent.
  // An integer in the file is accepted for a float key; nothing else is converted.
  static Result<Config> Load(const ConfigSchema& schema, const std::string& path,
                             const std::map<std::string, std::string>& overrides);

  // Typed getters. Precondition: `name` is in the schema with that type; violating it is a
  // programming error and aborts with a message naming the key.
  std::string GetString(const std::string& name) const;
  int64_t GetInt(const std::string& name) const;
  double GetDouble(const std::string& name) const;
  bool GetBool(const std::string& name) const;

  // The effective config as nested JSON ({"cloud": {"endpoint": ...}}) for logs and
  // `--print-config`.
  nlohmann::json ToJson() const;

 private:
  const Value& Get(const std::string& name, ConfigType type) const;

  std::map<std::string, std::pair<ConfigType, Value>> values_;
};

}  // namespace cleave
