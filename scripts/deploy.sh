#!/usr/bin/env bash
# Deploy roast-jobs on the database of DATABASE_URL: back it up, upgrade its schema, start
# the Celery workers and beat, move the waiting legacy jobs to Celery, then raise the share
# of new jobs sent to Celery step by step, each step gated by `roast-jobs rollout check`.
# Safe to run again: done steps are recognised and skipped. See --help.
set -euo pipefail

PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/ops.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/ops.sh" # say, info, die, run, ...

usage() {
    cat <<EOF
Usage: $PROG [options]

Deploys roast-jobs on the database of DATABASE_URL (postgresql://user:pass@host:5432/db;
a postgresql+psycopg:// URL is accepted too), in steps:

  1 preflight         DATABASE_URL reachable, pg_dump/pg_restore present and not older
                      than the server, pending schema migrations, current rollout
  2 backup            pg_dump --format=custom to BACKUP_DIR/DB-UTCTIME.dump (checked with
                      pg_restore --list); the one to give rollback.sh --restore
  3 schema upgrade    roast-jobs db upgrade
  4 rollout 0         roast-jobs rollout set 0: new jobs stay on the legacy table (kept as
                      it is when an earlier run already raised it: the canary resumes)
  5 workers           N x roast-jobs worker --detach, and one roast-jobs beat, with pid
                      files and logs in RUN_DIR; a pid file naming a live celery process
                      is not started twice; waits until each is up
  6 forward migration roast-jobs migrate legacy-to-celery (waiting legacy jobs to Celery)
  7 canary            for each step: gate (roast-jobs rollout check), rollout set STEP, soak;
                      steps already reached (and soaked) are skipped
  8 final check       roast-jobs rollout check after the last soak

A failing gate stops the deploy (exit 3 when a rollback trigger fired, 1 on errors): the
rollout stays where it is; scripts/rollback.sh takes it back. Nothing is rolled back here.

Options:
  --dry-run             print each step as "would run: ..." and change nothing (the
                        read-only preflight still runs)
  --steps "N N ..."     canary percentages, rising, 1-100 (default: "10 50 100")
  --soak SECONDS        wait after each canary step before the next gate (default: 300)
  --workers N           Celery worker processes to run (default: 2)
  --concurrency N       pool size of each worker (default: 2)
  --no-beat             do not start beat (run one beat per deployment: another host has it)
  --backup-dir DIR      where backups go (default: ./backups)
  --run-dir DIR         pid files, logs, canary progress (default: ./run)
  --by WHO              recorded as the author of the flag changes (default: USER@HOST)
  --batch-size N        passed to roast-jobs migrate legacy-to-celery
  --start-timeout SECS  how long to wait for the workers and beat to come up (default: 60)
  -h, --help            this help

Environment: DATABASE_URL (required); ROAST_JOBS, the roast-jobs command (default:
roast-jobs on PATH; e.g. /srv/app/.venv/bin/roast-jobs); PG_BINDIR, a folder holding the
pg_dump/pg_restore/psql to use (default: those on PATH); the app's ROAST_JOBS_* settings
(broker and result schemas, ...) reach roast-jobs and the workers unchanged.
EOF
}

STEP_TOTAL=8 # the steps of this script, for step (lib/ops.sh)

# -- options -----------------------------------------------------------------------------

DRY_RUN=0
STEPS="10 50 100"
SOAK=300
WORKERS=2
CONCURRENCY=2
BEAT=1
BACKUP_DIR=backups
RUN_DIR=run
BY=""
BATCH_SIZE=""
START_TIMEOUT=60

while [[ $# -gt 0 ]]; do
    case $1 in
    --*=*)
        name=${1%%=*}
        set -- "$name" "${1#*=}" "${@:2}"
        continue
        ;;
    esac
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    --dry-run) DRY_RUN=1 ;;
    --no-beat) BEAT=0 ;;
    --steps | --soak | --workers | --concurrency | --backup-dir | --run-dir | --by | \
        --batch-size | --start-timeout)
        need_value "$@"
        case $1 in
        --steps) STEPS=$2 ;;
        --soak) SOAK=$2 ;;
        --workers) WORKERS=$2 ;;
        --concurrency) CONCURRENCY=$2 ;;
        --backup-dir) BACKUP_DIR=$2 ;;
        --run-dir) RUN_DIR=$2 ;;
        --by) BY=$2 ;;
        --batch-size) BATCH_SIZE=$2 ;;
        --start-timeout) START_TIMEOUT=$2 ;;
        esac
        shift
        ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

in_range "$WORKERS" 1 64 || die "--workers takes 1-64, not '$WORKERS'"
in_range "$CONCURRENCY" 1 1000 || die "--concurrency takes 1-1000, not '$CONCURRENCY'"
[[ $SOAK =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--soak takes seconds (e.g. 300), not '$SOAK'"
in_range "$START_TIMEOUT" 1 86400 || die "--start-timeout takes seconds (1-86400), not '$START_TIMEOUT'"
[[ -z $BATCH_SIZE ]] || in_range "$BATCH_SIZE" 1 1000000000 ||
    die "--batch-size takes a number >= 1, not '$BATCH_SIZE'"
read -ra STEP_LIST <<<"$STEPS"
((${#STEP_LIST[@]} > 0)) || die "--steps needs at least one percentage, e.g. \"10 50 100\""
previous=0
for s in "${STEP_LIST[@]}"; do
    in_range "$s" 1 100 || die "--steps takes percentages 1-100, not '$s'"
    ((10#$s > previous)) || die "--steps must rise: '$STEPS'"
    previous=$((10#$s))
done
[[ -n $BY ]] || BY="${USER:-$(id -un 2>/dev/null || echo unknown)}@${HOSTNAME:-localhost} (deploy.sh)"

# Absolute paths: the workers detach, and their pid files are recognised by these paths.
BACKUP_DIR=$(abspath "$BACKUP_DIR")
RUN_DIR=$(abspath "$RUN_DIR")
PRE_UPGRADE="$RUN_DIR/pre-upgrade-backup" # names the backup taken before the schema upgrade

read -ra RJ <<<"${ROAST_JOBS:-roast-jobs}"
((${#RJ[@]} > 0)) || die "ROAST_JOBS is empty"
PG_DUMP=$(pgbin pg_dump)
PG_RESTORE=$(pgbin pg_restore)
PSQL=$(pgbin psql)

# -- database URL ------------------------------------------------------------------------

[[ -n ${DATABASE_URL:-} ]] || die "DATABASE_URL is not set (postgresql://user:pass@host:5432/db)"
DATABASE_URL=$(strip_driver "$DATABASE_URL")
export DATABASE_URL
PG_URL=$(libpq_url "$DATABASE_URL")

# -- processes ---------------------------------------------------------------------------

# Whether any process runs celery with this pid file on its command line: a worker being
# started has no pid file yet, but has this.
any_celery_naming() {
    local d
    for d in /proc/[0-9]*; do
        is_our_celery "${d#/proc/}" "$1" 2>/dev/null && return 0
    done
    return 1
}

# -- rollout -----------------------------------------------------------------------------

# The share of new jobs going to Celery now, from `roast-jobs flags show`'s mode line.
current_percent() {
    local out
    out=$("${RJ[@]}" flags show --history 0 2>&1) || {
        warn "roast-jobs flags show failed: ${out##*$'\n'}"
        return 1
    }
    awk '$1 == "mode" {
        if ($2 == "off") print 0
        else if ($2 == "on") print 100
        else if ($2 == "canary") { v = $3; sub(/%$/, "", v); print v }
    }' <<<"$out"
}

rollout_set() { run "${RJ[@]}" rollout set "$1" --by "$BY"; }

stopped() { # stopped EXIT_CODE WHY: the deploy ends here, saying what to do next
    say ""
    say "$PROG: deploy stopped: $2"
    [[ -z ${CURRENT:-} ]] || say "The rollout stays at ${CURRENT}%; new jobs keep going where it says."
    say "Fix the cause and run $PROG again (done steps are skipped), or roll back:"
    say "  $SCRIPT_DIR/rollback.sh --run-dir $(printf '%q' "$RUN_DIR")"
    if [[ -s $PRE_UPGRADE ]]; then
        say "and, to undo the schema upgrade too (rows written since are lost), add"
        say "  --restore $(printf '%q' "$(head -n 1 "$PRE_UPGRADE")")   (the backup taken before it)"
    fi
    exit "$1"
}

gate() { # gate LABEL: roast-jobs rollout check; stops the deploy unless it passes
    local out rc=0
    if ((DRY_RUN)); then
        info "gate ($1): would run: $(shown "${RJ[@]}" rollout check)"
        return 0
    fi
    info "gate ($1): $(shown "${RJ[@]}" rollout check)"
    out=$("${RJ[@]}" rollout check 2>&1) || rc=$?
    [[ -z $out ]] || indent <<<"$out"
    case $rc in
    0) info "gate passed" ;;
    3) stopped 3 "a rollback trigger fired at the gate ($1); see the check's output above" ;;
    *) stopped 1 "roast-jobs rollout check failed (exit $rc) at the gate ($1)" ;;
    esac
}

# -- 1 preflight -------------------------------------------------------------------------

((DRY_RUN)) && say "$PROG: dry run: nothing will be changed"
step 1 "preflight"
command -v "${RJ[0]}" >/dev/null || die "roast-jobs not found ('${RJ[0]}'): put it on PATH or set ROAST_JOBS"
for tool in "$PSQL" "$PG_DUMP" "$PG_RESTORE"; do
    command -v "$tool" >/dev/null || die "$tool not found: install the PostgreSQL client tools or set PG_BINDIR"
done
server=$(sql "SELECT current_setting('server_version_num')::int / 10000, current_database()" 2>&1) ||
    die "cannot connect to the database of DATABASE_URL: ${server%%$'\n'*}"
IFS='|' read -r SERVER_MAJOR DB_NAME <<<"$server"
info "database $DB_NAME, PostgreSQL $SERVER_MAJOR"
for tool in "$PG_DUMP" "$PG_RESTORE"; do
    major=$(major_of "$("$tool" --version)") || die "cannot tell the version of $tool"
    ((major >= SERVER_MAJOR)) ||
        die "$tool is version $major, older than the server ($SERVER_MAJOR): it cannot dump it; install the client tools of PostgreSQL $SERVER_MAJOR or newer (PG_BINDIR)"
    info "$tool $major"
done

rc=0
revision=$("${RJ[@]}" db current --check 2>&1) || rc=$?
case $rc in
0)
    PENDING=0
    info "schema at the newest revision (${revision%%$'\n'*}): nothing to migrate"
    ;;
3)
    PENDING=1
    info "migrations pending (database at ${revision%%$'\n'*}): step 3 upgrades"
    ;;
*)
    [[ $revision != *$'\n'* ]] || indent <<<"$revision" >&2
    die "roast-jobs db current failed (exit $rc): ${revision##*$'\n'}"
    ;;
esac

CURRENT=""
if ((!PENDING)); then
    CURRENT=$(current_percent) || die "cannot read the rollout (roast-jobs flags show)"
    [[ -n $CURRENT ]] || die "cannot read the rollout from roast-jobs flags show"
    info "rollout: ${CURRENT}% of new jobs to Celery"
fi
info "run dir: $RUN_DIR; backup dir: $BACKUP_DIR"

if ((!DRY_RUN)); then
    mkdir -p "$RUN_DIR" || die "cannot create the run dir $RUN_DIR"
    if command -v flock >/dev/null; then
        exec 9>>"$RUN_DIR/deploy.lock"
        flock -n 9 || die "another deploy.sh is running with the run dir $RUN_DIR"
    fi
fi

# -- 2 backup ----------------------------------------------------------------------------

step 2 "backup"
BACKUP_FILE=""
TMP_BACKUP=""
cleanup() { [[ -z $TMP_BACKUP ]] || rm -f "$TMP_BACKUP"; }
trap cleanup EXIT
interrupted() {
    say ""
    say "$PROG: interrupted; run it again to carry on where it stopped"
    exit "$1"
}
trap 'interrupted 130' INT
trap 'interrupted 143' TERM
stamp=$(date -u +%Y%m%dT%H%M%SZ)
BACKUP_FILE="$BACKUP_DIR/${DB_NAME//[^A-Za-z0-9_.-]/_}-$stamp.dump"
n=1
while [[ -e $BACKUP_FILE ]]; do
    BACKUP_FILE="$BACKUP_DIR/${DB_NAME//[^A-Za-z0-9_.-]/_}-$stamp-$n.dump"
    n=$((n + 1))
done
if ((DRY_RUN)); then
    run "$PG_DUMP" --format=custom "--file=$BACKUP_FILE" "$PG_URL"
else
    mkdir -p "$BACKUP_DIR" || die "cannot create the backup dir $BACKUP_DIR"
    TMP_BACKUP="$BACKUP_FILE.partial"
    # Only the owner may read a backup; a stopped dump leaves no file that looks whole.
    (umask 077 && run "$PG_DUMP" --format=custom "--file=$TMP_BACKUP" "$PG_URL") ||
        die "pg_dump failed: no backup, nothing changed"
    "$PG_RESTORE" --list "$TMP_BACKUP" >/dev/null || die "pg_restore --list cannot read the backup $TMP_BACKUP"
    mv "$TMP_BACKUP" "$BACKUP_FILE"
    TMP_BACKUP=""
    info "backup: $BACKUP_FILE ($(wc -c <"$BACKUP_FILE") bytes; checked with pg_restore --list)"
    if ((PENDING)); then
        info "taken before the schema upgrade: the one to restore on a rollback"
        printf '%s\n' "$BACKUP_FILE" >"$PRE_UPGRADE"
    fi
fi

# -- 3 schema upgrade --------------------------------------------------------------------

step 3 "schema upgrade"
# Run even at the newest revision: a no-op on the tables, it readies the broker and result
# schemas (ROAST_JOBS_BROKER_SCHEMA, ROAST_JOBS_RESULT_SCHEMA) all the same.
((PENDING)) || info "no migrations pending: checks the broker and result schemas"
run "${RJ[@]}" db upgrade || die "roast-jobs db upgrade failed; the backup is $BACKUP_FILE"

# -- 4 rollout 0 -------------------------------------------------------------------------

step 4 "rollout 0 (new jobs stay on the legacy table until the workers run)"
if [[ -z $CURRENT ]] && ((!DRY_RUN)); then # (read in the preflight unless just upgraded)
    CURRENT=$(current_percent) || die "cannot read the rollout (roast-jobs flags show)"
    [[ -n $CURRENT ]] || die "cannot read the rollout from roast-jobs flags show"
fi
if [[ -n $CURRENT ]] && ((CURRENT > 0)); then
    info "rollout already at ${CURRENT}% (an earlier deploy raised it): kept; the canary resumes from there"
else
    rollout_set 0 || die "roast-jobs rollout set 0 failed"
    CURRENT=0
fi

# -- 5 workers ---------------------------------------------------------------------------

step 5 "workers ($WORKERS x roast-jobs worker -c $CONCURRENCY$( ((BEAT)) && printf ', beat'))"
STARTED=()   # "name pidfile logfile log-offset" of the processes started here
PROCESSES=() # "name pidfile" of every process this deploy runs

ensure_process() { # ensure_process NAME PIDFILE LOGFILE COMMAND...
    local name=$1 pidfile=$2 logfile=$3 pid offset=0
    shift 3
    PROCESSES+=("$name $pidfile")
    if pid=$(pid_in "$pidfile") && is_our_celery "$pid" "$pidfile"; then
        info "$name already running (pid $pid, $pidfile): not started again"
        return 0
    fi
    if [[ -e $pidfile ]]; then
        if ((DRY_RUN)); then
            info "would remove the stale pid file $pidfile (pid ${pid:-none}: $(describe_pid "${pid:-0}"))"
        else
            info "stale pid file $pidfile (pid ${pid:-none}: $(describe_pid "${pid:-0}")): removed, not signalled"
            rm -f "$pidfile"
        fi
    fi
    [[ -f $logfile ]] && offset=$(wc -c <"$logfile")
    run "$@" || die "$name did not start: see $logfile"
    ((DRY_RUN)) || STARTED+=("$name $pidfile $logfile $offset")
}

for ((i = 1; i <= WORKERS; i++)); do
    ensure_process "worker-$i" "$RUN_DIR/worker-$i.pid" "$RUN_DIR/worker-$i.log" \
        "${RJ[@]}" worker -c "$CONCURRENCY" --detach "--pidfile=$RUN_DIR/worker-$i.pid" \
        "--logfile=$RUN_DIR/worker-$i.log" -n "worker-$i@%h"
done
if ((BEAT)); then
    ensure_process beat "$RUN_DIR/beat.pid" "$RUN_DIR/beat.log" \
        "${RJ[@]}" beat --schedule "$RUN_DIR/celerybeat-schedule" --detach \
        "--pidfile=$RUN_DIR/beat.pid" "--logfile=$RUN_DIR/beat.log"
fi

is_up() { # is_up NAME PIDFILE LOGFILE OFFSET: the process runs (a worker: and said "ready.")
    local pid
    pid=$(pid_in "$2") && is_our_celery "$pid" "$2" || return 1
    [[ $1 == beat ]] && return 0
    # (Not `tail | grep -q`: grep's early exit would fail tail, and pipefail the test.)
    grep -q ' ready\.' < <(tail -c +"$(($4 + 1))" "$3" 2>/dev/null)
}

if ((${#STARTED[@]})); then
    info "waiting up to ${START_TIMEOUT}s for ${#STARTED[@]} process(es) to come up"
    deadline=$((SECONDS + START_TIMEOUT))
    for entry in "${STARTED[@]}"; do
        read -r name pidfile logfile offset <<<"$entry"
        misses=0
        until is_up "$name" "$pidfile" "$logfile" "$offset"; do
            why=""
            # Gone for good only when missed 4 times in a row: while celery detaches (two
            # forks, an exec) one look at /proc can fall between a process and its child.
            if any_celery_naming "$pidfile"; then misses=0; else misses=$((misses + 1)); fi
            if ((SECONDS >= deadline)); then
                why="is not up after ${START_TIMEOUT}s"
            elif ((misses >= 4)); then
                why="exited while starting"
            fi
            if [[ -n $why ]]; then
                if [[ -s $logfile ]]; then
                    say "    $name $why; the end of $logfile:"
                    tail -n 20 "$logfile" | indent
                else
                    say "    $name $why, before writing its log (an import or configuration error):"
                    say "    run its command without --detach to see the error"
                fi
                die "$name did not come up; the steps before it stay done"
            fi
            sleep 0.5
        done
        info "$name up (pid $(pid_in "$pidfile"))"
    done
fi

check_processes() { # after a soak: every process of the deploy still runs
    local entry name pidfile pid
    for entry in "${PROCESSES[@]}"; do
        read -r name pidfile <<<"$entry"
        if ! { pid=$(pid_in "$pidfile") && is_our_celery "$pid" "$pidfile"; }; then
            stopped 1 "$name is not running any more (pid file $pidfile); see its log in $RUN_DIR"
        fi
    done
}

# -- 6 forward migration -----------------------------------------------------------------

step 6 "forward migration (waiting legacy jobs to Celery)"
migrate=("${RJ[@]}" migrate legacy-to-celery)
[[ -z $BATCH_SIZE ]] || migrate+=(--batch-size "$BATCH_SIZE")
run "${migrate[@]}" || die "the forward migration failed (exit $?); run $PROG again to retry it"

# -- 7 canary ----------------------------------------------------------------------------

PROGRESS="$RUN_DIR/canary.soaked" # the last step whose soak ended
soaked=0
if [[ -f $PROGRESS ]]; then
    soaked=$(tr -dc '0-9' <"$PROGRESS")
    soaked=${soaked:-0}
fi
k=0
for s in "${STEP_LIST[@]}"; do
    s=$((10#$s))
    k=$((k + 1))
    step 7 "canary ${s}% (step $k of ${#STEP_LIST[@]})"
    if ((CURRENT > s)); then
        info "rollout already at ${CURRENT}%, past ${s}%: skipped"
        continue
    fi
    if ((CURRENT == s && soaked >= s)); then
        info "rollout already at ${s}% and soaked by an earlier run: skipped"
        continue
    fi
    if ((CURRENT < s)); then
        gate "before raising to ${s}%"
        rollout_set "$s" || stopped 1 "roast-jobs rollout set $s failed"
        CURRENT=$s
    else
        info "rollout already at ${s}%; its soak did not finish in an earlier run"
    fi
    if ((DRY_RUN)); then
        info "would soak ${SOAK}s at ${s}%"
        continue
    fi
    info "soaking ${SOAK}s at ${s}% (until $(date -d "+${SOAK%.*} seconds" +%H:%M:%S 2>/dev/null || echo later))"
    sleep "$SOAK"
    check_processes
    printf '%s\n' "$s" >"$PROGRESS"
    soaked=$s
done

# -- 8 final check -----------------------------------------------------------------------

step 8 "final check"
gate "after the last soak"

say ""
if ((DRY_RUN)); then
    say "$PROG: dry run done: nothing was changed"
else
    say "$PROG: deploy done: rollout at ${CURRENT}%; ${#PROCESSES[@]} process(es) running (pid files and logs in $RUN_DIR)"
    say "backup: $BACKUP_FILE"
    [[ ! -s $PRE_UPGRADE ]] || say "taken before the schema upgrade: $(head -n 1 "$PRE_UPGRADE")"
fi
