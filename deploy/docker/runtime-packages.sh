#!/bin/sh
# Prints the Debian packages that own the shared libraries the given binaries load, one per
# line, sorted: what the runtime image must install (apt pulls their dependencies). Run in
# the build stage, where every -dev package and its runtime library is installed.
#   deploy/docker/runtime-packages.sh build/bin/cleave-cloud > runtime-packages.txt
set -eu

owner() {
  # dpkg records the path a package shipped. With merged /usr, ldd may report /lib/... for a
  # file shipped as /usr/lib/... (or the reverse), and alternatives (libblas.so.3 ->
  # OpenBLAS) are symlinks no package owns: try the path, its target and both spellings.
  for path in "$1" "$(readlink -f "$1")"; do
    for candidate in "$path" "${path#/usr}" "/usr${path}"; do
      if out=$(dpkg-query -S "$candidate" 2>/dev/null); then
        printf '%s\n' "$out" | sed -n '1s/: .*//p' | tr ',' '\n' | sed 's/^ *//; s/:.*//'
        return 0
      fi
    done
  done
  echo "runtime-packages.sh: no package owns $1" >&2
  return 1
}

for bin in "$@"; do
  # "libfoo.so.1 => /path (0x...)" lines; the dynamic loader's own line is "/path (0x...)".
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do
  owner "$lib"
done | sort -u
