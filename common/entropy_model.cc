#include "common/entropy_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "common/file_util.h"

namespace cleave {
namespace {

constexpr char kEntropyModelMagic[3] = {'C', 'E', 'M'};
constexpr uint8_t kEntropyModelVersion = 1;

// ValidateEntropyModelLayout with `kind` raw, so that Parse can pass what it read.
Status ValidateEntropyLayoutValue(uint32_t alphabet, uint32_t precision, uint32_t kind,
                                  uint32_t channels, uint32_t elements,
                                  uint32_t prediction_buckets) {
  if (alphabet < kMinEntropyAlphabet || alphabet > kMaxEntropyAlphabet) {
    return Status::InvalidArgument("entropy model alphabet " + std::to_string(alphabet) +
                                   " is outside [" + std::to_string(kMinEntropyAlphabet) + ", " +
                                   std::to_string(kMaxEntropyAlphabet) + "]");
  }
  if (precision < kMinEntropyPrecision || precision > kMaxEntropyPrecision) {
    return Status::InvalidArgument("entropy model precision " + std::to_string(precision) +
                                   " bits is outside [" + std::to_string(kMinEntropyPrecision) +
                                   ", " + std::to_string(kMaxEntropyPrecision) + "]");
  }
  if (kind > static_cast<uint32_t>(ContextKind::kPerElementPredicted)) {
    return Status::InvalidArgument("unknown entropy model context kind " + std::to_string(kind));
  }
  if (kind == static_cast<uint32_t>(ContextKind::kPerElementPredicted)) {
    if (prediction_buckets < kMinEntropyPredictionBuckets ||
        prediction_buckets > kMaxEntropyPredictionBuckets) {
      return Status::InvalidArgument("entropy model prediction buckets " +
                                     std::to_string(prediction_buckets) + " are outside [" +
                                     std::to_string(kMinEntropyPredictionBuckets) + ", " +
                                     std::to_string(kMaxEntropyPredictionBuckets) + "]");
    }
  } else if (prediction_buckets != 0) {
    return Status::InvalidArgument(
        std::string("only per_element_predicted entropy models have prediction buckets, not ") +
        ContextKindName(static_cast<ContextKind>(kind)));
  }
  if (channels == 0 || elements == 0) {
    return Status::InvalidArgument("entropy model needs at least one channel and element, got " +
                                   std::to_string(channels) + " channels and " +
                                   std::to_string(elements) + " elements");
  }
  if (elements > kMaxEntropyElements) {
    return Status::InvalidArgument("entropy model of " + std::to_string(elements) +
                                   " elements exceeds the limit of " +
                                   std::to_string(kMaxEntropyElements));
  }
  if (elements % channels != 0) {
    return Status::InvalidArgument("entropy model's " + std::to_string(elements) +
                                   " elements are not a whole number of " +
                                   std::to_string(channels) + " channels");
  }
  const uint64_t entries = uint64_t{EntropyTableCount(static_cast<ContextKind>(kind), channels,
                                                      elements, prediction_buckets)} *
                           alphabet;
  if (entries > kMaxEntropyTableEntries) {
    return Status::InvalidArgument(
        "entropy model has " + std::to_string(entries) + " frequencies (" +
        ContextKindName(static_cast<ContextKind>(kind)) + " tables of " + std::to_string(alphabet) +
        " symbols), more than the limit of " + std::to_string(kMaxEntropyTableEntries));
  }
  return Status::Ok();
}

Status ValidateEntropyTermination(uint32_t termination) {
  if (termination > static_cast<uint32_t>(EntropyTermination::kMinimal)) {
    return Status::InvalidArgument("unknown entropy termination " + std::to_string(termination));
  }
  return Status::Ok();
}

void AppendEntropyVarint(uint32_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7F) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

// Zigzag: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ...
uint32_t EntropyZigzag(int32_t value) {
  return (static_cast<uint32_t>(value) << 1) ^ static_cast<uint32_t>(value < 0 ? -1 : 0);
}
int32_t EntropyUnzigzag(uint32_t value) {
  return static_cast<int32_t>((value >> 1) ^ (0u - (value & 1)));
}

// Reads the minimal LEB128 varints Serialize writes, and nothing else.
class EntropyModelReader {
 public:
  explicit EntropyModelReader(std::string_view bytes) : bytes_(bytes) {}

  Result<uint32_t> Varint(const char* what) {
    uint64_t value = 0;
    for (int i = 0; i < 5; ++i) {
      if (pos_ >= bytes_.size()) {
        return Status::InvalidArgument(std::string("entropy model is truncated in its ") + what);
      }
      const auto byte = static_cast<uint8_t>(bytes_[pos_++]);
      value |= uint64_t{byte & 0x7Fu} << (7 * i);
      if ((byte & 0x80) == 0) {
        if (i > 0 && byte == 0) {
          return Status::InvalidArgument(std::string("entropy model's ") + what +
                                         " is not minimally encoded");
        }
        if (value > std::numeric_limits<uint32_t>::max()) break;
        return static_cast<uint32_t>(value);
      }
    }
    return Status::InvalidArgument(std::string("entropy model's ") + what +
                                   " does not fit in 32 bits");
  }
  size_t remaining() const { return bytes_.size() - pos_; }

 private:
  std::string_view bytes_;
  size_t pos_ = 0;
};

Result<uint32_t> EntropyJsonUint32(const nlohmann::json& json, const char* key) {
  const auto it = json.find(key);
  if (it == json.end()) {
    return Status::InvalidArgument(std::string("entropy model JSON has no \"") + key + "\"");
  }
  if (!it->is_number_unsigned() || it->get<uint64_t>() > std::numeric_limits<uint32_t>::max()) {
    return Status::InvalidArgument(std::string("entropy model JSON's \"") + key +
                                   "\" is not an unsigned 32-bit integer");
  }
  return it->get<uint32_t>();
}
}  // namespace

const char* ContextKindName(ContextKind kind) {
  switch (kind) {
    case ContextKind::kShared: return "shared";
    case ContextKind::kPerChannel: return "per_channel";
    case ContextKind::kPerElement: return "per_element";
    case ContextKind::kPerElementPredicted: return "per_element_predicted";
  }
  return "unknown";
}

Result<ContextKind> ParseContextKind(std::string_view name) {
  for (ContextKind kind : {ContextKind::kShared, ContextKind::kPerChannel, ContextKind::kPerElement,
                           ContextKind::kPerElementPredicted}) {
    if (name == ContextKindName(kind)) return kind;
  }
  return Status::InvalidArgument(
      "unknown entropy model context '" + std::string(name) +
      "' (expected shared, per_channel, per_element or per_element_predicted)");
}

const char* EntropyTerminationName(EntropyTermination termination) {
  switch (termination) {
    case EntropyTermination::kPrefixFree: return "prefix_free";
    case EntropyTermination::kMinimal: return "minimal";
  }
  return "unknown";
}

Result<EntropyTermination> ParseEntropyTermination(std::string_view name) {
  for (EntropyTermination termination :
       {EntropyTermination::kPrefixFree, EntropyTermination::kMinimal}) {
    if (name == EntropyTerminationName(termination)) return termination;
  }
  return Status::InvalidArgument("unknown entropy termination '" + std::string(name) +
                                 "' (expected prefix_free or minimal)");
}

uint32_t EntropyTableCount(ContextKind kind, uint32_t channels, uint32_t elements,
                           uint32_t prediction_buckets) {
  switch (kind) {
    case ContextKind::kShared: return 1;
    case ContextKind::kPerChannel: return channels;
    case ContextKind::kPerElement: return elements;
    case ContextKind::kPerElementPredicted: {
      const uint64_t tables = uint64_t{elements} * prediction_buckets;
      return static_cast<uint32_t>(
          std::min<uint64_t>(tables, std::numeric_limits<uint32_t>::max()));
    }
  }
  return 0;
}

Status ValidateEntropyModelLayout(uint32_t alphabet, uint32_t precision, ContextKind kind,
                                  uint32_t channels, uint32_t elements,
                                  uint32_t prediction_buckets) {
  return ValidateEntropyLayoutValue(alphabet, precision, static_cast<uint32_t>(kind), channels,
                                    elements, prediction_buckets);
}

Result<EntropyModel> EntropyModel::Create(uint32_t alphabet, uint32_t precision, ContextKind kind,
                                          uint32_t channels, uint32_t elements,
                                          const std::vector<uint32_t>& frequencies,
                                          EntropyTermination termination,
                                          const EntropyPredictor& predictor) {
  const bool predicted = kind == ContextKind::kPerElementPredicted;
  if (!predicted && !predictor.empty()) {
    return Status::InvalidArgument(std::string("a ") + ContextKindName(kind) +
                                   " entropy model takes no predictor");
  }
  CLEAVE_RETURN_IF_ERROR(ValidateEntropyLayoutValue(
      alphabet, precision, static_cast<uint32_t>(kind), channels, elements, predictor.buckets));
  CLEAVE_RETURN_IF_ERROR(ValidateEntropyTermination(static_cast<uint32_t>(termination)));
  if (predicted) CLEAVE_RETURN_IF_ERROR(ValidateEntropyPredictor(predictor, elements));
  const uint32_t tables = EntropyTableCount(kind, channels, elements, predictor.buckets);
  if (frequencies.size() != uint64_t{tables} * alphabet) {
    return Status::InvalidArgument(
        "entropy model needs " + std::to_string(uint64_t{tables} * alphabet) + " frequencies (" +
        std::to_string(tables) + " " + ContextKindName(kind) + " tables of " +
        std::to_string(alphabet) + " symbols), got " + std::to_string(frequencies.size()));
  }
  EntropyModel model;
  model.alphabet_ = alphabet;
  model.precision_ = precision;
  model.kind_ = kind;
  model.termination_ = termination;
  model.channels_ = channels;
  model.elements_ = elements;
  model.table_count_ = tables;
  model.elements_per_channel_ = elements / channels;
  if (predicted) {
    model.prediction_buckets_ = predictor.buckets;
    model.bias_.reserve(elements);
    model.tap_begin_.reserve(size_t{elements} + 1);
    model.tap_begin_.push_back(0);
    for (const EntropyElementPredictor& element : predictor.elements) {
      model.bias_.push_back(element.bias);
      for (const EntropyPredictionTap& tap : element.taps) {
        model.tap_distance_.push_back(tap.distance);
        model.tap_weight_.push_back(tap.weight);
      }
      model.tap_begin_.push_back(static_cast<uint32_t>(model.tap_distance_.size()));
    }
  }
  model.cumulative_.resize(size_t{tables} * (alphabet + 1));
  const uint64_t total = uint64_t{1} << precision;
  for (uint32_t t = 0; t < tables; ++t) {
    uint32_t* cumulative = model.cumulative_.data() + size_t{t} * (alphabet + 1);
    uint64_t sum = 0;
    cumulative[0] = 0;
    for (uint32_t s = 0; s < alphabet; ++s) {
      const uint32_t frequency = frequencies[size_t{t} * alphabet + s];
      if (frequency == 0) {
        return Status::InvalidArgument("entropy model table " + std::to_string(t) +
                                       " gives symbol " + std::to_string(s) +
                                       " frequency 0; every symbol needs at least 1");
      }
      sum += frequency;
      if (sum > total) break;
      cumulative[s + 1] = static_cast<uint32_t>(sum);
    }
    if (sum != total) {
      return Status::InvalidArgument(
          "entropy model table " + std::to_string(t) + "'s frequencies sum to " +
          (sum > total ? "more than" : std::to_string(sum) + ", not") + " 2^" +
          std::to_string(precision) + " = " + std::to_string(total));
    }
  }
  const std::string digest = Sha256Hex(model.Serialize());
  if (digest.size() < 8) return Status::Internal("SHA-256 of the entropy model failed");
  model.fingerprint_ = static_cast<uint32_t>(std::stoul(digest.substr(0, 8), nullptr, 16));
  return model;
}

std::string EntropyModel::Serialize() const {
  std::string out(kEntropyModelMagic, sizeof(kEntropyModelMagic));
  out.push_back(static_cast<char>(kEntropyModelVersion));
  AppendEntropyVarint(alphabet_, &out);
  AppendEntropyVarint(precision_, &out);
  AppendEntropyVarint(static_cast<uint32_t>(kind_), &out);
  AppendEntropyVarint(static_cast<uint32_t>(termination_), &out);
  AppendEntropyVarint(channels_, &out);
  AppendEntropyVarint(elements_, &out);
  if (kind_ == ContextKind::kPerElementPredicted) {
    AppendEntropyVarint(prediction_buckets_, &out);
    for (uint32_t i = 0; i < elements_; ++i) {
      AppendEntropyVarint(EntropyZigzag(bias_[i]), &out);
      AppendEntropyVarint(tap_begin_[i + 1] - tap_begin_[i], &out);
      for (uint32_t t = tap_begin_[i]; t < tap_begin_[i + 1]; ++t) {
        AppendEntropyVarint(tap_distance_[t], &out);
        AppendEntropyVarint(EntropyZigzag(tap_weight_[t]), &out);
      }
    }
  }
  for (uint32_t t = 0; t < table_count_; ++t) {
    for (uint32_t s = 0; s < alphabet_; ++s) AppendEntropyVarint(Frequency(t, s), &out);
  }
  return out;
}

Result<EntropyModel> EntropyModel::Parse(std::string_view bytes) {
  if (bytes.size() < 4 ||
      std::memcmp(bytes.data(), kEntropyModelMagic, sizeof(kEntropyModelMagic)) != 0) {
    return Status::InvalidArgument("not a serialized entropy model (no \"CEM\" magic)");
  }
  if (static_cast<uint8_t>(bytes[3]) != kEntropyModelVersion) {
    return Status::VersionMismatch("entropy model format version " +
                                   std::to_string(static_cast<uint8_t>(bytes[3])) +
                                   " is not supported (this build reads version " +
                                   std::to_string(kEntropyModelVersion) + ")");
  }
  EntropyModelReader in(bytes.substr(4));
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t alphabet, in.Varint("alphabet"));
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t precision, in.Varint("precision"));
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t kind, in.Varint("context kind"));
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t termination, in.Varint("termination"));
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t channels, in.Varint("channel count"));
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t elements, in.Varint("element count"));
  const bool predicted = kind == static_cast<uint32_t>(ContextKind::kPerElementPredicted);
  EntropyPredictor predictor;
  if (predicted) {
    CLEAVE_ASSIGN_OR_RETURN(predictor.buckets, in.Varint("prediction buckets"));
  }
  CLEAVE_RETURN_IF_ERROR(
      ValidateEntropyLayoutValue(alphabet, precision, kind, channels, elements, predictor.buckets));
  CLEAVE_RETURN_IF_ERROR(ValidateEntropyTermination(termination));
  const uint64_t entries = uint64_t{EntropyTableCount(static_cast<ContextKind>(kind), channels,
                                                      elements, predictor.buckets)} *
                           alphabet;
  // Every varint takes at least a byte: an element predictor at least 2, a tap 2.
  const uint64_t least = entries + (predicted ? uint64_t{2} * elements : 0);
  if (in.remaining() < least) {
    return Status::InvalidArgument(
        "entropy model is truncated: " + std::to_string(entries) + " frequencies" +
        (predicted ? " and " + std::to_string(elements) + " predictors" : std::string()) +
        " announced, " + std::to_string(in.remaining()) + " bytes left");
  }
  if (predicted) {
    predictor.elements.resize(elements);
    for (uint32_t i = 0; i < elements; ++i) {
      EntropyElementPredictor& element = predictor.elements[i];
      CLEAVE_ASSIGN_OR_RETURN(const uint32_t bias, in.Varint("prediction bias"));
      element.bias = EntropyUnzigzag(bias);
      CLEAVE_ASSIGN_OR_RETURN(const uint32_t taps, in.Varint("prediction tap count"));
      if (taps > kMaxEntropyPredictionTaps) {
        return Status::InvalidArgument("entropy model predictor of element " + std::to_string(i) +
                                       " has " + std::to_string(taps) +
                                       " taps, more than the limit of " +
                                       std::to_string(kMaxEntropyPredictionTaps));
      }
      // The taps left to read, and at least a byte for each later bias, tap count and
      // frequency: what is allocated never exceeds what the input holds.
      if (in.remaining() < uint64_t{2} * taps + uint64_t{2} * (elements - i - 1) + entries) {
        return Status::InvalidArgument("entropy model is truncated in its prediction taps");
      }
      element.taps.resize(taps);
      for (EntropyPredictionTap& tap : element.taps) {
        CLEAVE_ASSIGN_OR_RETURN(tap.distance, in.Varint("prediction tap distance"));
        CLEAVE_ASSIGN_OR_RETURN(const uint32_t weight, in.Varint("prediction tap weight"));
        tap.weight = EntropyUnzigzag(weight);
      }
    }
  }
  std::vector<uint32_t> frequencies(entries);
  for (uint32_t& frequency : frequencies) {
    CLEAVE_ASSIGN_OR_RETURN(frequency, in.Varint("frequencies"));
  }
  if (in.remaining() != 0) {
    return Status::InvalidArgument("entropy model has " + std::to_string(in.remaining()) +
                                   " bytes after its frequencies");
  }
  return Create(alphabet, precision, static_cast<ContextKind>(kind), channels, elements,
                frequencies, static_cast<EntropyTermination>(termination), predictor);
}

nlohmann::json EntropyModel::ToJson() const {
  nlohmann::json json{{"alphabet", alphabet_},
                      {"precision", precision_},
                      {"context", ContextKindName(kind_)},
                      {"termination", EntropyTerminationName(termination_)},
                      {"channels", channels_},
                      {"elements", elements_},
                      {"frequencies", Frequencies()},
                      {"fingerprint", FingerprintHex()}};
  if (kind_ == ContextKind::kPerElementPredicted) {
    json["predictor"] = EntropyPredictorToJson(Predictor());
  }
  return json;
}

Result<EntropyModel> EntropyModel::FromJson(const nlohmann::json& json) {
  if (!json.is_object()) return Status::InvalidArgument("entropy model JSON is not an object");
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t alphabet, EntropyJsonUint32(json, "alphabet"));
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t precision, EntropyJsonUint32(json, "precision"));
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t channels, EntropyJsonUint32(json, "channels"));
  CLEAVE_ASSIGN_OR_RETURN(const uint32_t elements, EntropyJsonUint32(json, "elements"));
  const auto context = json.find("context");
  if (context == json.end() || !context->is_string()) {
    return Status::InvalidArgument("entropy model JSON's \"context\" is missing or not a string");
  }
  CLEAVE_ASSIGN_OR_RETURN(const ContextKind kind,
                          ParseContextKind(context->get_ref<const std::string&>()));
  const auto end = json.find("termination");
  if (end == json.end() || !end->is_string()) {
    return Status::InvalidArgument(
        "entropy model JSON's \"termination\" is missing or not a string");
  }
  CLEAVE_ASSIGN_OR_RETURN(const EntropyTermination termination,
                          ParseEntropyTermination(end->get_ref<const std::string&>()));
  EntropyPredictor predictor;
  const auto predictor_json = json.find("predictor");
  if (kind == ContextKind::kPerElementPredicted) {
    if (predictor_json == json.end()) {
      return Status::InvalidArgument(
          "entropy model JSON of a per_element_predicted model has no \"predictor\"");
    }
    CLEAVE_ASSIGN_OR_RETURN(predictor, EntropyPredictorFromJson(*predictor_json));
  } else if (predictor_json != json.end()) {
    return Status::InvalidArgument(std::string("entropy model JSON of a ") + ContextKindName(kind) +
                                   " model has a \"predictor\"");
  }
  CLEAVE_RETURN_IF_ERROR(ValidateEntropyLayoutValue(
      alphabet, precision, static_cast<uint32_t>(kind), channels, elements, predictor.buckets));
  const auto table = json.find("frequencies");
  if (table == json.end() || !table->is_array()) {
    return Status::InvalidArgument(
        "entropy model JSON's \"frequencies\" is missing or not an array");
  }
  std::vector<uint32_t> frequencies;
  frequencies.reserve(std::min<size_t>(table->size(), kMaxEntropyTableEntries));
  for (const nlohmann::json& value : *table) {
    if (!value.is_number_unsigned() ||
        value.get<uint64_t>() > std::numeric_limits<uint32_t>::max()) {
      return Status::InvalidArgument(
          "entropy model JSON's \"frequencies\" holds something other than unsigned 32-bit "
          "integers");
    }
    frequencies.push_back(value.get<uint32_t>());
  }
  CLEAVE_ASSIGN_OR_RETURN(EntropyModel model, Create(alphabet, precision, kind, channels, elements,
                                                     frequencies, termination, predictor));
  if (const auto fingerprint = json.find("fingerprint"); fingerprint != json.end()) {
    if (!fingerprint->is_string() ||
        fingerprint->get_ref<const std::string&>() != model.FingerprintHex()) {
      return Status::InvalidArgument("entropy model JSON's \"fingerprint\" " + fingerprint->dump() +
                                     " does not match its tables (" + model.FingerprintHex() + ")");
    }
  }
  return model;
}

std::string EntropyModel::FingerprintHex() const {
  char hex[9];
  std::snprintf(hex, sizeof(hex), "%08x", fingerprint_);
  return hex;
}

EntropyPredictor EntropyModel::Predictor() const {
  EntropyPredictor predictor;
  if (kind_ != ContextKind::kPerElementPredicted) return predictor;
  predictor.buckets = prediction_buckets_;
  predictor.elements.resize(elements_);
  for (uint32_t i = 0; i < elements_; ++i) {
    predictor.elements[i].bias = bias_[i];
    for (uint32_t t = tap_begin_[i]; t < tap_begin_[i + 1]; ++t) {
      predictor.elements[i].taps.push_back({tap_distance_[t], tap_weight_[t]});
    }
  }
  return predictor;
}

uint32_t EntropyModel::TableOf(uint32_t element, const uint8_t* symbols) const {
  switch (kind_) {
    case ContextKind::kShared: return 0;
    case ContextKind::kPerChannel: return element / elements_per_channel_;
    case ContextKind::kPerElement: return element;
    case ContextKind::kPerElementPredicted: {
      // common/entropy_predictor.h: |acc| < 2^31 * (1 + 64 * 255) < 2^46.
      int64_t acc = bias_[element];
      for (uint32_t t = tap_begin_[element]; t < tap_begin_[element + 1]; ++t) {
        acc += int64_t{tap_weight_[t]} * symbols[element - tap_distance_[t]];
      }
      const uint64_t span = uint64_t{alphabet_} << kEntropyPredictionFractionBits;
      const uint64_t clamped = acc <= 0 ? 0 : std::min(static_cast<uint64_t>(acc), span - 1);
      return element * prediction_buckets_ +
             static_cast<uint32_t>(clamped * prediction_buckets_ / span);
    }
  }
  return 0;
}

uint32_t EntropyModel::Frequency(uint32_t table, uint32_t symbol) const {
  const uint32_t* cumulative = Cumulative(table);
  return cumulative[symbol + 1] - cumulative[symbol];
}

std::vector<uint32_t> EntropyModel::Frequencies() const {
  std::vector<uint32_t> out;
  out.reserve(size_t{table_count_} * alphabet_);
  for (uint32_t t = 0; t < table_count_; ++t) {
    for (uint32_t s = 0; s < alphabet_; ++s) out.push_back(Frequency(t, s));
  }
  return out;
}

double EntropyModel::CostBits(const uint8_t* symbols, size_t count) const {
  double bits = 0;
  for (size_t i = 0; i < count; ++i) {
    bits +=
        precision_ - std::log2(Frequency(TableOf(static_cast<uint32_t>(i), symbols), symbols[i]));
  }
  return bits;
}

}  // namespace cleave
