# Shared compile settings for every cleave target (no global flag rewriting).
function(cleave_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra)
  if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    # Lock annotations (common/thread_annotations.h) are checked, and a violation fails.
    target_compile_options(${target} PRIVATE -Wthread-safety -Werror=thread-safety)
  endif()
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
  cleave_unity(${name})
endfunction()

# Unity ("jumbo") builds: CMake compiles a library's sources CLEAVE_UNITY_BATCH at a time as one
# translation unit. Most of a clean build is each libtorch-using file loading the precompiled
# <torch/torch.h> and instantiating the same json/fmt/torch templates again; batching pays that
# once per batch. Measured on 2 cores (docs/operations.md, "Build time"). Off
# (-DCLEAVE_UNITY_BUILD=OFF) for editing one file at a time, where it rebuilds the whole batch.
option(CLEAVE_UNITY_BUILD "Compile each library in batches of files (faster clean builds)" ON)
set(CLEAVE_UNITY_BATCH 8 CACHE STRING "Source files per unity batch")
function(cleave_unity target)
  if(CLEAVE_UNITY_BUILD)
    set_target_properties(${target} PROPERTIES UNITY_BUILD ON
      UNITY_BUILD_BATCH_SIZE ${CLEAVE_UNITY_BATCH})
  endif()
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

# Lock annotations (common/thread_annotations.h) are checked by clang's -Wthread-safety;
# cleave_target_defaults makes a violation an error in clang builds (the fuzz build of
# scripts/test), which compiles cleave_common in full. This adds the rest cheaply: an OBJECT
# library, built by nothing else, of every split/edge/cloud/federated/tools .cc that uses the
# annotations (itself or in its own header: fl_client.h for fl_client_secure.cc), compiled at -O0 without
# debug info on a precompiled <torch/torch.h>. Only the diagnostics matter; nothing links it.
# Files are selected at configure time, and editing any candidate re-runs the configure, so a
# file that starts using the annotations joins the check on the next build.
function(cleave_thread_safety_check)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    return()
  endif()
  # Annotated code includes one of these two headers.
  set(annotated_regex "^#include \"common/(mutex|thread_annotations)\\.h\"")
  set(checked)
  set(scanned)
  foreach(lib split edge cloud federated tools)
    file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/${lib}/*.cc)
    file(GLOB headers CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/${lib}/*.h)
    foreach(src ${srcs})
      # The file and its own headers: edge/fl_client.h for edge/fl_client_secure.cc.
      get_filename_component(stem ${src} NAME_WE)
      set(files ${src})
      foreach(header ${headers})
        get_filename_component(header_stem ${header} NAME_WE)
        string(FIND "${stem}" "${header_stem}" at)
        if(at EQUAL 0)
          list(APPEND files ${header})
        endif()
      endforeach()
      list(APPEND scanned ${files})
      foreach(file ${files})
        file(STRINGS ${file} hits REGEX "${annotated_regex}" LIMIT_COUNT 1)
        if(hits)
          list(APPEND checked ${src})
          break()
        endif()
      endforeach()
    endforeach()
  endforeach()
  list(REMOVE_DUPLICATES scanned)
  set_property(DIRECTORY ${CMAKE_SOURCE_DIR} APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${scanned})
  if(NOT checked)
    return()
  endif()
  list(LENGTH checked count)
  message(STATUS "cleave: -Wthread-safety check of ${count} split/edge/cloud/federated/tools files")
  add_library(cleave_thread_safety_check OBJECT ${checked})
  # For include paths and definitions only: an OBJECT library links nothing.
  target_link_libraries(cleave_thread_safety_check PRIVATE cleave_tools cleave_cloud)
  cleave_target_defaults(cleave_thread_safety_check)
  target_compile_options(cleave_thread_safety_check PRIVATE -O0 -g0)
  target_precompile_headers(cleave_thread_safety_check PRIVATE <torch/torch.h>)
  set_target_properties(cleave_thread_safety_check PROPERTIES EXCLUDE_FROM_ALL ON)
endfunction()
