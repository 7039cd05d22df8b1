#!/usr/bin/env bash
# Volume benchmark: cairn against restic (and optionally borg) on the same
# deterministic ~2 GiB directory tree, on the same machine, in the same run.
#
# For each round and each tool (the tools alternate within a round, and the
# order rotates from round to round, so neither always goes first):
#   fresh repository -> full backup -> no-change re-backup -> mutate the tree
#   ("next night", ~5% new bytes) -> backup after mutation -> reset the tree ->
#   restore `latest` (the post-mutation snapshot) into an empty directory,
#   then verify the restored tree is exactly the mutated tree (by content hash).
#   cairn restores twice, with its default fsync of every restored file and
#   directory and with --no-fsync (in alternating order from round to round),
#   so the cost of durability is measured side by side.
# Every timed command records wall time, user/sys CPU and peak RSS
# (/usr/bin/time -f %M); the repository size (du -sb) is recorded after each
# backup. Medians per tool and cairn/other ratios are printed as a Markdown
# table; raw numbers go to $BENCH_DIR/results.csv, the table to results.md,
# each command's output to $BENCH_DIR/logs/.
#
#   bench/volume.sh                          # cairn vs restic, 3 rounds, ~2 GiB tree
#   BENCH_QUICK=1 bench/volume.sh            # ~130 MiB tree: smoke-test the harness in well under a minute
#   BENCH_TOOLS="restic" bench/volume.sh     # select tools (space-separated: cairn restic borg)
#   BENCH_BORG=1 bench/volume.sh             # also borg, if installed (apt-get install borgbackup)
#   BENCH_STORE=s3 bench/volume.sh           # repositories in S3 (the Ceph RGW of scripts/test-servers.sh,
#                                            # on loopback); adds "cairn-local" (cairn, local repository) so
#                                            # S3 and local restores are compared in the same run
#   CAIRN_BASE_BIN=/path/to/old/cairn bench/volume.sh   # adds "cairn-base": that binary (e.g. the
#                                            # previous release), local repository, so a change is
#                                            # compared with what it replaces in the same run
#
# Environment: BENCH_DIR (default /tmp/cairn-bench), ROUNDS (default 3), BENCH_TOOLS
# (default "cairn restic"), BENCH_BORG, BENCH_QUICK, BENCH_SEED, BENCH_VOLUME_SCALE
# (overrides the quick scale), CAIRN_BIN (use this binary instead of building), CAIRN_BASE_BIN.
# Needs: python3, /usr/bin/time (package `time`), restic >= 0.14; see bench/README.md.
set -euo pipefail

# The exact command line, with the settings that were given in the environment.
CMDLINE=""
for v in BENCH_DIR BENCH_STORE BENCH_QUICK BENCH_TOOLS BENCH_BORG ROUNDS BENCH_SEED BENCH_VOLUME_SCALE CAIRN_BIN CAIRN_BASE_BIN CARGO_TARGET_DIR; do
  if [ -n "${!v+x}" ]; then CMDLINE+="$v=$(printf %q "${!v}") "; fi
done
CMDLINE+=$(printf '%q ' "$0" "$@")
CMDLINE=${CMDLINE% }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$HERE/../scripts/lib.sh"

[ $# -eq 0 ] || die "bench/volume.sh takes no arguments (settings are environment variables; see the header)"

export BENCH_DIR=${BENCH_DIR:-/tmp/cairn-bench}
export BENCH_SEED=${BENCH_SEED:-20240611}
BENCH_QUICK=${BENCH_QUICK:-0}
if [ "$BENCH_QUICK" = 1 ]; then
  export BENCH_VOLUME_SCALE=${BENCH_VOLUME_SCALE:-16}
else
  export BENCH_VOLUME_SCALE=${BENCH_VOLUME_SCALE:-1}
fi
if [ "$BENCH_QUICK" = 1 ]; then ROUNDS=${ROUNDS:-2}; else ROUNDS=${ROUNDS:-3}; fi
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
read -r -a TOOLS <<<"${BENCH_TOOLS:-cairn restic}"

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ------------------------------------------------------------------ tools and prerequisites
if [ "${BENCH_BORG:-0}" = 1 ] && [[ " ${TOOLS[*]} " != *" borg "* ]]; then
  if command -v borg >/dev/null 2>&1; then
    TOOLS+=(borg)
  else
    log "BENCH_BORG=1 but borg is not installed (apt-get install borgbackup): skipping borg"
  fi
fi
BENCH_STORE=${BENCH_STORE:-local}
case "$BENCH_STORE" in
  local) ;;
  s3) [[ " ${TOOLS[*]} " == *" cairn-local "* ]] || TOOLS+=(cairn-local) ;;
  *) die "BENCH_STORE must be local or s3 (got '$BENCH_STORE')" ;;
esac
if [ -n "${CAIRN_BASE_BIN:-}" ]; then
  [ -x "$CAIRN_BASE_BIN" ] || die "CAIRN_BASE_BIN=$CAIRN_BASE_BIN is not an executable file"
  [[ " ${TOOLS[*]} " == *" cairn-base "* ]] || TOOLS+=(cairn-base)
fi
[ ${#TOOLS[@]} -gt 0 ] || die "no tools selected (BENCH_TOOLS is empty)"
for t in "${TOOLS[@]}"; do
  case "$t" in
    cairn | cairn-local) ;;
    cairn-base) [ -n "${CAIRN_BASE_BIN:-}" ] || die "cairn-base needs CAIRN_BASE_BIN (the baseline binary)" ;;
    restic) command -v restic >/dev/null 2>&1 || die "restic is not installed (run scripts/install-test-deps.sh, or apt-get install restic)" ;;
    borg) command -v borg >/dev/null 2>&1 || die "borg is not installed (apt-get install borgbackup)" ;;
    *) die "unknown tool '$t' in BENCH_TOOLS (known: cairn restic borg)" ;;
  esac
done
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (run scripts/install-test-deps.sh, or apt-get install time)"
command -v python3 >/dev/null 2>&1 || die "python3 is required (data generator and report)"

CAIRN=""
if [[ " ${TOOLS[*]} " == *" cairn"* ]]; then
  [ -n "${CAIRN_BIN:-}" ] || log "building cairn (cargo build --release -p cairn)"
  CAIRN=$(cairn_build)
  log "cairn binary: $CAIRN"
fi

# Tools run with their defaults: drop ambient settings that would change what is measured.
while IFS= read -r v; do
  case "$v" in CAIRN_BIN | CAIRN_BASE_BIN) ;; RESTIC_*|BORG_*|CAIRN_*) unset "$v" ;; esac
done < <(compgen -e)

# ------------------------------------------------------------------ layout
DATASETS=$HERE/datasets.sh
VOL=$("$DATASETS" path)
REPOS=$BENCH_DIR/repos
CACHES=$BENCH_DIR/cache
RESTORE=$BENCH_DIR/restore
LOGS=$BENCH_DIR/logs
CSV=$BENCH_DIR/results.csv
MD=$BENCH_DIR/results.md
META=$BENCH_DIR/results.meta.tsv
mkdir -p "$BENCH_DIR"
rm -rf "$REPOS" "$CACHES" "$RESTORE" "$LOGS"
mkdir -p "$REPOS" "$CACHES" "$LOGS"
PASSWORD=$(head -c 24 /dev/urandom | base64)

# S3 mode: one fresh bucket per tool and round on the RGW test server; sizes
# and clean-up through boto3 from the test virtualenv.
if [ "$BENCH_STORE" = s3 ]; then
  S3_ENV=$("$CAIRN_ROOT/scripts/test-servers.sh" ensure rgw) || die "cannot start the Ceph RGW test server (scripts/install-test-deps.sh first)"
  S3_ENDPOINT=$(sed -n 's/^endpoint=//p' <<<"$S3_ENV")
  export AWS_ACCESS_KEY_ID=$(sed -n 's/^access_key=//p' <<<"$S3_ENV")
  export AWS_SECRET_ACCESS_KEY=$(sed -n 's/^secret_key=//p' <<<"$S3_ENV")
  export AWS_DEFAULT_REGION=$(sed -n 's/^region=//p' <<<"$S3_ENV") AWS_EC2_METADATA_DISABLED=true
  BOTO=$CAIRN_ROOT/.test-env/venv/bin/python
  [ -x "$BOTO" ] || die "boto3 virtualenv missing: run scripts/install-test-deps.sh"
fi
BUCKET_SUFFIX=$(date +%s)
bucket_of() { echo "bench-$1-$2-$BUCKET_SUFFIX"; }   # bucket_of TOOL ROUND
s3_py() {   # s3_py size|delete BUCKET
  "$BOTO" - "$S3_ENDPOINT" "$1" "$2" <<'PY'
import sys, boto3
endpoint, action, bucket = sys.argv[1:]
s3 = boto3.resource("s3", endpoint_url=endpoint)
b = s3.Bucket(bucket)
try:
    objs = list(b.objects.all())
except Exception:
    objs = []
if action == "size":
    print(sum(o.size for o in objs))
else:
    for i in range(0, len(objs), 1000):
        b.delete_objects(Delete={"Objects": [{"Key": o.key} for o in objs[i:i + 1000]]})
    try:
        b.delete()
    except Exception:
        pass
PY
}
repo_bytes() {   # repo_bytes TOOL ROUND
  case "$BENCH_STORE:$1" in
    s3:cairn | s3:restic) s3_py size "$(bucket_of "$1" "$2")" ;;
    *) du -sb "$REPOS/$1" | cut -f1 ;;
  esac
}

# (%.0f, not %d: mawk's %d saturates at 2^31 - 1)
file_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}'; }
file_count() { find "$1" -type f | wc -l; }

on_exit() {
  local rc=$?
  [ "$rc" -eq 0 ] || log "FAILED (exit $rc); logs in $LOGS (an interrupted mutation is reset on the next run)"
}
trap on_exit EXIT

# ------------------------------------------------------------------ data set
log "data set: $VOL (seed $BENCH_SEED, scale 1/$BENCH_VOLUME_SCALE)"
"$DATASETS" ensure
PRISTINE_BYTES=$(file_bytes "$VOL"); PRISTINE_FILES=$(file_count "$VOL")
need=$((PRISTINE_BYTES * 3))
avail=$(($(df -Pk "$BENCH_DIR" | awk 'NR == 2 {print $4}') * 1024))
[ "$avail" -ge "$need" ] ||
  log "warning: $((avail >> 20)) MiB free under $BENCH_DIR; a round needs about $((need >> 20)) MiB (repository + restore)"

log "hashing the pristine tree, then mutating it once to learn the mutated tree's hash"
PRISTINE_HASH=$("$DATASETS" hash "$VOL")
"$DATASETS" mutate
MUTATED_HASH=$("$DATASETS" hash "$VOL")
MUTATED_BYTES=$(file_bytes "$VOL"); MUTATED_FILES=$(file_count "$VOL")
"$DATASETS" reset
[ "$("$DATASETS" hash "$VOL")" = "$PRISTINE_HASH" ] || die "reset did not restore the pristine tree (generator bug?)"

# ------------------------------------------------------------------ per-tool commands
# Each tool gets its own repository and its own cache directory, both wiped per round.
tool_cmd() {   # tool_cmd TOOL ACTION: set CMD to the command line (ACTION: init backup-NAME restore)
  local t=$1 a=$2
  case "$t" in
    cairn | cairn-local | cairn-base)
      local repo=$REPOS/$t
      [ "$BENCH_STORE:$t" = s3:cairn ] && repo="s3://$(bucket_of cairn "$ROUND")/repo?endpoint=$S3_ENDPOINT&region=$AWS_DEFAULT_REGION"
      BIN=$CAIRN
      [ "$t" = cairn-base ] && BIN=$CAIRN_BASE_BIN
      CMD=(env "CAIRN_REPOSITORY=$repo" "CAIRN_PASSWORD=$PASSWORD" "XDG_CACHE_HOME=$CACHES/$t-xdg") ;;
    restic)
      local repo=$REPOS/restic
      [ "$BENCH_STORE" = s3 ] && repo="s3:$S3_ENDPOINT/$(bucket_of restic "$ROUND")/repo"
      CMD=(env "RESTIC_REPOSITORY=$repo" "RESTIC_PASSWORD=$PASSWORD" "RESTIC_CACHE_DIR=$CACHES/restic"
                 "XDG_CACHE_HOME=$CACHES/restic-xdg") ;;
    borg) CMD=(env "BORG_PASSPHRASE=$PASSWORD" "BORG_BASE_DIR=$CACHES/borg" "XDG_CACHE_HOME=$CACHES/borg-xdg") ;;
  esac
  local family=$t
  [[ $t == cairn-* ]] && family=cairn
  case "$family:$a" in
    cairn:init) CMD+=("$BIN" init) ;;
    cairn:backup-*) CMD+=("$BIN" backup volume "$VOL") ;;
    cairn:restore) CMD+=("$BIN" restore latest --to "$RESTORE") ;;
    cairn:restore-nofsync) CMD+=("$BIN" restore latest --to "$RESTORE" --no-fsync) ;;
    restic:init) CMD+=(restic init --repository-version 2) ;;
    restic:backup-*) CMD+=(restic backup "$VOL") ;;
    restic:restore) CMD+=(restic restore latest --target "$RESTORE") ;;
    borg:init) CMD+=(borg init --encryption repokey-blake2 "$REPOS/borg") ;;
    borg:backup-*) CMD+=(borg create "$REPOS/borg::${a#backup-}" "$VOL") ;;
    # borg has no "latest": the post-mutation archive is named "mutated"; extract works in the cwd
    borg:restore) CMD=(env -C "$RESTORE" "${CMD[@]:1}" borg extract "$REPOS/borg::mutated") ;;
    *) die "internal: no command for $t $a" ;;
  esac
}

tool_version() {
  case "$1" in
    cairn-base) "$CAIRN_BASE_BIN" --version 2>/dev/null </dev/null | head -1 || echo "cairn (version unknown)" ;;
    cairn | cairn-local) "$CAIRN" --version 2>/dev/null </dev/null | head -1 || echo "cairn (version unknown)" ;;
    restic) restic version 2>/dev/null | head -1 ;;
    borg) borg --version 2>/dev/null | head -1 ;;
  esac
}

untimed() {   # untimed TOOL ROUND ACTION
  local log=$LOGS/$1-r$2-$3.log
  tool_cmd "$1" "$3"
  "${CMD[@]}" </dev/null >"$log" 2>&1 || { tail -20 "$log" >&2; die "$1 $3 failed in round $2 (log: $log)"; }
}

timed() {   # timed TOOL ROUND POSITION STEP ACTION SRC_BYTES
  local t=$1 round=$2 pos=$3 step=$4 action=$5 src=$6
  local log=$LOGS/$t-r$round-$step.log tf=$LOGS/.time t0 t1 rss usr sys wall repo
  tool_cmd "$t" "$action"
  local shown="${CMD[*]}"
  printf '%s\n' "${shown//"$PASSWORD"/***}" >"$log.cmd"
  t0=$(date +%s%N)
  if ! /usr/bin/time -f '%M %U %S' -o "$tf" "${CMD[@]}" </dev/null >"$log" 2>&1; then
    tail -20 "$log" >&2
    die "$t $step failed in round $round (log: $log)"
  fi
  t1=$(date +%s%N)
  read -r rss usr sys < <(tail -1 "$tf")
  wall=$(((t1 - t0) / 1000000000)).$(printf '%03d' $((((t1 - t0) / 1000000) % 1000)))
  repo=$(repo_bytes "$t" "$round")
  echo "$t,$round,$pos,$step,$wall,$usr,$sys,$rss,$src,$repo" >>"$CSV"
  log "  $t $step: ${wall}s, peak RSS $((rss / 1024)) MiB, repository $((repo >> 20)) MiB"
}

bench_tool() {   # bench_tool TOOL ROUND POSITION
  local t=$1 round=$2 pos=$3 root got step
  ROUND=$round
  log "round $round/$ROUNDS: $t"
  rm -rf "${REPOS:?}/$t" "${CACHES:?}/$t" "$CACHES/$t-xdg" "$RESTORE"
  mkdir -p "$CACHES/$t" "$CACHES/$t-xdg"
  [ "$("$DATASETS" state)" = pristine ] || die "the tree is not pristine before $t round $round"
  untimed "$t" "$round" init
  timed "$t" "$round" "$pos" backup_full backup-full "$PRISTINE_BYTES"
  timed "$t" "$round" "$pos" backup_nochange backup-nochange "$PRISTINE_BYTES"
  "$DATASETS" mutate
  timed "$t" "$round" "$pos" backup_mutated backup-mutated "$MUTATED_BYTES"
  "$DATASETS" reset
  local restores=(restore)
  # cairn-base may predate --no-fsync (and its restores then do not sync): it restores once.
  if [[ $t == cairn* && $t != cairn-base ]]; then
    # Odd rounds sync first, even rounds skip it first: neither always finds the other's writeback.
    if ((round % 2)); then restores=(restore restore_nofsync); else restores=(restore_nofsync restore); fi
  fi
  for step in "${restores[@]}"; do
    rm -rf "$RESTORE"
    mkdir -p "$RESTORE"
    timed "$t" "$round" "$pos" "$step" "${step/_/-}" "$MUTATED_BYTES"
    root=$(restored_root "$RESTORE" "$VOL" large/app.log) ||
      die "$t: cannot find the restored tree under $RESTORE (log: $LOGS/$t-r$round-$step.log)"
    got=$("$DATASETS" hash "$root")
    [ "$got" = "$MUTATED_HASH" ] ||
      die "$t round $round: the restored tree ($root) differs from the mutated source (hash $got, want $MUTATED_HASH); left in place for inspection"
    log "  $t $step verified: identical to the mutated tree"
  done
  rm -rf "$RESTORE" "${REPOS:?}/$t"
  if [ "$BENCH_STORE" = s3 ] && [ "$t" != cairn-local ]; then s3_py delete "$(bucket_of "$t" "$round")"; fi
}

# ------------------------------------------------------------------ run
echo "tool,round,position,step,wall_s,user_s,sys_s,max_rss_kib,src_bytes,repo_bytes" >"$CSV"
{
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  printf 'command\t%s\n' "$CMDLINE"
  printf 'nproc\t%s\n' "$(nproc)"
  printf 'cpu\t%s\n' "$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  printf 'mem\t%s\n' "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  printf 'kernel\t%s\n' "$(uname -r)"
  printf 'os\t%s\n' "$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-?}")"
  printf 'bench_dir\t%s\n' "$BENCH_DIR"
  printf 'fstype\t%s\n' "$(df -PT "$BENCH_DIR" | awk 'NR == 2 {print $2}')"
  printf 'tree\t%s\n' "$VOL: $PRISTINE_FILES files, $((PRISTINE_BYTES >> 20)) MiB pristine; $MUTATED_FILES files, $((MUTATED_BYTES >> 20)) MiB after mutation (seed $BENCH_SEED, scale 1/$BENCH_VOLUME_SCALE)"
  printf 'rounds\t%s\n' "$ROUNDS"
  printf 'store\t%s\n' "$BENCH_STORE${S3_ENDPOINT:+ (Ceph RGW at $S3_ENDPOINT; cairn-local: local directory)}"
  printf 'tools\t%s\n' "${TOOLS[*]}"
  for t in "${TOOLS[@]}"; do printf 'version_%s\t%s\n' "$t" "$(tool_version "$t")"; done
  rev=$(git -C "$CAIRN_ROOT" rev-parse --short HEAD 2>/dev/null || true)
  if [ -n "$rev" ]; then
    [ -z "$(git -C "$CAIRN_ROOT" status --porcelain 2>/dev/null)" ] || rev="$rev (uncommitted changes)"
    printf 'source\tcairn %s\n' "$rev"
  fi
} >"$META"

log "tools: ${TOOLS[*]}; rounds: $ROUNDS; results: $CSV"
n=${#TOOLS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
  for ((i = 0; i < n; i++)); do
    bench_tool "${TOOLS[$(((i + r - 1) % n))]}" "$r" "$((i + 1))"
  done
done
rm -rf "$CACHES" "$LOGS/.time"

python3 "$HERE/report.py" "$CSV" "$META" >"$MD"
echo
cat "$MD"
echo
log "raw numbers: $CSV; table: $MD; logs: $LOGS"
