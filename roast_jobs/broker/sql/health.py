"""Read-only statements for health checks (``roast-jobs rollout status|check``): how many
messages wait in a queue, whether a live consumer takes them, how fast dead letters grow.

They only read: a tool that looks at a database where no worker ever ran must not create
the broker schema, so ``schema_ready`` comes first and the caller skips the rest when it
says no. Named parameters are psycopg's, like the rest of ``broker/sql``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from .core import check_identifier


@dataclass(frozen=True)
class HealthStatements:
    schema_ready: str
    queue_health: str
    queue_depths: str


@cache
def health_statements(schema: str) -> HealthStatements:
    s = f'"{check_identifier(schema)}"'

    def q(text: str) -> str:
        return text.replace("{s}", s)

    return HealthStatements(
        # Every table queue_health reads (consumer came with schema version 3).
        schema_ready=q(
            """
            SELECT to_regclass('{s}.message') IS NOT NULL
               AND to_regclass('{s}.dead_letter') IS NOT NULL
               AND to_regclass('{s}.consumer') IS NOT NULL
            """
        ),
        # One row. "Waiting" as a claim sees it: due, not leased (or its lease ran out),
        # not expired. A consumer counts while its process keeps its row alive: a worker
        # that died lapses after the consumer TTL even before maintenance deletes the row.
        queue_health=q(
            """
            SELECT
                (SELECT count(*) FROM {s}.message
                  WHERE queue = %(queue)s AND visible_at <= now()
                    AND (expires_at IS NULL OR expires_at > now())) AS waiting,
                (SELECT count(*) FROM {s}.consumer
                  WHERE queue = %(queue)s AND alive_until > now()) AS live_consumers,
                (SELECT count(*) FROM {s}.dead_letter
                  WHERE dead_at > now() - make_interval(secs => %(window)s)) AS new_dead,
                (SELECT count(*) FROM {s}.dead_letter) AS dead
            """
        ),
        # Every queue's messages by state, the oldest waiting one's age, messages handed
        # out again after a lease ran out (delivery_count > 1), dead letters and live
        # consumers: one row per queue that has any of them (metrics).
        queue_depths=q(
            """
            WITH m AS (
                SELECT queue,
                       count(*) FILTER (WHERE visible_at <= now()
                           AND (expires_at IS NULL OR expires_at > now())) AS waiting,
                       count(*) FILTER (WHERE visible_at > now() AND lease_owner IS NULL)
                           AS scheduled,
                       count(*) FILTER (WHERE visible_at > now() AND lease_owner IS NOT NULL)
                           AS active,
                       count(*) FILTER (WHERE delivery_count > 1) AS redelivered,
                       extract(epoch FROM now() - min(created_at) FILTER (
                           WHERE visible_at <= now()
                             AND (expires_at IS NULL OR expires_at > now())))::float8
                           AS oldest_waiting
                FROM {s}.message GROUP BY queue
            ),
            d AS (SELECT queue, count(*) AS dead FROM {s}.dead_letter GROUP BY queue),
            c AS (
                SELECT queue, count(*) AS consumers FROM {s}.consumer
                WHERE alive_until > now() GROUP BY queue
            )
            SELECT COALESCE(m.queue, d.queue, c.queue) AS queue,
                   COALESCE(m.waiting, 0), COALESCE(m.scheduled, 0), COALESCE(m.active, 0),
                   COALESCE(m.redelivered, 0), m.oldest_waiting, COALESCE(d.dead, 0),
                   COALESCE(c.consumers, 0)
            FROM m FULL JOIN d ON d.queue = m.queue
                   FULL JOIN c ON c.queue = COALESCE(m.queue, d.queue)
            ORDER BY 1
            """
        ),
    )
