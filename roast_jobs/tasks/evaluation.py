"""The evaluation task: one ``Job`` row, run by ``domain.runner`` like the legacy worker
runs it; only the retry mechanics are Celery's (the same row, a delayed message)."""

from __future__ import annotations

import contextlib
import logging
from functools import cache
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from roast_jobs.config import get_settings
from roast_jobs.db.session import transaction
from roast_jobs.domain import job_records, runner
from roast_jobs.domain.evaluator import Evaluator, load_evaluator
from roast_jobs.domain.payloads import EvaluationPayload, InvalidPayload, parse
from roast_jobs.jobs import RetryPolicy, ack_in, enqueue_in
from roast_jobs.service.job_service import EVALUATION_TASK

from .worker import app

log = logging.getLogger("roast_jobs.tasks.evaluation")


class EvaluationError(Exception):
    """The job failed for good; raised so Celery records FAILURE too."""


@cache
def evaluator() -> Evaluator:
    return load_evaluator()


def _fail(job_id: str, owner: str | None, message: str, logs: str | None = None) -> None:
    with transaction() as session:
        job_records.fail(session, job_id, message, logs=logs, owner=owner)


# No STARTED result: the Job row records RUNNING (one write less per run).
# max_retries=None: the Job row's attempts (evaluation_max_attempts) govern retries; a
# per-call max_retries=None would mean Celery's default of 3 instead.
@app.task(name=EVALUATION_TASK, bind=True, acks_late=True, track_started=False, max_retries=None)
def evaluation(self: Task, **payload: Any) -> dict[str, Any]:
    # The task id owns the job: once the migrator moves the job to the legacy backend (or
    # sends it again under a new id), this message changes nothing.
    owner = self.request.id
    try:
        checked = parse(EvaluationPayload, payload)
    except InvalidPayload as exc:
        job_id = payload.get("job_id")
        if isinstance(job_id, str):
            with contextlib.suppress(job_records.JobNotFound):
                _fail(job_id, owner, str(exc))
        raise EvaluationError(str(exc)) from None
    job_id = checked.job_id
    try:
        result = runner.run_evaluation(
            job_id,
            evaluator(),
            transaction,
            payload=checked.model_dump(),
            time_limit_errors=(SoftTimeLimitExceeded,),
            time_limit=self.request.timelimit[1] if self.request.timelimit else None,
            mark_running=True,
            owner=owner,
        )
    except runner.EvaluationFailed as exc:
        # exc.attempts is None when the run failed before marking the job RUNNING (its
        # first transaction rolled back): count this delivery's tries instead.
        marked = exc.attempts is not None
        attempts = exc.attempts if marked else self.request.retries + 1
        if exc.retryable and attempts < get_settings().evaluation_max_attempts:
            retry = None
            with transaction() as session:
                if job_records.mark_retrying(
                    session, job_id, str(exc), allow_pending=not marked, owner=owner
                ):
                    countdown = RetryPolicy.from_settings().countdown(attempts - 1)
                    with enqueue_in(session):
                        retry = self.retry(countdown=countdown, exc=exc, throw=False)
                    # This delivery ends with them: killed before its ack, the worker must
                    # not leave it to run again now, next to the retry.
                    ack_in(session, owner, self.app)
            if retry is not None:
                raise retry from None
            return {"job_id": job_id, "status": "skipped"}
        _fail(job_id, owner, str(exc), exc.logs)
        raise EvaluationError(str(exc)) from None
    if not result.started:
        log.info("job %s has ended (cancelled?): nothing to do", job_id)
        return {"job_id": job_id, "status": "skipped"}
    return {
        "job_id": job_id,
        "status": "COMPLETED" if result.evaluation_version_id else "skipped",
        "evaluation_version_id": result.evaluation_version_id,
        "version": result.version,
        "grade": result.grade,
    }
