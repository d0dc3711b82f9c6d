// Corpus replay without libFuzzer: runs a fuzz target's LLVMFuzzerTestOneInput on every
// file given, or on every regular file in a folder given, in name order. Linked with each
// tests/fuzz/*_fuzz.cc in the normal build, so ctest replays the checked-in seed corpus
// (tests/fuzz/corpus/<target>/) as regression tests without clang.
//
//   <target>_replay PATH...
//
// A target that rejects an input aborts, as it would under libFuzzer, so the test fails.
// Exit 0 when every input ran; 1 when an input could not be read or none was found.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

// The files named by `arg`: itself, or the regular files in it when it is a folder.
bool Collect(const fs::path& arg, std::vector<fs::path>& out) {
  std::error_code ec;
  if (fs::is_directory(arg, ec)) {
    for (const fs::directory_entry& e : fs::directory_iterator(arg, ec)) {
      if (e.is_regular_file()) out.push_back(e.path());
    }
    return !ec;
  }
  if (!fs::is_regular_file(arg, ec)) return false;
  out.push_back(arg);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    if (!Collect(argv[i], inputs)) {
      std::fprintf(stderr, "error: %s is neither a readable file nor a folder\n", argv[i]);
      return 1;
    }
  }
  if (inputs.empty()) {
    std::fprintf(stderr, "error: no inputs to replay (usage: %s FILE_OR_FOLDER...)\n", argv[0]);
    return 1;
  }
  std::sort(inputs.begin(), inputs.end());
  for (const fs::path& path : inputs) {
    std::ifstream in(path, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) {
      std::fprintf(stderr, "error: cannot read %s\n", path.c_str());
      return 1;
    }
    std::printf("replaying %s (%zu bytes)\n", path.filename().c_str(), bytes.size());
    std::fflush(stdout);  // names the input if the target aborts on it
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }
  std::printf("%zu inputs replayed\n", inputs.size());
  return 0;
}
