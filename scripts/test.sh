#!/usr/bin/env bash
# The project's test command (what CI runs via .ci/run, and what contributors run locally).
#
# Steps: install missing test dependencies (restic, time, the S3 test
# servers), check formatting, run clippy with warnings as errors, then run
# every test in the workspace (cargo-nextest when installed, else cargo test).
# All steps run even if an earlier one fails, so one run reports every problem;
# the exit status is non-zero if any step failed.
#
# The tests start the S3/DynamoDB test servers they need on demand
# (scripts/test-servers.sh); at the end, also after a failure or an interrupt,
# this script stops those that were not already running before it began.
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

# Servers already running (someone else's) are left alone; the rest are stopped at the end.
SERVERS_BEFORE=" "
for server in moto rgw postgres redis; do
  if scripts/test-servers.sh running "$server" 2>/dev/null; then SERVERS_BEFORE+="$server "; fi
done
echo "servers:   $(scripts/test-servers.sh status 2>&1)"
stop_servers() {
  local server stop=()
  for server in moto rgw postgres redis; do
    if [[ $SERVERS_BEFORE == *" $server "* ]]; then
      echo "leaving the $server test server running (it was running before the tests)"
    else
      stop+=("$server")
    fi
  done
  [ ${#stop[@]} -gt 0 ] || return 0
  step "stop the test servers: ${stop[*]}"
  for server in "${stop[@]}"; do
    scripts/test-servers.sh stop "$server" || echo "warning: could not stop the $server test server" >&2
  done
}
trap stop_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

stop_servers
trap - EXIT

echo
if [ ${#FAILED[@]} -ne 0 ]; then
  echo "==> FAILED steps:"
  printf '    %s\n' "${FAILED[@]}"
  exit 1
fi
echo "==> all steps passed"
