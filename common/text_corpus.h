// English text for the language-model side: the Debian `fortunes` package's fortune files
// (/usr/share/games/fortunes). Each file holds entries separated by lines holding a single
// "%"; the files to read are the plain ones (not the strfile `.dat` indexes, not the `.u8`
// symlinks to the same text, not subdirectories).
//
// The held-out split is fixed: entries are numbered in file-name order, then in file order,
// and every `held_out_every`-th entry (index % held_out_every == held_out_every - 1) is
// held out. Both sides join their entries with the entry text as is (each ends in '\n')
// followed by one blank line, so a model sees entry boundaries.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace cleave {

inline constexpr char kFortunesDir[] = "/usr/share/games/fortunes";

struct TextCorpus {
  std::string train;
  std::string held_out;
  int64_t train_entries = 0;
  int64_t held_out_entries = 0;
  std::vector<std::string> files;  // names read, sorted
};

// NotFound when `dir` is missing or has no fortune files (install the `fortunes` package);
// InvalidArgument when held_out_every < 2; IoError when a file cannot be read.
Result<TextCorpus> LoadFortunes(const std::string& dir = kFortunesDir, int held_out_every = 10);

// Splits one fortune file's text into its entries (without the "%" lines; empty entries
// dropped). Exposed for tests.
std::vector<std::string> SplitFortuneEntries(const std::string& text);

}  // namespace cleave
