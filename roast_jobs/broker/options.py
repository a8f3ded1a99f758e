"""Transport options: defaults, parsing and validation."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .sql import check_identifier

#: The values PostgreSQL's ``synchronous_commit`` takes (its hidden boolean spellings left out).
SYNCHRONOUS_COMMIT_VALUES = ("on", "off", "local", "remote_write", "remote_apply")


@dataclass(frozen=True)
class BrokerOptions:
    """What a user can set through ``broker_transport_options`` or the URL query string.

    Every name here is also accepted as a query parameter of the broker URL, e.g.
    ``postgresql://app@db/app?schema=jobs&lease_seconds=60``.
    """

    schema: str = "roast_jobs_broker"
    #: How long a claimed message stays invisible without renewal. A dead worker's
    #: messages come back this long after its last renewal.
    lease_seconds: float = 30.0
    #: Renew held leases this often (default: a third of the lease).
    renew_interval: float | None = None
    #: A message claimed this many times without an ack goes to the dead-letter table.
    max_deliveries: int = 5
    #: Safety-net poll for lost notifications and expired leases.
    polling_interval: float = 2.0
    #: Store countdown/eta tasks invisible until due instead of in worker memory.
    native_delay: bool = True
    #: How often (at most) one process in the cluster sweeps expired messages and queues.
    maintenance_interval: float = 10.0
    #: Idle connections kept per process.
    pool_size: int = 4
    #: ``synchronous_commit`` for broker connections (on, off, local, ...); None keeps the
    #: server's setting.
    synchronous_commit: str | None = None
    #: psycopg's prepare threshold; set None behind PgBouncer in transaction mode.
    prepare_threshold: int | None = 5
    connect_timeout: float = 10.0
    #: A URL for the LISTEN connection alone, straight to the server, when the broker URL
    #: goes through a pooler that cannot carry LISTEN (PgBouncer in transaction mode).
    #: Kept out of repr: it may hold a password.
    listen_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> BrokerOptions:
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                continue
            kwargs[name] = _coerce(name, value, cls.__dataclass_fields__[name].type)
        opts = cls(**kwargs)
        opts.validate()
        return opts

    def validate(self) -> None:
        check_identifier(self.schema)
        if self.lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if self.max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        if self.polling_interval <= 0:
            raise ValueError("polling_interval must be positive")
        if self.synchronous_commit is not None:
            check_synchronous_commit(self.synchronous_commit)

    @property
    def renew_every(self) -> float:
        return self.renew_interval or self.lease_seconds / 3

    @property
    def consumer_ttl(self) -> float:
        """How long a consumer stays registered once its process stops renewing it."""
        return max(self.lease_seconds, 3 * self.renew_every)

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


def check_synchronous_commit(value: str) -> str:
    """``value`` if PostgreSQL knows it: it is pasted into the connection's options."""
    if value.lower() not in SYNCHRONOUS_COMMIT_VALUES:
        raise ValueError(
            f"transport option 'synchronous_commit': bad value {value!r}; "
            f"use one of {', '.join(SYNCHRONOUS_COMMIT_VALUES)}"
        )
    return value


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    text = str(annotation)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        if "None" in text:
            return None
        raise ValueError(f"transport option {name!r} cannot be empty")
    try:
        if text.startswith("bool"):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if text.startswith("int"):
            return int(value)
        if text.startswith("float"):
            return float(value)
        return str(value)
    except ValueError:
        raise ValueError(f"transport option {name!r}: bad value {value!r}") from None
