"""``roast-jobs rollout status|check|set``: how the move to Celery is going, whether a
rollback trigger fired, and the percentage of new jobs sent to Celery.

``check`` exits 0 when healthy and 3 when a trigger fired (1 on errors), so a deploy
script or a cron job can act on it. The figures come from ``rollout.status``, the
judgement from ``rollout.checks``; ``set`` is ``flags rollout`` that also says when.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from roast_jobs.cli_flags import _by_option, _env_name, _shown, _who
from roast_jobs.cli_jobs import _echo_json, _json_option
from roast_jobs.cli_service import database_url, one_line_errors

#: ``rollout check``'s exit status when a trigger fired (1 is taken by errors, 2 by usage).
EXIT_FIRED = 3


def _window_option(fn: Any) -> Any:
    return click.option(
        "--window",
        "window",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="SECONDS",
        help="Judge the jobs that ended this long ago or later "
        "[default: ROAST_JOBS_ROLLOUT_WINDOW_SECONDS, 900].",
    )(fn)


@click.group()
def rollout() -> None:
    """Rollout to Celery: status, rollback triggers, percentage.

    \b
    roast-jobs rollout status            (flags, jobs per backend, migration, broker)
    roast-jobs rollout check --json      (exit 3 when a rollback trigger fired)
    roast-jobs rollout set 50 --by alice (50% of new evaluations to Celery)
    """


def _when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S} UTC"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@rollout.command("status")
@_window_option
@_json_option
def rollout_status(window: float | None, as_json: bool) -> None:
    """The rollout's figures: flags, jobs per backend and state, the window's error rate,
    throughput and p95 pickup-to-finish, migration progress, the broker's queue."""
    from roast_jobs.rollout.status import collect, duration

    url = database_url()
    with one_line_errors():
        snap = collect(url, window)
    if as_json:
        _echo_json(snap.as_dict())
        return
    flags = snap.flags
    overridden = (
        f"; {', '.join(map(_env_name, flags.overridden))} set here" if flags.overridden else ""
    )
    click.echo(
        f"{'rollout':<11}{flags.mode} (use_celery {_shown(flags.use_celery)}, "
        f"celery_rollout_percent {flags.rollout_percent}{overridden})"
    )
    click.echo(f"{'window':<11}last {duration(snap.window_seconds)}, up to {_when(snap.taken_at)}")
    click.echo()
    states = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")
    header = [f"{s.lower():>10}" for s in states]
    click.echo(
        f"{'backend':<8}{''.join(header)}  | window:{'finished':>9}{'errors':>8}"
        f"{'per min':>9}{'p95':>10}"
    )
    for b in snap.backends:
        counts = "".join(f"{b.counts.get(s, 0):>10}" for s in states)
        errors = "-" if b.error_rate is None else f"{b.error_rate * 100:.1f}%"
        click.echo(
            f"{b.backend:<8}{counts}  | {'':7}{b.finished:>9}{errors:>8}"
            f"{_num(b.per_minute):>9}{duration(b.p95_seconds):>10}"
        )
    click.echo()
    oldest = [
        f"{j.status} {duration(j.age_seconds)} (job {j.job_id}, {j.backend})"
        for j in (snap.oldest_running, snap.oldest_pending)
        if j is not None
    ]
    click.echo(f"{'oldest':<11}{'; '.join(oldest) or 'no PENDING or RUNNING job'}")
    m = snap.migration
    moves = {}
    for c in m.counts:
        moves.setdefault(f"{c.from_backend} -> {c.to_backend}", []).append(f"{c.count} {c.status}")
    done = "; ".join(f"{route}: {', '.join(parts)}" for route, parts in moves.items())
    click.echo(f"{'migration':<11}{done or 'nothing moved yet'}")
    click.echo(f"{'':<11}{m.remaining} PENDING legacy job(s) remain to move")
    if m.last_run_id is not None:
        click.echo(
            f"{'':<11}last run {m.last_run_id} at {_when(m.last_run_at)}: "
            f"{m.last_run_moved} moved, {m.last_run_failed} failed"
        )
    for reason, count in m.failure_reasons:
        click.echo(f"{'':<11}failed {count}x: {reason}")
    br = snap.broker
    if br.present:
        click.echo(
            f"{'broker':<11}{br.queue!r}: {br.waiting} waiting, {br.live_consumers} live "
            f"consumer(s); dead letters: {br.new_dead_letters} in the window, "
            f"{br.dead_letters} in all"
        )
    else:
        click.echo(f"{'broker':<11}no broker schema {br.schema!r} yet (Celery never ran here)")


def _figure(name: str, value: float | None) -> str:
    from roast_jobs.rollout.status import duration

    if value is None:
        return "-"
    if name.startswith("error_rate"):
        return f"{value * 100:.1f}%"
    if name.startswith(("stuck_job", "p95")):
        return duration(value)
    return f"{value:g}"


@rollout.command("check")
@_window_option
@_json_option
def rollout_check(window: float | None, as_json: bool) -> None:
    """Judge the plan's rollback triggers; exit 3 when any fired, 0 when healthy.

    \b
    error_rate[B]            above ROAST_JOBS_ROLLOUT_MAX_ERROR_RATE (0.05), from
                             ROAST_JOBS_ROLLOUT_MIN_FINISHED (20) finished jobs on
    queue_depth[B]           PENDING above ROAST_JOBS_ROLLOUT_MAX_QUEUE_DEPTH (5000)
    stuck_job                RUNNING/PENDING longer than ROAST_JOBS_ROLLOUT_STUCK_SECONDS (3600)
    p95_pickup_to_finish[B]  above ROAST_JOBS_ROLLOUT_MAX_P95_SECONDS (120)
    dead_letters             new ones above ROAST_JOBS_ROLLOUT_MAX_NEW_DEAD_LETTERS (0)
    celery_workers           Celery jobs wait and no live worker consumes 'evaluation'
    """
    from roast_jobs.rollout.checks import evaluate
    from roast_jobs.rollout.status import collect, duration

    url = database_url()
    with one_line_errors():
        verdict = evaluate(collect(url, window))
    if as_json:
        _echo_json(verdict.as_dict())
    else:
        click.echo(f"rollback triggers over the last {duration(verdict.window_seconds)}:")
        for t in verdict.triggers:
            mark = "FIRED" if t.fired else "ok"
            figures = f"{_figure(t.name, t.value)} / {_figure(t.name, t.threshold)}"
            click.echo(f"  {mark:<6}{t.name:<30}{figures:<18}{t.detail}")
        if verdict.healthy:
            click.echo("healthy: no trigger fired")
        else:
            names = ", ".join(t.name for t in verdict.fired)
            click.echo(f"UNHEALTHY: {len(verdict.fired)} trigger(s) fired: {names}")
    if not verdict.healthy:
        click.get_current_context().exit(EXIT_FIRED)


@rollout.command("set")
@click.argument("percent")
@_by_option
def rollout_set(percent: str, who: str | None) -> None:
    """Send PERCENT (0-100) of new evaluations to Celery (0: Celery off), recorded with who
    and when in FeatureFlagChange."""
    from roast_jobs.service import flags as f

    url = database_url()
    who = who if who is not None else _who()
    with one_line_errors():
        changes = f.rollout(percent, who, url)
        # For the changes' changedAt: one transaction wrote them, so they share it. Newest
        # first, ours lead unless the same person changed the same flag again since.
        recent = f.history(url, limit=20)
        current = f.from_values(f.read_table(url))
    changed = {c.name for c in changes}
    when: datetime | None = None
    for c in changes:
        click.echo(f"{c.name}: {_shown(c.old)} -> {_shown(c.new)}")
        for r in recent:
            if (r["flagName"], r["changedBy"], r["newValue"]) == (c.name, who, c.new):
                when = when or r["changedAt"]
                break
    for name in (f.USE_CELERY, f.ROLLOUT_PERCENT):
        if name not in changed:
            click.echo(f"{name}: unchanged")
    if changes:
        click.echo(f"by {who} at {_when(when)}")
    else:
        last = next((r for r in recent if r["flagName"] == f.ROLLOUT_PERCENT), None)
        if last is not None:
            click.echo(
                f"nothing changed; last set by {last['changedBy']} at {_when(last['changedAt'])}"
            )
        else:
            click.echo("nothing changed")
    click.echo(f"mode: {current.mode}")
    for name in current.overridden:
        click.echo(f"note: {_env_name(name)} is set here and overrides {name}", err=True)
