"""One batch of a move, each in one transaction: nothing half-moved survives a kill.

Forward (legacy -> Celery): the statement ``sql.FORWARD_BATCH`` takes the oldest waiting
legacy jobs no one holds, switches them to Celery (or fails those that cannot run) and
records each; their messages are written by ``send_many`` on the same connection before
the commit. A legacy worker never sees a row once it is Celery's, and no message exists
for a row still legacy's.

Reverse (Celery -> legacy): the next waiting Celery jobs are locked, then their messages.
A job goes back only if every message of its task id is locked here and none is leased:
a worker holding one (running it, or between its claim and marking the job RUNNING)
keeps the job on Celery. Its messages are deleted and its row switched in the same
transaction, so a worker can never claim a message whose job is the legacy table's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from roast_jobs.db.models import Backend
from roast_jobs.domain import batches
from roast_jobs.domain.payloads import ID_MAX_LENGTH, ID_REGEX_SQL
from roast_jobs.domain.runner import time_limit_for
from roast_jobs.service.job_service import JobService, NewJob

from . import sql

_ID_RULE = {"id_re": ID_REGEX_SQL, "id_max": ID_MAX_LENGTH}


@dataclass
class BatchResult:
    picked: int = 0
    moved: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> jobs not moved
    last: tuple[datetime, str] | None = None  # (createdAt, id) of the last job looked at

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count


def _no_jit(session: Session) -> None:
    # Row estimates of tables just churned by a bulk move are far off until they are
    # analyzed again, and JIT-compiling for millions of imagined rows costs more than
    # the batch (0.4 s against 0.1 s, seen with autovacuum off).
    session.execute(text("SET LOCAL jit = off"))


def forward_batch(service: JobService, session: Session, size: int, run_id: str) -> BatchResult:
    _no_jit(session)
    rows = session.execute(
        text(sql.FORWARD_BATCH), {"limit": size, "run_id": run_id, **_ID_RULE}
    ).all()
    out = BatchResult(picked=len(rows))
    jobs: list[NewJob] = []
    failed_batches: set[str] = set()
    for job_id, evaluation_id, batch_id, created_at, capability, reason, broker in rows:
        if reason is not None:
            out.skip(reason)
            if batch_id is not None:
                failed_batches.add(batch_id)
            continue
        jobs.append(
            NewJob(
                id=job_id,
                evaluation_id=evaluation_id,
                backend=Backend.CELERY,
                broker_job_id=broker,
                batch_id=batch_id,
                time_limit=time_limit_for(capability),
                queued_at=created_at,  # older jobs stay ahead of newer Celery jobs
            )
        )
    service.send_evaluations(session, jobs)
    for batch_id in sorted(failed_batches):  # a failed job may have been a batch's last
        batches.complete_if_done(session, batch_id)
    out.moved = len(jobs)
    return out


def reverse_batch(
    service: JobService,
    session: Session,
    size: int,
    run_id: str,
    after: tuple[datetime, str] | None,
) -> BatchResult:
    after_created, after_id = after or (datetime(1, 1, 1), "")
    _no_jit(session)
    picked = session.execute(
        text(sql.REVERSE_PICK),
        {"limit": size, "after_created": after_created, "after_id": after_id},
    ).all()
    out = BatchResult(picked=len(picked))
    if not picked:
        return out
    out.last = (picked[-1][2], picked[-1][0])
    brokers = [broker for _id, broker, _c in picked if broker]
    link = service.manager.link
    messages: dict[str, list[tuple[int, bool, bool | None]]] = {}
    raw = session.connection().exec_driver_sql(link.jobs.messages_for_move, {"task_ids": brokers})
    for message_id, task_id, mine, leased in raw:
        messages.setdefault(task_id, []).append((message_id, mine, leased))
    ids: list[str] = []
    olds: list[str | None] = []
    doomed: list[int] = []
    for job_id, broker, _created in picked:
        found = messages.get(broker or "", [])
        if not all(mine for _m, mine, _l in found):
            out.skip("message busy (claim or ack in flight)")
            continue
        if any(leased for _m, _mine, leased in found):
            out.skip("held by a Celery worker")
            continue
        ids.append(job_id)
        olds.append(broker)
        doomed.extend(m for m, _mine, _l in found)
    if doomed:
        session.connection().exec_driver_sql(link.jobs.delete_messages, {"ids": doomed})
    if ids:
        session.execute(text(sql.REVERSE_MOVE), {"ids": ids, "brokers": olds, "run_id": run_id})
    out.moved = len(ids)
    return out


def preview_forward(session: Session, limit: int) -> dict[str | None, int]:
    rows = session.execute(text(sql.FORWARD_PREVIEW), {"limit": limit, **_ID_RULE})
    return {reason: count for reason, count in rows}


def preview_reverse(service: JobService, session: Session, limit: int, chunk: int) -> BatchResult:
    """What a reverse run would move now, read without locks."""
    out = BatchResult()
    after: tuple[Any, str] = (datetime(1, 1, 1), "")
    link = service.manager.link
    while out.picked < limit:
        rows = session.execute(
            text(sql.REVERSE_PAGE),
            {
                "limit": min(chunk, limit - out.picked),
                "after_created": after[0],
                "after_id": after[1],
            },
        ).all()
        if not rows:
            break
        after = (rows[-1][2], rows[-1][0])
        out.picked += len(rows)
        held = {
            r[0]
            for r in session.connection().exec_driver_sql(
                link.jobs.held_task_ids, {"task_ids": [b for _i, b, _c in rows if b]}
            )
        }
        kept = sum(1 for _i, broker, _c in rows if broker in held)
        if kept:
            out.skip("held by a Celery worker", kept)
        out.moved += len(rows) - kept
    return out
