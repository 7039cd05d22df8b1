#!/usr/bin/env bash
# Starts, checks and stops the real servers the S3 and DynamoDB tests run
# against, one of each per machine (per checkout), shared by every test.
#
#   moto   `moto_server` from .test-env/venv: S3 and DynamoDB in one process,
#          in memory, any access key. Fast; wide API coverage.
#   rgw    a single-node Ceph cluster (one monitor, one bluestore OSD on a
#          sparse 20 GiB file) with the RADOS gateway: real S3 semantics
#          (SigV4 checked, Object Lock, versioning, Content-MD5, atomic
#          If-None-Match). Keys AKIATEST / SECRETTEST. Takes ~15 s to start.
#          For the per-object option tests it also has the storage classes
#          STANDARD_IA and GLACIER_IR on its default placement, and SSE-KMS
#          over plain HTTP with Ceph's `testing` KMS holding one fixed,
#          published key: id `cairn-test-key` (RGW_KMS_KEY_ID below).
#   postgres  a scratch PostgreSQL cluster (initdb + pg_ctl, the newest
#          /usr/lib/postgresql/*/bin), trust authentication on 127.0.0.1,
#          wal_level=replica, fsync off. Runs as the `postgres` OS user when
#          started by root (initdb refuses root). Takes ~3 s to start. Tests
#          create their own databases on it.
#   redis  a scratch redis-server (from PATH; Debian's 7.0) on 127.0.0.1, no
#          password, no persistence, `enable-debug-command yes` (DEBUG
#          DIGEST) and `repl-diskless-sync-delay 0` (a backup's RDB streams at
#          once instead of after 5 s). Starts in well under a second. Shared:
#          tests that need a key space or settings of their own start private
#          servers (cairn_testkit::RedisInstance).
#
# Tests run in parallel, each in its own process (cargo nextest), so `ensure`
# is idempotent and race-free: the first caller starts the server under a
# flock, the others wait for it and get the same server; once it runs,
# `ensure` only checks its health and prints its settings (well under 0.2 s).
# Servers are left running for the next test; scripts/test.sh stops them at
# the end. All listen on 127.0.0.1 only, on free ports picked at start (the
# Ceph monitor too), so other software and other checkouts do not collide.
#
#   scripts/test-servers.sh ensure moto|rgw|postgres|redis   # start if needed; print key=value lines:
#                                             #   kind, endpoint, region, access_key, secret_key
#                                             #   (postgres: kind, url, endpoint, host, port, user, bin;
#                                             #    redis: kind, url, endpoint, host, port, bin)
#   scripts/test-servers.sh stop [moto|rgw|postgres|redis|all]   # kill it and remove its state (default all)
#   scripts/test-servers.sh status            # one line: what runs where
#   scripts/test-servers.sh running moto|rgw|postgres|redis  # exit 0 if it runs and answers, else 1
#
# State (pids, ports, logs, Ceph data) lives in target/test-servers/<name>/.
# Install what the servers need with scripts/install-test-deps.sh.
#
# Environment:
#   CAIRN_TEST_SERVERS_DIR      state directory (default: <repo>/target/test-servers)
#   CAIRN_TEST_SERVER_TIMEOUT   seconds a start may take before it fails (default 180)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${CAIRN_TEST_SERVERS_DIR:-$ROOT/target/test-servers}
VENV=$ROOT/.test-env/venv
TIMEOUT=${CAIRN_TEST_SERVER_TIMEOUT:-180}
REGION=us-east-1
MOTO_KEY=testing                    # moto accepts any key
RGW_ACCESS_KEY=AKIATEST
RGW_SECRET_KEY=SECRETTEST
# SSE-KMS test key of Ceph's `testing` KMS backend: a fixed id the tests name
# (cairn_testkit::RGW_KMS_KEY_ID), and 32 random bytes in base64. Not a secret:
# it protects throwaway test data on a loopback-only server.
RGW_KMS_KEY_ID=cairn-test-key
RGW_KMS_KEY=ZVxkkRl0g51RBL17M3UyACL3GopXSBYIaUNkg6nSdmc=
# Storage classes added to the default placement beside STANDARD (AWS's names,
# which cairn's storage_class= and pack_storage_class= accept).
RGW_STORAGE_CLASSES=(STANDARD_IA GLACIER_IR)
INSTALL_HINT="install the test dependencies with scripts/install-test-deps.sh"

say() { printf 'test-servers: %s\n' "$*" >&2; }
die() { printf 'test-servers: error: %s\n' "$*" >&2; exit 1; }

usage() {
  { echo "usage:"; sed -n 's/^#   scripts/  scripts/p' "${BASH_SOURCE[0]}"; } >&2
  exit 2
}

check_name() {
  case "${1:-}" in
    moto|rgw|postgres|redis) ;;
    *) echo "unknown server '${1:-}': expected moto, rgw, postgres or redis" >&2; usage ;;
  esac
}

log_tail() {   # log_tail LINES FILE...: the last LINES lines of each existing file, indented
  local lines=$1 f
  shift
  for f in "$@"; do
    [ -s "$f" ] || continue
    printf '\n--- last lines of %s:\n' "$f"
    tail -n "$lines" "$f" | sed 's/^/    /'
  done
}

# N (default 1) distinct free TCP ports on 127.0.0.1, one per line (held open together
# while they are picked, so they differ).
free_ports() {
  python3 - "${1:-1}" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
PY
}

http_code() {   # http_code URL: the HTTP status of a GET, 000 when nothing answers
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}

env_value() {   # env_value FILE KEY
  sed -n "s/^$2=//p" "$1" 2>/dev/null | head -n 1
}

pid_alive() {   # pid_alive PID PATTERN: the process runs and its command line contains PATTERN
  local pid=$1 pattern=$2 cmdline
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$pattern"* ]]
}

kill_pids() {   # kill_pids PID...: TERM (or $KILL_SIGNAL), wait up to 5 s, then KILL what is left
  [ $# -gt 0 ] || return 0
  kill "-${KILL_SIGNAL:-TERM}" "$@" 2>/dev/null || true
  local _ pid left
  for _ in $(seq 1 50); do
    left=()
    for pid in "$@"; do [ -d "/proc/$pid" ] && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "${left[@]}" 2>/dev/null || true
  for _ in $(seq 1 20); do
    left=()
    for pid in "$@"; do [ -d "/proc/$pid" ] && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  say "warning: processes ${left[*]} survived SIGKILL"
}

lock() {   # lock NAME: hold NAME's start/stop lock on fd 9 until the script exits
  mkdir -p "$STATE"
  exec 9>"$STATE/$1.lock"
  flock -w "$((TIMEOUT + 60))" 9 ||
    die "timed out after $((TIMEOUT + 60))s waiting for another start or stop of $1 (lock $STATE/$1.lock)"
}

# ---------------------------------------------------------------- moto

MOTO_DIR=$STATE/moto

moto_pid() { cat "$MOTO_DIR/pid" 2>/dev/null || true; }

moto_healthy() {
  [ -f "$MOTO_DIR/env" ] || return 1
  local endpoint
  endpoint=$(env_value "$MOTO_DIR/env" endpoint)
  pid_alive "$(moto_pid)" moto_server || return 1
  [ "$(http_code "$endpoint/")" = 200 ]
}

moto_stop() {
  local pid
  pid=$(moto_pid)
  if pid_alive "$pid" moto_server; then kill_pids "$pid"; fi
  rm -f "$MOTO_DIR/pid" "$MOTO_DIR/env" "$MOTO_DIR/env.tmp"   # the log stays for post-mortems
}

moto_start() {
  [ -x "$VENV/bin/moto_server" ] || die "moto_server not found at $VENV/bin/moto_server: $INSTALL_HINT"
  command -v curl >/dev/null 2>&1 || die "curl not found: $INSTALL_HINT"
  mkdir -p "$MOTO_DIR"
  local log=$MOTO_DIR/moto.log t0=$SECONDS attempt port pid launcher deadline
  : >"$log"
  for attempt in 1 2 3; do   # another program may take the picked port first: pick again
    port=$(free_ports 1)
    printf '=== %s: moto_server -H 127.0.0.1 -p %s (attempt %s)\n' "$(date -u +%FT%TZ)" "$port" "$attempt" >>"$log"
    # Its own session, so a test runner killing the caller's process group does not
    # take the shared server down; no inherited pipes or lock (fd 9). The process
    # writes its own pid (exec keeps it), whether or not setsid forks.
    # shellcheck disable=SC2016  # $$ and $1 belong to the inner shell
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$MOTO_DIR/pid" \
      "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" </dev/null >>"$log" 2>&1 9>&- &
    launcher=$!
    deadline=$((SECONDS + TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
      sleep 0.1
      pid=$(moto_pid)
      if [ -z "$pid" ]; then
        if [ -d "/proc/$launcher" ]; then continue; fi
        sleep 0.2; pid=$(moto_pid)   # setsid forked and its parent exited: give the pid file a moment
        [ -n "$pid" ] || die "could not launch moto_server$(log_tail 25 "$log")"
      fi
      if [ ! -d "/proc/$pid" ]; then break; fi   # exited: port taken, or broken install
      if [ "$(http_code "http://127.0.0.1:$port/")" = 200 ]; then
        printf 'kind=moto\nendpoint=http://127.0.0.1:%s\nregion=%s\naccess_key=%s\nsecret_key=%s\n' \
          "$port" "$REGION" "$MOTO_KEY" "$MOTO_KEY" >"$MOTO_DIR/env.tmp"
        mv "$MOTO_DIR/env.tmp" "$MOTO_DIR/env"
        say "moto ready at http://127.0.0.1:$port (pid $pid, $((SECONDS - t0))s)"
        return 0
      fi
    done
    pid=$(moto_pid)
    if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
      kill_pids "$pid"
      rm -f "$MOTO_DIR/pid"
      die "moto_server did not answer on http://127.0.0.1:$port within ${TIMEOUT}s$(log_tail 25 "$log")"
    fi
    rm -f "$MOTO_DIR/pid"
  done
  die "moto_server exited at start three times$(log_tail 25 "$log")
($INSTALL_HINT)"
}

# ---------------------------------------------------------------- rgw

RGW_DIR=$STATE/rgw
RGW_CONF=$RGW_DIR/ceph.conf

# The daemons of this checkout's cluster: ceph-mon, ceph-osd and radosgw
# processes with this cluster's config file as an argument.
rgw_pids() {
  local f pid comm
  grep -lzxF -- "$RGW_CONF" /proc/[0-9]*/cmdline 2>/dev/null |
    while read -r f; do
      pid=${f#/proc/}; pid=${pid%/cmdline}
      read -r comm 2>/dev/null <"/proc/$pid/comm" || continue
      case "$comm" in ceph-mon|ceph-osd|radosgw) printf '%s\n' "$pid" ;; esac
    done
  return 0
}

rgw_healthy() {
  [ -f "$RGW_DIR/env" ] || return 1
  local endpoint name
  endpoint=$(env_value "$RGW_DIR/env" endpoint)
  for name in mon.a osd.0 client.rgw.a; do
    pid_alive "$(cat "$RGW_DIR/run/$name.pid" 2>/dev/null)" "-c $RGW_CONF" || return 1
  done
  curl -s --max-time 2 "$endpoint/" 2>/dev/null | grep -q '<?xml'
}

rgw_stop() {
  local pids
  mapfile -t pids < <(rgw_pids)
  # SIGKILL at once: a graceful OSD and gateway shutdown takes seconds, and the
  # data is thrown away anyway.
  KILL_SIGNAL=KILL kill_pids "${pids[@]}"
  # Keep the logs for post-mortems; the data (a sparse 20 GiB file) goes.
  if [ -d "$RGW_DIR" ]; then
    find "$RGW_DIR" -mindepth 1 -maxdepth 1 ! -name log -exec rm -rf {} +
  fi
}

rgw_fail() {   # rgw_fail MESSAGE: stop the half-started cluster and exit with the logs
  local msg=$1 logs
  logs=$(log_tail 20 "$RGW_DIR/log/start.log"
    log_tail 10 "$RGW_DIR"/log/mon.a.log "$RGW_DIR"/log/osd.0.log "$RGW_DIR"/log/client.rgw.a.log)
  rgw_stop
  die "Ceph RGW: $msg (logs in $RGW_DIR/log)$logs"
}

rgw_step() {   # rgw_step SECONDS CMD...: run one setup command with a time limit, output to start.log
  local limit=$1; shift
  printf '+ %s\n' "$*" >>"$RGW_DIR/log/start.log"
  timeout "$limit" "$@" </dev/null >>"$RGW_DIR/log/start.log" 2>&1 9>&- ||
    rgw_fail "'$*' failed (exit $?)"
}

rgw_dead_daemon() {   # rgw_dead_daemon NAME...: print the first started daemon that has exited
  local name
  for name in "$@"; do
    if [ -f "$RGW_DIR/run/$name.pid" ] && ! pid_alive "$(cat "$RGW_DIR/run/$name.pid")" "-c $RGW_CONF"; then
      printf '%s\n' "$name"
      return 0
    fi
  done
  return 1
}

rgw_step_watched() {   # rgw_step_watched SECONDS CMD...: rgw_step for a command that waits on the cluster
  # It would wait for a dead OSD until its time limit: watch the daemons meanwhile.
  local limit=$1 pid rc dead; shift
  printf '+ %s\n' "$*" >>"$RGW_DIR/log/start.log"
  timeout "$limit" "$@" </dev/null >>"$RGW_DIR/log/start.log" 2>&1 9>&- &
  pid=$!
  while [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
    if dead=$(rgw_dead_daemon mon.a osd.0); then
      kill "$pid" 2>/dev/null || true
      rgw_fail "$dead exited during the start"
    fi
    sleep 0.1
  done
  rc=0; wait "$pid" || rc=$?
  [ "$rc" = 0 ] || rgw_fail "'$*' failed (exit $rc)"
}

rgw_daemon() {   # rgw_daemon CMD...: start a daemon in its own session (it forks into the background)
  printf '+ %s\n' "$*" >>"$RGW_DIR/log/start.log"
  setsid "$@" </dev/null >>"$RGW_DIR/log/start.log" 2>&1 9>&- || rgw_fail "'$*' failed (exit $?)"
}

rgw_start() {
  local cmd
  for cmd in ceph ceph-authtool monmaptool ceph-mon ceph-osd radosgw radosgw-admin curl python3; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found (Ceph RGW needs radosgw ceph-mon ceph-osd ceph-common): $INSTALL_HINT"
  done
  local t0=$SECONDS deadline=$((SECONDS + TIMEOUT)) fsid mon_port port ports osd_id
  rgw_stop
  rm -rf "$RGW_DIR/log"
  mkdir -p "$RGW_DIR"/{run,log,crash,mon/ceph-a,osd/ceph-0,rgw}
  mapfile -t ports < <(free_ports 2)
  mon_port=${ports[0]} port=${ports[1]}
  fsid=$(cat /proc/sys/kernel/random/uuid)
  # auth none: nothing but this machine can reach it (127.0.0.1). A size-1 pool on
  # one OSD; no mgr (`ceph -s` warns about it, harmlessly).
  cat >"$RGW_CONF" <<CONF
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$mon_port
public_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
osd_crush_chooseleaf_type = 0
run_dir = $RGW_DIR/run
crash_dir = $RGW_DIR/crash
admin_socket = $RGW_DIR/run/\$name.asok
log_file = $RGW_DIR/log/\$name.log
pid_file = $RGW_DIR/run/\$name.pid
mon_data = $RGW_DIR/mon/\$cluster-\$id
osd_data = $RGW_DIR/osd/\$cluster-\$id
keyring = $RGW_DIR/keyring
# Debug logging off (errors are still logged): the cluster shares the
# machine's cores with the client under test, and Ceph's default levels
# format and keep in-memory log entries for every request.
debug_rgw = 0/0
debug_ms = 0/0
debug_osd = 0/0
debug_bluestore = 0/0
debug_bluefs = 0/0
debug_bdev = 0/0
debug_rocksdb = 0/0
debug_objecter = 0/0
debug_rados = 0/0
debug_monc = 0/0
debug_auth = 0/0
debug_objclass = 0/0
[osd]
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = 21474836480
osd_memory_target = 1073741824
bluestore_fsck_on_mkfs = false
[client.rgw.a]
# radosgw defaults to the 'secure' mon mode, which cannot work with auth none
# (it hangs for 300 s with error -13)
ms_mon_client_mode = crc
ms_client_mode = crc
# --- server-side encryption for the per-object option tests (sse=...) ---
# RGW refuses SSE requests over plain HTTP unless told otherwise; the server
# listens on 127.0.0.1 only. The 'testing' KMS backend serves keys from this
# config instead of Barbican/Vault/KMIP, so SSE-KMS needs no other service.
rgw_crypt_require_ssl = false
rgw_crypt_s3_kms_backend = testing
rgw_crypt_s3_kms_encryption_keys = $RGW_KMS_KEY_ID=$RGW_KMS_KEY
# --- end of server-side encryption ---
rgw_frontends = beast endpoint=127.0.0.1:$port
rgw_data = $RGW_DIR/rgw
CONF
  local C=(-c "$RGW_CONF")
  say "starting Ceph RGW (mon 127.0.0.1:$mon_port, S3 127.0.0.1:$port; logs in $RGW_DIR/log)"
  rgw_step 30 ceph-authtool --create-keyring "$RGW_DIR/keyring" --gen-key -n mon. --cap mon 'allow *'
  rgw_step 30 monmaptool --create --addv a "[v2:127.0.0.1:$mon_port]" --fsid "$fsid" "$RGW_DIR/monmap"
  rgw_step 60 ceph-mon "${C[@]}" --mkfs -i a --monmap "$RGW_DIR/monmap" --keyring "$RGW_DIR/keyring"
  rgw_daemon ceph-mon "${C[@]}" -i a
  printf '+ ceph osd create\n' >>"$RGW_DIR/log/start.log"
  osd_id=$(timeout 60 ceph "${C[@]}" --connect-timeout 50 osd create </dev/null 2>>"$RGW_DIR/log/start.log" 9>&-) ||
    rgw_fail "the monitor did not answer 'ceph osd create' within 60s"
  [ "$osd_id" = 0 ] || rgw_fail "'ceph osd create' gave OSD id '$osd_id', expected 0"
  rgw_step 120 ceph-osd "${C[@]}" -i 0 --mkfs
  rgw_daemon ceph-osd "${C[@]}" -i 0
  # The test user, and the extra storage classes in the zonegroup and zone, are
  # written before radosgw starts: a running radosgw (Ceph 16, no realm, so no
  # period to commit) does not see classes added meanwhile, and restarting it
  # would cost seconds. `user create` comes first because it creates the
  # default zonegroup and zone (the placement commands only edit existing
  # ones); it waits for the OSD to come up. The classes share STANDARD's data
  # pool: the tests need RGW to accept and report a class, not separate pools,
  # whose creation would slow the first upload.
  rgw_step_watched $((deadline > SECONDS ? deadline - SECONDS : 1)) radosgw-admin "${C[@]}" user create \
    --uid=test --display-name=test --access-key="$RGW_ACCESS_KEY" --secret-key="$RGW_SECRET_KEY"
  local class
  for class in "${RGW_STORAGE_CLASSES[@]}"; do
    rgw_step 60 radosgw-admin "${C[@]}" zonegroup placement add \
      --rgw-zonegroup default --placement-id default-placement --storage-class "$class"
    rgw_step 60 radosgw-admin "${C[@]}" zone placement add \
      --rgw-zone default --placement-id default-placement --storage-class "$class" \
      --data-pool default.rgw.buckets.data
  done
  rgw_daemon radosgw "${C[@]}" -n client.rgw.a
  # radosgw creates its pools once the OSD is up, then opens the port.
  until curl -s --max-time 2 "http://127.0.0.1:$port/" 2>/dev/null | grep -q '<?xml'; do
    [ $SECONDS -lt $deadline ] || rgw_fail "no S3 answer on http://127.0.0.1:$port within ${TIMEOUT}s"
    local dead
    if dead=$(rgw_dead_daemon mon.a osd.0 client.rgw.a); then rgw_fail "$dead exited during the start"; fi
    sleep 0.25
  done
  printf 'kind=rgw\nendpoint=http://127.0.0.1:%s\nregion=%s\naccess_key=%s\nsecret_key=%s\n' \
    "$port" "$REGION" "$RGW_ACCESS_KEY" "$RGW_SECRET_KEY" >"$RGW_DIR/env.tmp"
  mv "$RGW_DIR/env.tmp" "$RGW_DIR/env"
  say "Ceph RGW ready at http://127.0.0.1:$port ($((SECONDS - t0))s)"
}

# ---------------------------------------------------------------- postgres

PG_DIR=$STATE/postgres

pg_bin() {   # the newest installed server's bin directory
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  d=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
  [ -x "$d/initdb" ] && echo "$d"
}

as_pg() {   # run as the postgres OS user when root (initdb and postgres refuse root)
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

postgres_healthy() {
  [ -f "$PG_DIR/env" ] || return 1
  local bin port
  bin=$(env_value "$PG_DIR/env" bin)
  port=$(env_value "$PG_DIR/env" port)
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2 2>/dev/null
}

postgres_stop() {
  local bin
  bin=$(env_value "$PG_DIR/env" bin || true)
  [ -n "$bin" ] || bin=$(pg_bin || true)
  if [ -n "$bin" ] && [ -f "$PG_DIR/data/postmaster.pid" ]; then
    as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PG_DIR/data" "$PG_DIR/sock"
  rm -f "$PG_DIR/env" "$PG_DIR/env.tmp"   # the logs stay for post-mortems
}

postgres_start() {
  local bin port t0=$SECONDS
  bin=$(pg_bin) || die "PostgreSQL server binaries (initdb) not found: $INSTALL_HINT"
  mkdir -p "$PG_DIR/data" "$PG_DIR/sock"
  : >"$PG_DIR/postgres.log"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "the postgres OS user does not exist: $INSTALL_HINT"
    chown postgres "$PG_DIR" "$PG_DIR/data" "$PG_DIR/sock" "$PG_DIR/postgres.log"
  fi
  as_pg "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
    >"$PG_DIR/initdb.log" 2>&1 || die "initdb failed$(log_tail 25 "$PG_DIR/initdb.log")"
  port=$(free_ports 1)
  {
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $port"
    echo "unix_socket_directories = '$PG_DIR/sock'"
    echo "wal_level = replica"
    echo "max_wal_senders = 4"
    echo "fsync = off"
    echo "synchronous_commit = off"
    echo "full_page_writes = off"
    echo "max_connections = 100"
    echo "shared_buffers = 128MB"
  } >>"$PG_DIR/data/postgresql.conf"
  echo "host replication all 127.0.0.1/32 trust" >>"$PG_DIR/data/pg_hba.conf"
  # setsid: a test runner killing the caller's process group must not take the shared server down.
  as_pg setsid "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t "$TIMEOUT" start \
    </dev/null >"$PG_DIR/pg_ctl.log" 2>&1 9>&- ||
    die "PostgreSQL did not start$(log_tail 25 "$PG_DIR/pg_ctl.log" "$PG_DIR/postgres.log")"
  {
    echo "kind=postgres"
    echo "url=postgresql://postgres@127.0.0.1:$port"
    echo "endpoint=postgresql://127.0.0.1:$port"
    echo "host=127.0.0.1"
    echo "port=$port"
    echo "user=postgres"
    echo "bin=$bin"
  } >"$PG_DIR/env.tmp"
  mv "$PG_DIR/env.tmp" "$PG_DIR/env"
  say "postgres ready at 127.0.0.1:$port ($bin, $((SECONDS - t0))s)"
}

# ---------------------------------------------------------------- redis

REDIS_DIR=$STATE/redis

redis_pid() { cat "$REDIS_DIR/data/redis-server.pid" 2>/dev/null || true; }

redis_healthy() {
  [ -f "$REDIS_DIR/env" ] || return 1
  local port
  port=$(env_value "$REDIS_DIR/env" port)
  pid_alive "$(redis_pid)" redis-server || return 1
  [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]
}

redis_stop() {
  local pid
  pid=$(redis_pid)
  if pid_alive "$pid" redis-server; then kill_pids "$pid"; fi
  rm -rf "$REDIS_DIR/data"
  rm -f "$REDIS_DIR/env" "$REDIS_DIR/env.tmp"   # the log stays for post-mortems
}

redis_start() {
  local bin port t0=$SECONDS deadline attempt
  bin=$(command -v redis-server) || die "redis-server not found: $INSTALL_HINT"
  command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found: $INSTALL_HINT"
  mkdir -p "$REDIS_DIR/data"
  for attempt in 1 2 3; do   # another program may take the picked port first: pick again
    port=$(free_ports 1)
    rm -f "$REDIS_DIR/data/redis-server.pid"
    # Daemonised (its own session, so a test runner killing the caller's
    # process group does not take the shared server down); fd 9 closed.
    "$bin" --port "$port" --bind 127.0.0.1 --dir "$REDIS_DIR/data" --daemonize yes \
      --pidfile "$REDIS_DIR/data/redis-server.pid" --logfile "$REDIS_DIR/redis.log" \
      --save "" --appendonly no --enable-debug-command yes --repl-diskless-sync-delay 0 \
      </dev/null >/dev/null 2>&1 9>&- || die "redis-server did not start$(log_tail 25 "$REDIS_DIR/redis.log")"
    deadline=$((SECONDS + TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
      if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ] && pid_alive "$(redis_pid)" redis-server; then
        {
          echo "kind=redis"
          echo "url=redis://127.0.0.1:$port"
          echo "endpoint=redis://127.0.0.1:$port"
          echo "host=127.0.0.1"
          echo "port=$port"
          echo "bin=$(dirname "$bin")"
        } >"$REDIS_DIR/env.tmp"
        mv "$REDIS_DIR/env.tmp" "$REDIS_DIR/env"
        say "redis ready at 127.0.0.1:$port ($("$bin" --version | awk '{print $3}'), $((SECONDS - t0))s)"
        return 0
      fi
      # Exited (the port was taken meanwhile): try another.
      if [ -f "$REDIS_DIR/data/redis-server.pid" ] && ! pid_alive "$(redis_pid)" redis-server; then break; fi
      sleep 0.05
    done
    if pid_alive "$(redis_pid)" redis-server; then
      kill_pids "$(redis_pid)"
      die "redis-server did not answer on 127.0.0.1:$port within ${TIMEOUT}s$(log_tail 25 "$REDIS_DIR/redis.log")"
    fi
  done
  die "redis-server exited at start three times$(log_tail 25 "$REDIS_DIR/redis.log")"
}

# ---------------------------------------------------------------- commands

server_dir() {
  case "$1" in
    moto) echo "$MOTO_DIR" ;;
    rgw) echo "$RGW_DIR" ;;
    redis) echo "$REDIS_DIR" ;;
    *) echo "$PG_DIR" ;;
  esac
}

ensure() {
  local name=$1 dir
  dir=$(server_dir "$name")
  # Fast path: it runs and answers (no lock; env is written atomically).
  if "${name}_healthy"; then cat "$dir/env"; return 0; fi
  lock "$name"
  if "${name}_healthy"; then cat "$dir/env"; return 0; fi   # another caller started it meanwhile
  if [ -f "$dir/env" ]; then say "$name is registered but not healthy: restarting it"; fi
  "${name}_stop"
  "${name}_start"
  cat "$dir/env"
}

stop() {
  local name=$1
  lock "$name"
  "${name}_stop"
  exec 9>&-
}

status_of() {
  local name=$1 dir
  dir=$(server_dir "$name")
  if "${name}_healthy"; then
    printf '%s running at %s' "$name" "$(env_value "$dir/env" endpoint)"
  elif [ -f "$dir/env" ]; then
    printf '%s NOT HEALTHY (registered at %s)' "$name" "$(env_value "$dir/env" endpoint)"
  else
    printf '%s stopped' "$name"
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  ensure)
    [ $# -eq 1 ] || usage
    check_name "$1"
    ensure "$1"
    ;;
  stop)
    [ $# -le 1 ] || usage
    case "${1:-all}" in
      all) stop moto; stop rgw; stop postgres; stop redis ;;
      *) check_name "$1"; stop "$1" ;;
    esac
    ;;
  status)
    [ $# -eq 0 ] || usage
    echo "$(status_of moto); $(status_of rgw); $(status_of postgres); $(status_of redis)"
    ;;
  running)
    [ $# -eq 1 ] || usage
    check_name "$1"
    "${1}_healthy"
    ;;
  *) usage ;;
esac
