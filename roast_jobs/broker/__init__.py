"""A PostgreSQL transport for kombu and Celery, on psycopg 3.

Importing this package registers the transport for the URL schemes ``postgresql://``,
``postgres://`` and ``pgsql://``; ``broker_transport = "roast_jobs.broker:Transport"``
works too. It imports nothing else from roast_jobs, so any Celery app can use it.

Semantics, in short: messages are rows; a consumer claims a batch with
``FOR UPDATE SKIP LOCKED`` and holds each under a lease it keeps renewing; an ack deletes
the row; a dead consumer's messages come back when their leases end; a message delivered
too often without an ack becomes a dead letter. LISTEN/NOTIFY wakes idle consumers.
Priorities are 0-9, higher first (as on RabbitMQ; on Redis 0 is the highest). Delayed
(countdown/eta) tasks wait in the table, not in worker memory. Bindings live in the
database, so events, remote control and Flower work across processes.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES

TRANSPORT = "roast_jobs.broker.transport:Transport"
SCHEMES = ("postgresql", "postgres", "pgsql")


def register() -> None:
    """Make ``postgresql://`` broker URLs resolve to this transport (idempotent)."""
    for scheme in SCHEMES:
        TRANSPORT_ALIASES[scheme] = TRANSPORT


register()


def __getattr__(name: str):
    if name == "Transport":
        from .transport import Transport

        return Transport
    raise AttributeError(name)
