#!/usr/bin/env bash
# PostgreSQL benchmark: cairn's logical and physical backups against
# `pg_dump -Fc` / `pg_restore` and pgBackRest, on the same pgbench database,
# on the same machine, in the same run.
#
# Per round (a fresh `pgbench -i -s $PG_SCALE` database each round):
#   full:    cairn logical and pg_dump -Fc ($FULL_PAIRS alternating pairs),
#            pgBackRest full, cairn physical
#   night 1: pgbench -n -t $PG_TX1 (fixed seed), then cairn logical,
#            cairn physical and pgBackRest incr: time and bytes stored
#   night 2: pgbench -n -t $PG_TX2 (uniform random updates, the worst case
#            for any deduplication), the same three again
#   restore: cairn logical into a new database vs pg_restore -j 2;
#            cairn physical vs pgBackRest restore (both lay down a data
#            directory; neither replays WAL)
# Bytes: cairn = growth of its repository (packs, index, snapshot: all it
# uploaded); pgBackRest = growth of its repository's backup directory (its
# WAL archive aside); pg_dump = the dump file. For cairn the table also
# gives the new bytes before compression as a share of the bytes read. Times include process start and key
# derivation. Medians over all samples; a Markdown table goes to stdout and
# $BENCH_DIR/results.md, raw rows to $BENCH_DIR/results.csv.
#
#   bench/postgres.sh                    # scale 50 (~750 MB), 1 round
#   PG_SCALE=5 bench/postgres.sh         # a quick check of the harness
#   ROUNDS=3 bench/postgres.sh
#
# Environment: BENCH_DIR (/tmp/cairn-pgbench), PG_SCALE (50), PG_TX1 (1000),
# PG_TX2 (10000), ROUNDS (1), FULL_PAIRS (3), PGBIN (newest /usr/lib/postgresql/*/bin),
# CAIRN_BIN (use this binary instead of building).
# Needs: root (the cluster runs as the `postgres` user), PostgreSQL server,
# pgbackrest (`apt-get install pgbackrest`), python3, /usr/bin/time.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$HERE/../scripts/lib.sh"

BENCH_DIR=${BENCH_DIR:-/tmp/cairn-pgbench}
PG_SCALE=${PG_SCALE:-50}
PG_TX1=${PG_TX1:-1000}
PG_TX2=${PG_TX2:-10000}
ROUNDS=${ROUNDS:-1}
FULL_PAIRS=${FULL_PAIRS:-3}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ "$(id -u)" = 0 ] || die "run as root: the cluster and pgBackRest run as the postgres user"
[ -x "$PGBIN/initdb" ] || die "PostgreSQL server binaries not found (set PGBIN)"
command -v pgbackrest >/dev/null || die "pgbackrest not found: apt-get install pgbackrest"
[ -x /usr/bin/time ] || die "/usr/bin/time not found: apt-get install time"

log() { printf '[pgbench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
as_pg() { runuser -u postgres -- "$@"; }

CAIRN=$(cairn_build)
PG_ROOT=$BENCH_DIR/pg
PGDATA=$PG_ROOT/data
PGBR=$BENCH_DIR/pgbackrest
CSV=$BENCH_DIR/results.csv
export CAIRN_PASSWORD=bench-password
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="postgresql://postgres@127.0.0.1:$PORT"

stop_cluster() {
  if [ -f "$PGDATA/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true; fi
}
trap stop_cluster EXIT

# timed NAME CMD...: runs CMD, appends "NAME,round,wall_s" to the CSV.
timed() {
  local name=$1 t0 t1
  shift
  t0=$(date +%s.%N)
  "$@" >"$BENCH_DIR/logs/$name.r$ROUND.log" 2>&1 || { cat "$BENCH_DIR/logs/$name.r$ROUND.log" >&2; die "$name failed"; }
  t1=$(date +%s.%N)
  echo "$name,$ROUND,time,$(python3 -c "print(round($t1-$t0,3))")" >>"$CSV"
}
bytes() { echo "$1,$ROUND,bytes,$2" >>"$CSV"; }
json_field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])" <"$2"; }
dir_bytes() { du -sb "$1" | cut -f1; }

setup_cluster() {
  stop_cluster
  rm -rf "$BENCH_DIR"/{pg,pgbackrest,cairn-repo,dump,restore-*}
  mkdir -p "$PG_ROOT" "$PGBR" "$BENCH_DIR/logs"
  chown postgres "$PG_ROOT" "$PGBR"
  chmod 755 "$BENCH_DIR"
  as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
  cat >"$PGBR/pgbackrest.conf" <<EOF
[global]
repo1-path=$PGBR/repo
log-path=$PGBR
lock-path=$PGBR
start-fast=y
[bench]
pg1-path=$PGDATA
pg1-port=$PORT
pg1-socket-path=$PG_ROOT
EOF
  cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$PG_ROOT'
shared_buffers = 512MB
max_wal_size = 4GB
wal_level = replica
archive_mode = on
archive_command = 'pgbackrest --config=$PGBR/pgbackrest.conf --stanza=bench archive-push %p'
EOF
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PG_ROOT/server.log" -w start >/dev/null
  log "pgbench -i -s $PG_SCALE"
  "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres bench
  "$PGBIN/pgbench" -i -q -s "$PG_SCALE" -h 127.0.0.1 -p "$PORT" -U postgres bench >/dev/null 2>&1
  "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d bench -c 'CHECKPOINT'
  as_pg pgbackrest --config="$PGBR/pgbackrest.conf" --stanza=bench stanza-create >/dev/null
  archive_settle
  "$CAIRN" init --repo "$BENCH_DIR/cairn-repo" >/dev/null
}

cairn_backup() {   # cairn_backup NAME ARGS...: timed cairn backup, records the repository's growth
  local name=$1 before
  shift
  before=$(dir_bytes "$BENCH_DIR/cairn-repo")
  timed "$name" "$CAIRN" --repo "$BENCH_DIR/cairn-repo" backup --json postgres --url "$URL/bench" "$@"
  bytes "$name" $(( $(dir_bytes "$BENCH_DIR/cairn-repo") - before ))
  echo "$name,$ROUND,raw,$(json_field data_added "$BENCH_DIR/logs/$name.r$ROUND.log")" >>"$CSV"
  echo "$name,$ROUND,processed,$(json_field bytes_processed "$BENCH_DIR/logs/$name.r$ROUND.log")" >>"$CSV"
  json_field snapshot "$BENCH_DIR/logs/$name.r$ROUND.log" >"$BENCH_DIR/logs/$name.r$ROUND.snapshot"
}

pg_dump_full() {
  timed pg_dump-full "$PGBIN/pg_dump" -Fc -h 127.0.0.1 -p "$PORT" -U postgres -f "$BENCH_DIR/dump" bench
  bytes pg_dump-full "$(stat -c %s "$BENCH_DIR/dump")"
}

# Waits until the server has archived all the WAL written so far: pgBackRest's
# archive-push compresses every segment, and the load leaves dozens of them,
# which would otherwise eat CPU under whichever backup is timed first.
archive_settle() {
  local needed row
  needed=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$PORT" -U postgres -d bench -c 'SELECT pg_walfile_name(pg_current_wal_lsn())')
  "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d bench -c 'SELECT pg_switch_wal()' >/dev/null
  for _ in $(seq 600); do
    row=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$PORT" -U postgres -d bench -c "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
    [[ "$row" < "$needed" ]] || return 0
    sleep 0.2
  done
  die "WAL archiving did not catch up (last archived: $row, needed: $needed)"
}

pgbr() { as_pg pgbackrest --config="$PGBR/pgbackrest.conf" --stanza=bench "$@"; }
pgbr_backup() {   # pgbr_backup NAME TYPE
  local before
  before=$(dir_bytes "$PGBR/repo/backup")
  timed "$1" pgbr backup --type="$2"
  bytes "$1" $(( $(dir_bytes "$PGBR/repo/backup") - before ))
}

night() {   # night TX SUFFIX
  log "next night: pgbench -n -t $1"
  "$PGBIN/pgbench" -n -t "$1" --random-seed=$((ROUND * 7 + $1)) -h 127.0.0.1 -p "$PORT" -U postgres bench >/dev/null 2>&1
  "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d bench -c 'CHECKPOINT'
  archive_settle
  cairn_backup "cairn-logical-$2" --no-globals
  cairn_backup "cairn-physical-$2" --physical
  pgbr_backup "pgbackrest-$2" incr
}

mkdir -p "$BENCH_DIR/logs"
echo "$CAIRN_PASSWORD" >"$BENCH_DIR/password"
: >"$CSV"
for ROUND in $(seq 1 "$ROUNDS"); do
  log "round $ROUND/$ROUNDS: setting up scale $PG_SCALE"
  setup_cluster
  bytes database "$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$PORT" -U postgres -d bench -c "SELECT pg_database_size('bench')")"
  log "full backups"
  # The first reader after the load pays for whatever the load left behind
  # (cache, hint bits): an untimed scan takes that, and cairn and pg_dump
  # take turns going first. One pair per round on a 2-core machine is at
  # the mercy of its noise (±15% run to run), so FULL_PAIRS pairs are timed;
  # after the first, cairn writes to a fresh scratch repository each time,
  # so every sample is a full backup.
  "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d bench \
    -c 'SELECT count(*) FROM pgbench_accounts' -c 'SELECT count(*) FROM pgbench_history' >/dev/null
  for pair in $(seq "$FULL_PAIRS"); do
    if [ "$pair" = 1 ]; then
      logical_full() { cairn_backup cairn-logical-full --no-globals; }
    else
      logical_full() {
        rm -rf "$BENCH_DIR/cairn-scratch"
        "$CAIRN" init --repo "$BENCH_DIR/cairn-scratch" >/dev/null
        timed cairn-logical-full "$CAIRN" --repo "$BENCH_DIR/cairn-scratch" backup --json postgres --url "$URL/bench" --no-globals
      }
    fi
    if [ $(((ROUND + pair) % 2)) = 0 ]; then
      logical_full
      pg_dump_full
    else
      pg_dump_full
      logical_full
    fi
  done
  rm -rf "$BENCH_DIR/cairn-scratch"
  pgbr_backup pgbackrest-full full
  cairn_backup cairn-physical-full --physical
  night "$PG_TX1" night1
  night "$PG_TX2" night2

  log "restores"
  logical=$(cat "$BENCH_DIR/logs/cairn-logical-night2.r$ROUND.snapshot")
  physical=$(cat "$BENCH_DIR/logs/cairn-physical-night2.r$ROUND.snapshot")
  timed cairn-logical-restore "$CAIRN" --repo "$BENCH_DIR/cairn-repo" restore "$logical" --to "$URL/restored_cairn"
  "$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres restored_pgr
  timed pg_restore "$PGBIN/pg_restore" -j 2 -h 127.0.0.1 -p "$PORT" -U postgres -d restored_pgr "$BENCH_DIR/dump"
  for db in restored_cairn restored_pgr; do
    "$PGBIN/psql" -X -At -h 127.0.0.1 -p "$PORT" -U postgres -d "$db" -c 'SELECT count(*) FROM pgbench_accounts' >"$BENCH_DIR/logs/$db.count"
  done
  mkdir -p "$BENCH_DIR/restore-pgbr" && chown postgres "$BENCH_DIR/restore-pgbr"
  timed pgbackrest-restore pgbr restore --pg1-path="$BENCH_DIR/restore-pgbr" --type=immediate
  timed cairn-physical-restore "$CAIRN" --repo "$BENCH_DIR/cairn-repo" restore "$physical" --physical \
    --data-dir "$BENCH_DIR/restore-cairn" --password-file "$BENCH_DIR/password"
  rm -rf "$BENCH_DIR"/restore-* && "$PGBIN/dropdb" -h 127.0.0.1 -p "$PORT" -U postgres restored_cairn &&
    "$PGBIN/dropdb" -h 127.0.0.1 -p "$PORT" -U postgres restored_pgr
done

python3 - "$CSV" "$PG_SCALE" "$PG_TX1" "$PG_TX2" "$ROUNDS" <<'PY' | tee "$BENCH_DIR/results.md"
import csv, statistics, sys
path, scale, tx1, tx2, rounds = sys.argv[1:]
vals = {}
for name, _round, kind, value in csv.reader(open(path)):
    vals.setdefault((name, kind), []).append(float(value))
def med(name, kind):
    v = vals.get((name, kind))
    return statistics.median(v) if v else None
mib = lambda b: f"{b / 2**20:.1f}"
db = med("database", "bytes")
print(f"pgbench scale {scale} ({mib(db)} MiB database); nights: -t {tx1} and -t {tx2}; medians of {rounds} round(s)\n")
print("| step | tool | time (s) | stored (MiB) | stored / full | new before compression / read |")
print("|---|---|---:|---:|---:|---:|")
full = {"cairn logical": "cairn-logical-full", "cairn physical": "cairn-physical-full", "pgBackRest": "pgbackrest-full"}
rows = [
    ("full", "cairn logical", "cairn-logical-full"),
    ("full", "pg_dump -Fc", "pg_dump-full"),
    ("full", "pgBackRest", "pgbackrest-full"),
    ("full", "cairn physical", "cairn-physical-full"),
    (f"night -t {tx1}", "cairn logical", "cairn-logical-night1"),
    (f"night -t {tx1}", "cairn physical", "cairn-physical-night1"),
    (f"night -t {tx1}", "pgBackRest incr", "pgbackrest-night1"),
    (f"night -t {tx2}", "cairn logical", "cairn-logical-night2"),
    (f"night -t {tx2}", "cairn physical", "cairn-physical-night2"),
    (f"night -t {tx2}", "pgBackRest incr", "pgbackrest-night2"),
    ("restore", "cairn logical (--jobs 2)", "cairn-logical-restore"),
    ("restore", "pg_restore -j 2", "pg_restore"),
    ("restore", "cairn physical (lay down)", "cairn-physical-restore"),
    ("restore", "pgBackRest (lay down)", "pgbackrest-restore"),
]
for step, tool, key in rows:
    t, b = med(key, "time"), med(key, "bytes")
    ref = None
    for k, fk in full.items():
        if tool.startswith(k):
            ref = med(fk, "bytes")
    ratio = f"{100 * b / ref:.1f}%" if (b is not None and ref and step.startswith("night")) else ""
    raw, read = med(key, "raw"), med(key, "processed")
    rawpct = f"{100 * raw / read:.1f}%" if (raw is not None and read) else ""
    print(f"| {step} | {tool} | {t:.2f} | {mib(b) if b is not None else ''} | {ratio} | {rawpct} |")
r = lambda a, b: med(a, "time") / med(b, "time")
print()
print(f"cairn logical full / pg_dump -Fc time: {r('cairn-logical-full', 'pg_dump-full'):.2f} (target <= 0.8)")
print(f"cairn physical restore / pgBackRest restore time: {r('cairn-physical-restore', 'pgbackrest-restore'):.2f} (target <= 1.0)")
print(f"cairn logical restore / pg_restore -j 2 time: {r('cairn-logical-restore', 'pg_restore'):.2f}")
PY
