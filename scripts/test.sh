#!/usr/bin/env bash
# The project's test command (what CI runs via .ci/run, and what contributors run locally).
#
# Steps: install missing system test dependencies (restic, time), check
# formatting, run clippy with warnings as errors, then run every test in the
# workspace (cargo-nextest when installed, else cargo test). All steps run even
# if an earlier one fails, so one run reports every problem; the exit status is
# non-zero if any step failed.
#
#   scripts/test.sh
#   CAIRN_TEST_SKIP_LINT=1 scripts/test.sh    # skip fmt and clippy (quick local runs)
#   scripts/test.sh -E 'test(restore)'        # extra arguments go to the test runner
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

FAILED=()
step() { printf '\n==> %s\n' "$*"; }
run() {   # run NAME CMD...: run one step and remember whether it failed
  local name=$1; shift
  step "$name"
  local t0=$SECONDS
  if "$@"; then
    echo "--- ok: $name ($((SECONDS - t0))s)"
  else
    local rc=$?
    echo "--- FAILED (exit $rc): $name ($((SECONDS - t0))s)"
    FAILED+=("$name")
  fi
}

step "install test dependencies: scripts/install-test-deps.sh"
if ! scripts/install-test-deps.sh; then
  echo "--- FAILED: cannot install the test dependencies; not running the tests" >&2
  exit 1
fi
command -v cargo >/dev/null 2>&1 || { echo "--- FAILED: cargo not found (install Rust: https://rustup.rs)" >&2; exit 1; }
echo "toolchain: $(cargo --version 2>&1)"
echo "restic:    $(restic version 2>&1 | head -1)"

if [ "${CAIRN_TEST_SKIP_LINT:-0}" = 1 ]; then
  step "skipping cargo fmt and cargo clippy (CAIRN_TEST_SKIP_LINT=1)"
else
  run "cargo fmt --all -- --check" cargo fmt --all -- --check
  run "cargo clippy --workspace --all-targets -- -D warnings" \
    cargo clippy --workspace --all-targets -- -D warnings
fi

if cargo nextest --version >/dev/null 2>&1; then
  run "cargo nextest run --workspace --no-fail-fast${*:+ $*}" cargo nextest run --workspace --no-fail-fast "$@"
  # nextest does not run doctests
  run "cargo test --workspace --doc" cargo test --workspace --doc --no-fail-fast
else
  run "cargo test --workspace --no-fail-fast${*:+ $*} (cargo-nextest not installed)" \
    cargo test --workspace --no-fail-fast "$@"
fi

echo
if [ ${#FAILED[@]} -ne 0 ]; then
  echo "==> FAILED steps:"
  printf '    %s\n' "${FAILED[@]}"
  exit 1
fi
echo "==> all steps passed"
