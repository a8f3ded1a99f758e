"""What one evaluation job does, written once for both backends.

``run_evaluation`` takes a job that is already RUNNING (claimed by the legacy poller, or
marked by the Celery task), runs the evaluator on the latest document and agent versions
outside any transaction, then in one transaction writes the ``EvaluationVersion`` (version
= max + 1) with its comments and highlights and marks the job COMPLETED. A failure comes
back as ``EvaluationFailed``; what happens next (a new row, a Celery retry, FAILED) is the
backend's business, decided by ``retry_classes``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from roast_jobs.db.models import (
    AgentVersion,
    Evaluation,
    EvaluationComment,
    EvaluationHighlight,
    EvaluationVersion,
    JobStatus,
    new_uuid,
)

from . import job_records
from .evaluator import AgentInput, DocumentInput, EvaluationOutput, Evaluator
from .payloads import EvaluationPayload, InvalidPayload, parse
from .retry_classes import classify

#: Per-agent time limits in seconds (RoastMyPost's agentTimeouts), by extendedCapabilityId.
DEFAULT_TIME_LIMIT = 240
TIME_LIMITS = {
    "multi-fallacy-eval": 900,
    "spelling-grammar": 360,
    "simple-link-verifier": 480,
    "fallacy-check": 600,
}
MAX_TIME_LIMIT = 1200


def time_limit_for(extended_capability_id: str | None) -> float:
    from roast_jobs.config import get_settings

    override = get_settings().evaluation_time_limit
    if override is not None:
        # Capped like the per-agent limits: the 30-minute stale sweeps count on it.
        return min(override, MAX_TIME_LIMIT)
    return min(TIME_LIMITS.get(extended_capability_id or "", DEFAULT_TIME_LIMIT), MAX_TIME_LIMIT)


class EvaluationFailed(Exception):
    """A run failed; ``retryable`` per the legacy classification (time limits never are)."""

    def __init__(
        self,
        message: str,
        retryable: bool,
        logs: str | None = None,
        attempts: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.logs = logs
        self.attempts = attempts  # runs so far, when the run marked the job RUNNING


class TimeLimitExceeded(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"evaluation exceeded its time limit of {seconds:g} s")


@dataclass(frozen=True)
class Inputs:
    document: DocumentInput
    agent: AgentInput
    document_version_id: str
    agent_version_id: str
    agent_id: str


@dataclass(frozen=True)
class RunResult:
    """What a run did: ``evaluation_version_id`` None when the job had ended meanwhile
    (cancelled) and the output was dropped."""

    job_id: str
    evaluation_version_id: str | None
    version: int | None
    grade: int | None
    duration_seconds: float
    started: bool = True  # False: the job had ended before the run (nothing done)
    attempts: int | None = None  # runs so far, when the run marked the job RUNNING


_INPUTS = """
SELECT d.id, d."documentId", d.version, d.title, d.content, d.authors, d.urls,
       v.id, v."agentId", v.version, v.name, v.description, v."primaryInstructions",
       v."extendedCapabilityId", v."providesGrades", e."documentId", e."agentId"
  FROM "Evaluation" e
  LEFT JOIN LATERAL (SELECT * FROM "DocumentVersion" WHERE "documentId" = e."documentId"
                      ORDER BY version DESC LIMIT 1) d ON true
  LEFT JOIN LATERAL (SELECT * FROM "AgentVersion" WHERE "agentId" = e."agentId"
                      ORDER BY version DESC LIMIT 1) v ON true
 WHERE e.id = :id
"""


def load_inputs(session: Session, evaluation_id: str) -> Inputs:
    """The latest document version and agent version of an evaluation, in one query."""
    row = session.execute(text(_INPUTS), {"id": evaluation_id}).first()
    if row is None:
        raise LookupError(f"evaluation {evaluation_id!r} not found")
    if row[0] is None:
        raise LookupError(f"document {row[15]!r} has no version: not found")
    if row[7] is None:
        raise LookupError(f"agent {row[16]!r} has no version: not found")
    return Inputs(
        document=DocumentInput(
            document_id=row[1],
            version=row[2],
            title=row[3],
            content=row[4],
            authors=tuple(row[5] or ()),
            urls=tuple(row[6] or ()),
        ),
        agent=AgentInput(
            agent_id=row[8],
            version=row[9],
            name=row[10],
            description=row[11] or "",
            primary_instructions=row[12],
            extended_capability_id=row[13],
            provides_grades=row[14],
        ),
        document_version_id=row[0],
        agent_version_id=row[7],
        agent_id=row[8],
    )


def time_limit_of_evaluation(session: Session, evaluation_id: str) -> float:
    capability = session.execute(
        select(AgentVersion.extended_capability_id)
        .join(Evaluation, Evaluation.agent_id == AgentVersion.agent_id)
        .where(Evaluation.id == evaluation_id)
        .order_by(AgentVersion.version.desc())
        .limit(1)
    ).scalar_one_or_none()
    return time_limit_for(capability)


_LOCK_EVALUATION = 'SELECT 1 FROM "Evaluation" WHERE id = :id FOR NO KEY UPDATE'
# A statement of its own, after the lock: its snapshot then holds the version the run
# that had the lock wrote (read in the locking statement, the max was the one from
# before the wait, and both runs wrote version max + 1).
_LATEST_VERSION = (
    'SELECT coalesce(max(version), 0) FROM "EvaluationVersion" WHERE "evaluationId" = :id'
)


@dataclass(frozen=True)
class WrittenVersion:
    id: str
    version: int


def _write_version(
    session: Session, evaluation_id: str, inputs: Inputs, output: EvaluationOutput
) -> WrittenVersion:
    # The evaluation row's lock serializes version numbers between concurrent runs; NO KEY
    # UPDATE leaves new jobs of the evaluation (their foreign key's KEY SHARE) unblocked.
    session.execute(text(_LOCK_EVALUATION), {"id": evaluation_id})
    latest = session.execute(text(_LATEST_VERSION), {"id": evaluation_id}).scalar_one()
    version_id = new_uuid()
    session.execute(
        insert(EvaluationVersion),
        [
            {
                "id": version_id,
                "agent_id": inputs.agent_id,
                "agent_version_id": inputs.agent_version_id,
                "evaluation_id": evaluation_id,
                "document_version_id": inputs.document_version_id,
                "summary": output.summary,
                "grade": output.grade,
                "analysis": output.analysis,
                "self_critique": output.self_critique,
                "version": latest + 1,
            }
        ],
    )
    if output.comments:
        # Ids made here, so highlights and comments go in one statement each.
        content = inputs.document.content
        highlights, comments = [], []
        for comment in output.comments:
            h = comment.highlight
            highlight_id = new_uuid()
            highlights.append(
                {
                    "id": highlight_id,
                    "start_offset": h.start_offset,
                    "end_offset": h.end_offset,
                    "quoted_text": h.quoted_text,
                    "prefix": h.prefix,
                    "is_valid": content[h.start_offset : h.end_offset] == h.quoted_text,
                }
            )
            comments.append(
                {
                    "id": new_uuid(),
                    "description": comment.description,
                    "header": comment.header,
                    "level": comment.level,
                    "importance": comment.importance,
                    "grade": comment.grade,
                    "evaluation_version_id": version_id,
                    "highlight_id": highlight_id,
                }
            )
        session.execute(insert(EvaluationHighlight), highlights)
        session.execute(insert(EvaluationComment), comments)
    return WrittenVersion(version_id, latest + 1)


def _message(exc: BaseException) -> str:
    """What to store of an error: the database's own message rather than SQLAlchemy's
    wrapper with the statement and its parameters."""
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip() or type(exc).__name__


def _logs(job_id: str, inputs: Inputs | None, lines: list[str]) -> str:
    head = [f"# Job {job_id}"]
    if inputs is not None:
        head.append(
            f"- document {inputs.document.document_id} v{inputs.document.version}, "
            f"agent {inputs.agent.agent_id} v{inputs.agent.version} ({inputs.agent.name})"
        )
    return "\n".join(head + [f"- {line}" for line in lines])


def _prepare(
    session: Session,
    job_id: str,
    payload: dict[str, object] | None,
    mark_running: bool,
    owner: str | None,
) -> tuple[job_records.JobSnapshot | None, Inputs | None]:
    if mark_running:
        snapshot = job_records.mark_running(session, job_id, owner)
        if snapshot is None:
            return None, None
        from roast_jobs.config import get_settings

        if snapshot.attempts > get_settings().evaluation_max_attempts:
            # Redelivered after lost workers more times than a job may run.
            raise GaveUp(f"gave up after {snapshot.attempts - 1} runs that did not finish")
        evaluation_id, batch_id = snapshot.evaluation_id, snapshot.batch_id
    else:
        row = session.execute(
            text('SELECT status, "evaluationId", "agentEvalBatchId" FROM "Job" WHERE id = :id'),
            {"id": job_id},
        ).first()
        if row is None:
            raise job_records.JobNotFound(job_id)
        if row[0] != "RUNNING":  # cancelled before the run began
            return None, None
        snapshot = None
        evaluation_id, batch_id = row[1], row[2]
    own = {"job_id": job_id, "evaluation_id": evaluation_id, "agent_eval_batch_id": batch_id}
    checked = parse(EvaluationPayload, payload if payload is not None else own)
    if checked.evaluation_id != evaluation_id:
        raise InvalidPayload(
            f"invalid payload: evaluation {checked.evaluation_id!r} is not job "
            f"{job_id!r}'s ({evaluation_id!r})"
        )
    return snapshot, load_inputs(session, evaluation_id)


class GaveUp(Exception):
    pass


def run_evaluation(
    job_id: str,
    evaluator: Evaluator,
    transaction: Callable[[], object],
    payload: dict[str, object] | None = None,
    time_limit_errors: tuple[type[BaseException], ...] = (),
    time_limit: float | None = None,
    mark_running: bool = False,
    owner: str | None = None,
) -> RunResult:
    """Run a job. ``transaction()`` opens a committed-on-exit Session context
    (``db.session.transaction``). The legacy worker claimed the job (RUNNING) already;
    ``mark_running`` (the Celery path) marks it RUNNING in the run's first transaction.
    ``payload``: the Celery message's (checked against the row); the legacy path
    validates the row itself. ``time_limit_errors``: exceptions that mean the run hit its
    time limit (Celery's soft limit), never retried. ``owner``: the Celery task id; the
    run does nothing unless the row still names it (a migrated job is someone else's).

    Returns a result with ``started`` False when the job had ended before (cancelled):
    nothing was done. Raises ``EvaluationFailed`` when the run failed (``attempts`` =
    runs so far); the job row is left RUNNING for the backend to fail or retry.
    """
    started = time.monotonic()
    lines: list[str] = []
    inputs: Inputs | None = None
    attempts: int | None = None
    try:
        with transaction() as session:  # type: ignore[attr-defined]
            snapshot, inputs = _prepare(session, job_id, payload, mark_running, owner)
        if inputs is None:
            return RunResult(job_id, None, None, None, 0.0, started=False)
        attempts = snapshot.attempts if snapshot is not None else None
        lines.append(f"evaluator {type(evaluator).__name__}")
        output = evaluator.evaluate(inputs.document, inputs.agent)
        lines.extend(output.log)
    except EvaluationFailed:
        raise
    except time_limit_errors as exc:
        failure = TimeLimitExceeded(time_limit or 0)
        lines.append(f"failed: {failure}")
        logs = _logs(job_id, inputs, lines)
        raise EvaluationFailed(str(failure), False, logs, attempts) from exc
    except Exception as exc:
        message = _message(exc)
        retryable = classify(exc) == "retryable" and not isinstance(exc, TimeLimitExceeded | GaveUp)
        lines.append(f"failed: {message}")
        raise EvaluationFailed(message, retryable, _logs(job_id, inputs, lines), attempts) from exc
    duration = time.monotonic() - started
    lines.append(f"grade {output.grade}, {len(output.comments)} comments, {duration:.3f} s")
    try:
        return _record(job_id, inputs, output, transaction, lines, duration, attempts, owner)
    except time_limit_errors as exc:
        failure = TimeLimitExceeded(time_limit or 0)
        lines.append(f"failed while saving: {failure}")
        logs = _logs(job_id, inputs, lines)
        raise EvaluationFailed(str(failure), False, logs, attempts) from exc
    except Exception as exc:
        # A database error while saving: the evaluation is lost, the run may be repeated.
        message = _message(exc)
        lines.append(f"failed while saving: {message}")
        retryable = classify(exc) == "retryable"
        raise EvaluationFailed(message, retryable, _logs(job_id, inputs, lines), attempts) from exc


def _record(
    job_id: str,
    inputs: Inputs,
    output: EvaluationOutput,
    transaction: Callable[[], object],
    lines: list[str],
    duration: float,
    attempts: int | None,
    owner: str | None,
) -> RunResult:
    """The version, its comments and COMPLETED, in one transaction."""
    with transaction() as session:  # type: ignore[attr-defined]
        status, evaluation_id, batch_id = job_records.lock_status(session, job_id, owner)
        # Cancelled meanwhile (it stays so), or no longer this task's: a lapsed lease
        # let another delivery retry it, and the migrator moved it on.
        if status is not JobStatus.RUNNING:
            return RunResult(job_id, None, None, output.grade, duration, attempts=attempts)
        version = _write_version(session, evaluation_id, inputs, output)
        job_records.complete(
            session,
            job_id,
            batch_id,
            evaluation_version_id=version.id,
            duration_seconds=duration,
            logs=_logs(job_id, inputs, lines),
        )
        return RunResult(
            job_id, version.id, version.version, output.grade, duration, attempts=attempts
        )
