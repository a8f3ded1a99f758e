"""Statements for looking at and steering single messages: the job-state API, dead letters,
maintenance. The transport's own hot path is in ``core``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from .core import check_identifier

# What a message row tells about its job, newest first when a task id has several rows.
_MESSAGE_COLS = """
    id, queue, priority, created_at, visible_at, expires_at, lease_owner, delivery_count,
    delivered_to, singleton_key, payload, now() AS now
"""
_DEAD_COLS = """
    id, queue, priority, created_at, dead_at, reason, delivery_count, delivered_to,
    singleton_key, task_id, payload
"""

# A message waiting to be claimed: due, not leased (or its lease ran out), not expired.
_WAITING = "visible_at <= now() AND (expires_at IS NULL OR expires_at > now())"


@dataclass(frozen=True)
class JobStatements:
    find_message: str
    find_dead: str
    cancel_waiting: str
    queue_status: str
    dead_status: str
    dead_list: str
    dead_get: str
    dead_redrive: str
    dead_purge: str
    dead_purge_older: str
    reclaim_leases: str
    maintenance_lock: str
    maintenance_record: str
    maintenance_last: str


@cache
def job_statements(schema: str) -> JobStatements:
    s = f'"{check_identifier(schema)}"'

    def q(text: str) -> str:
        return text.replace("{s}", s)

    return JobStatements(
        find_message=q(
            f"""
            SELECT {_MESSAGE_COLS} FROM {{s}}.message
            WHERE task_id = %(task_id)s ORDER BY id DESC LIMIT 1
            """
        ),
        find_dead=q(
            f"""
            SELECT {_DEAD_COLS} FROM {{s}}.dead_letter
            WHERE task_id = %(task_id)s ORDER BY dead_at DESC, id DESC LIMIT 1
            """
        ),
        # Atomic with claims: a row a worker is claiming right now is locked, and once the
        # claim commits it no longer matches (leased), so it is either cancelled here or
        # delivered there, never both.
        cancel_waiting=q(
            """
            DELETE FROM {s}.message
            WHERE task_id = %(task_id)s AND (lease_owner IS NULL OR visible_at <= now())
            RETURNING id, queue, payload
            """
        ),
        queue_status=q(
            f"""
            SELECT queue,
                   count(*) FILTER (WHERE {_WAITING}) AS waiting,
                   count(*) FILTER (WHERE visible_at > now() AND lease_owner IS NULL)
                       AS scheduled,
                   count(*) FILTER (WHERE visible_at > now() AND lease_owner IS NOT NULL)
                       AS active,
                   extract(epoch FROM now() - min(created_at) FILTER (WHERE {_WAITING}))
                       AS oldest_waiting_seconds
            FROM {{s}}.message
            WHERE %(queue)s::text IS NULL OR queue = %(queue)s
            GROUP BY queue
            """
        ),
        dead_status=q(
            """
            SELECT queue, count(*) FROM {s}.dead_letter
            WHERE %(queue)s::text IS NULL OR queue = %(queue)s
            GROUP BY queue
            """
        ),
        dead_list=q(
            f"""
            SELECT {_DEAD_COLS} FROM {{s}}.dead_letter
            WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
            ORDER BY dead_at DESC, id DESC LIMIT %(limit)s
            """
        ),
        dead_get=q(f"SELECT {_DEAD_COLS} FROM {{s}}.dead_letter WHERE id = %(id)s"),
        # Back to the original queue as a fresh message (delivery count 0, due now). An
        # expired task loses its expiry, or the worker would discard it again. A dead
        # letter whose singleton key is held by a live message stays where it is.
        dead_redrive=q(
            """
            WITH moved AS (
                DELETE FROM {s}.dead_letter d
                WHERE (d.id = ANY(%(ids)s)
                       OR (%(all)s AND (%(queue)s::text IS NULL OR d.queue = %(queue)s)))
                  AND NOT EXISTS (
                      SELECT 1 FROM {s}.message m
                      WHERE m.queue = d.queue AND m.singleton_key = d.singleton_key)
                RETURNING d.*
            ),
            ins AS (
                INSERT INTO {s}.message (queue, priority, task_id, singleton_key, payload)
                SELECT queue, priority, task_id, singleton_key,
                       CASE WHEN reason = 'expired'
                            THEN (payload::jsonb #- '{headers,expires}')::text
                            ELSE payload END
                FROM moved ORDER BY id
                RETURNING id, queue, task_id
            )
            SELECT i.id, i.queue, i.task_id,
                   (SELECT count(*) FROM (SELECT pg_notify(%(channel)s, n.queue)
                                          FROM ins n GROUP BY n.queue) AS woken)
            FROM ins i
            """
        ),
        dead_purge=q(
            """
            WITH gone AS (
                DELETE FROM {s}.dead_letter
                WHERE id = ANY(%(ids)s)
                   OR (%(all)s AND (%(queue)s::text IS NULL OR queue = %(queue)s))
                RETURNING 1
            )
            SELECT count(*) FROM gone
            """
        ),
        dead_purge_older=q(
            """
            WITH gone AS (
                DELETE FROM {s}.dead_letter
                WHERE dead_at < now() - make_interval(secs => %(seconds)s)
                RETURNING 1
            )
            SELECT count(*) FROM gone
            """
        ),
        # Leases whose owner stopped renewing: hand the rows back so that they read as
        # waiting (a claim would take them anyway; this keeps the state API honest).
        reclaim_leases=q(
            """
            WITH r AS (
                UPDATE {s}.message SET lease_owner = NULL
                WHERE lease_owner IS NOT NULL AND visible_at <= now()
                RETURNING 1
            )
            SELECT count(*) FROM r
            """
        ),
        maintenance_lock=(
            "SELECT pg_try_advisory_xact_lock(hashtext('roast_jobs_jobs_maint:' || %(schema)s))"
        ),
        maintenance_record=q(
            """
            INSERT INTO {s}.meta (key, value, updated_at)
            VALUES ('job_maintenance', %(value)s, now())
            ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
            """
        ),
        maintenance_last=q("SELECT value, updated_at FROM {s}.meta WHERE key = 'job_maintenance'"),
    )
