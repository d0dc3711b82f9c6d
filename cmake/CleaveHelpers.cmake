# Shared compile settings for every cleave target (no global flag rewriting).
function(cleave_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra)
  if(CLEAVE_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()

# A library made of every .cc in the current folder (tests and main files excluded).
# Sources are globbed with CONFIGURE_DEPENDS so adding a file needs no list edit.
function(cleave_library name)
  file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cc)
  list(FILTER srcs EXCLUDE REGEX "(_main|_test)\\.cc$")
  if(NOT srcs)
    # A library that has no code yet still links, so dependents need no special case.
    set(srcs ${CMAKE_BINARY_DIR}/cleave_empty.cc)
    file(WRITE ${srcs} "// intentionally empty\n")
  endif()
  add_library(${name} STATIC ${srcs})
  add_library(cleave::${name} ALIAS ${name})
  target_include_directories(${name} PUBLIC ${CMAKE_SOURCE_DIR})
  cleave_target_defaults(${name})
endfunction()

# libtorch headers are heavy: cleave_split compiles <torch/torch.h> once as a precompiled
# header and every other torch user reuses it (same flags, so REUSE_FROM is valid).
function(cleave_use_torch_pch target)
  if(target STREQUAL "cleave_split")
    target_precompile_headers(${target} PRIVATE <torch/torch.h>)
  else()
    target_precompile_headers(${target} REUSE_FROM cleave_split)
  endif()
endfunction()
