"""``roast-jobs demo``: the RoastMyPost job flow on both backends, start to finish.

1. Prepare the database (``db upgrade``) and add the demo's own rows: a user, two agents
   and generated documents. Nothing is deleted; on a DATABASE_URL the flags the demo
   changes are put back at the end.
2. Start a legacy worker (``roast-jobs legacy-worker``) and a Celery worker
   (``celery -A roast_jobs.tasks.worker worker -Q evaluation,batch,import -c 2``).
3. Roll out a canary percentage and create a batch: the flags split its jobs.
4. Serve an article on 127.0.0.1 and import it with an agent (on whichever backend the
   flags pick for its URL).
5. While the batch runs, flip the rollout and create a second batch: once every process
   has re-read the flags (within ``flag_refresh_seconds``), new jobs take the new side.
6. Wait for every job, then sum up per backend: pickup (createdAt -> startedAt), run
   time (startedAt -> completedAt), grades, and when each batch completed.
7. Stop the workers (SIGTERM, then SIGKILL) whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

from roast_jobs.config import child_env, get_settings, override_settings
from roast_jobs.db.session import transaction
from roast_jobs.demo_pages import ArticleServer
from roast_jobs.domain import sample_data
from roast_jobs.domain.batches import BatchProgress
from roast_jobs.service import flags as flag_store
from roast_jobs.service.job_service import CreatedBatch, JobService

Echo = Callable[[str], None]

WHO = "roast-jobs demo"
LOOPBACK = "127.0.0.1/32"
CELERY_QUEUES = "evaluation,batch,import"
CELERY_CONCURRENCY = 2
#: Seconds a warm shutdown may take before the worker's process group is killed.
STOP_TIMEOUT = 15.0
POLL_SECONDS = 0.25
#: Environment overrides of the flags: the demo needs the table to rule.
FLAG_OVERRIDES = ("ROAST_JOBS_USE_CELERY", "ROAST_JOBS_CELERY_ROLLOUT_PERCENT")
_FINAL_TASK_STATES = {"completed", "failed", "cancelled", "expired", "dead_letter"}


class DemoError(RuntimeError):
    """The demo could not run; the message says why."""


# -- worker subprocesses -----------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A worker subprocess in its own process group, its output in a log file."""

    name: str
    cmd: list[str]
    ready_marker: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix=f"roast-jobs-demo-{self.name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops us
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ready(self) -> bool:
        if not self.alive():
            raise DemoError(f"the {self.name} worker exited at start:\n{self.log_tail()}")
        return self.ready_marker in self.log()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def terminate(self) -> None:
        """Ask for a warm shutdown: running jobs finish, nothing new starts."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, deadline: float) -> str:
        """Wait for the exit until ``deadline`` (monotonic), then SIGKILL what is left of
        the group; says how it went."""
        if self.proc is None:
            return "not started"
        how = "stopped" if self.proc.poll() is None else f"had exited ({self.proc.returncode})"
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            how = "killed (still running at the deadline)"
        with contextlib.suppress(ProcessLookupError):  # the pool children, if any
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return how


def stop_workers(workers: Sequence[WorkerProcess], timeout: float = STOP_TIMEOUT) -> list[str]:
    """SIGTERM to all at once, then each gets until ``timeout`` before SIGKILL."""
    for w in workers:
        w.terminate()
    deadline = time.monotonic() + timeout
    return [f"{w.name} {w.stop(deadline)}" for w in workers]


def worker_processes(env: dict[str, str]) -> list[WorkerProcess]:
    """The legacy worker and the Celery worker (not started yet)."""
    host = f"demo-{os.getpid()}@{socket.gethostname()}"
    return [
        WorkerProcess(
            "legacy",
            [sys.executable, "-m", "roast_jobs.cli", "legacy-worker", "--shutdown-timeout", "10"],
            "legacy worker started",
            env,
        ),
        WorkerProcess(
            "celery",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "roast_jobs.tasks.worker",
                "worker",
                "-n",
                host,
                "-Q",
                CELERY_QUEUES,
                "-c",
                str(CELERY_CONCURRENCY),
                "-P",
                "prefork",
                "-l",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            f"{host} ready.",
            env,
        ),
    ]


def wait_ready(workers: Sequence[WorkerProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(w.ready() for w in workers):
        if time.monotonic() > deadline:
            late = next(w for w in workers if not w.ready())
            raise DemoError(
                f"the {late.name} worker was not ready within {timeout:.0f} s:\n{late.log_tail()}"
            )
        time.sleep(0.1)


# -- formatting --------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Aligned columns: the first to the left, the others to the right."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return (indent + "  ".join(parts)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


# -- the demo ----------------------------------------------------------------------------


@dataclass
class Batch:
    label: str
    agent_name: str
    created: CreatedBatch
    legacy: int = 0
    celery: int = 0


@dataclass(frozen=True)
class DemoRows:
    """What the demo adds to the database before it starts."""

    user: str
    clarity_agent: str
    evidence_agent: str
    first_documents: list[str]
    second_documents: list[str]


@dataclass
class JobRow:
    backend: str
    status: str
    pickup: float | None
    run: float | None
    grade: int | None


_JOBS = """
SELECT j.backend, j.status,
       extract(epoch FROM j."startedAt" - j."createdAt")::float8 AS pickup,
       coalesce(extract(epoch FROM j."completedAt" - j."startedAt")::float8,
                j."durationInSeconds") AS run,
       v.grade, coalesce(j."originalJobId", j.id) AS root
  FROM "Job" j LEFT JOIN "EvaluationVersion" v ON v.id = j."evaluationVersionId"
 WHERE j."agentEvalBatchId" = ANY(:batches) OR j.id = ANY(:ids) OR j."originalJobId" = ANY(:ids)
"""


class DomainDemo:
    def __init__(
        self,
        url: str,
        *,
        documents: int,
        percent: int,
        timeout: float,
        quiet: bool,
        own_database: bool,
        echo: Echo,
    ) -> None:
        self.url = url
        self.documents = documents
        self.second = max(1, documents // 4)
        self.percent = percent
        self.flip_to = 100 if percent < 100 else 0
        self.timeout = timeout
        self.quiet = quiet
        self.own_database = own_database
        self.echo = echo
        self.tag = uuid.uuid4().hex[:6]
        self.t0 = time.monotonic()
        self.service: JobService | None = None
        self.workers: list[WorkerProcess] = []
        self.page_server: ArticleServer | None = None
        self.flags_before: dict[str, Any] | None = None
        self.batches: list[Batch] = []
        self.extra_jobs: list[str] = []  # the import's evaluation jobs
        self.import_ok = True

    def say(self, message: str) -> None:
        self.echo(message)

    def detail(self, message: str) -> None:
        if not self.quiet:
            self.echo(message)

    # -- 1. database ---------------------------------------------------------------------

    def prepare(self) -> DemoRows:
        from alembic.util import CommandError
        from sqlalchemy.exc import SQLAlchemyError

        from roast_jobs.db import migrate

        try:
            before = migrate.current(self.url)
            migrate.upgrade(self.url)
            after = migrate.current(self.url)
            self.service = JobService(self.url)
            app = self.service.app
            with app.connection_for_write() as conn:
                conn.connect()  # the broker schema
            app.backend.ResultSession().close()  # the result tables
            self.flags_before = flag_store.read_table(self.url)
            with transaction(self.url) as s:
                user = sample_data.create_user(s, "demo")
                clarity = sample_data.create_agent(
                    s,
                    user,
                    name=f"Clarity coach (demo {self.tag})",
                    instructions="Comment on clarity, readability and structure.",
                )
                evidence = sample_data.create_agent(
                    s,
                    user,
                    name=f"Evidence checker (demo {self.tag})",
                    instructions="Check the evidence: claims without sources, citations.",
                )
                first = sample_data.create_documents(s, user, self.documents, seed=0)
                second = sample_data.create_documents(s, user, self.second, seed=self.documents)
        except (SQLAlchemyError, CommandError) as exc:
            lines = str(exc).strip().splitlines()
            raise DemoError(
                f"preparing the database failed: {lines[0] if lines else type(exc).__name__}"
            ) from None
        self.say(
            f"database ready: schema at revision {after} (was: {before or 'none'}), "
            "broker and result schemas"
        )
        rows = (
            f"1 user, 2 agents (Clarity coach and Evidence checker, demo {self.tag}) and "
            f"{self.documents + self.second} documents"
        )
        if self.own_database:
            self.detail(f"  added {rows}")
        else:
            self.say(f"  DATABASE_URL: the demo deletes nothing; it adds {rows},")
            self.say(
                "  then their batches, jobs and evaluations; the flags are put back at the end"
            )
        return DemoRows(user, clarity, evidence, first, second)

    # -- 2. workers ----------------------------------------------------------------------

    def start_workers(self) -> None:
        settings = get_settings()
        networks = [n.strip() for n in settings.import_allow_networks.split(",") if n.strip()]
        if LOOPBACK not in networks:
            networks.append(LOOPBACK)
        allowed = ",".join(networks)
        # This process imports too (the legacy path runs the import in the request).
        override_settings(import_allow_networks=allowed)
        env = child_env(DATABASE_URL=self.url, ROAST_JOBS_IMPORT_ALLOW_NETWORKS=allowed)
        overridden = [name for name in FLAG_OVERRIDES if env.pop(name, None) is not None]
        if overridden:
            override_settings(use_celery=None, celery_rollout_percent=None)
            self.say(f"  note: ignoring {', '.join(overridden)}: the demo sets the flags table")
        self.workers = worker_processes(env)
        started = time.monotonic()
        for w in self.workers:
            w.start()
        self.detail(
            f"starting workers: roast-jobs legacy-worker (pid {self.workers[0].pid}), "
            f"celery -A roast_jobs.tasks.worker worker -Q {CELERY_QUEUES} "
            f"-c {CELERY_CONCURRENCY} (pid {self.workers[1].pid})"
        )
        # The importer's libraries (trafilatura, lxml) load while the workers boot.
        import roast_jobs.service.imports  # noqa: F401

        wait_ready(self.workers, timeout=90)
        self.say(
            f"workers ready after {time.monotonic() - started:.1f} s: legacy "
            f"(up to {settings.legacy_max_workers} jobs at once, one process each) and "
            f"celery ({CELERY_CONCURRENCY} processes)"
        )
        if not self.own_database:
            self.say("  note: they also take any other waiting jobs of this database")

    # -- 3. canary batch -----------------------------------------------------------------

    def rollout(self, percent: int) -> None:
        flag_store.rollout(percent, WHO, self.url)

    def create_batch(self, label: str, agent_id: str, agent_name: str, docs: list[str]) -> Batch:
        assert self.service is not None
        created = self.service.create_batch_jobs(
            agent_id, document_ids=docs, name=f"demo {self.tag} {label}"
        )
        batch = Batch(label, agent_name, created)
        if created.jobs:
            backends = [j.backend for j in created.jobs]
            batch.legacy, batch.celery = backends.count("legacy"), backends.count("celery")
        else:  # fanned out by the batch task (or in chunks): count the rows once all exist
            deadline = time.monotonic() + 60
            progress = self.service.batch_progress(created.id)
            while progress.created < progress.expected and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS)
                progress = self.service.batch_progress(created.id)
            batch.legacy, batch.celery = progress.legacy, progress.celery
        if not self.batches:
            self.t0 = time.monotonic()  # progress times count from the first batch
        self.batches.append(batch)
        self.say(
            f"{label}: {created.job_count} jobs for {agent_name} -> "
            f"legacy {batch.legacy}, celery {batch.celery}"
        )
        return batch

    # -- 4. import -----------------------------------------------------------------------

    def import_article(self, agent_id: str, user_id: str) -> None:
        from roast_jobs.domain.url_safety import ArticleImportError

        assert self.service is not None
        self.page_server = ArticleServer()
        page = self.page_server.start()
        self.say(f"import: serving an article at {page}")
        try:
            created = self.service.create_import_job(page, [agent_id], submitted_by_id=user_id)
        except ArticleImportError as exc:
            self.import_ok = False
            self.say(f"  the import failed: {exc}")
            return
        if created.backend == "celery":
            self.say(f"  the flags sent it to Celery: import task {created.task_id}")
            result = self._import_result(str(created.task_id))
        else:
            self.say("  the flags kept it on legacy: imported here, as the legacy request did")
            result = created.result
        if result is None:
            self.import_ok = False
            return
        doc = result["document"]
        self.say(
            f"  imported document {result['documentId']}: {doc['title']!r} by "
            f"{', '.join(doc['authors'])}, {result['wordCount']} words "
            f"(page served {self.page_server.served}x)"
        )
        for job in result["jobs"]:
            self.extra_jobs.append(job["id"])
            self.say(f"  evaluation job {job['id']} on {job['backend']}")

    def _import_result(self, task_id: str) -> dict[str, Any] | None:
        assert self.service is not None
        deadline = time.monotonic() + min(self.timeout, 60)
        while True:
            job = self.service.manager.get_job(task_id)
            if job.state.value in _FINAL_TASK_STATES:
                break
            if time.monotonic() > deadline:
                self.say(f"  the import task did not finish within {min(self.timeout, 60):g} s")
                return None
            time.sleep(POLL_SECONDS)
        if job.state.value != "completed":
            self.say(f"  the import task ended {job.state.value}: {job.error}")
            return None
        result: dict[str, Any] = job.result
        return result

    # -- 5. flip -------------------------------------------------------------------------

    def flip(self, agent_id: str, agent_name: str, docs: list[str]) -> None:
        assert self.service is not None
        first = self.batches[0]
        progress = self.service.batch_progress(first.created.id)
        ended = progress.completed + progress.failed + progress.cancelled
        side = "Celery" if self.flip_to else "legacy"
        when = "after" if progress.is_complete else "while"
        verb = "finished" if progress.is_complete else "runs"
        self.say(
            f"flip: rollout {self.percent}% -> {self.flip_to}% {when} {first.label} {verb} "
            f"({ended}/{progress.expected} jobs ended)"
        )
        cache = self.service.flags
        cache.invalidate()
        before = cache.current()  # read just now, as a busy process would have
        self.rollout(self.flip_to)
        flipped = time.monotonic()
        # No invalidate() now: this process learns of the change as every other one does.
        give_up = flipped + cache.refresh + 10
        while cache.current() == before and time.monotonic() < give_up:
            time.sleep(0.05)
        self.say(
            f"  this process saw it after {time.monotonic() - flipped:.1f} s (every process "
            f"re-reads the flags every {cache.refresh:g} s): new jobs go to {side}"
        )
        self.create_batch("batch 2", agent_id, agent_name, docs)

    # -- 6. wait and sum up --------------------------------------------------------------

    def _rows(self) -> list[tuple[JobRow, str]]:
        with transaction(self.url) as s:
            rows = s.execute(
                text(_JOBS),
                {"batches": [b.created.id for b in self.batches], "ids": self.extra_jobs},
            ).all()
        return [(JobRow(r[0], r[1], r[2], r[3], r[4]), r[5]) for r in rows]

    def _batches_done(self) -> list[BatchProgress]:
        assert self.service is not None
        return [self.service.batch_progress(b.created.id) for b in self.batches]

    def wait(self) -> float:
        """Until every job ended, the timeout passed or a worker died; seconds waited."""
        started = time.monotonic()
        deadline = started + self.timeout
        expected = sum(b.created.job_count for b in self.batches) + len(self.extra_jobs)
        self.say(
            f"waiting for {expected} jobs (timeout {self.timeout:g} s; +s counts from batch 1)"
        )
        last = ""
        last_at = 0.0
        while True:
            progress = self._batches_done()
            import_rows = [row for row, root in self._rows() if root in self.extra_jobs]
            import_done = all(r.status not in ("PENDING", "RUNNING") for r in import_rows)
            done = all(p.is_complete for p in progress) and import_done
            parts = [
                f"{b.label} {p.completed + p.failed + p.cancelled}/{p.expected}"
                + (" done" if p.is_complete else "")
                for b, p in zip(self.batches, progress, strict=True)
            ]
            if self.extra_jobs:
                parts.append(
                    f"import {sum(r.status == 'COMPLETED' for r in import_rows)}/"
                    f"{len(self.extra_jobs)}"
                )
            line = "  ".join(parts)
            now = time.monotonic()
            if not self.quiet and line != last and (now - last_at >= 1 or done):
                self.echo(f"  +{now - self.t0:5.1f}s  {line}")
                last, last_at = line, now
            if done:
                break
            dead = [w for w in self.workers if not w.alive()]
            if dead:
                self.say(f"the {dead[0].name} worker died:\n{dead[0].log_tail()}")
                break
            if now > deadline:
                self.say(f"timed out after {self.timeout:g} s: {line}")
                break
            time.sleep(POLL_SECONDS)
        waited = time.monotonic() - started
        if self.quiet:
            self.echo(f"  finished waiting after {waited:.1f} s: {line}")
        return waited

    def summary(self) -> bool:
        rows = self._rows()
        self.say("")
        self.say(
            "summary (pickup: createdAt -> startedAt; run: startedAt -> completedAt; "
            "grade: mean of the evaluations)"
        )
        table_rows = []
        for name in ("legacy", "celery", "all"):
            jobs = [r for r, _ in rows if name in (r.backend, "all")]
            if not jobs:
                continue
            pickups = [r.pickup for r in jobs if r.pickup is not None]
            runs = [r.run for r in jobs if r.run is not None and r.status == "COMPLETED"]
            grades = [r.grade for r in jobs if r.grade is not None]
            table_rows.append(
                [
                    name,
                    str(len(jobs)),
                    str(sum(r.status == "COMPLETED" for r in jobs)),
                    str(sum(r.status == "FAILED" for r in jobs)),
                    seconds(statistics.mean(pickups) if pickups else None),
                    seconds(statistics.median(pickups) if pickups else None),
                    seconds(statistics.mean(runs) if runs else None),
                    seconds(statistics.median(runs) if runs else None),
                    f"{statistics.mean(grades):.1f}" if grades else "-",
                ]
            )
        headers = [
            "backend",
            "jobs",
            "completed",
            "failed",
            "pickup mean",
            "pickup p50",
            "run mean",
            "run p50",
            "grade",
        ]
        for line in table(headers, table_rows):
            self.say(line)
        settings = get_settings()
        self.say(
            f"  legacy: a poll every {settings.legacy_poll_interval:g} s, a new process per job, "
            f"up to {settings.legacy_max_workers} at once"
        )
        self.say(
            f"  celery: {CELERY_CONCURRENCY} long-lived processes, woken by the broker "
            "(LISTEN/NOTIFY)"
        )
        self.say(
            "  grades differ by agent and document only: an evaluation grades the same on both"
        )
        self.say("")
        progress = self._batches_done()
        batch_rows = []
        for b, p in zip(self.batches, progress, strict=True):
            took = (
                f"{(p.completed_at - p.created_at).total_seconds():.1f} s"
                if p.completed_at
                else "-"
            )
            batch_rows.append(
                [
                    b.label,
                    str(p.expected),
                    f"{p.legacy}/{p.celery}",
                    f"{p.created_at:%H:%M:%S.%f}"[:-3],
                    f"{p.completed_at:%H:%M:%S.%f}"[:-3] if p.completed_at else "not yet",
                    took,
                ]
            )
        for line in table(
            ["batch", "jobs", "legacy/celery", "createdAt UTC", "completedAt UTC", "took"],
            batch_rows,
        ):
            self.say(line)
        # Every evaluation asked for ended with a completed job (a retry counts).
        roots: dict[str, bool] = {}
        for r, root in rows:
            roots[root] = roots.get(root, False) or r.status == "COMPLETED"
        expected = sum(b.created.job_count for b in self.batches) + len(self.extra_jobs)
        completed = sum(roots.values())
        ok = (
            self.import_ok
            and completed == expected == len(roots)
            and all(p.is_complete for p in progress)
        )
        self.say("")
        if ok:
            self.say(f"all {expected} jobs completed")
        else:
            problems = [f"{expected - completed} of {expected} jobs did not complete"]
            if not self.import_ok:
                problems.append("the import failed")
            self.say("FAILED: " + "; ".join(problems))
        return ok

    # -- 7. clean up ---------------------------------------------------------------------

    def close(self, keep_logs: bool) -> None:
        """Stop the page server and the workers, put the flags back (DATABASE_URL);
        ``keep_logs``: keep the workers' logs and say where they are."""
        if self.page_server is not None:
            self.page_server.stop()
        if self.workers:
            started = time.monotonic()
            try:
                stopped = stop_workers(self.workers)
            except KeyboardInterrupt:  # a second Ctrl-C while they drain: kill them now
                stopped = stop_workers(self.workers, timeout=0)
            self.say(f"workers: {', '.join(stopped)} in {time.monotonic() - started:.1f} s")
            for w in self.workers:
                if keep_logs:
                    self.say(f"  {w.name} worker log: {w.log_path}")
                else:
                    w.log_path.unlink(missing_ok=True)
        if self.service is not None:
            self.service.close()
        if not self.own_database and self.flags_before is not None:
            old = {
                flag_store.USE_CELERY: self.flags_before.get(flag_store.USE_CELERY, False),
                flag_store.ROLLOUT_PERCENT: self.flags_before.get(flag_store.ROLLOUT_PERCENT, 100),
            }
            try:
                flag_store.set_flags(old, WHO, self.url)
                mode = flag_store.Flags(
                    bool(old[flag_store.USE_CELERY]), int(old[flag_store.ROLLOUT_PERCENT])
                ).mode
                self.say(f"flags put back: {mode}")
            except Exception as exc:  # the database went away: say what to do
                self.say(f"could not put the flags back ({exc}); run `roast-jobs flags show`")


def run(
    url: str,
    *,
    documents: int,
    percent: int,
    timeout: float,
    quiet: bool,
    own_database: bool,
    echo: Echo,
) -> bool:
    """Run the demo on ``url``; True when every job completed."""
    demo = DomainDemo(
        url,
        documents=documents,
        percent=percent,
        timeout=timeout,
        quiet=quiet,
        own_database=own_database,
        echo=echo,
    )
    from roast_jobs.domain.evaluations import NotFound
    from roast_jobs.service.job_service import ServiceError

    ok = interrupted = False
    try:
        rows = demo.prepare()
        demo.start_workers()
        demo.rollout(percent)
        assert demo.service is not None
        demo.service.flags.invalidate()  # at once here; the flip below waits like others do
        demo.say(f"rollout: {demo.service.flags.current().mode} ({percent}% of new jobs to Celery)")
        demo.create_batch("batch 1", rows.clarity_agent, "Clarity coach", rows.first_documents)
        demo.import_article(rows.clarity_agent, rows.user)
        demo.flip(rows.evidence_agent, "Evidence checker", rows.second_documents)
        demo.wait()
        ok = demo.summary()
    except (ServiceError, NotFound) as exc:  # e.g. an open SystemPause refuses new jobs
        raise DemoError(str(exc)) from None
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        demo.close(keep_logs=not ok and not interrupted)
    return ok
