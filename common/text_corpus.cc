#include "common/text_corpus.h"

#include <algorithm>
#include <filesystem>

#include "common/file_util.h"

namespace cleave {

std::vector<std::string> SplitFortuneEntries(const std::string& text) {
  std::vector<std::string> entries;
  std::string current;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    const bool last = end == std::string::npos;
    if (last) end = text.size();
    std::string line = text.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    pos = last ? text.size() : end + 1;
    if (line == "%") {
      if (current.find_first_not_of(" \t\n") != std::string::npos) entries.push_back(current);
      current.clear();
      continue;
    }
    current += line;
    current += '\n';
  }
  if (current.find_first_not_of(" \t\n") != std::string::npos) entries.push_back(current);
  return entries;
}

Result<TextCorpus> LoadFortunes(const std::string& dir, int held_out_every) {
  if (held_out_every < 2) {
    return Status::InvalidArgument("fortunes: held_out_every must be >= 2");
  }
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return Status::NotFound("no fortune directory at " + dir +
                            " (install the Debian package 'fortunes')");
  }
  TextCorpus corpus;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::filesystem::path& p = entry.path();
    if (entry.is_symlink(ec) || !entry.is_regular_file(ec)) continue;
    if (p.has_extension()) continue;  // .dat indexes (and .u8, which are symlinks anyway)
    corpus.files.push_back(p.filename().string());
  }
  if (ec) return Status::IoError("fortunes: cannot list " + dir + ": " + ec.message());
  std::sort(corpus.files.begin(), corpus.files.end());
  if (corpus.files.empty()) {
    return Status::NotFound("no fortune files in " + dir +
                            " (install the Debian package 'fortunes')");
  }
  int64_t index = 0;
  for (const std::string& name : corpus.files) {
    CLEAVE_ASSIGN_OR_RETURN(const std::string text,
                            ReadFileToString((std::filesystem::path(dir) / name).string()));
    for (const std::string& e : SplitFortuneEntries(text)) {
      const bool held = index % held_out_every == held_out_every - 1;
      std::string& side = held ? corpus.held_out : corpus.train;
      side += e;
      side += '\n';
      ++(held ? corpus.held_out_entries : corpus.train_entries);
      ++index;
    }
  }
  if (corpus.held_out_entries == 0) {
    return Status::NotFound("fortunes: fewer than " + std::to_string(held_out_every) +
                            " entries in " + dir);
  }
  return corpus;
}

}  // namespace cleave
