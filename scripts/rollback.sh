#!/usr/bin/env bash
# Roll back a deploy of roast-jobs (scripts/deploy.sh) on the database of DATABASE_URL: new
# jobs back to the legacy table, waiting Celery jobs back too, the Celery workers and beat
# stopped by their pid files; with --restore, the database restored from a backup.
# Safe to run again. See --help.
set -euo pipefail

PROG=${0##*/}
# shellcheck source-path=SCRIPTDIR source=lib/ops.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/ops.sh" # say, info, die, run, ...

usage() {
    cat <<EOF
Usage: $PROG [options]

Rolls back roast-jobs on the database of DATABASE_URL (postgresql://user:pass@host:5432/db;
a postgresql+psycopg:// URL is accepted too), in steps:

  1 preflight          DATABASE_URL reachable, the schema's revision, the pid files; with
                       --restore: the backup readable, and the confirmation
  2 rollout 0          roast-jobs rollout set 0: every new job goes to the legacy table
  3 reverse migration  roast-jobs migrate celery-to-legacy: waiting Celery jobs back to the
                       legacy table (running ones finish on Celery, in step 4)
  4 stop workers       the Celery workers and beat of RUN_DIR's pid files (worker-*.pid,
                       beat.pid), and only those: a pid file whose process is not a celery
                       process started with it is removed, and its process left alone;
                       SIGTERM (warm shutdown: running jobs finish), SIGKILL after
                       --stop-timeout seconds
  5 restore            only with --restore FILE: the database as it was when deploy.sh
                       took FILE. In one transaction: every schema of the database is
                       dropped (public, the broker's and result schemas, ...) and FILE is
                       restored; on any error nothing changes. Asks to type the database
                       name (or --yes). Stop the app's writers first: rows written since
                       the backup are lost

Steps 2 and 3 are skipped on a database that roast-jobs never upgraded.

Options:
  --dry-run             print each step as "would run: ..." and change nothing (the
                        read-only preflight still runs)
  --run-dir DIR         where deploy.sh put pid files and logs (default: ./run)
  --stop-timeout SECS   how long to wait for a warm shutdown before SIGKILL (default: 120)
  --restore FILE        restore this backup (a pg_dump --format=custom file) at the end
  --yes                 confirm --restore without asking
  --no-owner            restore objects owned by the user of DATABASE_URL, not by the
                        roles that owned them (pg_restore --no-owner)
  --lock-timeout SECS   how long the restore waits for each table lock (default: 60)
  --skip-migration      leave waiting Celery jobs where they are (no step 3)
  --batch-size N        passed to roast-jobs migrate celery-to-legacy
  --by WHO              recorded as the author of the flag change (default: USER@HOST)
  -h, --help            this help

Environment: DATABASE_URL (required); ROAST_JOBS, the roast-jobs command (default:
roast-jobs on PATH); PG_BINDIR, a folder holding the pg_restore/psql to use (default: those
on PATH); the app's ROAST_JOBS_* settings reach roast-jobs unchanged.
EOF
}

STEP_TOTAL=5 # the steps of this script, for step (lib/ops.sh)

# -- options -----------------------------------------------------------------------------

DRY_RUN=0
RUN_DIR=run
STOP_TIMEOUT=120
RESTORE=""
YES=0
NO_OWNER=0
LOCK_TIMEOUT=60
SKIP_MIGRATION=0
BATCH_SIZE=""
BY=""

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
    --yes) YES=1 ;;
    --no-owner) NO_OWNER=1 ;;
    --skip-migration) SKIP_MIGRATION=1 ;;
    --run-dir | --stop-timeout | --restore | --lock-timeout | --batch-size | --by)
        need_value "$@"
        case $1 in
        --run-dir) RUN_DIR=$2 ;;
        --stop-timeout) STOP_TIMEOUT=$2 ;;
        --restore) RESTORE=$2 ;;
        --lock-timeout) LOCK_TIMEOUT=$2 ;;
        --batch-size) BATCH_SIZE=$2 ;;
        --by) BY=$2 ;;
        esac
        shift
        ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

in_range "$STOP_TIMEOUT" 0 86400 || die "--stop-timeout takes seconds (0-86400), not '$STOP_TIMEOUT'"
in_range "$LOCK_TIMEOUT" 1 86400 || die "--lock-timeout takes seconds (1-86400), not '$LOCK_TIMEOUT'"
[[ -z $BATCH_SIZE ]] || in_range "$BATCH_SIZE" 1 1000000000 ||
    die "--batch-size takes a number >= 1, not '$BATCH_SIZE'"
((!YES)) || [[ -n $RESTORE ]] || die "--yes confirms --restore: give --restore FILE too"
[[ -n $BY ]] || BY="${USER:-$(id -un 2>/dev/null || echo unknown)}@${HOSTNAME:-localhost} (rollback.sh)"

RUN_DIR=$(abspath "$RUN_DIR")
[[ -z $RESTORE ]] || RESTORE=$(abspath "$RESTORE")

read -ra RJ <<<"${ROAST_JOBS:-roast-jobs}"
((${#RJ[@]} > 0)) || die "ROAST_JOBS is empty"
PG_RESTORE=$(pgbin pg_restore)
PSQL=$(pgbin psql)

# -- database URL ------------------------------------------------------------------------

[[ -n ${DATABASE_URL:-} ]] || die "DATABASE_URL is not set (postgresql://user:pass@host:5432/db)"
DATABASE_URL=$(strip_driver "$DATABASE_URL")
export DATABASE_URL
PG_URL=$(libpq_url "$DATABASE_URL")

# -- processes ---------------------------------------------------------------------------

children_of() { # the pids whose parent is $1 (a worker's pool processes)
    local d stat rest ppid
    for d in /proc/[0-9]*; do
        { read -r stat <"$d/stat"; } 2>/dev/null || continue
        rest=${stat##*) } # after "pid (comm) ": state ppid ...
        read -r _ ppid _ <<<"$rest"
        [[ $ppid == "$1" ]] && printf '%s\n' "${d#/proc/}"
    done
    return 0
}

# -- 1 preflight -------------------------------------------------------------------------

((DRY_RUN)) && say "$PROG: dry run: nothing will be changed"
step 1 "preflight"
command -v "${RJ[0]}" >/dev/null || die "roast-jobs not found ('${RJ[0]}'): put it on PATH or set ROAST_JOBS"
command -v "$PSQL" >/dev/null || die "$PSQL not found: install the PostgreSQL client tools or set PG_BINDIR"
server=$(sql "SELECT current_setting('server_version_num')::int / 10000, current_database()" 2>&1) ||
    die "cannot connect to the database of DATABASE_URL: ${server%%$'\n'*}"
IFS='|' read -r SERVER_MAJOR DB_NAME <<<"$server"
info "database $DB_NAME, PostgreSQL $SERVER_MAJOR"

rc=0
revision=$("${RJ[@]}" db current --check 2>&1) || rc=$?
case $rc in
0 | 3) ;;
*)
    [[ $revision != *$'\n'* ]] || indent <<<"$revision" >&2
    die "roast-jobs db current failed (exit $rc): ${revision##*$'\n'}"
    ;;
esac
revision=${revision%%$'\n'*}
UPGRADED=1
if [[ $revision == none ]]; then
    UPGRADED=0
    info "schema: never upgraded by roast-jobs (no flags, no Celery jobs): steps 2 and 3 skipped"
else
    info "schema at revision $revision"
fi

PID_FILES=()
if [[ -d $RUN_DIR ]]; then
    [[ -e $RUN_DIR/beat.pid ]] && PID_FILES+=("$RUN_DIR/beat.pid") # beat first: no new
    for f in "$RUN_DIR"/worker-*.pid; do                             # scheduled tasks while
        [[ -e $f ]] && PID_FILES+=("$f")                                 # the workers drain
    done
    info "run dir $RUN_DIR: ${#PID_FILES[@]} pid file(s)"
    if [[ -e $RUN_DIR/deploy.lock ]] && command -v flock >/dev/null; then
        exec 9>>"$RUN_DIR/deploy.lock"
        flock -n 9 || die "a deploy.sh is still running with the run dir $RUN_DIR: stop it first (Ctrl-C), then run $PROG again"
        ((!DRY_RUN)) || exec 9>&- # a dry run holds nothing
    fi
else
    info "no run dir $RUN_DIR: no workers to stop"
fi

if [[ -n $RESTORE ]]; then
    [[ -f $RESTORE && -r $RESTORE ]] || die "cannot read the backup $RESTORE"
    command -v "$PG_RESTORE" >/dev/null || die "$PG_RESTORE not found: install the PostgreSQL client tools or set PG_BINDIR"
    toc=$("$PG_RESTORE" --list "$RESTORE" 2>&1) ||
        die "$RESTORE is not a backup $PG_RESTORE can read: ${toc%%$'\n'*}"
    created=$(sed -n 's/^; *Archive created at //p' <<<"$toc")
    dumped_db=$(sed -n 's/^; *dbname: //p' <<<"$toc")
    info "backup $RESTORE: database ${dumped_db:-?}, taken ${created:-at an unknown time}"
    [[ -z $dumped_db || $dumped_db == "$DB_NAME" ]] ||
        warn "the backup is of the database '$dumped_db', not '$DB_NAME'"
    restore_major=$(major_of "$("$PG_RESTORE" --version)") || die "cannot tell the version of $PG_RESTORE"
    ((restore_major <= SERVER_MAJOR)) ||
        warn "$PG_RESTORE $restore_major is newer than the server ($SERVER_MAJOR): should it write a setting the server lacks, the restore fails and changes nothing; then use the client tools of $SERVER_MAJOR (PG_BINDIR)"
    schemas=$(sql "SELECT string_agg(nspname, ', ' ORDER BY nspname) FROM pg_namespace WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'")
    info "the restore drops the schemas: ${schemas:-none}; then restores the backup's"
    if ((DRY_RUN)); then
        info "would ask to type the database name ($DB_NAME) unless --yes"
    elif ((YES)); then
        info "confirmed by --yes"
    elif [[ -t 0 ]]; then
        printf '\nThis replaces everything in the database %s with the backup %s.\n' "$DB_NAME" "$RESTORE"
        printf 'Rows written since the backup are lost. Type the database name to go on: '
        read -r answer || answer=""
        [[ $answer == "$DB_NAME" ]] || die "not confirmed ('$answer' is not '$DB_NAME'): nothing was changed"
    else
        die "--restore asks to type the database name, and there is no terminal to ask on: pass --yes to confirm; nothing was changed"
    fi
fi

# -- 2 rollout 0 -------------------------------------------------------------------------

step 2 "rollout 0 (every new job to the legacy table)"
if ((UPGRADED)); then
    run "${RJ[@]}" rollout set 0 --by "$BY" || die "roast-jobs rollout set 0 failed"
else
    info "skipped: the schema was never upgraded"
fi

# -- 3 reverse migration -----------------------------------------------------------------

step 3 "reverse migration (waiting Celery jobs to the legacy table)"
if ((!UPGRADED)); then
    info "skipped: the schema was never upgraded"
elif ((SKIP_MIGRATION)); then
    info "skipped (--skip-migration): waiting Celery jobs stay on Celery"
else
    # App processes re-read the flags every ROAST_JOBS_FLAG_REFRESH_SECONDS: wait that
    # long, or a job created on the old flags lands on Celery after this pass.
    refresh=${ROAST_JOBS_FLAG_REFRESH_SECONDS:-2}
    if ((DRY_RUN)); then
        info "would wait ${refresh}s for every process to see rollout 0"
    else
        info "waiting ${refresh}s for every process to see rollout 0"
        sleep "$refresh"
    fi
    migrate=("${RJ[@]}" migrate celery-to-legacy)
    [[ -z $BATCH_SIZE ]] || migrate+=(--batch-size "$BATCH_SIZE")
    run "${migrate[@]}" ||
        die "the reverse migration failed; the workers still run. Run $PROG again, or pass --skip-migration"
fi

# -- 4 stop workers ----------------------------------------------------------------------

step 4 "stop the Celery workers and beat"
LIVE=() # "name pid pidfile" of the processes to stop
for f in "${PID_FILES[@]}"; do
    name=$(basename "$f" .pid)
    if pid=$(pid_in "$f") && is_our_celery "$pid" "$f"; then
        LIVE+=("$name $pid $f")
        continue
    fi
    if ((DRY_RUN)); then
        info "would remove the stale pid file $f (pid ${pid:-none}: $(describe_pid "${pid:-0}"))"
    else
        info "stale pid file $f (pid ${pid:-none}: $(describe_pid "${pid:-0}")): removed, not signalled"
        rm -f "$f"
    fi
done

stop_group() { # SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL (with its pool processes)
    local entry name pid pidfile left=() still=() kids deadline
    for entry in "$@"; do
        read -r name pid pidfile <<<"$entry"
        if ((DRY_RUN)); then
            info "would run: kill -TERM $pid   ($name; SIGKILL after ${STOP_TIMEOUT}s)"
            continue
        fi
        info "$name (pid $pid): SIGTERM, warm shutdown"
        kill -TERM "$pid" 2>/dev/null || true
        left+=("$entry")
    done
    ((DRY_RUN)) && return 0
    deadline=$((SECONDS + STOP_TIMEOUT))
    while ((${#left[@]})); do
        still=()
        for entry in "${left[@]}"; do
            read -r name pid pidfile <<<"$entry"
            if is_our_celery "$pid" "$pidfile"; then
                still+=("$entry")
            else
                info "$name stopped"
                # Celery removes its pid file on a clean exit; not after a crash.
                [[ $(pid_in "$pidfile" || true) != "$pid" ]] || rm -f "$pidfile"
            fi
        done
        left=("${still[@]+"${still[@]}"}")
        ((${#left[@]})) || break
        if ((SECONDS >= deadline)); then
            for entry in "${left[@]}"; do
                read -r name pid pidfile <<<"$entry"
                kids=()
                while read -r kid; do
                    [[ -n $kid ]] && is_our_celery "$kid" "$pidfile" && kids+=("$kid")
                done < <(children_of "$pid")
                info "$name (pid $pid) still running after ${STOP_TIMEOUT}s: the warm shutdown did not end; SIGKILL${kids[0]:+ (and its pool processes ${kids[*]})}"
                kill -KILL "$pid" "${kids[@]}" 2>/dev/null || true
            done
            deadline=$((SECONDS + 10))
            STOP_TIMEOUT=10
        fi
        sleep 0.5
    done
}

beat=() workers=()
for entry in "${LIVE[@]+"${LIVE[@]}"}"; do
    if [[ $entry == beat\ * ]]; then beat+=("$entry"); else workers+=("$entry"); fi
done
if ((${#LIVE[@]} == 0)); then
    info "no worker or beat running from $RUN_DIR"
else
    ((${#beat[@]} == 0)) || stop_group "${beat[@]}"
    ((${#workers[@]} == 0)) || stop_group "${workers[@]}"
fi
# Jobs the workers held during step 3 (and retries they queued since) are waiting on
# Celery now that no worker runs: move them too.
if ((UPGRADED && !SKIP_MIGRATION && ${#LIVE[@]} > 0)); then
    info "moving what the stopped workers left waiting on Celery"
    run "${migrate[@]}" ||
        die "the second reverse migration failed; run: ${migrate[*]}"
    info "jobs still waiting on celery above were held by a killed worker: its leases end after ROAST_JOBS_LEASE_SECONDS; run the migration again then"
fi
if [[ -e $RUN_DIR/canary.soaked ]]; then
    if ((DRY_RUN)); then
        info "would remove $RUN_DIR/canary.soaked (deploy.sh's canary progress)"
    else
        rm -f "$RUN_DIR/canary.soaked"
    fi
fi

# -- 5 restore ---------------------------------------------------------------------------

step 5 "restore"
# Before dropping: the statements that drop every schema of the database and recreate
# public as it is now (pg_dump leaves public's creation out: it takes it as given).
# Computed in one query, so \gexec runs them in this order after it.
DROP_SCHEMAS_SQL=$(
    cat <<'SQL'
SELECT statement FROM (
    SELECT 1 AS part, nspname AS sort, format('DROP SCHEMA %I CASCADE', nspname) AS statement
      FROM pg_namespace WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'
    UNION ALL
    SELECT 2, '', 'CREATE SCHEMA public' FROM pg_namespace WHERE nspname = 'public'
    UNION ALL
    SELECT 3, '', format('ALTER SCHEMA public OWNER TO %s', nspowner::regrole)
      FROM pg_namespace WHERE nspname = 'public'
    UNION ALL
    SELECT 4, '', format('REVOKE ALL ON SCHEMA public FROM %s', nspowner::regrole)
      FROM pg_namespace WHERE nspname = 'public' AND nspacl IS NOT NULL
    UNION ALL
    SELECT 5, a.privilege_type, format('GRANT %s ON SCHEMA public TO %s%s', a.privilege_type,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
               CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
      FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = 'public'
    UNION ALL
    SELECT 6, '', format('COMMENT ON SCHEMA public IS %L', obj_description(oid, 'pg_namespace'))
      FROM pg_namespace WHERE nspname = 'public' AND obj_description(oid, 'pg_namespace') IS NOT NULL
) AS s ORDER BY part, sort
\gexec
SQL
)

restore_sql() { # the whole restore, as SQL for one psql session; COMMIT only if all of it came
    printf '%s\n' "BEGIN;" "SET LOCAL lock_timeout = '${LOCK_TIMEOUT}s';" \
        "SET LOCAL client_min_messages = warning;" "$DROP_SCHEMAS_SQL"
    "$PG_RESTORE" "${RESTORE_ARGS[@]}" && printf '%s\n' "COMMIT;"
}

if [[ -z $RESTORE ]]; then
    info "skipped (no --restore FILE): the database keeps its schema and rows"
else
    RESTORE_ARGS=(--file=- "$RESTORE")
    ((!NO_OWNER)) || RESTORE_ARGS=(--no-owner "${RESTORE_ARGS[@]}")
    if ((DRY_RUN)); then
        info "would run: { BEGIN; DROP SCHEMA ... CASCADE (each: ${schemas:-none}); CREATE SCHEMA public; $(shown "$PG_RESTORE" "${RESTORE_ARGS[@]}"); COMMIT; } | $(shown "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$PG_URL" -f -)"
    else
        info "restoring $RESTORE into $DB_NAME in one transaction (drops: ${schemas:-none})"
        # Errors and warnings on stderr; the results of the dump's own queries to /dev/null.
        out=$(restore_sql | "$PSQL" -X -q -v ON_ERROR_STOP=1 -d "$PG_URL" -o /dev/null -f - 2>&1) || {
            [[ -z $out ]] || indent <<<"$out"
            [[ $out != *'role "'*'" does not exist'* || $NO_OWNER == 1 ]] ||
                info "a role the backup names is missing here: --no-owner restores with the user of DATABASE_URL as owner"
            die "the restore failed and was rolled back: the database is as it was before step 5"
        }
        [[ -z $out ]] || indent <<<"$out"
        revision=$("${RJ[@]}" db current 2>&1) || revision="? (roast-jobs db current failed)"
        info "restored: the database is as it was at $created (schema revision now: ${revision%%$'\n'*})"
    fi
fi

say ""
if ((DRY_RUN)); then
    say "$PROG: dry run done: nothing was changed"
else
    say "$PROG: rollback done${RESTORE:+ (database restored from $RESTORE)}"
fi
