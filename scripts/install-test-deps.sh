#!/usr/bin/env bash
# Installs what the test suite needs, if it is missing.
#
# System packages (apt):
#   * restic: the end-to-end tests check cairn against the real restic (the
#     repository format is restic's).
#   * time: the benchmark measures peak memory with /usr/bin/time.
#   * openssl: the PostgreSQL TLS tests make a throwaway CA and certificates.
#   * postgresql (only when no server is installed): the PostgreSQL tests run
#     a scratch cluster (scripts/test-servers.sh) and the real client tools.
#   * radosgw, ceph-mon, ceph-osd, ceph-common: a single-node Ceph cluster
#     with the RADOS gateway, the S3 server with real semantics (SigV4, Object
#     Lock, versioning, Content-MD5, atomic If-None-Match) that the S3 tests
#     run against (scripts/test-servers.sh starts it by hand; no system ceph
#     service is left enabled or running).
#   * redis-server, redis-tools: the Redis tests run scratch servers
#     (scripts/test-servers.sh and per-test ones) and use redis-cli for
#     fixtures; the system's redis-server service is switched off.
# Python packages, in a virtualenv at .test-env/venv:
#   * moto[s3,dynamodb] with flask and flask-cors: `moto_server`, the fast
#     in-memory S3 and DynamoDB server of the tests; boto3 for debugging.
#
# Safe to run any number of times: when everything is present it only checks
# and exits 0; `apt-get update` runs only when a package has to be installed,
# and pip only when the virtualenv is missing or its requirements changed.
#
# As root it uses apt-get directly; otherwise through sudo if available, else
# it prints what to install and exits 1.
#
#   scripts/install-test-deps.sh
#   CAIRN_EXTRA_TEST_DEPS="pkg pkg:command" scripts/install-test-deps.sh   # one-off extras
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.test-env/venv
# What goes into the virtualenv. moto is pinned to the version the S3 and
# DynamoDB tests were checked against; pip resolves the rest to match it.
PY_REQS=("moto[s3,dynamodb]==5.2.5" flask flask-cors boto3)

# "package:what-to-check" — a command name, an absolute path, or nothing (then the
# package itself must be installed according to dpkg). A tool installed by other
# means (e.g. a restic binary in PATH) counts as present. Add new test needs here.
DEPS=(
  "restic:restic"               # e2e tests: cross-checks against the reference implementation (>= 0.14 for format v2)
  "time:/usr/bin/time"          # bench/volume.sh: peak RSS (/usr/bin/time -f %M)
  "curl:curl"                   # scripts/test-servers.sh: health checks of the test servers
  "openssl:openssl"             # tests/postgres_tls.rs: a throwaway CA and server certificate
  "strace:strace"               # tests/common/strace.rs: which writes restores and wal-fetch fsync, in order
  "ceph-common:ceph"            # S3 tests on Ceph RGW: ceph, ceph-authtool, radosgw-admin
  "ceph-mon:ceph-mon"           #   the monitor (its dependency ceph-base has monmaptool)
  "ceph-mon:monmaptool"
  "ceph-osd:ceph-osd"           #   the object store daemon (bluestore on a sparse file)
  "radosgw:radosgw"             #   the S3 gateway
  "redis-server:redis-server"   # Redis tests: the server (7.0 on Debian 12), started by scripts/test-servers.sh
  "redis-tools:redis-cli"       #   redis-cli (fixtures, and the benchmark's `redis-cli --rdb` baseline)
)
# PostgreSQL tests: a server (initdb, pg_ctl, postgres, pgbench) and its client
# tools (pg_dump, pg_restore, psql). Any installed major version will do; when
# none is, the distribution's default `postgresql` package brings both.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  DEPS+=("postgresql:")
fi
# The virtualenv needs python3 with venv and ensurepip (Debian splits them out).
if [ ! -x "$VENV/bin/python" ] && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  DEPS+=("python3-venv:")
fi
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

missing_pkgs() {   # one line per missing package, each package once
  local dep pkg check
  for dep in "${DEPS[@]}"; do
    pkg=${dep%%:*}
    check=""
    [[ $dep == *:* ]] && check=${dep#*:}
    present "$pkg" "$check" || printf '%s\n' "$pkg"
  done | awk '!seen[$0]++'
}

restic_version_note() {   # restic < 0.14 cannot read repository format v2
  command -v restic >/dev/null 2>&1 || return 0
  local v
  v=$(restic version 2>/dev/null | awk '{print $2; exit}')
  case "$v" in
    0.[0-9].*|0.1[0-3].*) echo "warning: restic $v found; the tests need restic >= 0.14 (repository format v2)" >&2 ;;
  esac
}

# Installing the ceph and redis packages may enable (and, where services may
# start, start) the system's ceph and redis units. The tests run their own
# servers on private ports, so switch those units off: nothing of the
# system's ceph or redis stays running.
quiet_system_services() {
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    local units=(ceph.target ceph-mon.target ceph-osd.target ceph-radosgw.target ceph-crash.service
      redis-server.service)
    "${SUDO[@]}" systemctl disable --now "${units[@]}" >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/redis-server ]; then
    "${SUDO[@]}" /etc/init.d/redis-server stop >/dev/null 2>&1 || true
  fi
}

install_apt_pkgs() {
  mapfile -t MISSING < <(missing_pkgs)
  if [ ${#MISSING[@]} -eq 0 ]; then
    local names=() d
    for d in "${DEPS[@]}"; do names+=("${d%%:*}"); done
    echo "system test dependencies present: $(printf '%s\n' "${names[@]}" | awk '!seen[$0]++' | xargs)"
    return 0
  fi

  echo "missing test dependencies: ${MISSING[*]}"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get on this system: install these packages with your package manager: ${MISSING[*]}" >&2
    exit 1
  fi
  if [ "$CAN_ROOT" != 1 ]; then
    echo "not root and no sudo: run as root:  apt-get update && apt-get install -y --no-install-recommends ${MISSING[*]}" >&2
    exit 1
  fi

  apt() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }
  local t0=$SECONDS
  # A stale or unreachable extra source should not stop the install from the main archive.
  apt update -qq || echo "warning: apt-get update reported errors; trying the install anyway" >&2
  # Services may be refused a start by policy-rc.d (containers): fine, the tests
  # start their daemons by hand. dpkg's chatter goes to a log, shown on failure.
  local log
  log=$(mktemp "${TMPDIR:-/tmp}/cairn-apt-install.XXXXXX")
  if ! apt install -y -qq --no-install-recommends "${MISSING[@]}" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "apt-get install failed (full output: $log)" >&2
    exit 1
  fi
  rm -f "$log"
  quiet_system_services

  mapfile -t STILL < <(missing_pkgs)
  if [ ${#STILL[@]} -ne 0 ]; then
    echo "still missing after apt-get install: ${STILL[*]}" >&2
    exit 1
  fi
  echo "installed: ${MISSING[*]} ($((SECONDS - t0))s)"
}

# The virtualenv is up to date when its python runs, the requirement list it was
# built from is the current one, and moto, flask, flask-cors and boto3 import.
venv_ok() {
  [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/moto_server" ] &&
    [ "$(cat "$VENV/.cairn-requirements" 2>/dev/null)" = "${PY_REQS[*]}" ] &&
    "$VENV/bin/python" -c 'import moto, flask, flask_cors, boto3' >/dev/null 2>&1
}

install_venv() {
  if venv_ok; then
    echo "python test dependencies present: $VENV ($("$VENV/bin/python" -c 'import moto; print("moto", moto.__version__)'))"
    return 0
  fi
  local t0=$SECONDS
  command -v python3 >/dev/null 2>&1 || { echo "python3 not found: install python3 (>= 3.9)" >&2; exit 1; }
  # A virtualenv whose interpreter is gone (python upgraded or removed) is rebuilt.
  if [ -e "$VENV" ] && ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating the python virtualenv $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
  fi
  echo "installing into $VENV: ${PY_REQS[*]}"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_REQS[@]}"
  printf '%s\n' "${PY_REQS[*]}" >"$VENV/.cairn-requirements"
  if ! venv_ok; then
    echo "the virtualenv $VENV is still incomplete after pip install" >&2
    exit 1
  fi
  echo "installed: ${PY_REQS[*]} into $VENV ($((SECONDS - t0))s)"
}

SUDO=()
CAN_ROOT=1
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else CAN_ROOT=0; fi
fi

install_apt_pkgs
restic_version_note
install_venv
