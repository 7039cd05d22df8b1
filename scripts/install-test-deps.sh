#!/usr/bin/env bash
# Installs the system packages the test suite needs, if they are missing.
#
# The end-to-end tests check cairn against the real restic (the repository
# format is restic's), and the benchmark measures peak memory with
# /usr/bin/time. Safe to run any number of times: when everything is present
# it only checks and exits 0, and `apt-get update` runs only when something
# actually has to be installed.
#
# As root it uses apt-get directly; otherwise through sudo if available, else
# it prints what to install and exits 1.
#
#   scripts/install-test-deps.sh
#   CAIRN_EXTRA_TEST_DEPS="pkg pkg:command" scripts/install-test-deps.sh   # one-off extras
set -euo pipefail

# "package:what-to-check" — a command name, an absolute path, or nothing (then the
# package itself must be installed according to dpkg). A tool installed by other
# means (e.g. a restic binary in PATH) counts as present. Add new test needs here.
DEPS=(
  "restic:restic"        # e2e tests: cross-checks against the reference implementation (>= 0.14 for format v2)
  "time:/usr/bin/time"   # bench/volume.sh: peak RSS (/usr/bin/time -f %M)
)
# shellcheck disable=SC2206  # word splitting is the point
[ -n "${CAIRN_EXTRA_TEST_DEPS:-}" ] && DEPS+=(${CAIRN_EXTRA_TEST_DEPS})

present() {   # present PACKAGE CHECK
  local pkg=$1 check=$2
  case "$check" in
    "") dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ;;
    /*) [ -x "$check" ] ;;
    *) command -v "$check" >/dev/null 2>&1 ;;
  esac
}

missing_pkgs() {
  local dep pkg check
  for dep in "${DEPS[@]}"; do
    pkg=${dep%%:*}
    check=""
    [[ $dep == *:* ]] && check=${dep#*:}
    present "$pkg" "$check" || printf '%s\n' "$pkg"
  done
}

restic_version_note() {   # restic < 0.14 cannot read repository format v2
  command -v restic >/dev/null 2>&1 || return 0
  local v
  v=$(restic version 2>/dev/null | awk '{print $2; exit}')
  case "$v" in
    0.[0-9].*|0.1[0-3].*) echo "warning: restic $v found; the tests need restic >= 0.14 (repository format v2)" >&2 ;;
  esac
}

mapfile -t MISSING < <(missing_pkgs)
if [ ${#MISSING[@]} -eq 0 ]; then
  names=(); for d in "${DEPS[@]}"; do names+=("${d%%:*}"); done
  echo "test dependencies present: ${names[*]}"
  restic_version_note
  exit 0
fi

echo "missing test dependencies: ${MISSING[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get on this system: install these packages with your package manager: ${MISSING[*]}" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "not root and no sudo: run as root:  apt-get update && apt-get install -y ${MISSING[*]}" >&2
  exit 1
fi

apt() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }
# A stale or unreachable extra source should not stop the install from the main archive.
apt update -qq || echo "warning: apt-get update reported errors; trying the install anyway" >&2
apt install -y -qq --no-install-recommends "${MISSING[@]}"

mapfile -t STILL < <(missing_pkgs)
if [ ${#STILL[@]} -ne 0 ]; then
  echo "still missing after apt-get install: ${STILL[*]}" >&2
  exit 1
fi
restic_version_note
echo "installed: ${MISSING[*]}"
