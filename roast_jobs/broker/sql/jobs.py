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
    revive_expired: str
    queue_status: str
    dead_status: str
    dead_list: str
    dead_get: str
    dead_redrive: str
    dead_purge: str
    dead_purge_older: str
    messages_for_move: str
    delete_messages: str
    held_task_ids: str
    lock_task: str
    end_leased: str
    end_leased_unheld: str


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
            RETURNING id, queue, payload, created_at
            """
        ),
        # An expired message a sweep has not buried yet, sent again under its id and key
        # (one statement: the key passes from the old row to the new one), without the
        # expiry, or the worker would discard it again.
        revive_expired=q(
            """
            WITH gone AS (
                DELETE FROM {s}.message
                WHERE task_id = %(task_id)s
                  AND (expires_at <= now()
                       OR (payload::jsonb #>> '{headers,expires}')::timestamptz <= now())
                  AND (lease_owner IS NULL OR visible_at <= now())
                RETURNING queue, priority, task_id, singleton_key, payload
            ),
            ins AS (
                INSERT INTO {s}.message (queue, priority, task_id, singleton_key, payload)
                SELECT queue, priority, task_id, singleton_key,
                       (payload::jsonb #- '{headers,expires}')::text
                FROM gone
                RETURNING id, queue
            )
            SELECT id, queue, pg_notify(%(channel)s, queue) FROM ins
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
        # expired task loses its expiry, or the worker would discard it again. One dead
        # letter per (queue, singleton key) goes, the oldest; one whose key a live message
        # holds stays, as do the others of its key. The insert skips a held key (ON
        # CONFLICT), so a sender taking it meanwhile holds the letter back instead of
        # failing the statement. Message ids are drawn beforehand to pair each inserted
        # row with its letter. Rows: (dead letter id, queue, task id, key, new message id
        # or NULL, NULL or why held back: 'held' | 'duplicate', the holder: a task id or
        # the id of the letter that went).
        dead_redrive=q(
            """
            WITH picked AS MATERIALIZED (
                SELECT d.id, d.queue, d.priority, d.task_id, d.singleton_key, d.reason,
                       d.payload
                FROM {s}.dead_letter d
                WHERE d.id = ANY(%(ids)s)
                   OR (%(all)s AND (%(queue)s::text IS NULL OR d.queue = %(queue)s))
                ORDER BY d.id
                FOR UPDATE
            ),
            firsts AS MATERIALIZED (
                SELECT DISTINCT ON (p.queue, p.singleton_key IS NULL,
                                    COALESCE(p.singleton_key, p.id::text)) p.*
                FROM picked p
                ORDER BY p.queue, p.singleton_key IS NULL,
                         COALESCE(p.singleton_key, p.id::text), p.id
            ),
            numbered AS MATERIALIZED (
                SELECT f.*, nextval(pg_get_serial_sequence('{s}.message', 'id')) AS new_id
                FROM firsts f
            ),
            ins AS (
                INSERT INTO {s}.message (id, queue, priority, task_id, singleton_key, payload)
                OVERRIDING SYSTEM VALUE
                SELECT new_id, queue, priority, task_id, singleton_key,
                       CASE WHEN reason = 'expired'
                            THEN (payload::jsonb #- '{headers,expires}')::text
                            ELSE payload END
                FROM numbered ORDER BY new_id
                ON CONFLICT (queue, singleton_key) WHERE singleton_key IS NOT NULL DO NOTHING
                RETURNING id, queue
            ),
            gone AS (
                DELETE FROM {s}.dead_letter d USING numbered n, ins i
                WHERE d.id = n.id AND i.id = n.new_id
            ),
            woken AS (
                SELECT count(*) AS n
                FROM (SELECT pg_notify(%(channel)s, queue) FROM ins GROUP BY queue) AS w
            )
            SELECT p.id, p.queue, p.task_id, p.singleton_key, i.id,
                   CASE WHEN i.id IS NOT NULL THEN NULL
                        WHEN f.id = p.id OR fi.id IS NULL THEN 'held'
                        ELSE 'duplicate' END,
                   CASE WHEN i.id IS NOT NULL THEN NULL
                        WHEN f.id = p.id OR fi.id IS NULL THEN (
                            SELECT m.task_id FROM {s}.message m
                            WHERE m.queue = p.queue AND m.singleton_key = p.singleton_key)
                        ELSE f.id::text END
            FROM picked p
            LEFT JOIN numbered f
                   ON f.queue = p.queue AND f.singleton_key IS NOT DISTINCT FROM p.singleton_key
                  AND (p.singleton_key IS NOT NULL OR f.id = p.id)
            LEFT JOIN ins i ON i.id = f.new_id AND f.id = p.id
            LEFT JOIN ins fi ON fi.id = f.new_id
            CROSS JOIN woken
            ORDER BY p.id
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
        # Every live message of these task ids, for moving their jobs off the broker: the
        # ones this transaction could lock (SKIP LOCKED: a claim, ack or renewal in flight
        # keeps its row, and this never waits on a worker), and whether a worker holds
        # each. A row locked elsewhere comes back with mine = false (leased unknown).
        # The lease is read from the locked row, which is its newest version. One index
        # lookup per task id (LATERAL, not = ANY or a join): after a bulk move the
        # statistics are stale, and the planner then chose to read the whole table.
        messages_for_move=q(
            """
            WITH ids AS MATERIALIZED (SELECT DISTINCT unnest(%(task_ids)s::text[]) AS task_id),
            mine AS MATERIALIZED (
                SELECT l.id, l.leased FROM ids CROSS JOIN LATERAL (
                    SELECT id, lease_owner IS NOT NULL AND visible_at > now() AS leased
                    FROM {s}.message WHERE task_id = ids.task_id
                    FOR UPDATE SKIP LOCKED
                ) l
            )
            SELECT m.id, m.task_id, mine.id IS NOT NULL AS mine, mine.leased
            FROM ids CROSS JOIN LATERAL (
                SELECT id, task_id FROM {s}.message WHERE task_id = ids.task_id OFFSET 0
            ) m
            LEFT JOIN mine ON mine.id = m.id
            """
        ),
        delete_messages=q("DELETE FROM {s}.message WHERE id = ANY(%(ids)s::bigint[])"),
        # Which of these task ids a worker holds now (a read, no locks: previews).
        # Steering one job (retry) serialised per task id and schema, until commit.
        lock_task=q(
            "SELECT pg_advisory_xact_lock(hashtextextended('{s}.task:' || %(task_id)s, 0))"
        ),
        # The deliveries of a task now being worked on (leased), ended in a caller's
        # transaction (jobs.ack_in); a waiting message of the same id (its retry) stays.
        end_leased=q(
            "DELETE FROM {s}.message WHERE task_id = %(task_id)s AND lease_owner IS NOT NULL "
            "RETURNING id"
        ),
        # The same, skipping a row another transaction holds (a retry on a connection of
        # its own must not wait for its caller's open transaction, in the same thread).
        end_leased_unheld=q(
            """
            DELETE FROM {s}.message WHERE id IN (
                SELECT id FROM {s}.message
                WHERE task_id = %(task_id)s AND lease_owner IS NOT NULL
                FOR UPDATE SKIP LOCKED)
            RETURNING id
            """
        ),
        held_task_ids=q(
            """
            SELECT DISTINCT m.task_id
            FROM unnest(%(task_ids)s::text[]) AS ids(task_id) CROSS JOIN LATERAL (
                SELECT task_id FROM {s}.message
                WHERE task_id = ids.task_id AND lease_owner IS NOT NULL
                  AND visible_at > now() OFFSET 0
            ) m
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
    )
