"""Singleton keys from plain Celery sends.

A key is held while its message row exists. With ``acks_late`` the row lives until the
task finishes; a task acked when it starts (Celery's default) loses its row, and its key,
before it runs, so another job with the key could run beside it. Such a send is refused
with a ``ValueError``: set ``acks_late=True`` on the task, or ``task_acks_late = True`` in
the app (roast-jobs' ``make_celery`` does).

``SingletonTask`` (the default task class of ``make_celery`` apps, and the base of
``RoastTask``) makes ``apply_async(..., singleton_key=k)`` return the holder's
``AsyncResult`` when ``k`` is held, so that ``.get()`` waits for the job that runs. Its
results carry ``created``: False for such a duplicate, True when this send made the job,
None inside a buffered ``enqueue_in`` block (nothing is written before the block ends:
its ``.results`` tell then).

Tasks of other apps, on Celery's plain ``Task``, cannot swap the result they return: a
duplicate's id never runs. For them the publish signals log a warning naming the holder,
and one for a key sent to a task acked early (a signal receiver cannot refuse a send:
Celery logs and drops its exceptions). The receivers are connected when ``roast_jobs.jobs``
is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

from celery import Celery, Task, signals
from celery._state import _get_active_apps
from celery.utils import uuid

from roast_jobs.broker.capture import PublishTarget, current_target, publishing
from roast_jobs.broker.payload import SINGLETON_KEY, singleton_key

logger = logging.getLogger(__name__)


def key_of(options: Mapping[str, Any]) -> str | None:
    """The singleton key of ``apply_async`` options (option or header); ValueError if bad."""
    headers = options.get("headers")
    return singleton_key(
        {SINGLETON_KEY: options.get(SINGLETON_KEY)}, headers if isinstance(headers, dict) else {}
    )


def _early_ack_problem(name: str) -> str:
    return (
        f"task {name!r} is acked when it starts (acks_late is off), so its singleton key "
        "would free up before it runs and another job with the key could run beside it: "
        "set acks_late=True on the task, or task_acks_late = True in the app's configuration"
    )


def refuse_early_ack(name: str, acks_late: Any) -> None:
    """ValueError unless a task ``name`` with this ``acks_late`` holds a key while it runs."""
    if not acks_late:
        raise ValueError(_early_ack_problem(name))


def refuse_early_ack_of(app: Celery, name: str) -> None:
    """``refuse_early_ack`` for a task sent by name: its registered setting, else the app's."""
    task = app.tasks.get(name)
    refuse_early_ack(name, task.acks_late if task is not None else app.conf.task_acks_late)


class SingletonTask(Task):
    """A task whose duplicate singleton sends return the holder's result (module doc)."""

    abstract = True

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        def send(tid: str | None) -> Any:
            return super(SingletonTask, self).apply_async(
                args, kwargs, tid, producer, link, link_error, shadow, **options
            )

        key = key_of(options)
        if key is None or self.app.conf.task_always_eager:
            result = send(task_id)
            result.created = True
            return result
        refuse_early_ack(self.name, self.acks_late)
        enclosing = current_target()
        if enclosing is not None and enclosing.buffered:
            result = send(task_id)
            result.created = None  # known when the block ends: see its .results
            return result
        task_id = task_id or uuid()
        for _ in range(3):
            with publishing(sink=enclosing.sink if enclosing else None) as target:
                result = send(task_id)
            if enclosing is not None:  # enqueue_in(...).results tells of this send too
                enclosing.results.extend(target.results)
            outcome = target.results[-1] if target.results else None
            if outcome is None or outcome.created:  # None: not the roast-jobs broker
                result.created = True
                return result
            if outcome.holder is not None:
                held = self.app.AsyncResult(outcome.holder, backend=self.backend)
                held.created = False
                return held
            # The holder ended between our insert and its look-up: the key is free now.
        raise RuntimeError(f"singleton key {key!r} of task {self.name!r} kept changing hands")


# -- plain tasks of other apps: warnings from the publish signals ------------------------

#: The publish being watched in this context: (its publishing() block, target, key).
_watch: ContextVar[tuple[AbstractContextManager[PublishTarget], PublishTarget, str] | None] = (
    ContextVar("roast_jobs_singleton_watch", default=None)
)


def _registered(name: str) -> Task | None:
    # The signal does not say which app sends; Celery keeps a set of the live ones.
    for app in list(_get_active_apps()):
        task = getattr(app, "_tasks", {}).get(name)  # without finalizing the app
        if task is not None:
            return task
    return None


def _end_watch() -> tuple[PublishTarget, str] | None:
    watched = _watch.get()
    if watched is None:
        return None
    _watch.set(None)
    block, target, key = watched
    block.__exit__(None, None, None)
    return target, key


@signals.before_task_publish.connect(weak=False, dispatch_uid="roast_jobs.singleton.before")
def _before_publish(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    _end_watch()  # left open by a send that failed after its before_task_publish
    if current_target() is not None:  # SingletonTask, JobManager, enqueue_in: they know
        return
    try:
        key = singleton_key(properties or {}, headers or {})
    except ValueError:
        return  # the broker refuses the send with this error
    if key is None:
        return
    task = _registered(sender or "")
    if task is not None and not task.acks_late:
        logger.warning("%s (singleton key %r)", _early_ack_problem(sender or "?"), key)
    block = publishing()
    _watch.set((block, block.__enter__(), key))


@signals.after_task_publish.connect(weak=False, dispatch_uid="roast_jobs.singleton.after")
def _after_publish(
    sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any
) -> None:
    watched = _end_watch()
    if watched is None:
        return
    target, key = watched
    outcome = target.results[-1] if target.results else None
    if outcome is not None and not outcome.created:
        logger.warning(
            "task %s was not sent: singleton key %r of its queue is held by job %s, so the "
            "id apply_async returned (%s) never runs; use the holder's id, or send with "
            "JobManager.send or a task on roast_jobs.jobs.SingletonTask, which return it",
            sender,
            key,
            outcome.holder or "(ended since)",
            (headers or {}).get("id"),
        )
