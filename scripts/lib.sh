# shellcheck shell=bash
# Helpers shared by scripts/demo.sh and bench/volume.sh (sourced, not run).
#
# They build the cairn binary the same way everywhere and find the directory a
# backup tool actually restored a tree into (tools differ: some restore the
# directory's contents straight into the target, some recreate its absolute
# path under the target).

# Repository root (this file lives in scripts/).
CAIRN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# cairn_build: build `cargo build --release -p cairn` and print the binary's path.
# Set CAIRN_BIN to use an existing binary instead (no build). Build output goes to stderr.
cairn_build() {
  if [ -n "${CAIRN_BIN:-}" ]; then
    [ -x "$CAIRN_BIN" ] || die "CAIRN_BIN=$CAIRN_BIN is not an executable file"
    printf '%s\n' "$CAIRN_BIN"
    return 0
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust: https://rustup.rs), or set CAIRN_BIN"
  local json bin=""
  json=$(mktemp)
  # JSON messages (stdout) tell us where the executable went, whatever the target dir is
  # (CARGO_TARGET_DIR, .cargo/config.toml, ...); human-readable diagnostics go to stderr.
  if ! (cd "$CAIRN_ROOT" && cargo build --release -p cairn --message-format=json-render-diagnostics) >"$json"; then
    rm -f "$json"
    die "cargo build --release -p cairn failed"
  fi
  bin=$(python3 -c '
import json, sys
exe = ""
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    t = m.get("target") or {}
    if m.get("reason") == "compiler-artifact" and t.get("name") == "cairn" and "bin" in t.get("kind", []):
        exe = m.get("executable") or exe
print(exe)
' "$json" 2>/dev/null || true)
  rm -f "$json"
  if [ -z "$bin" ]; then   # fall back to the documented layout
    local target=${CARGO_TARGET_DIR:-target}
    case "$target" in /*) ;; *) target=$CAIRN_ROOT/$target ;; esac
    bin=$target/release/cairn
  fi
  [ -x "$bin" ] || die "built cairn but cannot find the binary (looked at $bin)"
  printf '%s\n' "$bin"
}

# restored_root TARGET SRC [MARKER]: print the directory under TARGET that holds the
# restored copy of SRC (TARGET itself, TARGET/<absolute SRC>, or TARGET/<basename SRC>).
# MARKER is a relative path that must exist in the restored copy (default: the first
# entry of SRC). Prints nothing and returns 1 if none matches.
restored_root() {
  local target=$1 src srcp marker=${3:-} cand
  src=$(cd "$2" && pwd)      # as the tool was given it (we pass absolute paths) ...
  srcp=$(cd "$2" && pwd -P)  # ... or with symlinks resolved
  if [ -z "$marker" ]; then
    marker=$(cd "$src" && find . -mindepth 1 -maxdepth 1 -print | LC_ALL=C sort | head -1)
    marker=${marker#./}
    [ -n "$marker" ] || { printf '%s\n' "$target"; return 0; }   # empty source: nothing to find
  fi
  for cand in "$target$src" "$target$srcp" "$target/$(basename "$src")" "$target"; do
    if [ -e "$cand/$marker" ] || [ -L "$cand/$marker" ]; then
      printf '%s\n' "$cand"
      return 0
    fi
  done
  return 1
}
