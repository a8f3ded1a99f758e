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

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from roast_jobs.config import child_env, get_settings, override_settings
from roast_jobs.db.session import transaction
from roast_jobs.demo_pages import ArticleServer
from roast_jobs.demo_report import (
    Batch,
    JobRow,
    backend_summary,
    batch_summary,
    job_rows,
    outcome,
    progress_line,
)
from roast_jobs.demo_workers import (
    CELERY_CONCURRENCY,
    CELERY_QUEUES,
    DemoError,
    WorkerProcess,
    stop_workers,
    wait_ready,
    worker_processes,
)
from roast_jobs.domain import sample_data
from roast_jobs.domain.batches import BatchProgress
from roast_jobs.service import flags as flag_store
from roast_jobs.service.job_service import JobService

__all__ = ["DemoError", "DomainDemo", "run"]

Echo = Callable[[str], None]

WHO = "roast-jobs demo"
LOOPBACK = "127.0.0.1/32"
POLL_SECONDS = 0.25
#: Environment overrides of the flags: the demo needs the table to rule.
FLAG_OVERRIDES = ("ROAST_JOBS_USE_CELERY", "ROAST_JOBS_CELERY_ROLLOUT_PERCENT")
_FINAL_TASK_STATES = {"completed", "failed", "cancelled", "expired", "dead_letter"}


@dataclass(frozen=True)
class DemoRows:
    """What the demo adds to the database before it starts."""

    user: str
    clarity_agent: str
    evidence_agent: str
    first_documents: list[str]
    second_documents: list[str]


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
        return job_rows(self.url, [b.created.id for b in self.batches], self.extra_jobs)

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
            line = progress_line(self.batches, progress, import_rows, len(self.extra_jobs))
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
        for line in backend_summary(rows):
            self.say(line)
        progress = self._batches_done()
        for line in batch_summary(self.batches, progress):
            self.say(line)
        ok, lines = outcome(
            rows,
            self.batches,
            progress,
            import_jobs=len(self.extra_jobs),
            import_ok=self.import_ok,
        )
        for line in lines:
            self.say(line)
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
