#include "common/config.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <set>

#include <toml++/toml.h>

#include "common/file_util.h"

namespace cleave {
namespace {

using nlohmann::json;

std::string Lowercase(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool ParseBool(const std::string& text, bool* out) {
  const std::string t = Lowercase(text);
  if (t == "true" || t == "1" || t == "yes" || t == "on") {
    *out = true;
  } else if (t == "false" || t == "0" || t == "no" || t == "off") {
    *out = false;
  } else {
    return false;
  }
  return true;
}

// Parses flag/default text as `type`; nullopt-like false return on malformed text.
bool ParseValueText(ConfigType type, const std::string& text, Config::Value* out) {
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  if (type != ConfigType::kString && begin != end && *begin == '+') ++begin;
  switch (type) {
    case ConfigType::kString: *out = text; return true;
    case ConfigType::kInt: {
      int64_t v = 0;
      auto [ptr, ec] = std::from_chars(begin, end, v);
      if (ec != std::errc() || ptr != end || begin == end) return false;
      *out = v;
      return true;
    }
    case ConfigType::kDouble: {
      double v = 0;
      auto [ptr, ec] = std::from_chars(begin, end, v);
      if (ec != std::errc() || ptr != end || begin == end) return false;
      *out = v;
      return true;
    }
    case ConfigType::kBool: {
      bool v = false;
      if (!ParseBool(text, &v)) return false;
      *out = v;
      return true;
    }
  }
  return false;
}

const char* TomlTypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::none: return "nothing";
    case toml::node_type::table: return "table";
    case toml::node_type::array: return "array";
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    case toml::node_type::date: return "date";
    case toml::node_type::time: return "time";
    case toml::node_type::date_time: return "date-time";
  }
  return "unknown";
}

const char* Article(ConfigType type) { return type == ConfigType::kInt ? "an" : "a"; }

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string LastSegment(const std::string& name) {
  size_t dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

// "; did you mean 'a' or 'b'?" for keys near `name`, else a pointer to --help.
std::string Suggestions(const ConfigSchema& schema, const std::string& name) {
  std::vector<std::pair<size_t, std::string>> close;
  const size_t limit = std::max<size_t>(2, name.size() / 4);
  for (const ConfigKey& key : schema.keys()) {
    size_t d = EditDistance(name, key.name);
    if (d <= limit || LastSegment(key.name) == LastSegment(name)) close.emplace_back(d, key.name);
  }
  if (close.empty()) return " (see --help for the list of keys)";
  std::sort(close.begin(), close.end());
  if (close.size() > 3) close.resize(3);
  std::string text = "; did you mean ";
  for (size_t i = 0; i < close.size(); ++i) {
    if (i > 0) text += (i + 1 == close.size()) ? " or " : ", ";
    text += "'" + close[i].second + "'";
  }
  return text + "?";
}

bool ValidKeyName(const std::string& name) {
  if (name.empty() || name.front() == '.' || name.back() == '.') return false;
  char previous = 0;
  for (char c : name) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
    if (!ok || (c == '.' && previous == '.')) return false;
    previous = c;
  }
  return true;
}

Status ValidateSchema(const ConfigSchema& schema) {
  std::set<std::string> names;
  for (const ConfigKey& key : schema.keys()) {
    if (!ValidKeyName(key.name)) {
      return Status::Internal("config schema key '" + key.name + "' is not a dotted identifier");
    }
    if (!names.insert(key.name).second) {
      return Status::Internal("config schema lists '" + key.name + "' twice");
    }
    Config::Value ignored;
    if (!ParseValueText(key.type, key.default_value, &ignored)) {
      return Status::Internal("config schema default for '" + key.name + "' (\"" +
                              key.default_value + "\") is not " + Article(key.type) + " " +
                              ConfigTypeName(key.type));
    }
  }
  for (const std::string& name : names) {
    // In sorted order the keys "a.*" start at lower_bound("a.").
    auto next = names.lower_bound(name + ".");
    if (next != names.end() && next->compare(0, name.size() + 1, name + ".") == 0) {
      return Status::Internal("config schema key '" + name + "' is also a section of '" + *next +
                              "'");
    }
  }
  return Status::Ok();
}

std::string Location(const std::string& path, const toml::source_region& where) {
  return path + ":" + std::to_string(where.begin.line) + ":" + std::to_string(where.begin.column);
}

// Converts one TOML leaf to the key's type; only integer -> float widens.
bool ConvertTomlValue(const toml::node& node, ConfigType type, Config::Value* out) {
  switch (type) {
    case ConfigType::kString:
      if (auto v = node.value_exact<std::string>()) *out = *v;
      return node.is_string();
    case ConfigType::kInt:
      if (auto v = node.value_exact<int64_t>()) *out = *v;
      return node.is_integer();
    case ConfigType::kDouble:
      if (node.is_integer()) *out = static_cast<double>(*node.value_exact<int64_t>());
      if (node.is_floating_point()) *out = *node.value_exact<double>();
      return node.is_integer() || node.is_floating_point();
    case ConfigType::kBool:
      if (auto v = node.value_exact<bool>()) *out = *v;
      return node.is_boolean();
  }
  return false;
}

bool HasKeysUnder(const ConfigSchema& schema, const std::string& section) {
  const std::string prefix = section + ".";
  for (const ConfigKey& key : schema.keys()) {
    if (key.name.compare(0, prefix.size(), prefix) == 0) return true;
  }
  return false;
}

// Walks a TOML table, storing every leaf into `values` after checking it against `schema`.
Status ApplyTable(const ConfigSchema& schema, const toml::table& table, const std::string& prefix,
                  const std::string& path,
                  std::map<std::string, std::pair<ConfigType, Config::Value>>* values) {
  for (const auto& [toml_key, node] : table) {
    const std::string name = prefix + std::string(toml_key.str());
    const std::string where = Location(path, node.source());
    const ConfigKey* key = schema.Find(name);
    if (key == nullptr) {
      if (node.is_table() && HasKeysUnder(schema, name)) {
        CLEAVE_RETURN_IF_ERROR(ApplyTable(schema, *node.as_table(), name + ".", path, values));
        continue;
      }
      return Status::InvalidArgument(where + ": unknown " +
                                     (node.is_table() ? "section '" : "key '") + name + "'" +
                                     Suggestions(schema, name));
    }
    Config::Value value;
    if (!ConvertTomlValue(node, key->type, &value)) {
      return Status::InvalidArgument(where + ": " + name + " must be " + Article(key->type) + " " +
                                     ConfigTypeName(key->type) + ", got " +
                                     TomlTypeName(node.type()));
    }
    (*values)[name] = {key->type, std::move(value)};
  }
  return Status::Ok();
}

[[noreturn]] void DieBadGet(const std::string& name, ConfigType type, const char* why) {
  std::fprintf(stderr, "cleave: Config::Get of %s key '%s': %s (a programming error)\n",
               ConfigTypeName(type), name.c_str(), why);
  std::abort();
}

json ValueToJson(const Config::Value& value) {
  return std::visit([](const auto& v) { return json(v); }, value);
}

}  // namespace

const char* ConfigTypeName(ConfigType type) {
  switch (type) {
    case ConfigType::kString: return "string";
    case ConfigType::kInt: return "integer";
    case ConfigType::kDouble: return "float";
    case ConfigType::kBool: return "boolean";
  }
  return "unknown";
}

ConfigSchema& ConfigSchema::Add(std::string name, ConfigType type, std::string default_value,
                                std::string help) {
  keys_.push_back(ConfigKey{std::move(name), type, std::move(default_value), std::move(help)});
  return *this;
}

const ConfigKey* ConfigSchema::Find(const std::string& name) const {
  for (const ConfigKey& key : keys_) {
    if (key.name == name) return &key;
  }
  return nullptr;
}

Result<Config> Config::Load(const ConfigSchema& schema, const std::string& path,
                            const std::map<std::string, std::string>& overrides) {
  CLEAVE_RETURN_IF_ERROR(ValidateSchema(schema));
  Config config;
  for (const ConfigKey& key : schema.keys()) {
    Value value;
    ParseValueText(key.type, key.default_value, &value);  // checked by ValidateSchema
    config.values_[key.name] = {key.type, std::move(value)};
  }

  if (!path.empty()) {
    Result<std::string> text = ReadFileToString(path);
    if (!text.ok()) return text.status().WithContext("config file");
    toml::table table;
    try {
      table = toml::parse(std::string_view(*text), std::string_view(path));
    } catch (const toml::parse_error& e) {
      return Status::InvalidArgument(Location(path, e.source()) +
                                     ": TOML syntax error: " + std::string(e.description()));
    }
    CLEAVE_RETURN_IF_ERROR(ApplyTable(schema, table, "", path, &config.values_));
  }

  for (const auto& [name, text] : overrides) {
    const ConfigKey* key = schema.Find(name);
    if (key == nullptr) {
      return Status::InvalidArgument("unknown config key '" + name + "' given as a flag" +
                                     Suggestions(schema, name));
    }
    Value value;
    if (!ParseValueText(key->type, text, &value)) {
      return Status::InvalidArgument("--" + name + " must be " + Article(key->type) + " " +
                                     ConfigTypeName(key->type) + ", got '" + text + "'");
    }
    config.values_[name] = {key->type, std::move(value)};
  }
  return config;
}

const Config::Value& Config::Get(const std::string& name, ConfigType type) const {
  auto it = values_.find(name);
  if (it == values_.end()) DieBadGet(name, type, "no such key in the schema");
  if (it->second.first != type) DieBadGet(name, type, "the schema gives it another type");
  return it->second.second;
}

std::string Config::GetString(const std::string& name) const {
  return std::get<std::string>(Get(name, ConfigType::kString));
}
int64_t Config::GetInt(const std::string& name) const {
  return std::get<int64_t>(Get(name, ConfigType::kInt));
}
double Config::GetDouble(const std::string& name) const {
  return std::get<double>(Get(name, ConfigType::kDouble));
}
bool Config::GetBool(const std::string& name) const {
  return std::get<bool>(Get(name, ConfigType::kBool));
}

json Config::ToJson() const {
  json root = json::object();
  for (const auto& [name, typed] : values_) {
    json* node = &root;
    size_t start = 0;
    for (size_t dot; (dot = name.find('.', start)) != std::string::npos; start = dot + 1) {
      node = &(*node)[name.substr(start, dot - start)];
    }
    (*node)[name.substr(start)] = ValueToJson(typed.second);
  }
  return root;
}

}  // namespace cleave
