"""The legacy poller: RoastMyPost's parent process that ran one OS process per job.

Each poll (every ``poll_interval``, or at once when a child exits or ``stop`` is called):
reap finished children, kill children past their time limit or whose job was cancelled,
record what earlier polls could not (the database was away), sweep stale RUNNING jobs (and
delete expired ephemeral batches) now and then, and claim PENDING legacy jobs for the free
slots. The parent claims, so it knows every child's job: a killed child's job is failed at
once instead of staying RUNNING until the stale sweep. Idle, a poll is one small UPDATE
(the claim that finds nothing). Every ``legacy_heartbeat_seconds`` a poll also upserts the
worker's ``"WorkerHeartbeat"`` row (``heartbeat``), which health and metrics read; a clean
stop deletes it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for

from sqlalchemy import Engine, create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from roast_jobs.config import get_settings
from roast_jobs.domain import batches
from roast_jobs.domain.runner import TimeLimitExceeded, time_limit_of_evaluation
from roast_jobs.jobs.results import sqlalchemy_url
from roast_jobs.logs import job_fields

from . import repository
from .children import EXIT_COMPLETED, EXIT_FAILED, Child, child_main, signal_group
from .heartbeat import Heartbeat

log = logging.getLogger("roast_jobs.legacy")

APPLICATION_NAME = "roast-jobs legacy worker"
# Our children whose job is no longer RUNNING: cancelled, or failed by another worker's
# stale sweep. Their result would be dropped anyway: stop spending on them.
_ENDED = """SELECT id, status FROM "Job" WHERE id = ANY(:ids) AND status <> 'RUNNING'"""

#: Errors that mean the database is away (retry later), not that the write is wrong.
DISCONNECTED = (sa_exc.OperationalError, sa_exc.DisconnectionError, sa_exc.InterfaceError)


@dataclass(frozen=True)
class PendingFailure:
    """A failure to record that the database refused; retried every poll."""

    job_id: str
    error: str
    retryable: bool
    attempt: int | None = None


def _about(job_id: str, attempt: int | None = None) -> dict[str, object]:
    """``extra=`` of the poller's lines about one job: its fields in JSON logs."""
    return job_fields(job_id, "evaluation", "legacy", attempt)


class LegacyWorker:
    def __init__(
        self,
        url: str,
        max_workers: int | None = None,
        poll_interval: float | None = None,
        *,
        kill_grace_seconds: float | None = None,
        stale_check_seconds: float | None = None,
        stale_job_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
        shutdown_timeout: float = 30.0,
    ) -> None:
        settings = get_settings()
        self.url = url
        self.max_workers = max_workers or settings.legacy_max_workers
        self.poll_interval = poll_interval or settings.legacy_poll_interval
        self.kill_grace = _default(kill_grace_seconds, settings.legacy_kill_grace_seconds)
        self.stale_check = stale_check_seconds or settings.legacy_stale_check_seconds
        self.stale_after = stale_job_seconds or settings.stale_job_seconds
        self.shutdown_timeout = shutdown_timeout
        self._children: dict[str, Child] = {}
        self._pending: list[PendingFailure] = []
        self._next_stale_check = 0.0  # sweep on the first poll
        self._database_down_since: float | None = None
        self._next_database_warning = 0.0
        self._stopping = False
        self._shutdown_deadline: float | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._context = multiprocessing.get_context("fork")
        # The parent's own small pool: no pre-ping (a dead connection fails one poll and is
        # replaced on the next), short timeouts so a hung server cannot stall the kills.
        self._engine: Engine = create_engine(
            sqlalchemy_url(url),
            pool_size=1,
            max_overflow=1,
            connect_args={
                "options": "-c timezone=UTC -c statement_timeout=15000",
                "connect_timeout": 5,
                "application_name": APPLICATION_NAME,  # pg_stat_activity tells who polls
            },
        )
        beat = heartbeat_seconds or settings.legacy_heartbeat_seconds
        # Rows stale for 10 beats (and past the health threshold) belong to dead workers.
        prune_after = max(10 * beat, settings.legacy_heartbeat_stale_seconds)
        self._heartbeat = Heartbeat(self._engine, self.max_workers, beat, prune_after)

    # -- control -------------------------------------------------------------------------

    def run(self) -> None:
        """Poll until ``stop()``, then drain: wait up to ``shutdown_timeout`` for the
        children, kill the rest and fail their jobs (retryable)."""
        log.info(
            "legacy worker started: pid %d, up to %d jobs at once, polling every %g s",
            os.getpid(),
            self.max_workers,
            self.poll_interval,
        )
        try:
            self._heartbeat.beat(len(self._children))
            while True:
                try:
                    self._poll()
                except Exception:  # a bug must not stop the poller and orphan its children
                    log.exception("legacy worker poll failed")
                if self._stopping and not self._children:
                    break
                self._sleep()
            self._record_pending()
            if self._pending:
                log.error(
                    "could not record the failure of jobs %s: the stale sweep will fail them",
                    ", ".join(p.job_id for p in self._pending),
                )
            self._heartbeat.remove()  # a clean stop: health must not count us any more
        finally:
            for child in self._children.values():  # only after an unexpected error
                signal_group(child.pid, signal.SIGKILL)
            self._engine.dispose()
            os.close(self._wake_r)
            os.close(self._wake_w)
        log.info("legacy worker stopped")

    def stop(self) -> None:
        """Stop claiming and drain; called again (a second Ctrl-C), kill the children now.
        Safe in a signal handler."""
        now = time.monotonic()
        if self._stopping:
            self._shutdown_deadline = now
        else:
            self._stopping = True
            self._shutdown_deadline = now + self.shutdown_timeout
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _sleep(self) -> None:
        """Until the next poll, a child's exit, or ``stop()``."""
        waitables: list[int] = [self._wake_r]
        waitables += [child.process.sentinel for child in self._children.values()]
        wait_for(waitables, timeout=self.poll_interval)
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 1024)

    # -- one poll --------------------------------------------------------------------------

    def _poll(self) -> None:
        self._reap()
        self._enforce_time_limits()
        self._kill_cancelled()
        if self._stopping:
            self._shut_down_children()
        for child in self._children.values():
            child.escalate(self.kill_grace)
        self._heartbeat.beat(len(self._children))  # never raises; at most every interval
        if not self._record_pending() or self._stopping:
            return  # the database is away, or we are draining: claim nothing
        if time.monotonic() >= self._next_stale_check:
            self._sweep_stale()
        self._claim()

    def _reap(self) -> None:
        for job_id, child in list(self._children.items()):
            code = child.process.exitcode
            if code is None:
                continue
            child.process.join()
            child.process.close()
            del self._children[job_id]
            took = f"{child.elapsed():.1f} s"
            if child.kill_reason in ("time limit", "cancelled", "ended elsewhere"):
                log.info(
                    "job %s ended: killed (%s) after %s", job_id, child.kill_reason, took,
                    extra=_about(job_id, child.attempt),
                )  # fmt: skip
            elif code == EXIT_COMPLETED:
                log.info(
                    "job %s ended: completed in %s",
                    job_id,
                    took,
                    extra=_about(job_id, child.attempt),
                )
            else:
                if child.kill_reason == "shutdown":
                    error = f"legacy worker stopped while running the job (exit code {code})"
                elif code == EXIT_FAILED:
                    error = f"legacy worker process failed (exit code {code}) during the job"
                else:
                    error = f"legacy worker process died (exit code {code}) while running the job"
                log.info(
                    "job %s ended: exit code %d after %s", job_id, code, took,
                    extra=_about(job_id, child.attempt),
                )  # fmt: skip
                # A no-op when the child recorded its failure itself (the job is not RUNNING).
                self._pending.append(PendingFailure(job_id, error, True, child.attempt))

    def _enforce_time_limits(self) -> None:
        for child in self._children.values():
            if child.over_time_limit():
                error = str(TimeLimitExceeded(child.time_limit))
                log.warning(
                    "job %s: %s, killing pid %d", child.job_id, error, child.pid,
                    extra=_about(child.job_id, child.attempt),
                )  # fmt: skip
                child.terminate("time limit")
                self._pending.append(PendingFailure(child.job_id, error, False, child.attempt))

    def _kill_cancelled(self) -> None:
        running = [c.job_id for c in self._children.values() if c.kill_reason is None]
        if not running:
            return
        try:
            with self._transaction() as session:
                ended = list(session.execute(text(_ENDED), {"ids": running}))
        except Exception as exc:
            self._database_error("checking for cancelled jobs", exc)
            return
        for job_id, status in ended:
            child = self._children[job_id]
            log.info(
                "job %s is %s, killing pid %d", job_id, status, child.pid,
                extra=_about(job_id, child.attempt),
            )  # fmt: skip
            child.terminate("cancelled" if status == "CANCELLED" else "ended elsewhere")

    def _shut_down_children(self) -> None:
        if self._shutdown_deadline is None or time.monotonic() < self._shutdown_deadline:
            return
        for child in self._children.values():
            if child.term_sent is None:
                log.warning(
                    "job %s: still running at shutdown, killing pid %d", child.job_id, child.pid,
                    extra=_about(child.job_id, child.attempt),
                )  # fmt: skip
                child.terminate("shutdown")

    def _record_pending(self) -> bool:
        """Record the failures of earlier polls; False while the database is away. A
        failure that cannot be recorded for another reason (its job was deleted) is
        dropped with a warning: it must not block the others, nor the claims."""
        while self._pending:
            failure = self._pending[0]
            try:
                with self._transaction() as session:
                    retry_id = repository.fail(
                        session, failure.job_id, failure.error, retryable=failure.retryable
                    )
            except DISCONNECTED as exc:
                self._database_error(f"recording the failure of job {failure.job_id}", exc)
                return False
            except Exception as exc:
                log.warning(
                    "job %s: its failure (%s) cannot be recorded, dropped: %s",
                    failure.job_id,
                    failure.error,
                    exc,
                    extra=_about(failure.job_id, failure.attempt),
                )
                retry_id = None
            if retry_id:
                log.info(
                    "job %s: retry as job %s",
                    failure.job_id,
                    retry_id,
                    extra=_about(failure.job_id, failure.attempt),
                )
            self._pending.pop(0)
        return True

    def _sweep_stale(self) -> None:
        """Fail RUNNING legacy jobs no live process runs (a parent that died with its
        children, a claim whose child never started): they would stay RUNNING forever."""
        minutes = f"{self.stale_after / 60:g}"
        error = f"stale: RUNNING for more than {minutes} minutes, timed out"
        try:
            with self._transaction() as session:
                stale = repository.stale_running(session, self.stale_after)
                for job_id in stale:
                    if job_id in self._children:
                        continue
                    retry_id = repository.fail(session, job_id, error, retryable=True)
                    log.warning(
                        "job %s: %s (retry: %s)", job_id, error, retry_id or "none",
                        extra=_about(job_id),
                    )  # fmt: skip
        except Exception as exc:
            self._database_error("the stale sweep", exc)
            return
        self._next_stale_check = time.monotonic() + self.stale_check
        self._delete_expired_batches()

    def _delete_expired_batches(self) -> None:
        """RoastMyPost's clean-up of expired ephemeral batches, at the stale sweep's pace:
        the legacy worker runs whatever the rollout, Celery's beat may not."""
        try:
            with self._transaction() as session:
                deleted = batches.delete_expired_ephemeral(session)
        except Exception as exc:
            # The stale sweep just before reached the database: this is the clean-up's own
            # failure (a timeout, a key), not the database away; the next sweep tries again.
            log.warning("deleting expired ephemeral batches failed: %s", _one_line(exc))
            return
        if deleted:
            log.info("deleted %d expired ephemeral batches: %s", len(deleted), ", ".join(deleted))

    def _claim(self) -> None:
        while len(self._children) < self.max_workers:
            try:
                with self._transaction() as session:
                    claimed = repository.claim(session)
                    if claimed is not None:
                        limit = time_limit_of_evaluation(session, claimed.evaluation_id)
            except Exception as exc:
                # If the commit reached the server but its answer did not, the job stays
                # RUNNING without a child until the stale sweep fails it (retryable).
                self._database_error("claiming a job", exc)
                return
            self._database_ok()
            if claimed is None:
                return
            self._start(claimed, limit)

    def _start(self, claimed: repository.Claimed, limit: float) -> None:
        process = self._context.Process(
            target=child_main,
            args=(self.url, claimed.id, self._engine, claimed.attempts),
            name=f"legacy-job-{claimed.id}",
            daemon=False,
        )
        started = time.monotonic()
        try:
            process.start()
        except OSError as exc:
            log.error(
                "job %s: cannot start a worker process: %s", claimed.id, exc,
                extra=_about(claimed.id, claimed.attempts),
            )  # fmt: skip
            self._pending.append(
                PendingFailure(
                    claimed.id, f"legacy worker could not fork: {exc}", True, claimed.attempts
                )
            )
            return
        assert process.pid is not None
        with contextlib.suppress(OSError):  # the child does it too; whoever is first wins
            os.setpgid(process.pid, process.pid)
        child = Child(claimed.id, process, claimed.attempts, limit, started)
        self._children[claimed.id] = child
        log.info(
            "job %s started: attempt %d, pid %d, time limit %g s",
            claimed.id,
            claimed.attempts,
            process.pid,
            limit,
            extra=_about(claimed.id, claimed.attempts),
        )

    def _database_error(self, what: str, exc: Exception) -> None:
        """Log a failed database call: at once, then once a minute while it lasts."""
        now = time.monotonic()
        if self._database_down_since is None:
            self._database_down_since = now
        if now >= self._next_database_warning:
            self._next_database_warning = now + 60
            log.warning("%s failed (retrying every poll): %s", what, _one_line(exc))

    def _database_ok(self) -> None:
        if self._database_down_since is not None:
            away = time.monotonic() - self._database_down_since
            log.info("the database answers again (after %.1f s of errors)", away)
            self._database_down_since = None
            self._next_database_warning = 0.0

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            yield session


def _default(value: float | None, default: float) -> float:
    return default if value is None else value


def _one_line(exc: BaseException) -> str:
    exc = getattr(exc, "orig", None) or exc  # SQLAlchemy's wrapper adds the whole statement
    return (" ".join(str(exc).split()) or type(exc).__name__)[:300]
