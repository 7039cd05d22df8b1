#!/usr/bin/env bash
# Runs cairn's main job end to end on its embedded default: back up a directory
# into a local repository, list it, restore it, verify the repository, and
# compare the restored tree with the source byte for byte.
#
# It is the quickest way to see cairn work (and to check a build does): every
# step is printed as it runs, and the script exits non-zero if any step fails
# or the restored tree differs from the source.
#
#   scripts/demo.sh            # back up a small generated sample directory
#   scripts/demo.sh PATH       # back up PATH instead
#
# Environment:
#   CAIRN_REPOSITORY           repository directory (default: a new one in a temp dir)
#   CAIRN_PASSWORD[_FILE]      repository password (default: a generated password file)
#   CAIRN_BIN                  use this cairn binary instead of building one
# Everything else (sample, password, restore) goes to a new temp directory, which is
# kept so you can look at it; its path is printed at the end.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -le 1 ] || die "usage: scripts/demo.sh [PATH]"
SRC=${1:-}
[ -z "$SRC" ] || [ -d "$SRC" ] || die "$SRC is not a directory"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-demo.XXXXXX")
on_exit() {
  local rc=$?
  [ "$rc" -eq 0 ] || printf '\ndemo FAILED (exit %s); its files are in %s\n' "$rc" "$WORK" >&2
}
trap on_exit EXIT

step() { printf '\n==> %s\n' "$*"; }
cairn() { printf '+ cairn %s\n' "$*"; "$CAIRN" "$@" </dev/null; }   # never wait for a password prompt

if [ -n "${CAIRN_BIN:-}" ]; then step "use cairn binary CAIRN_BIN"; else step "build cairn (cargo build --release -p cairn)"; fi
CAIRN=$(cairn_build)
echo "binary: $CAIRN"
"$CAIRN" --version </dev/null || true

if [ -z "$SRC" ]; then
  SRC=$WORK/sample
  step "create a sample directory: $SRC"
  mkdir -p "$SRC/docs/guides" "$SRC/data/nested/deeper" "$SRC/empty-dir" "$SRC/bin"
  printf 'cairn demo sample\n' >"$SRC/README.txt"
  for i in $(seq 1 20); do
    printf '# Guide %d\n\nSome text for guide %d.\n' "$i" "$i" >"$SRC/docs/guides/guide-$i.md"
  done
  seq 1 200000 | sed 's/^/2024-03-01T00:00:00Z INFO request served id=/' >"$SRC/data/app.log"   # compressible
  head -c $((6 * 1024 * 1024)) /dev/urandom >"$SRC/data/random.bin"                             # incompressible, several chunks
  cp "$SRC/data/random.bin" "$SRC/data/nested/deeper/random-copy.bin"                           # deduplicated
  : >"$SRC/data/empty.txt"
  printf 'spaces and unicode\n' >"$SRC/data/name with spaces – ü.txt"
  printf '#!/bin/sh\necho hello\n' >"$SRC/bin/hello.sh"
  chmod 755 "$SRC/bin/hello.sh"
  ln -s ../README.txt "$SRC/docs/readme-link"
fi
SRC=$(cd "$SRC" && pwd)
echo "source: $SRC ($(du -sh --apparent-size "$SRC" | cut -f1), $(find "$SRC" -type f | wc -l) files)"

export CAIRN_REPOSITORY=${CAIRN_REPOSITORY:-$WORK/repo}
if [ -z "${CAIRN_PASSWORD:-}" ] && [ -z "${CAIRN_PASSWORD_FILE:-}" ]; then
  [ ! -f "$CAIRN_REPOSITORY/config" ] ||
    die "$CAIRN_REPOSITORY is an existing repository: set CAIRN_PASSWORD or CAIRN_PASSWORD_FILE"
  export CAIRN_PASSWORD_FILE=$WORK/password
  (umask 077 && head -c 24 /dev/urandom | base64 >"$CAIRN_PASSWORD_FILE")
  echo "generated password file: $CAIRN_PASSWORD_FILE"
fi

if [ -f "$CAIRN_REPOSITORY/config" ]; then
  step "use the existing repository $CAIRN_REPOSITORY"
else
  step "initialise the repository $CAIRN_REPOSITORY"
  cairn init
fi

step "back up $SRC"
cairn backup volume "$SRC"

step "list snapshots"
cairn snapshots

RESTORE=$WORK/restore
step "restore the latest snapshot into $RESTORE"
cairn restore latest --to "$RESTORE"

step "check the repository, reading all data"
cairn check --read-data

step "compare the source with the restored tree (diff -r)"
ROOT=$(restored_root "$RESTORE" "$SRC") || die "cannot find the restored copy of $SRC under $RESTORE"
diff -r --no-dereference "$SRC" "$ROOT"
echo "identical: $SRC and $ROOT"

cat <<EOF

==> demo passed
  binary:      $CAIRN
  source:      $SRC
  repository:  $CAIRN_REPOSITORY
  password:    ${CAIRN_PASSWORD_FILE:-(from CAIRN_PASSWORD)}
  restored to: $ROOT
  clean up:    rm -rf $WORK
EOF
