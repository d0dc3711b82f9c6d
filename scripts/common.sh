# Shared by scripts/demo and scripts/test. Source it; do not run it.
set -euo pipefail

CLEAVE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLEAVE_BUILD="${CLEAVE_BUILD:-$CLEAVE_ROOT/build}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Installs whatever packages from scripts/packages.txt are missing (apt-get; sudo when not root).
cleave_install_deps() {
  local -a wanted=() missing=()
  mapfile -t wanted < <(grep -v -E '^\s*(#|$)' "$CLEAVE_ROOT/scripts/packages.txt")
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "all ${#wanted[@]} Debian packages present"
    return 0
  fi
  log "installing ${#missing[@]} missing Debian packages: ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: not root and sudo is missing; install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Configures (once) and builds into $CLEAVE_BUILD: everything, or only the targets given
# (scripts/demo builds just the three binaries; the test binaries are most of the build).
cleave_build() {
  local jobs
  jobs=$(nproc 2>/dev/null || echo 2)
  if [ ! -f "$CLEAVE_BUILD/build.ninja" ]; then
    log "configuring into $CLEAVE_BUILD"
    cmake -S "$CLEAVE_ROOT" -B "$CLEAVE_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
  fi
  if [ $# -gt 0 ]; then
    log "building $* with $jobs jobs"
    cmake --build "$CLEAVE_BUILD" -j "$jobs" --target "$@"
  else
    log "building everything with $jobs jobs"
    cmake --build "$CLEAVE_BUILD" -j "$jobs"
  fi
}

# Builds the libFuzzer targets (tests/fuzz/, one per wire decoder) with clang into
# $CLEAVE_ROOT/build-fuzz and runs each for CLEAVE_FUZZ_SECONDS (default 10) from an empty
# corpus; a crash, leak or sanitizer report fails. Before them it builds
# cleave_thread_safety_check: clang's -Wthread-safety over the lock annotations of every
# library (cleave_common is checked by the fuzz build itself); a violation fails.
# Skipped, saying so, without clang++.
cleave_fuzz_smoke() {
  if ! command -v clang++ >/dev/null; then
    log "fuzz smoke: skipped (clang++ is not installed; the libFuzzer targets need clang)"
    return 0
  fi
  local dir="$CLEAVE_ROOT/build-fuzz" seconds="${CLEAVE_FUZZ_SECONDS:-10}" jobs
  jobs=$(nproc 2>/dev/null || echo 2)
  if [ ! -f "$dir/build.ninja" ]; then
    log "fuzz smoke: configuring into $dir (clang, -DCLEAVE_BUILD_FUZZERS=ON)"
    CC=clang CXX=clang++ cmake -S "$CLEAVE_ROOT" -B "$dir" -G Ninja \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCLEAVE_BUILD_FUZZERS=ON >/dev/null
  fi
  # Defined only when some file outside common/ uses the annotations; regenerating first
  # (a no-op when current) also picks up files that started using them.
  ninja -C "$dir" build.ninja >/dev/null
  if ninja -C "$dir" -t query cleave_thread_safety_check >/dev/null 2>&1; then
    log "thread-safety check: clang -Wthread-safety over the annotated files"
    if ! cmake --build "$dir" -j "$jobs" --target cleave_thread_safety_check >"$dir/thread_safety.log" 2>&1; then
      grep -E '(error|warning|note):' "$dir/thread_safety.log" | head -n 40 >&2 || true
      echo "error: clang's thread-safety check failed; full log $dir/thread_safety.log" >&2
      return 1
    fi
  fi
  local -a targets=()
  local src
  for src in "$CLEAVE_ROOT"/tests/fuzz/*_fuzz.cc; do targets+=("$(basename "$src" .cc)"); done
  log "fuzz smoke: building ${targets[*]}"
  if ! cmake --build "$dir" -j "$jobs" --target "${targets[@]}" >"$dir/build.log" 2>&1; then
    grep -E '(error|warning|note):' "$dir/build.log" | head -n 40 >&2 || true
    echo "error: the clang fuzz build failed; full log $dir/build.log" >&2
    return 1
  fi
  local t corpus
  for t in "${targets[@]}"; do
    corpus=$(mktemp -d)
    log "fuzz smoke: $t for ${seconds}s"
    if ! "$dir/bin/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -artifact_prefix="$dir/" "$corpus" \
        >"$dir/$t.log" 2>&1; then
      rm -rf "$corpus"
      tail -n 40 "$dir/$t.log" >&2
      echo "error: fuzz target $t failed; its input is in $dir (crash-*/leak-*), log $dir/$t.log" >&2
      return 1
    fi
    rm -rf "$corpus"
    grep -E '^Done' "$dir/$t.log" >&2 || true
  done
}
