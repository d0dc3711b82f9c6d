#include "split/model_spec_file.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/file_util.h"

namespace cleave::split {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxSpecFileBytes = uint64_t{1} << 20;  // a spec is a few KB

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// The parsed file as a JSON tree, with the line of every field when the format has them
// (TOML), keyed by field path: "blocks[2].stride".
struct SpecDocument {
  std::string name;
  json root;
  std::map<std::string, int64_t> lines;

  // "FILE:LINE: PATH: what" (no line when unknown, no path for the whole file).
  Status Error(const std::string& path, const std::string& what) const {
    std::string where = name;
    if (auto it = lines.find(path); it != lines.end()) where += ":" + std::to_string(it->second);
    return Status::InvalidArgument(where + ": " + (path.empty() ? "" : path + ": ") + what);
  }
};

std::string JsonTypeName(const json& j) {
  if (j.is_number_integer()) return "an integer";
  if (j.is_number()) return "a float";
  if (j.is_boolean()) return "a boolean";
  if (j.is_string()) return "a string";
  if (j.is_array()) return "an array";
  if (j.is_object()) return "a table";
  return "null";
}

// TOML value -> JSON, recording each node's line under its path.
Status TomlNodeToJson(const toml::node& node, const std::string& path, SpecDocument& doc,
                      json& out) {
  if (!path.empty()) doc.lines[path] = static_cast<int64_t>(node.source().begin.line);
  if (const toml::table* table = node.as_table()) {
    out = json::object();
    for (const auto& [key, value] : *table) {
      const std::string child = (path.empty() ? "" : path + ".") + std::string(key.str());
      CLEAVE_RETURN_IF_ERROR(TomlNodeToJson(value, child, doc, out[std::string(key.str())]));
    }
  } else if (const toml::array* array = node.as_array()) {
    out = json::array();
    for (size_t i = 0; i < array->size(); ++i) {
      json item;
      CLEAVE_RETURN_IF_ERROR(
          TomlNodeToJson(*array->get(i), path + "[" + std::to_string(i) + "]", doc, item));
      out.push_back(std::move(item));
    }
  } else if (auto v = node.value_exact<int64_t>()) {
    out = *v;
  } else if (auto d = node.value_exact<double>()) {
    out = *d;
  } else if (auto b = node.value_exact<bool>()) {
    out = *b;
  } else if (auto s = node.value_exact<std::string>()) {
    out = *s;
  } else {
    return doc.Error(path, "dates and times are not model spec values");
  }
  return Status::Ok();
}

Result<SpecDocument> ParseSpecDocument(std::string_view text, const std::string& name) {
  SpecDocument doc;
  doc.name = name;
  if (EndsWith(name, ".toml")) {
    toml::table table;
    try {
      table = toml::parse(text, std::string_view(name));
    } catch (const toml::parse_error& e) {
      return Status::InvalidArgument(name + ":" + std::to_string(e.source().begin.line) + ":" +
                                     std::to_string(e.source().begin.column) +
                                     ": TOML syntax error: " + std::string(e.description()));
    }
    CLEAVE_RETURN_IF_ERROR(TomlNodeToJson(table, "", doc, doc.root));
  } else if (EndsWith(name, ".json")) {
    try {
      doc.root = json::parse(text.begin(), text.end());
    } catch (const json::parse_error& e) {
      const size_t at = std::min<size_t>(e.byte > 0 ? e.byte - 1 : 0, text.size());
      const auto line = 1 + std::count(text.begin(), text.begin() + at, '\n');
      return Status::InvalidArgument(name + ":" + std::to_string(line) +
                                     ": JSON syntax error: " + e.what());
    }
  } else {
    return Status::InvalidArgument(name + ": a model spec file ends in .json or .toml");
  }
  if (!doc.root.is_object()) return doc.Error("", "the top level must be a table (object)");
  return doc;
}

// Typed field readers: absent -> `fallback` (or an error when required), wrong type -> error.
class FieldReader {
 public:
  FieldReader(const SpecDocument& doc, const json& table, std::string path)
      : doc_(doc), table_(table), path_(std::move(path)) {}

  // Unknown keys are errors.
  Status OnlyKeys(const std::set<std::string>& known) const {
    for (const auto& item : table_.items()) {
      if (known.count(item.key()) == 0) {
        return doc_.Error(Path(item.key()), "unknown field (expected one of " + Join(known) + ")");
      }
    }
    return Status::Ok();
  }

  bool Has(const std::string& key) const { return table_.contains(key); }

  Result<int> Int(const std::string& key, std::optional<int> fallback) const {
    if (!Has(key)) return Missing(key, fallback);
    const json& v = table_.at(key);
    if (!v.is_number_integer()) {
      return doc_.Error(Path(key), "must be an integer, got " + JsonTypeName(v));
    }
    const int64_t n = v.get<int64_t>();
    if (n < std::numeric_limits<int>::min() || n > std::numeric_limits<int>::max()) {
      return doc_.Error(Path(key), "is out of range");
    }
    return static_cast<int>(n);
  }

  Result<bool> Bool(const std::string& key, bool fallback) const {
    if (!Has(key)) return fallback;
    const json& v = table_.at(key);
    if (!v.is_boolean()) {
      return doc_.Error(Path(key), "must be true or false, got " + JsonTypeName(v));
    }
    return v.get<bool>();
  }

  Result<std::string> String(const std::string& key, std::optional<std::string> fallback) const {
    if (!Has(key)) return Missing(key, fallback);
    const json& v = table_.at(key);
    if (!v.is_string()) return doc_.Error(Path(key), "must be a string, got " + JsonTypeName(v));
    return v.get<std::string>();
  }

  // A number, or an array of numbers.
  Result<std::vector<float>> Floats(const std::string& key, std::vector<float> fallback) const {
    if (!Has(key)) return fallback;
    const json& v = table_.at(key);
    if (v.is_number()) return std::vector<float>{v.get<float>()};
    if (!v.is_array() || v.empty() ||
        !std::all_of(v.begin(), v.end(), [](const json& x) { return x.is_number(); })) {
      return doc_.Error(Path(key), "must be a number or a non-empty array of numbers");
    }
    return v.get<std::vector<float>>();
  }

  // An array of tables (absent: empty unless required).
  Result<std::vector<const json*>> Tables(const std::string& key, bool required) const {
    std::vector<const json*> out;
    if (!Has(key)) {
      if (required) return doc_.Error(path_, "missing field '" + key + "'");
      return out;
    }
    const json& v = table_.at(key);
    if (!v.is_array()) {
      return doc_.Error(Path(key), "must be an array of tables, got " + JsonTypeName(v));
    }
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_object()) {
        return doc_.Error(Path(key) + "[" + std::to_string(i) + "]",
                          "must be a table, got " + JsonTypeName(v[i]));
      }
      out.push_back(&v[i]);
    }
    return out;
  }

  std::string Path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

 private:
  template <typename T>
  Result<T> Missing(const std::string& key, const std::optional<T>& fallback) const {
    if (fallback) return *fallback;
    return doc_.Error(path_, "missing field '" + key + "'");
  }

  static std::string Join(const std::set<std::string>& names) {
    std::string out;
    for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
  }

  const SpecDocument& doc_;
  const json& table_;
  std::string path_;
};

const std::set<std::string>& KnownBlockTypes() {
  static const std::set<std::string> types = {"conv",    "fused_mb", "res",
                                              "maxpool", "linear",   "classifier"};
  return types;
}

Result<BlockSpec> ReadBlock(const SpecDocument& doc, const json& table, const std::string& path) {
  const FieldReader r(doc, table, path);
  CLEAVE_RETURN_IF_ERROR(r.OnlyKeys({"type", "role", "in_channels", "out_channels", "kernel",
                                     "stride", "expansion", "relu", "batch_norm", "padding"}));
  BlockSpec b;
  CLEAVE_ASSIGN_OR_RETURN(b.type, r.String("type", std::nullopt));
  if (KnownBlockTypes().count(b.type) == 0) {
    return doc.Error(r.Path("type"), "unknown block type '" + b.type +
                                         "' (conv, fused_mb, res, maxpool, linear, classifier)");
  }
  CLEAVE_ASSIGN_OR_RETURN(b.role, r.String("role", std::string()));
  if (b.role != "" && b.role != "encoder" && b.role != "decoder") {
    return doc.Error(r.Path("role"), "must be \"\", \"encoder\" or \"decoder\"");
  }
  CLEAVE_ASSIGN_OR_RETURN(b.in_channels, r.Int("in_channels", std::nullopt));
  CLEAVE_ASSIGN_OR_RETURN(b.out_channels, r.Int("out_channels", std::nullopt));
  CLEAVE_ASSIGN_OR_RETURN(b.kernel, r.Int("kernel", 3));
  CLEAVE_ASSIGN_OR_RETURN(b.stride, r.Int("stride", 1));
  CLEAVE_ASSIGN_OR_RETURN(b.expansion, r.Int("expansion", 2));
  CLEAVE_ASSIGN_OR_RETURN(b.relu, r.Bool("relu", true));
  CLEAVE_ASSIGN_OR_RETURN(b.batch_norm, r.Bool("batch_norm", true));
  CLEAVE_ASSIGN_OR_RETURN(b.padding, r.Int("padding", -1));
  return b;
}

Result<VisionModelSpec> ReadSpec(const SpecDocument& doc) {
  const FieldReader top(doc, doc.root, "");
  CLEAVE_RETURN_IF_ERROR(top.OnlyKeys({"input_channels", "image_size", "num_classes", "input_mean",
                                       "input_std", "blocks", "exits", "split_after"}));
  VisionModelSpec s;
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<const json*> blocks, top.Tables("blocks", true));
  if (blocks.empty()) return doc.Error("blocks", "needs at least one block");
  int encoder = -1;
  for (size_t i = 0; i < blocks.size(); ++i) {
    CLEAVE_ASSIGN_OR_RETURN(BlockSpec b,
                            ReadBlock(doc, *blocks[i], "blocks[" + std::to_string(i) + "]"));
    if (b.role == "encoder" && encoder < 0) encoder = static_cast<int>(i);
    s.blocks.push_back(std::move(b));
  }
  CLEAVE_ASSIGN_OR_RETURN(const std::vector<const json*> exits, top.Tables("exits", false));
  for (size_t i = 0; i < exits.size(); ++i) {
    const FieldReader r(doc, *exits[i], "exits[" + std::to_string(i) + "]");
    CLEAVE_RETURN_IF_ERROR(r.OnlyKeys({"after_block", "hidden_channels"}));
    ExitSpec e;
    CLEAVE_ASSIGN_OR_RETURN(e.after_block, r.Int("after_block", std::nullopt));
    CLEAVE_ASSIGN_OR_RETURN(e.hidden_channels,
                            r.Int("hidden_channels", ExitSpec().hidden_channels));
    s.exits.push_back(e);
  }
  CLEAVE_ASSIGN_OR_RETURN(s.split_after, top.Int("split_after", encoder));
  CLEAVE_ASSIGN_OR_RETURN(s.input_channels, top.Int("input_channels", s.blocks[0].in_channels));
  CLEAVE_ASSIGN_OR_RETURN(s.num_classes, top.Int("num_classes", s.blocks.back().out_channels));
  CLEAVE_ASSIGN_OR_RETURN(s.image_size, top.Int("image_size", VisionModelSpec().image_size));
  CLEAVE_ASSIGN_OR_RETURN(s.input_mean, top.Floats("input_mean", VisionModelSpec().input_mean));
  CLEAVE_ASSIGN_OR_RETURN(s.input_std, top.Floats("input_std", VisionModelSpec().input_std));
  const Status valid = s.Validate();
  if (!valid.ok()) return valid.WithContext(doc.name);
  return s;
}

// JSON -> TOML value (the inverse of TomlNodeToJson for the types a spec holds).
void JsonToToml(const json& j, toml::array& out);

toml::table JsonObjectToToml(const json& object) {
  toml::table table;
  for (const auto& item : object.items()) {
    const json& v = item.value();
    if (v.is_object()) {
      table.insert(item.key(), JsonObjectToToml(v));
    } else if (v.is_array()) {
      toml::array array;
      for (const json& x : v) JsonToToml(x, array);
      table.insert(item.key(), std::move(array));
    } else if (v.is_number_integer()) {
      table.insert(item.key(), v.get<int64_t>());
    } else if (v.is_number()) {
      table.insert(item.key(), v.get<double>());
    } else if (v.is_boolean()) {
      table.insert(item.key(), v.get<bool>());
    } else if (v.is_string()) {
      table.insert(item.key(), v.get<std::string>());
    }
  }
  return table;
}

void JsonToToml(const json& j, toml::array& out) {
  if (j.is_object()) {
    out.push_back(JsonObjectToToml(j));
  } else if (j.is_number_integer()) {
    out.push_back(j.get<int64_t>());
  } else if (j.is_number()) {
    out.push_back(j.get<double>());
  } else if (j.is_boolean()) {
    out.push_back(j.get<bool>());
  } else if (j.is_string()) {
    out.push_back(j.get<std::string>());
  }
}

}  // namespace

bool IsModelSpecPath(std::string_view value) {
  return EndsWith(value, ".json") || EndsWith(value, ".toml");
}

Result<VisionModelSpec> ParseVisionModelSpec(std::string_view text, const std::string& name) {
  CLEAVE_ASSIGN_OR_RETURN(const SpecDocument doc, ParseSpecDocument(text, name));
  return ReadSpec(doc);
}

Result<VisionModelSpec> LoadVisionModelSpecFile(const std::string& path) {
  if (!IsModelSpecPath(path)) {
    return Status::InvalidArgument(path + ": a model spec file ends in .json or .toml");
  }
  Result<std::string> text = ReadFileToStringBounded(path, kMaxSpecFileBytes);
  if (!text.ok()) return text.status().WithContext("model spec file");
  return ParseVisionModelSpec(*text, path);
}

std::string VisionModelSpecToToml(const VisionModelSpec& spec) {
  std::ostringstream out;
  out << JsonObjectToToml(spec.ToJson()) << "\n";
  return out.str();
}

}  // namespace cleave::split
