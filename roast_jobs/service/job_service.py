"""JobService: creates RoastMyPost's jobs on the backend the flags pick, and steers them
whichever backend holds them.

On the Celery path the ``Job`` row and its message are written in one transaction
(``enqueue_in``): a worker never sees a message whose row is not committed (the real
system's "Job not found" race). Tasks are sent by name, so the tasks may use this class.
Every create checks ``SystemPause`` first, in the same transaction, and writes nothing
while a pause is open.
"""

from __future__ import annotations

import contextlib
import random
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from celery import Celery
from sqlalchemy import text
from sqlalchemy.orm import Session

from roast_jobs.config import get_settings
from roast_jobs.db.models import ACTIVE_STATUSES, AgentEvalBatch, Backend, JobStatus
from roast_jobs.db.session import transaction
from roast_jobs.domain import batches, ephemeral, job_records
from roast_jobs.domain.ephemeral import EphemeralAgent, InlineDocument
from roast_jobs.domain.evaluations import (
    NotFound,
    Paused,
    check_agent,
    documents_with_versions,
    guard_against_pause,
    prepare_for_document,
    upsert_evaluations,
)
from roast_jobs.domain.payloads import MAX_BATCH_DOCUMENTS, ImportPayload, parse
from roast_jobs.domain.runner import time_limit_for, time_limit_of_evaluation
from roast_jobs.jobs import JobManager, TaskCall, enqueue_in
from roast_jobs.jobs.errors import JobError

from . import quotas
from .evaluation_requests import lock_evaluation
from .flags import FlagCache, Flags
from .outcomes import (
    CreatedBatch,
    CreatedImport,
    CreatedJob,
    InvalidRequest,
    ServiceError,
    SystemPaused,
)

__all__ = [
    "CreatedBatch",
    "CreatedImport",
    "CreatedJob",
    "InvalidRequest",
    "JobService",
    "NewJob",
    "ServiceError",
    "SystemPaused",
]

EVALUATION_TASK = "roast_jobs.evaluation"
BATCH_TASK = "roast_jobs.batch"
IMPORT_TASK = "roast_jobs.import"
MAINTENANCE_TASK = "roast_jobs.maintenance"
QUEUES = {
    EVALUATION_TASK: "evaluation",
    BATCH_TASK: "batch",
    IMPORT_TASK: "import",
    MAINTENANCE_TASK: "maintenance",
}
#: Seconds between the soft time limit (the task fails the job) and the hard one (killed).
HARD_LIMIT_GRACE = 5.0
#: Deterministic ids of a batch's jobs: a re-run of the fan-out finds them already there.
_BATCH_NS = uuid.UUID("6f1e2a52-8d0c-4d1f-9a57-6b1f3c0e5a11")


@dataclass(frozen=True)
class NewJob:
    id: str
    evaluation_id: str
    backend: Backend
    broker_job_id: str | None
    batch_id: str | None
    original_job_id: str | None = None
    time_limit: float | None = None  # the agent's (soft) limit; None: look it up
    queued_at: datetime | None = None  # a moved job's createdAt: it keeps its place


def check_pause(session: Session) -> None:
    guard_against_pause(session)
    row = session.execute(
        text(
            'SELECT reason FROM "SystemPause" WHERE "endedAt" IS NULL '
            'ORDER BY "startedAt" DESC LIMIT 1'
        )
    ).first()
    if row is not None:
        raise SystemPaused(row[0])


_INSERT_JOBS = """
INSERT INTO "Job" (id, status, attempts, "evaluationId", "agentEvalBatchId", "originalJobId",
                   backend, "brokerJobId", "createdAt", "updatedAt")
SELECT j.id, 'PENDING', 0, j.ev, j.batch, j.orig, j.backend, j.broker,
       CURRENT_TIMESTAMP, CURRENT_TIMESTAMP
  FROM unnest(CAST(:ids AS text[]), CAST(:evs AS text[]), CAST(:batches AS text[]),
              CAST(:origs AS text[]), CAST(:backends AS text[]), CAST(:brokers AS text[]))
       AS j(id, ev, batch, orig, backend, broker)
ON CONFLICT DO NOTHING  -- any unique: racing fan-outs may meet on brokerJobId first
RETURNING id
"""


def _check_batch_request(
    agent_id: str | None,
    ephemeral_agent: EphemeralAgent | None,
    target_count: int | None,
    document_ids: Sequence[str] | None,
    inline_documents: Sequence[InlineDocument] | None,
    user_id: str | None,
) -> list[str] | None:
    """Refuse a batch request before anything is written; returns the document ids
    without repeats."""
    if (agent_id is None) == (ephemeral_agent is None):
        raise InvalidRequest("give either agent_id or ephemeral_agent, not both or none")
    if sum(x is not None for x in (target_count, document_ids, inline_documents)) != 1:
        raise InvalidRequest(
            "give either target_count, document_ids or inline_documents (exactly one)"
        )
    if (ephemeral_agent is not None or inline_documents is not None) and user_id is None:
        raise InvalidRequest("ephemeral agents and documents need a user_id (their owner)")
    if target_count is not None and not 1 <= target_count <= 100:
        raise InvalidRequest(f"target_count must be 1-100, not {target_count}")
    if inline_documents is not None:
        if not 1 <= len(inline_documents) <= ephemeral.MAX_INLINE_DOCUMENTS:
            raise InvalidRequest(
                f"give 1-{ephemeral.MAX_INLINE_DOCUMENTS} inline documents, "
                f"not {len(inline_documents)}"
            )
        try:
            ephemeral.check_documents(inline_documents)
        except ephemeral.InvalidDocument as exc:
            raise InvalidRequest(str(exc)) from None
    if document_ids is None:
        return None
    document_ids = list(dict.fromkeys(document_ids))
    if not document_ids:
        raise InvalidRequest("document_ids is empty")
    if len(document_ids) > MAX_BATCH_DOCUMENTS:
        raise InvalidRequest(
            f"at most {MAX_BATCH_DOCUMENTS} documents per batch, not {len(document_ids)}"
        )
    return document_ids


def _payload(job: NewJob) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "evaluation_id": job.evaluation_id,
        "agent_eval_batch_id": job.batch_id,
    }


class JobService:
    """RoastMyPost's job operations over both backends (see the module doc)."""

    def __init__(
        self,
        url: str | None = None,
        app: Celery | None = None,
        flags: FlagCache | None = None,
    ) -> None:
        self.url = url or get_settings().require_database_url()
        self._app = app
        self.flags = flags or FlagCache(self.url)
        self._manager: JobManager | None = None
        self._start_lock = threading.RLock()  # app and manager: made once

    # -- plumbing --------------------------------------------------------------------

    @property
    def app(self) -> Celery:
        if self._app is None:
            from roast_jobs.jobs.celery_app import make_celery

            settings = get_settings().model_copy(update={"database_url": self.url})
            with self._start_lock:
                if self._app is None:
                    # Not the process's current_app: an application embedding the service
                    # keeps its own (its AsyncResult()s and shared tasks must not land on
                    # this one's database).
                    self._app = make_celery(settings, main="roast_jobs", set_as_current=False)
        return self._app

    @property
    def manager(self) -> JobManager:
        if self._manager is None:
            # Threads of one server ask at once: start one manager, not one each.
            with self._start_lock:
                if self._manager is None:
                    self._manager = JobManager(self.app).start()
        return self._manager

    def close(self) -> None:
        if self._manager is not None:
            self._manager.stop()
            self._manager = None

    def _tx(self) -> Any:
        return transaction(self.url)

    def _insert_jobs(self, session: Session, jobs: Sequence[NewJob]) -> set[str]:
        """Insert the rows (skipping ids already there) and send the Celery ones' messages
        in ``session``'s transaction. Returns the ids inserted now."""
        if not jobs:
            return set()
        inserted = {
            row[0]
            for row in session.execute(
                text(_INSERT_JOBS),
                {
                    "ids": [j.id for j in jobs],
                    "evs": [j.evaluation_id for j in jobs],
                    "batches": [j.batch_id for j in jobs],
                    "origs": [j.original_job_id for j in jobs],
                    "backends": [j.backend.value for j in jobs],
                    "brokers": [j.broker_job_id for j in jobs],
                },
            )
        }
        self.send_evaluations(
            session, [j for j in jobs if j.backend is Backend.CELERY and j.id in inserted]
        )
        return inserted

    def send_evaluations(self, session: Session, jobs: Sequence[NewJob]) -> None:
        """The evaluation messages of Celery ``jobs`` (rows already written), in
        ``session``'s transaction: one bulk send per time limit."""
        by_limit: dict[float, list[NewJob]] = {}
        for job in jobs:
            limit = job.time_limit
            if limit is None:
                limit = time_limit_of_evaluation(session, job.evaluation_id)
            by_limit.setdefault(limit, []).append(job)
        for limit, group in by_limit.items():
            self._send_evaluations(session, group, limit)

    def _send_evaluations(self, session: Session, jobs: list[NewJob], limit: float) -> None:
        options = {
            "queue": QUEUES[EVALUATION_TASK],
            "soft_time_limit": limit,
            "time_limit": limit + HARD_LIMIT_GRACE,
        }
        if len(jobs) == 1 and jobs[0].queued_at is None:
            # One new message: Celery's own send is the shortest way.
            [job] = jobs
            with enqueue_in(session):
                self.app.send_task(
                    EVALUATION_TASK, kwargs=_payload(job), task_id=job.broker_job_id, **options
                )
            return
        calls = [
            TaskCall(kwargs=_payload(j), task_id=j.broker_job_id, queued_at=j.queued_at)
            for j in jobs
        ]
        self.manager.send_many(EVALUATION_TASK, calls, into=session, **options)

    @staticmethod
    def _plan(
        flags: Flags,
        evaluation_id: str,
        batch_id: str | None,
        job_id: str | None = None,
        original_job_id: str | None = None,
        time_limit: float | None = None,
    ) -> NewJob:
        backend = flags.backend_for(evaluation_id)
        job_id = job_id or str(uuid.uuid4())
        broker = None
        if backend is Backend.CELERY:
            broker = str(uuid.uuid5(_BATCH_NS, f"{job_id}:celery"))
        return NewJob(job_id, evaluation_id, backend, broker, batch_id, original_job_id, time_limit)

    @staticmethod
    def _created(
        job: NewJob, document_id: str | None = None, agent_id: str | None = None
    ) -> CreatedJob:
        return CreatedJob(
            id=job.id,
            evaluation_id=job.evaluation_id,
            backend=job.backend.value,
            broker_job_id=job.broker_job_id,
            batch_id=job.batch_id,
            document_id=document_id,
            agent_id=agent_id,
        )

    # -- evaluations -----------------------------------------------------------------

    def create_evaluation_job(
        self, document_id: str, agent_id: str, *, batch_id: str | None = None
    ) -> CreatedJob:
        """One job evaluating ``document_id`` with ``agent_id`` (its Evaluation upserted)."""
        return self.create_evaluation_jobs(document_id, [agent_id], batch_id=batch_id)[0]

    def create_evaluation_jobs(
        self,
        document_id: str,
        agent_ids: Sequence[str],
        *,
        batch_id: str | None = None,
        session: Session | None = None,
    ) -> list[CreatedJob]:
        """One job per agent for one document, all or none. ``session``: join the
        caller's transaction instead of opening one."""
        agents = list(dict.fromkeys(agent_ids))
        if not agents:
            raise InvalidRequest("give at least one agent id")
        if session is None:
            with self._tx() as own:
                return self.create_evaluation_jobs(
                    document_id, agents, batch_id=batch_id, session=own
                )
        try:
            prepared = prepare_for_document(session, document_id, agents)
        except Paused as exc:
            raise SystemPaused(exc.reason) from None
        flags = self.flags.current(session)  # no second connection inside the transaction
        jobs = [
            self._plan(flags, prepared[a][0], batch_id, time_limit=time_limit_for(prepared[a][1]))
            for a in agents
        ]
        self._insert_jobs(session, jobs)
        return [self._created(j, document_id, a) for j, a in zip(jobs, agents, strict=True)]

    # -- batches ---------------------------------------------------------------------

    def create_batch_jobs(
        self,
        agent_id: str | None = None,
        *,
        target_count: int | None = None,
        document_ids: Sequence[str] | None = None,
        name: str | None = None,
        user_id: str | None = None,
        tracking_id: str | None = None,
        description: str | None = None,
        expires_in_days: int | None = None,
        ephemeral_agent: EphemeralAgent | None = None,
        inline_documents: Sequence[InlineDocument] | None = None,
        is_ephemeral: bool = False,
    ) -> CreatedBatch:
        """A batch of jobs for one agent: ``target_count`` (1-100) jobs over documents it
        already evaluated (the legacy meaning: sampled, repeated to reach the count), or
        one per given document. Up to ``batch_inline_max`` jobs are created in the same
        transaction as the batch; more are fanned out in chunks by the ``batch`` task
        (or here, chunk by chunk, when Celery is off).

        ``ephemeral_agent`` (instead of ``agent_id``) and ``inline_documents`` (instead of
        the other two) are made in the batch's transaction, owned by ``user_id`` and tied
        to the batch. Such a batch is ephemeral, as is one made with ``is_ephemeral``: it
        expires after ``expires_in_days`` (default 7) and maintenance then deletes it
        with what was made for it."""
        settings = get_settings()
        document_ids = _check_batch_request(
            agent_id, ephemeral_agent, target_count, document_ids, inline_documents, user_id
        )
        is_ephemeral = is_ephemeral or ephemeral_agent is not None or inline_documents is not None
        if is_ephemeral and expires_in_days is None:
            expires_in_days = ephemeral.DEFAULT_EXPIRES_IN_DAYS
        with self._tx() as session:
            flags = self.flags.current(session)  # no second connection
            check_pause(session)
            made_agent, made_docs = None, []
            if ephemeral_agent is not None or inline_documents is not None:
                assert user_id is not None  # _check_batch_request refused it
                if ephemeral_agent is not None:
                    made_agent = ephemeral.create_agent(session, user_id, ephemeral_agent)
                if inline_documents is not None:
                    made_docs = ephemeral.create_documents(session, user_id, inline_documents)
            agent_id = made_agent or agent_id
            assert agent_id is not None  # _check_batch_request refused it
            check_agent(session, agent_id)
            plan = made_docs or self._sample_plan(session, agent_id, target_count, document_ids)
            evaluations = upsert_evaluations(session, plan, agent_id)
            if user_id is None:
                user_id = session.execute(
                    text('SELECT "submittedById" FROM "Agent" WHERE id = :id'), {"id": agent_id}
                ).scalar_one()
            batch = AgentEvalBatch(
                agent_id=agent_id,
                name=name,
                user_id=user_id,
                target_count=target_count if target_count is not None else len(plan),
                requested_document_ids=plan,
                tracking_id=tracking_id,
                description=description,
                is_ephemeral=is_ephemeral,
                expires_at=None
                if expires_in_days is None
                else datetime.now(UTC).replace(tzinfo=None) + timedelta(days=expires_in_days),
            )
            session.add(batch)
            session.flush()
            session.refresh(batch)  # createdAt: the database's clock
            ephemeral.attach(session, batch.id, made_agent, made_docs)
            made = partial(
                CreatedBatch,
                id=batch.id,
                agent_id=agent_id,
                job_count=len(plan),
                document_ids=plan,
                created_at=batch.created_at,
                expires_at=batch.expires_at,
                target_count=batch.target_count,
                is_ephemeral=is_ephemeral,
                agent_is_ephemeral=made_agent is not None,
            )
            if len(plan) <= settings.batch_inline_max:
                jobs = self._batch_jobs(flags, batch.id, plan, evaluations, 0, len(plan))
                self._insert_jobs(session, jobs)
                created = [self._created(j, plan[i], agent_id) for i, j in enumerate(jobs)]
                return made(fan_out="inline", jobs=created)
            if flags.use_celery and flags.rollout_percent > 0:
                task_id = self.manager.send(
                    BATCH_TASK,
                    {"batch_id": batch.id},
                    into=session,
                    queue=QUEUES[BATCH_TASK],
                    singleton_key=f"batch:{batch.id}",
                )
                return made(fan_out="task", task_id=str(task_id))
            batch_id = batch.id
        # Celery is off: no worker to count on, so fan out here, chunk by chunk.
        try:
            self.fan_out(batch_id)
        except SystemPaused:
            # The batch is committed; a pause opened meanwhile stopped the fan-out between
            # chunks. Maintenance finishes it once the pause ends (fan_out is idempotent).
            return made(fan_out="paused")
        return made(fan_out="chunks")

    @staticmethod
    def _sample_plan(
        session: Session,
        agent_id: str,
        target_count: int | None,
        document_ids: Sequence[str] | None,
    ) -> list[str]:
        """The documents of a batch, one per job: the given ones, or ``target_count``
        sampled from those the agent evaluated before (repeated to reach the count)."""
        if target_count is None:
            return list(document_ids or [])
        pool = documents_with_versions(session, agent_id)
        if not pool:
            raise InvalidRequest(
                f"agent {agent_id!r} has no evaluated documents to sample for "
                "target_count; give document_ids instead"
            )
        random.SystemRandom().shuffle(pool)
        chosen = pool[: min(target_count, len(pool))]
        return [chosen[i % len(chosen)] for i in range(target_count)]

    @classmethod
    def _batch_jobs(
        cls,
        flags: Flags,
        batch_id: str,
        plan: Sequence[str],
        evaluations: dict[str, str],
        start: int,
        stop: int,
    ) -> list[NewJob]:
        return [
            cls._plan(
                flags,
                evaluations[plan[i]],
                batch_id,
                job_id=str(uuid.uuid5(_BATCH_NS, f"{batch_id}:{i}")),
            )
            for i in range(start, stop)
        ]

    def fan_out(self, batch_id: str) -> int:
        """Create the batch's jobs, one transaction per chunk; returns how many were
        created now. Idempotent: job ids derive from (batch, position), so a re-run, a
        redelivery or two runs at once create each job once."""
        chunk = get_settings().batch_chunk_size
        with self._tx() as session:
            batch = session.get(AgentEvalBatch, batch_id)
            if batch is None:
                raise NotFound("batch", [batch_id])
            plan = list(batch.requested_document_ids)
            evaluations = upsert_evaluations(session, plan, batch.agent_id)
        created = 0
        for start in range(0, len(plan), chunk):
            with self._tx() as session:
                check_pause(session)  # a pause stops a fan-out between chunks too
                flags = self.flags.current(session)
                jobs = self._batch_jobs(
                    flags, batch_id, plan, evaluations, start, min(start + chunk, len(plan))
                )
                created += len(self._insert_jobs(session, jobs))
        return created

    def batch_progress(self, batch_id: str) -> batches.BatchProgress:
        with self._tx() as session:
            found = batches.progress(session, batch_id)
        if found is None:
            raise NotFound("batch", [batch_id])
        return found

    # -- imports ---------------------------------------------------------------------

    def create_import_job(
        self,
        url: str,
        agent_ids: Sequence[str] = (),
        *,
        submitted_by_id: str | None = None,
        quota: bool = False,
    ) -> CreatedImport:
        """Import the article at ``url`` and queue evaluations by ``agent_ids``. On Celery
        one ``import`` task per (user, URL) is in flight at a time (singleton key); with Celery
        off for this URL it runs here, as the legacy request did. ``quota``: the
        evaluations count on ``submitted_by_id``'s quota (``quotas``): checked now, so an
        import that could not be charged is refused before it is sent or fetched, and
        charged with the document and its jobs (by the import task on Celery), so an
        import that fails costs nothing."""
        payload = parse(
            ImportPayload,
            {"url": url, "agent_ids": list(agent_ids), "submitted_by_id": submitted_by_id,
             "quota": quota and submitted_by_id is not None},
        )  # fmt: skip
        charged = len(payload.agent_ids) if payload.quota else 0  # distinct ids
        with self._tx() as session:
            flags = self.flags.current(session)  # no second connection
            check_pause(session)
            for agent_id in payload.agent_ids:
                check_agent(session, agent_id)
            if submitted_by_id is not None:
                self._check_user(session, submitted_by_id)
            if flags.backend_for(payload.url) is Backend.CELERY:
                task_id = self.manager.send(
                    IMPORT_TASK,
                    payload.model_dump(),
                    into=session,
                    queue=QUEUES[IMPORT_TASK],
                    # Per user: another user's import of the same page is theirs, with
                    # their agents, and its id is not ours to see.
                    singleton_key=f"import:{payload.submitted_by_id or '-'}:{payload.url}",
                )
                if task_id.created and submitted_by_id is not None:
                    # A refusal rolls the send back with it; the same import again (its
                    # job already waiting) costs nothing and is never refused.
                    quotas.check(session, submitted_by_id, charged)
                return CreatedImport("celery", str(task_id), task_id.created)
            if submitted_by_id is not None:  # before the page is fetched
                quotas.check(session, submitted_by_id, charged)
        from .imports import run_import

        return CreatedImport("legacy", result=run_import(self, payload))

    @staticmethod
    def _check_user(session: Session, user_id: str) -> None:
        row = session.execute(text('SELECT 1 FROM "User" WHERE id = :id'), {"id": user_id})
        if row.first() is None:
            raise NotFound("user", [user_id])

    # -- any backend -----------------------------------------------------------------

    def get_job_status(self, job_id: str) -> dict[str, Any]:
        """The legacy ``GET /api/jobs/{id}`` shape, plus ``backend``, ``brokerJobId`` and,
        on Celery, the broker's view (``brokerState``)."""
        with self._tx() as session:
            row = (
                session.execute(
                    text(
                        'SELECT id, status, "createdAt", "startedAt", "completedAt", error, logs, '
                        '"priceInDollars", "durationInSeconds", attempts, "originalJobId", '
                        '"evaluationId", "agentEvalBatchId", "evaluationVersionId", backend, '
                        '"brokerJobId", "cancelledAt", "cancellationReason" '
                        'FROM "Job" WHERE id = :id'
                    ),
                    {"id": job_id},
                )
                .mappings()
                .first()
            )
            if row is None:
                raise job_records.JobNotFound(job_id)
            tasks = (
                session.execute(
                    text(
                        'SELECT id, name, "modelName", "priceInDollars", "timeInSeconds", '
                        '"createdAt" FROM "Task" WHERE "jobId" = :id ORDER BY "createdAt"'
                    ),
                    {"id": job_id},
                )
                .mappings()
                .all()
            )
        out = {
            k: (str(v) if k == "priceInDollars" and v is not None else v) for k, v in row.items()
        }
        out["tasks"] = [dict(t) for t in tasks]
        if row["backend"] == Backend.CELERY.value and row["brokerJobId"]:
            try:
                out["brokerState"] = self.manager.get_job(row["brokerJobId"]).state.value
            except JobError:
                out["brokerState"] = None
        return out

    def retry_job(self, job_id: str) -> CreatedJob:
        """A new job for a FAILED or CANCELLED job's evaluation (``originalJobId`` = its
        chain's first), on the backend the flags pick now. Refused while the evaluation
        has a PENDING or RUNNING job."""
        with self._tx() as session:
            flags = self.flags.current(session)  # no second connection
            check_pause(session)
            job = job_records.lock(session, job_id)
            if JobStatus(job.status) not in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise job_records.InvalidJobState(job_id, JobStatus(job.status), "retry")
            # The evaluation's lock, as a re-run through the API takes it: a retry and a
            # re-run at once cannot both pass the "nothing waiting" check below.
            lock_evaluation(session, job.evaluation_id)
            busy = session.execute(
                text(
                    'SELECT id FROM "Job" WHERE "evaluationId" = :ev AND status = ANY(:st) LIMIT 1'
                ),
                {"ev": job.evaluation_id, "st": [s.value for s in ACTIVE_STATUSES]},
            ).first()
            if busy is not None:
                raise InvalidRequest(
                    f"evaluation {job.evaluation_id!r} already has a waiting or running "
                    f"job ({busy[0]})"
                )
            new = self._plan(
                flags,
                job.evaluation_id,
                job.agent_eval_batch_id,
                original_job_id=job.original_job_id or job.id,
            )
            self._insert_jobs(session, [new])
            return self._created(new)

    def cancel_job(
        self, job_id: str, *, reason: str | None = None, cancelled_by_id: str | None = None
    ) -> dict[str, Any]:
        """PENDING or RUNNING -> CANCELLED, and it stays so. On Celery a waiting message
        is removed and a running task revoked (its process killed)."""
        with self._tx() as session:
            snapshot = job_records.cancel(
                session, job_id, reason=reason, cancelled_by_id=cancelled_by_id
            )
        if snapshot.backend == Backend.CELERY.value and snapshot.broker_job_id:
            # Already acked or gone: the row's CANCELLED is what counts.
            with contextlib.suppress(JobError):
                self.manager.cancel_job(snapshot.broker_job_id, terminate=True)
        return self.get_job_status(job_id)
