# shellcheck shell=bash
# Helpers shared by scripts/deploy.sh and scripts/rollback.sh, which source this file:
# output (say, info, warn, die, step, indent, shown, run), option checks, paths and
# PostgreSQL tools, the database URL, and the Celery processes of pid files.
# Sourcing it only defines functions. They read the calling script's globals when called:
# PROG, STEP_TOTAL, DRY_RUN, PG_URL, PSQL.

# -- output ------------------------------------------------------------------------------

say() { printf '%s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf '    warning: %s\n' "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
step() { printf '\n==> [%s/%s] %s\n' "$1" "$STEP_TOTAL" "$2"; }
indent() { sed 's/^/    | /'; }

# The words of a command, quoted for a shell; the database URL shown by name only.
shown() {
    local out="" word
    for word in "$@"; do
        if [[ $word == "$PG_URL" ]]; then
            # shellcheck disable=SC2016 # shown as the variable's name, not its value
            out+='"$DATABASE_URL" '
        else
            out+="$(printf '%q' "$word") "
        fi
    done
    printf '%s' "${out% }"
}

# run CMD...: run it (saying so), or under --dry-run only say what would run.
run() {
    if ((DRY_RUN)); then
        info "would run: $(shown "$@")"
        return 0
    fi
    info "running: $(shown "$@")"
    "$@" 2>&1 | indent # (pipefail: the command's status)
}

# -- options and paths -------------------------------------------------------------------

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }

in_range() { # in_range VALUE MIN MAX: a whole number from MIN to MAX
    [[ $1 =~ ^[0-9]{1,9}$ ]] && ((10#$1 >= $2 && 10#$1 <= $3))
}

abspath() { if [[ $1 == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$PWD" "${1#./}"; fi; }

# pgbin TOOL: the PostgreSQL client tool to run, from PG_BINDIR if set (else from PATH).
pgbin() { if [[ -n ${PG_BINDIR:-} ]]; then printf '%s/%s' "$PG_BINDIR" "$1"; else printf '%s' "$1"; fi; }

# -- database URL ------------------------------------------------------------------------

# The URL roast-jobs takes: without an SQLAlchemy driver suffix (postgresql+psycopg://).
strip_driver() {
    if [[ $1 =~ ^([A-Za-z][A-Za-z0-9.-]*)\+[A-Za-z0-9_]+(://.*)$ ]]; then
        printf '%s%s' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    else
        printf '%s' "$1"
    fi
}

# The URL libpq takes (pg_dump, psql): also without the broker's own query options.
libpq_url() {
    local url=$1 param kept=() params
    [[ $url == *\?* ]] || {
        printf '%s' "$url"
        return
    }
    IFS='&' read -ra params <<<"${url#*\?}"
    for param in "${params[@]}"; do
        case ${param%%=*} in
        schema | lease_seconds | renew_interval | max_deliveries | polling_interval | \
            native_delay | maintenance_interval | pool_size | synchronous_commit | \
            prepare_threshold | connect_timeout | listen_url | "") ;;
        *) kept+=("$param") ;;
        esac
    done
    url=${url%%\?*}
    if ((${#kept[@]})); then url+="?$(
        IFS='&'
        printf '%s' "${kept[*]}"
    )"; fi
    printf '%s' "$url"
}

sql() { "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 -d "$PG_URL" -c "$1"; }
major_of() { # the major version in "pg_dump (PostgreSQL) 15.20 (Debian ...)"
    [[ $1 =~ \)\ ([0-9]+) ]] && printf '%s' "${BASH_REMATCH[1]}"
}

# -- processes ---------------------------------------------------------------------------

pid_in() { # the pid a pid file names, if it names one
    local pid
    [[ -f $1 ]] || return 1
    pid=$(head -n 1 "$1" 2>/dev/null | tr -dc '0-9')
    [[ -n $pid ]] && printf '%s' "$pid"
}

# A live celery process started with this pid file: /proc/PID/cmdline runs celery and
# names the pid file. Anything else (a dead pid, a zombie, a reused pid) is not ours.
is_our_celery() {
    local pid=$1 pidfile=$2 arg celery=0 named=0 args=()
    [[ -r /proc/$pid/cmdline ]] || return 1
    mapfile -d '' -t args <"/proc/$pid/cmdline" 2>/dev/null || return 1
    for arg in "${args[@]}"; do
        case $arg in
        celery | */celery | */celery/__main__.py) celery=1 ;;
        esac
        [[ $arg == *"$pidfile"* ]] && named=1
    done
    ((celery && named))
}

describe_pid() { # what a pid is, for messages
    local cmd
    if [[ -r /proc/$1/cmdline ]] && cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) && [[ -n $cmd ]]; then
        cmd=${cmd% }
        printf 'a process that is not our celery: %s' "${cmd:0:100}"
    else
        printf 'not running'
    fi
}
