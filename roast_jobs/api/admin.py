"""``/api/admin/*`` (admins): pausing job creation (``SystemPause``) and the Celery
broker's dead letters (list, inspect, redrive, purge)."""

# No "from __future__ import annotations": FastAPI reads the route annotations.

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import Field

from roast_jobs.jobs.dead_letters import DeadLetters
from roast_jobs.service import pauses

from .deps import QUEUE_NAME, Admin, Body, Service, Url

router = APIRouter(tags=["admin"])


# -- pause -------------------------------------------------------------------------------


class PauseBody(Body):
    reason: str = Field(min_length=1, max_length=pauses.MAX_REASON)


@router.get("/api/admin/pause")
def get_pause(_who: Admin, url: Url) -> dict[str, Any]:
    """Whether job creation is paused, since when and why."""
    found = pauses.current(url)
    return found.as_dict() if found else dict(pauses.NOT_PAUSED)


@router.post("/api/admin/pause", status_code=201)
def open_pause(body: PauseBody, _who: Admin, url: Url) -> dict[str, Any]:
    """Pause job creation (every create is refused with 503 until the pause ends); 409
    when a pause is already open."""
    if not body.reason.strip():  # a rule beyond the schema (Python's idea of blank): 400
        raise HTTPException(400, "reason: must not be blank")
    try:
        return pauses.open_pause(url, body.reason).as_dict()
    except pauses.AlreadyPaused as exc:
        raise HTTPException(409, str(exc)) from None


@router.delete("/api/admin/pause")
def end_pause(_who: Admin, url: Url) -> dict[str, Any]:
    """End the pause: job creation resumes. 404 when nothing is paused."""
    try:
        return {"paused": False, "ended": pauses.end_pause(url)}
    except pauses.NotPaused as exc:
        raise HTTPException(404, str(exc)) from None


# -- dead letters ------------------------------------------------------------------------


class Selection(Body):
    """Which dead letters: ``ids``, or ``all`` (of ``queue``, if given); exactly one."""

    ids: list[int] | None = None
    all: bool = False
    queue: Annotated[str, Field(**QUEUE_NAME)] | None = None


def _letters(service: Service) -> DeadLetters:
    return DeadLetters(service.manager.link)


def _checked(letters: DeadLetters, sel: Selection) -> list[int]:
    """The ids to act on (empty with ``all``); 400 for a bad selection, 404 for an
    unknown id (before anything is written)."""
    if sel.all and sel.ids is not None:
        raise HTTPException(400, 'give "ids" or "all": true, not both')
    if not sel.all and not sel.ids:
        raise HTTPException(400, 'give the "ids" of the dead letters, or "all": true')
    ids = list(dict.fromkeys(sel.ids or []))
    for dead_id in ids:
        queue = letters.get(dead_id).queue  # DeadLetterNotFound: 404
        if sel.queue is not None and queue != sel.queue:
            raise HTTPException(
                400, f"dead letter {dead_id} is in queue {queue!r}, not {sel.queue!r}"
            )
    return ids


@router.get("/api/admin/dead-letters")
def list_dead_letters(
    _who: Admin,
    service: Service,
    queue: Annotated[str | None, Query(**QUEUE_NAME)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Dead letters, newest first (of ``queue`` if given)."""
    found = [d.as_dict() for d in _letters(service).list(queue=queue, limit=limit)]
    return {"deadLetters": found, "count": len(found)}


@router.get("/api/admin/dead-letters/{dead_id:int}")
def get_dead_letter(dead_id: int, _who: Admin, service: Service) -> dict[str, Any]:
    """One dead letter, with its stored message (``payload``)."""
    return _letters(service).get(dead_id).as_dict(with_payload=True)


@router.post("/api/admin/dead-letters/redrive")
def redrive_dead_letters(sel: Selection, _who: Admin, service: Service) -> dict[str, Any]:
    """Send dead letters back to their queues as fresh messages. Of letters sharing a
    singleton key one goes; the rest, and those whose key a live job holds, are held
    back (with why)."""
    letters = _letters(service)
    ids = _checked(letters, sel)
    moved = letters.redrive(ids, queue=sel.queue, all=sel.all)
    return {
        "redriven": [r._asdict() for r in moved],
        "heldBack": [asdict(h) for h in moved.held],
    }


@router.post("/api/admin/dead-letters/purge")
def purge_dead_letters(sel: Selection, _who: Admin, service: Service) -> dict[str, Any]:
    """Delete dead letters for good."""
    letters = _letters(service)
    ids = _checked(letters, sel)
    return {"purged": letters.purge(ids, queue=sel.queue, all=sel.all)}
