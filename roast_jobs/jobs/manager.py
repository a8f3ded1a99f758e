"""JobManager: send, look up, retry and cancel Celery tasks on the roast-jobs broker.

The plan's pg-boss wrapper, in Python. A job is a Celery task; its id is the task id.
Its state comes from three places in the same database: the broker's ``message`` row
while it waits or runs, ``dead_letter`` when it was buried, and Celery's result table
(``result_extended``) once it started.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from celery import Celery, states
from celery.app.task import Context
from celery.exceptions import TaskRevokedError

from roast_jobs.broker.capture import Published, current_target, publishing

from .bulk import TaskCall, send_many
from .config_check import JobConfigWarning, check_app
from .dead_letters import RedriveResult
from .errors import InvalidTransition, JobNotFound
from .link import BrokerLink
from .retry import HEADER, RoastTask, options_of_message, policy_options, resend_options
from .singleton import key_of, refuse_early_ack_of
from .sql import ResultStatements, qualified_name, result_statements
from .state import (
    CANCELLABLE_STATES,
    RETRYABLE_STATES,
    DeadRow,
    Job,
    JobState,
    MessageRow,
    ResultRow,
    derive,
    task_call,
)
from .transaction import sink_for


class JobId(str):
    """A job id; ``created`` is False when a singleton key was held and this is the id of
    the job holding it."""

    created: bool = True

    def __new__(cls, value: str, created: bool = True) -> JobId:
        obj = super().__new__(cls, value)
        obj.created = created
        return obj


@dataclass(frozen=True)
class QueueStatus:
    queue: str
    waiting: int = 0
    scheduled: int = 0
    active: int = 0
    dead_letter: int = 0
    oldest_waiting_seconds: float | None = None
    completed: int = 0
    failed: int = 0
    window_seconds: float = 3600.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class JobManager:
    """Send and steer jobs of ``app`` (a Celery app on the roast-jobs broker)."""

    app: Celery
    _link: BrokerLink | None = field(default=None, init=False, repr=False)

    # -- life cycle ------------------------------------------------------------------

    def start(self, *, create: bool = True) -> JobManager:
        """Connect and check the app's configuration. Idempotent.

        Raises ``MisconfiguredApp`` (saying what to set) when the job API could not read
        the app's results, and warns (``JobConfigWarning``) when it works in part: without
        roast-jobs' result backend it reads the broker's tables only, and a running job is
        visible only with ``task_acks_late`` or ``task_track_started`` (see
        ``config_check``). ``create=False``: a missing broker schema raises
        ``BrokerSchemaMissing`` instead of being created.
        """
        if self._link is None:
            link = BrokerLink(self.app, create=create)
            try:
                checked = check_app(self.app, link)
            except BaseException:
                link.close()
                raise
            for message in checked.warnings:
                warnings.warn(message, JobConfigWarning, stacklevel=2)
            link.result_table = checked.result_table
            self._link = link
        return self

    def stop(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def __enter__(self) -> JobManager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def link(self) -> BrokerLink:
        if self._link is None:
            raise RuntimeError("JobManager is not started: call start() first")
        return self._link

    # -- sending ---------------------------------------------------------------------

    def _task_name(self, task: Any) -> str:
        name = task if isinstance(task, str) else getattr(task, "name", None)
        if not name:
            raise TypeError(f"not a task or task name: {task!r}")
        return name

    def _prepare(self, task: Any, options: dict[str, Any], keyed: bool = False) -> str:
        name = self._task_name(task)
        if keyed or key_of(options) is not None:
            refuse_early_ack_of(self.app, name)
        overrides = policy_options(options)
        if overrides:
            registered = self.app.tasks.get(name)
            if registered is not None and not isinstance(registered, RoastTask):
                raise TypeError(
                    f"task {name!r} does not take a retry policy (retry_*): its base is "
                    f"not RoastTask"
                )
            options["headers"] = {**(options.get("headers") or {}), HEADER: overrides}
        return name

    def send(
        self,
        task: Any,
        payload: Mapping[str, Any] | None = None,
        *,
        args: Sequence[Any] = (),
        into: Any = None,
        **options: Any,
    ) -> JobId:
        """Send one job; returns its id.

        ``payload`` is the task's keyword arguments, ``args`` its positional ones.
        ``options`` are ``apply_async``'s (queue, priority, countdown, eta, expires,
        time_limit, task_id, ...) plus ``singleton_key`` and the retry policy overrides
        ``retry_limit``, ``retry_delay``, ``retry_backoff``, ``retry_delay_max``.
        ``into`` is a SQLAlchemy Session/Connection or psycopg Connection whose transaction
        the message joins.

        With a ``singleton_key`` held by a waiting, delayed or running job of the same
        queue, nothing is sent and the holder's id comes back (``.created`` is False).
        """
        if payload is not None and not isinstance(payload, Mapping):
            raise TypeError(f"payload must be a mapping of keyword arguments, not {payload!r}")
        if options.get("singleton_key") == "":
            raise ValueError("singleton_key must not be empty")
        self.link  # noqa: B018 - fail early when not started
        name = self._prepare(task, options)
        sink = sink_for(into) if into is not None else _enclosing_sink()
        for _ in range(3):
            with publishing(sink=sink) as target:
                result = self.app.send_task(
                    name, args=tuple(args), kwargs=dict(payload or {}), **options
                )
            outcome = target.results[-1] if target.results else None
            if outcome is None or outcome.created:
                return JobId(result.id)
            if outcome.holder is not None:
                return JobId(outcome.holder, created=False)
            # The holder ended between our insert and our look-up: the key is free now.
        raise RuntimeError(f"singleton key {options.get('singleton_key')!r} kept changing hands")

    def send_many(
        self,
        task: Any,
        calls: Iterable[TaskCall | Mapping[str, Any] | Sequence[Any]],
        *,
        into: Any = None,
        **options: Any,
    ) -> list[Published]:
        """Send many jobs in one statement per 5,000 (see ``bulk``); shared ``options``
        as for ``send``, per-job priority, delay and singleton key in each ``TaskCall``."""
        self.link  # noqa: B018
        items = [TaskCall.of(c) for c in calls]
        keyed = any(item.singleton_key for item in items)
        name = self._prepare(task, options, keyed=keyed)
        sink = sink_for(into) if into is not None else None
        return send_many(self.app, name, items, sink=sink, **options)

    # -- looking ---------------------------------------------------------------------

    def _results(self) -> ResultStatements | None:
        """Statements on the app's result table (created if need be); None: no such table."""
        backend = self.app.backend
        table = getattr(backend, "task_cls", None)
        if table is None:
            return None
        backend.ResultSession().close()  # make sure the tables exist
        return result_statements(qualified_name(table.__table__))

    def _result_row(self, job_id: str) -> ResultRow | None:
        results = self._results()
        rows = self.link.fetch(results.find, id=job_id) if results else None
        if not rows:
            return None
        status, done, created, started, opts = rows[0]
        meta = self.app.backend._get_task_meta_for(job_id)  # uncached, decoded
        return ResultRow(status, done, created, started, opts, meta)

    def get_job(self, job_id: str) -> Job:
        """The job's state and times; ``JobNotFound`` if nothing knows it."""
        if not isinstance(job_id, str) or not job_id:
            raise JobNotFound(str(job_id))
        jobs = self.link.jobs
        msg_rows = self.link.fetch(jobs.find_message, task_id=job_id)
        dead_rows = self.link.fetch(jobs.find_dead, task_id=job_id)
        msg = MessageRow(*msg_rows[0]) if msg_rows else None
        dead = DeadRow(*dead_rows[0]) if dead_rows else None
        job = derive(job_id, msg, dead, self._result_row(job_id))
        if job is None:
            raise JobNotFound(job_id)
        return job

    def get_queue_status(
        self, queue: str | None = None, window_seconds: float = 3600.0
    ) -> dict[str, QueueStatus]:
        """Per queue: waiting, scheduled, active and dead-lettered counts, the age of the
        oldest waiting message, and completed/failed counts over the last window."""
        jobs = self.link.jobs
        out: dict[str, dict[str, Any]] = {}
        for name, waiting, scheduled, active, oldest in self.link.fetch(
            jobs.queue_status, queue=queue
        ):
            out[name] = {
                "waiting": waiting,
                "scheduled": scheduled,
                "active": active,
                "oldest_waiting_seconds": float(oldest) if oldest is not None else None,
            }
        for name, count in self.link.fetch(jobs.dead_status, queue=queue):
            out.setdefault(name, {})["dead_letter"] = count
        for name, status, count in self._finished_counts(queue, window_seconds):
            key = "completed" if status == states.SUCCESS else "failed"
            slot = out.setdefault(name, {})
            slot[key] = slot.get(key, 0) + count
        return {
            name: QueueStatus(name, window_seconds=window_seconds, **values)
            for name, values in sorted(out.items())
        }

    def _finished_counts(
        self, queue: str | None, window_seconds: float
    ) -> list[tuple[str, str, int]]:
        results = self._results()
        if results is None:
            return []
        return self.link.fetch(results.finished_counts, queue=queue, window=window_seconds)

    # -- steering --------------------------------------------------------------------

    def cancel_job(self, job_id: str, terminate: bool = False) -> Job:
        """Remove a waiting or delayed job atomically (it will not run); revoke a running
        one (``terminate`` kills its process). Returns the job as it is afterwards."""
        job = self.get_job(job_id)
        if job.state not in CANCELLABLE_STATES:
            raise InvalidTransition(
                job_id, job.state.value, "cancel", "a waiting, delayed or running job"
            )
        if not self._cancel_waiting(job_id, job):
            # Running (or claimed between our look and the delete): Celery's revoke.
            self.app.control.revoke(job_id, terminate=terminate)
            if terminate:
                self._mark_revoked(job_id, job, "cancelled while running")
        try:
            return self.get_job(job_id)
        except JobNotFound:
            # No result backend keeps the REVOKED state: the message was its only trace.
            return replace(job, state=JobState.CANCELLED)

    def _cancel_waiting(self, job_id: str, job: Job) -> bool:
        """Delete the job's waiting message and record it REVOKED, with how it was sent,
        in one transaction on one connection: a crash between the two would leave no
        trace of the job (nothing to read, nothing for retry_job to send). False: no
        waiting message (running, or claimed between our look and the delete)."""
        backend = self.app.backend
        table = getattr(backend, "task_cls", None)
        if table is None:
            # No result table here (Redis, a cache): the backend is elsewhere and cannot
            # share the delete's transaction; record the cancel there right after.
            removed = self.link.fetch(self.link.jobs.cancel_waiting, task_id=job_id)
            if removed:
                _row_id, queue, payload, _created_at = removed[0]
                name, args, kwargs = task_call(payload)
                job = replace(job, name=job.name or name, args=args, kwargs=kwargs, queue=queue)
                self._mark_revoked(job_id, job, "cancelled before it ran")
            return bool(removed)
        results = self._results()
        assert results is not None
        # The result backend's session (same database: check_app makes sure), so that
        # Celery encodes the REVOKED row as it would itself.
        session = backend.ResultSession()
        try:
            conn = session.connection()
            removed = conn.exec_driver_sql(
                self.link.jobs.cancel_waiting, {"task_id": job_id}
            ).fetchall()
            if not removed:
                session.rollback()
                return False
            _row_id, queue, payload, created_at = removed[0]
            name, args, kwargs = task_call(payload)
            job = replace(job, name=job.name or name, args=args, kwargs=kwargs, queue=queue)
            row = session.query(table).filter(table.task_id == job_id).with_for_update().first()
            if row is None:
                row = table(job_id)
                session.add(row)
            if row.status == states.SUCCESS:
                # As Celery's own store: nothing overwrites a success (a task that sent
                # itself again with retry(throw=False), then returned).
                session.commit()
                return True
            revoked = backend.encode_result(
                TaskRevokedError("cancelled before it ran"), states.REVOKED
            )
            backend._update_result(row, revoked, states.REVOKED, request=_request(job_id, job))
            session.flush()
            options = _options_of_payload(payload)
            if options is not None:
                conn.exec_driver_sql(
                    results.record_options,
                    {
                        "options": json.dumps(options),
                        "sent": created_at.timestamp() if created_at is not None else None,
                        "task_id": job_id,
                    },
                )
            session.commit()
            return True
        finally:
            session.close()

    def _mark_revoked(self, job_id: str, job: Job, reason: str) -> None:
        # Stored with the name and arguments, so that retry_job can send it again.
        self.app.backend.mark_as_revoked(job_id, reason, request=_request(job_id, job))

    def retry_job(self, job_id: str) -> JobId:
        """Send a failed, cancelled, expired or dead-lettered job again, as it was sent:
        arguments, queue, singleton key, per-send retry policy, priority, time limits and
        expiry window (counted from now; an expired job runs without one). Due now: no
        countdown. Returns the id it runs under (the same id, except for a cancelled
        job: workers remember revoked ids). ``InvalidTransition`` when another job holds
        its singleton key. Retries of one job at once are serialised: the first sends,
        the others then find it waiting and are refused."""
        with self.link.connection() as conn, conn.transaction():  # pool conns autocommit
            conn.execute(self.link.jobs.lock_task, {"task_id": job_id})
            return self._retry_locked(job_id, conn)

    def _retry_locked(self, job_id: str, conn: Any) -> JobId:
        # Read after the lock (on another connection: it sees what the last holder
        # committed); the resend joins the lock's transaction.
        job = self.get_job(job_id)
        if job.state not in RETRYABLE_STATES:
            raise InvalidTransition(
                job_id, job.state.value, "retry", "a failed, cancelled, expired or dead job"
            )
        if job.state in (JobState.DEAD_LETTER, JobState.EXPIRED):
            # Its stored message goes back as it was (a sweep may bury it meanwhile).
            for _ in range(2):
                dead = self.link.fetch(self.link.jobs.find_dead, task_id=job_id)
                if dead:
                    return self._redrive(job, DeadRow(*dead[0]).id)
                if self.link.fetch(
                    self.link.jobs.revive_expired,
                    task_id=job_id,
                    channel=self.link.notify_channel,
                ):
                    return JobId(job_id)
        if not job.name:
            raise InvalidTransition(
                job_id, job.state.value, "retry", "a stored task name (result_extended)"
            )
        options = resend_options(self._stored_options(job_id), job.created_at)
        if job.queue:
            options["queue"] = job.queue
        new_id = job_id if job.state is JobState.FAILED else None
        sent = self.send(
            job.name, dict(job.kwargs or {}), args=tuple(job.args or ()), task_id=new_id,
            into=conn, **options,
        )  # fmt: skip
        if not sent.created:
            raise InvalidTransition(
                job_id,
                job.state.value,
                "retry",
                f"its singleton key {options.get('singleton_key')!r} to be free; job {sent} "
                "holds it, retry after that job ends",
            )
        return sent

    def _redrive(self, job: Job, dead_id: int) -> JobId:
        result = RedriveResult.of(
            self.link.fetch(
                self.link.jobs.dead_redrive,
                ids=[dead_id],
                all=False,
                queue=None,
                channel=self.link.notify_channel,
            )
        )
        if result.held:
            raise InvalidTransition(
                job.id, job.state.value, "retry", f"its key to be free: {result.held[0].reason}"
            )
        return JobId(job.id)

    def _stored_options(self, job_id: str) -> dict[str, Any]:
        results = self._results()
        rows = self.link.fetch(results.options, id=job_id) if results else None
        value = rows[0][0] if rows else None
        if isinstance(value, str):
            value = json.loads(value)
        return value if isinstance(value, dict) else {}


def _enclosing_sink() -> Any:
    """The transaction of an enclosing ``enqueue_in()`` block, if any."""
    target = current_target()
    return target.sink if target is not None else None


def _options_of_payload(payload: str) -> dict[str, Any] | None:
    """How a job that never started was sent, for retry_job (a start records it)."""
    try:
        message = json.loads(payload)
    except ValueError:
        return None
    return options_of_message(message) if isinstance(message, dict) else None


def _request(job_id: str, job: Job) -> Context:
    """What Celery's backend reads off a request when it stores a state by hand."""
    return Context(
        id=job_id,
        task=job.name,
        name=job.name,
        args=job.args,
        kwargs=job.kwargs,
        retries=job.retry_count,
        hostname=job.worker,
        delivery_info={"routing_key": job.queue, "priority": job.priority},
        children=[],
    )
