// Where the build puts the daemons and the cleave CLI (build/bin): CLEAVE_BIN_DIR, which
// tests/CMakeLists.txt compiles into every test binary.
#pragma once

#include <filesystem>

namespace cleave {

inline const std::filesystem::path kBin = CLEAVE_BIN_DIR;

}  // namespace cleave
