"""Bulk send: many tasks in one statement per 5,000 rows.

``apply_async`` costs Celery a few hundred microseconds per task (routing, signals,
serialising, one INSERT). A fan-out of thousands sends one task through Celery to learn
the exact message it builds (routing, headers, options), keeps it unwritten as a
template, then makes each task's message from it (new id, arguments, priority, delay)
and writes them all with one multi-row INSERT.
"""

from __future__ import annotations

import base64
import json
import operator
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring,
    encode_basestring_ascii,
)
from typing import Any

from celery import Celery
from kombu import serialization

from roast_jobs.broker.capture import Published, Row, Sink, current_target, publishing
from roast_jobs.broker.payload import Envelope, clamp_priority

#: Celery truncates argsrepr/kwargsrepr too; keep stored messages small.
REPR_LIMIT = 1024


@dataclass
class TaskCall:
    """One task of a bulk send; unset fields take the send's defaults."""

    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    priority: int | None = None
    countdown: float | None = None
    eta: datetime | None = None
    singleton_key: str | None = None
    task_id: str | None = None
    #: When the work first joined a line (e.g. a job moved from another backend): the
    #: broker serves older messages first, so the task keeps its place. Never a delay: a
    #: time in the future counts as now.
    queued_at: datetime | None = None

    @classmethod
    def of(cls, item: TaskCall | Mapping[str, Any] | Sequence[Any]) -> TaskCall:
        """A TaskCall from itself, a kwargs mapping, or an args sequence."""
        if isinstance(item, TaskCall):
            return item
        if isinstance(item, Mapping):
            return cls(kwargs=item)
        if isinstance(item, Sequence) and not isinstance(item, str | bytes):
            return cls(args=tuple(item))
        raise TypeError(
            f"a bulk item is a TaskCall, a kwargs dict or an args list, not {type(item).__name__}"
        )


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= REPR_LIMIT else text[: REPR_LIMIT - 3] + "..."


def capture_template(app: Celery, name: str, options: dict[str, Any]) -> tuple[Row, Any]:
    """The message Celery builds for ``name`` with ``options``, unwritten, and the
    writer of the channel that built it."""
    template_id = f"template-{uuid.uuid4().hex}"
    with publishing(buffered=True) as target:
        app.send_task(name, args=(), kwargs={}, task_id=template_id, **options)
        rows, target.pending = target.pending, []
    if len(rows) != 1 or rows[0].message is None or target.writer is None:
        raise RuntimeError(f"could not build a message template for task {name!r}")
    return rows[0], target.writer


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


# The C encoder json.dumps builds on every call, built once (no circular check: the
# recursion limit catches a cycle).
_c_encoder = c_make_encoder(
    None, _not_json, encode_basestring_ascii, None, ":", ",", False, False, True
)


def _encode(value: Any) -> str:
    return "".join(_c_encoder(value, 0))


_SLOT = re.compile(r'"\\u0000(\w+)\\u0000"')


def _slot(name: str) -> str:
    return f"\x00{name}\x00"


class MessageTemplate:
    """A captured Celery message as JSON text cut at the fields each task changes, so
    that a task's message is one string join instead of a dict copy and a dump."""

    def __init__(self, template: Row) -> None:
        message = template.message
        assert message is not None
        if message["headers"].get("compression"):
            raise ValueError("bulk send does not support compressed task messages")
        self.row = template
        self.content_type = message["content-type"]
        self.encoding = message["content-encoding"]
        self.serializer = serialization.registry.type_to_name[self.content_type]
        raw = base64.b64decode(message["body"])
        _a, _k, self.embed = serialization.loads(raw, self.content_type, self.encoding)
        self.embed_tail = f",{json.dumps(self.embed, separators=(',', ':'))}]"
        headers = dict(message["headers"])
        props = dict(message["properties"])
        template_id = headers["id"]
        self.shared_eta = headers.get("eta")
        self.default_priority = template.envelope.priority
        self.shared_key = template.envelope.singleton_key
        headers.update(id=_slot("id"), argsrepr=_slot("argsrepr"), kwargsrepr=_slot("kwargsrepr"))
        headers["eta"] = _slot("eta")
        if headers.get("root_id") == template_id:
            headers["root_id"] = _slot("id")
        props.update(correlation_id=_slot("id"), priority=_slot("priority"))
        props["singleton_key"] = _slot("singleton_key")
        text = json.dumps(
            {**message, "headers": headers, "properties": props, "body": _slot("body")}
        )
        pieces = _SLOT.split(text)
        literals = [p.replace("%", "%%") for p in pieces[0::2]]
        self.format = "%s".join(literals)
        self.pick = operator.itemgetter(*pieces[1::2])

    def body(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        if self.serializer == "json":
            try:
                # One encoder call for both, then the shared tail: "[args, kwargs, embed]".
                text = _encode([list(args), dict(kwargs)])[:-1] + self.embed_tail
                return base64.b64encode(text.encode("utf-8")).decode("ascii")
            except (TypeError, ValueError, RecursionError):
                pass  # dates, UUIDs, ...: kombu's encoder knows them
        _c, _e, data = serialization.dumps(
            (list(args), dict(kwargs), self.embed), serializer=self.serializer
        )
        if isinstance(data, str):
            data = data.encode("utf-8")
        return base64.b64encode(data).decode("ascii")

    def render(self, values: dict[str, str]) -> str:
        return self.format % self.pick(values)


def build_rows(
    template: Row, calls: Iterable[TaskCall], native_delay: bool = True
) -> Iterator[Row]:
    """One row per call, made as they are consumed (the writer streams them)."""
    tpl = MessageTemplate(template)
    env0 = template.envelope
    shared_eta = _parse_eta(tpl.shared_eta)
    quote = encode_basestring
    for call in calls:
        tid = call.task_id or os.urandom(16).hex()
        eta = call.eta
        if eta is None and call.countdown:
            eta = datetime.now(UTC) + timedelta(seconds=call.countdown)
        elif eta is not None and eta.tzinfo is None:
            eta = eta.replace(tzinfo=UTC)
        eta = eta or shared_eta
        priority = call.priority
        if priority is None:
            priority = tpl.default_priority
        elif type(priority) is not int or not 0 <= priority <= 9:
            priority = clamp_priority(priority)
        key = call.singleton_key if call.singleton_key is not None else tpl.shared_key
        visible = eta if native_delay else None
        if visible is None and call.queued_at is not None:
            queued = call.queued_at if call.queued_at.tzinfo else call.queued_at.replace(tzinfo=UTC)
            visible = min(queued, datetime.now(UTC))
        payload = tpl.render(
            {
                "id": quote(tid),
                "argsrepr": quote(_short_repr(tuple(call.args))),
                "kwargsrepr": quote(_short_repr(dict(call.kwargs))) if call.kwargs else '"{}"',
                "eta": quote(eta.isoformat()) if eta else "null",
                "priority": str(priority),
                "singleton_key": "null" if key is None else quote(key),
                "body": f'"{tpl.body(call.args, call.kwargs)}"',  # base64: nothing to escape
            }
        )
        env = Envelope(
            priority=priority,
            eta=visible,
            expires=env0.expires,
            task_id=tid,
            payload=payload,
            singleton_key=key,
        )
        yield Row(template.exchange, template.routing_key, env)


def _parse_eta(value: Any) -> datetime | None:
    if not value:
        return None
    when = datetime.fromisoformat(str(value))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def send_many(
    app: Celery,
    name: str,
    calls: Iterable[TaskCall | Mapping[str, Any] | Sequence[Any]],
    sink: Sink | None = None,
    **options: Any,
) -> list[Published]:
    """Send one task per item of ``calls`` in as few statements as possible.

    ``options`` are ``apply_async`` options shared by all (queue, priority, expires,
    time_limit, ...). ``sink`` writes in the caller's transaction (see
    ``transaction.sink_for``). Returns what became of each, in order.
    """
    items = [TaskCall.of(c) for c in calls]
    if not items:
        return []
    if sink is None and (enclosing := current_target()) is not None:
        sink = enclosing.sink  # inside enqueue_in(): join that transaction
    template, writer = capture_template(app, name, options)
    channel = getattr(writer, "__self__", None)  # the roast-jobs channel that built it
    native_delay = channel.transport.options.native_delay if channel is not None else True
    return writer(build_rows(template, items, native_delay), sink)
