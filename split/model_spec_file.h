// A VisionModelSpec declared in a file, so a researcher can describe blocks, split point,
// bottleneck and exits without writing C++ (docs/design.md, "Model spec files").
//
// The fields are VisionModelSpec::ToJson's, in JSON or TOML (the extension decides):
//   blocks        required, a non-empty array of tables ([[blocks]] in TOML), each with
//                 type (conv | fused_mb | res | maxpool | linear | classifier), in_channels,
//                 out_channels (required) and kernel (3), stride (1), expansion (2),
//                 relu (true), batch_norm (true), padding (-1 = kernel / 2), role
//                 ("" | "encoder" | "decoder") (optional, defaults in parentheses);
//   exits         optional array of {after_block (required), hidden_channels (32)}; none;
//   split_after   optional; default: the index of the block whose role is "encoder" (the
//                 bottleneck), -1 (no split) when no block has that role;
//   input_channels  optional; default blocks[0].in_channels;
//   num_classes     optional; default the last block's out_channels;
//   image_size      optional; default 28 (VisionModelSpec's);
//   input_mean, input_std  optional, a number or one per channel; default VisionModelSpec's
//                 (Fashion-MNIST statistics).
// The input fields only matter where no data is at hand: `cleave train`, `cleave sim` and the
// aggregator with eval data re-seat the spec for the data (VisionModelSpec::ForInput). Every
// other key is an error (a misspelt "strid" must not silently become stride 1).
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"
#include "split/vision_model.h"

namespace cleave::split {

// Whether `value` names a model spec file (ends in ".json" or ".toml") rather than a
// built-in model.
bool IsModelSpecPath(std::string_view value);

// Reads and validates the spec in `path` (format by extension). Errors name the file, the
// field ("blocks[2].stride") and, for TOML, the line: NotFound/IoError for an unreadable
// file, InvalidArgument for another extension, a syntax error (with line and column), a
// missing, unknown or mistyped field, or a spec that fails VisionModelSpec::Validate.
Result<VisionModelSpec> LoadVisionModelSpecFile(const std::string& path);

// The same from text; `name` stands for the file in messages and its extension decides the
// format.
Result<VisionModelSpec> ParseVisionModelSpec(std::string_view text, const std::string& name);

// `spec` as a TOML model spec file (every field written), which ParseVisionModelSpec reads
// back to the same spec: a starting point for editing a preset.
std::string VisionModelSpecToToml(const VisionModelSpec& spec);

}  // namespace cleave::split
