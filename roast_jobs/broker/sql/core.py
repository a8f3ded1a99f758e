"""The schema and the transport's statements, built once per schema.

The tables (see ``SCHEMA``):

- ``message``: live messages only. A message is claimable when ``visible_at <= now()``;
  a claim moves ``visible_at`` to the end of its lease, so an expired lease makes the
  message claimable again with no sweeper. Acked rows are deleted.
- ``queue``: declared queues and their AMQP options (message TTL, expiry).
- ``binding``: exchange -> queue routes, shared by every process.
- ``dead_letter``: messages that could not be delivered, with why and to whom they went.
- ``consumer``: who consumes which queue, kept alive by its process; an ``auto_delete``
  queue goes when its last consumer does.
- ``meta``: schema version and maintenance bookkeeping.

Delivery tags are ``"<id>:<receipt>"``: every claim (and a retry that replaces a held
row) moves the row's ``receipt`` on, so an ack, renewal or reject names one delivery and
can never touch a later delivery of the same row.

Statements use psycopg's named parameters; the schema name is validated and quoted here
and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

SCHEMA_VERSION = 3
PRIORITIES = tuple(range(9, -1, -1))  # served highest first

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_identifier(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(
            f"invalid schema name {name!r}: use lower-case letters, digits and '_' "
            "(at most 63 characters, not starting with a digit)"
        )
    return name


SCHEMA = """
CREATE SCHEMA IF NOT EXISTS {s};

CREATE TABLE IF NOT EXISTS {s}.meta (
    key text PRIMARY KEY,
    value text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS {s}.message (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    priority smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    visible_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    lease_owner text,
    delivery_count integer NOT NULL DEFAULT 0,
    delivered_to text[],
    task_id text,
    payload text NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 500);

CREATE INDEX IF NOT EXISTS message_claim_idx
    ON {s}.message (queue, priority, visible_at, id);
CREATE INDEX IF NOT EXISTS message_task_id_idx
    ON {s}.message (task_id) WHERE task_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS {s}.queue (
    name text PRIMARY KEY,
    message_ttl interval,
    expires interval,
    auto_delete boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS {s}.binding (
    exchange text NOT NULL,
    queue text NOT NULL,
    routing_key text NOT NULL DEFAULT '',
    kind text NOT NULL CHECK (kind IN ('direct', 'topic', 'fanout')),
    regex text,
    PRIMARY KEY (exchange, queue, routing_key)
);
CREATE INDEX IF NOT EXISTS binding_queue_idx ON {s}.binding (queue);

CREATE TABLE IF NOT EXISTS {s}.dead_letter (
    id bigint PRIMARY KEY,
    queue text NOT NULL,
    priority smallint NOT NULL,
    created_at timestamptz NOT NULL,
    dead_at timestamptz NOT NULL DEFAULT now(),
    reason text NOT NULL,
    delivery_count integer NOT NULL,
    delivered_to text[],
    task_id text,
    payload text NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letter_task_id_idx
    ON {s}.dead_letter (task_id) WHERE task_id IS NOT NULL;

-- Version 2: singleton keys. One live message per (queue, key); the key frees up when
-- the row goes (ack, dead letter, expiry, cancel).
ALTER TABLE {s}.message ADD COLUMN IF NOT EXISTS singleton_key text;
CREATE UNIQUE INDEX IF NOT EXISTS message_singleton_idx
    ON {s}.message (queue, singleton_key) WHERE singleton_key IS NOT NULL;
ALTER TABLE {s}.dead_letter ADD COLUMN IF NOT EXISTS singleton_key text;
CREATE INDEX IF NOT EXISTS dead_letter_dead_at_idx ON {s}.dead_letter (dead_at);

-- Version 3: receipts (one per delivery), consumers shared across processes.
ALTER TABLE {s}.message ADD COLUMN IF NOT EXISTS receipt integer NOT NULL DEFAULT 0;
ALTER TABLE {s}.queue ADD COLUMN IF NOT EXISTS consumed boolean NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS {s}.consumer (
    queue text NOT NULL,
    consumer text NOT NULL,
    alive_until timestamptz NOT NULL,
    PRIMARY KEY (queue, consumer)
);
DELETE FROM {s}.meta WHERE key IN ('broker_maintenance', 'job_maintenance');

INSERT INTO {s}.meta (key, value) VALUES ('schema_version', '{version}')
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
    WHERE {s}.meta.value::int < EXCLUDED.value::int;
"""

# Columns copied from message to dead_letter.
_DEAD_COLS = (
    "id, queue, priority, created_at, delivery_count, delivered_to, task_id, singleton_key, payload"
)

# The deliveries a statement acts on: delivery tags split into parallel id/receipt arrays.
_TAGS = "unnest(%(ids)s::bigint[], %(receipts)s::int[]) AS t(id, receipt)"
_OF_TAGS = "m.id = t.id AND m.receipt = t.receipt"

# When a row becomes claimable, as seconds from the database's own clock: never compared
# with the host's, so clock skew between hosts cannot make a consumer spin or sleep.
_DUE_IN = "extract(epoch FROM {v} - now())::float8"

# The (queue, priority) pairs to scan, in serving order, come in as two parallel arrays;
# a nested loop over them walks the claim index once per pair and stops at the LIMIT, so
# neither delayed nor leased rows are ever scanned past.
_READY = """
    SELECT k.ord, m.id, m.delivery_count
    FROM unnest(%(queues)s::text[], %(prios)s::smallint[]) WITH ORDINALITY AS k(queue, prio, ord)
    CROSS JOIN LATERAL (
        SELECT id, delivery_count FROM {s}.message
        WHERE queue = k.queue AND priority = k.prio AND visible_at <= now()
          AND (expires_at IS NULL OR expires_at > now())
        ORDER BY visible_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) m
    LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Statements:
    schema: str
    ddl: str
    current_version: str
    schema_exists: str
    lock_schema: str
    publish: str
    publish_exchange: str
    publish_many: str
    singleton_holders: str
    queues_with_ttl: str
    copy_messages: str
    notify_many: str
    now: str
    claim: str
    claim_noack: str
    next_due: str
    renew: str
    ack: str
    release: str
    requeue: str
    bury: str
    bury_row: str
    add_consumer: str
    keep_consumers: str
    lock_queue: str
    remove_consumer: str
    size: str
    purge: str
    has_queue: str
    declare_queue: str
    touch_queues: str
    bind: str
    unbind: str
    bindings_of: str
    listen: str
    ping: str
    delete_queue: str
    reclaim_leases: str
    sweep_messages: str
    sweep_consumers: str
    sweep_queues: str
    maintenance_lock: str
    maintenance_unlock: str
    maintenance_due: str
    maintenance_done: str
    maintenance_last: str


@cache
def statements(schema: str) -> Statements:
    s = f'"{check_identifier(schema)}"'

    def q(text: str) -> str:
        return text.replace("{s}", s)

    lease = "now() + make_interval(secs => %(lease)s)"
    return Statements(
        schema=schema,
        ddl=SCHEMA.replace("{s}", s).replace("{version}", str(SCHEMA_VERSION)),
        current_version=q("SELECT value FROM {s}.meta WHERE key = 'schema_version'"),
        # Read-only callers (the CLI) must not create the schema by looking at it.
        schema_exists=q(
            "SELECT to_regclass('{s}.meta') IS NOT NULL AND to_regclass('{s}.message') IS NOT NULL"
        ),
        # Many workers may start at once: serialise schema creation per schema name.
        lock_schema="SELECT pg_advisory_xact_lock(hashtext('roast_jobs_broker:' || %(schema)s))",
        publish=q(
            """
            WITH ins AS (
                INSERT INTO {s}.message
                    (queue, priority, visible_at, expires_at, task_id, payload)
                VALUES (
                    %(queue)s, %(priority)s, COALESCE(%(eta)s, now()),
                    LEAST(%(expires)s,
                          now() + (SELECT message_ttl FROM {s}.queue WHERE name = %(queue)s)),
                    %(task_id)s, %(payload)s)
                RETURNING id, visible_at
            )
            SELECT id, pg_notify(%(channel)s, CASE WHEN visible_at > now()
                THEN %(queue)s || chr(31) || extract(epoch FROM visible_at - now())::text
                ELSE %(queue)s END)
            FROM ins
            """
        ),
        publish_exchange=q(
            """
            WITH ins AS (
                INSERT INTO {s}.message
                    (queue, priority, visible_at, expires_at, task_id, payload)
                SELECT b.queue, %(priority)s, COALESCE(%(eta)s, now()),
                       LEAST(%(expires)s, now() + qu.message_ttl), %(task_id)s, %(payload)s
                FROM {s}.binding b LEFT JOIN {s}.queue qu ON qu.name = b.queue
                WHERE b.exchange = %(exchange)s
                  AND (b.kind = 'fanout'
                       OR (b.kind = 'direct' AND b.routing_key = %(routing_key)s)
                       OR (b.kind = 'topic' AND %(routing_key)s ~ b.regex))
                RETURNING queue, visible_at
            )
            SELECT queue, pg_notify(%(channel)s, CASE WHEN min(visible_at) > now()
                THEN queue || chr(31) || extract(epoch FROM min(visible_at) - now())::text
                ELSE queue END)
            FROM ins GROUP BY queue
            """
        ),
        # Many messages (or one with a singleton key, or a retry) in one statement. Rows
        # arrive as parallel arrays; exchange '' means "straight to the queue named by the
        # routing key". A singleton key admits one live message per (queue, key): a second
        # send is dropped, except a retry of the job holding the key (same task id), which
        # replaces the held row in place. A retry inherits its job's key.
        publish_many=q(
            """
            WITH input AS (
                SELECT * FROM unnest(
                    %(exchanges)s::text[], %(routing_keys)s::text[], %(priorities)s::smallint[],
                    %(etas)s::timestamptz[], %(expires)s::timestamptz[], %(task_ids)s::text[],
                    %(singleton_keys)s::text[], %(retried)s::boolean[], %(payloads)s::text[])
                    WITH ORDINALITY
                    AS i(exchange, routing_key, priority, eta, expires, task_id, singleton_key,
                         retried, payload, ord)
            ),
            routed AS (
                SELECT i.*, CASE WHEN i.exchange = '' THEN i.routing_key ELSE b.queue END AS queue
                FROM input i
                LEFT JOIN {s}.binding b ON i.exchange <> '' AND b.exchange = i.exchange
                    AND (b.kind = 'fanout'
                         OR (b.kind = 'direct' AND b.routing_key = i.routing_key)
                         OR (b.kind = 'topic' AND i.routing_key ~ b.regex))
            ),
            keyed AS (
                SELECT r.*, COALESCE(r.singleton_key, CASE WHEN r.retried THEN (
                    SELECT m.singleton_key FROM {s}.message m
                    WHERE m.task_id = r.task_id AND m.queue = r.queue
                      AND m.singleton_key IS NOT NULL LIMIT 1) END) AS skey
                FROM routed r WHERE r.queue IS NOT NULL
            ),
            firsts AS (
                SELECT DISTINCT ON (k.queue, k.skey IS NULL, COALESCE(k.skey, k.ord::text)) k.*
                FROM keyed k
                ORDER BY k.queue, k.skey IS NULL, COALESCE(k.skey, k.ord::text), k.ord
            ),
            ins AS (
                INSERT INTO {s}.message AS m
                    (queue, priority, visible_at, expires_at, task_id, singleton_key, payload)
                SELECT f.queue, f.priority, COALESCE(f.eta, now()),
                       LEAST(f.expires, now() + qu.message_ttl), f.task_id, f.skey, f.payload
                FROM firsts f LEFT JOIN {s}.queue qu ON qu.name = f.queue
                ORDER BY f.ord
                ON CONFLICT (queue, singleton_key) WHERE singleton_key IS NOT NULL DO UPDATE
                SET priority = EXCLUDED.priority, visible_at = EXCLUDED.visible_at,
                    expires_at = EXCLUDED.expires_at, payload = EXCLUDED.payload,
                    lease_owner = NULL, delivery_count = 0, receipt = m.receipt + 1
                WHERE m.task_id IS NOT DISTINCT FROM EXCLUDED.task_id
                RETURNING m.id, m.queue, m.task_id, m.singleton_key, m.visible_at
            )
            SELECT i.id, i.queue, i.task_id, i.singleton_key,
                   (SELECT count(*) FROM (
                        SELECT pg_notify(%(channel)s, CASE WHEN min(n.visible_at) > now()
                            THEN n.queue || chr(31)
                                 || extract(epoch FROM min(n.visible_at) - now())::text
                            ELSE n.queue END)
                        FROM ins n GROUP BY n.queue) AS woken)
            FROM ins i
            """
        ),
        queues_with_ttl=q(
            """
            SELECT name FROM {s}.queue
            WHERE name = ANY(%(queues)s::text[]) AND message_ttl IS NOT NULL
            """
        ),
        copy_messages=q(
            "COPY {s}.message (queue, priority, visible_at, expires_at, task_id, payload) "
            "FROM STDIN"
        ),
        notify_many="SELECT count(pg_notify(%(channel)s, n)) FROM unnest(%(notes)s::text[]) n",
        now="SELECT now()",
        # Who holds these keys now (any queue): the answer to a dropped singleton send.
        singleton_holders=q(
            """
            SELECT queue, singleton_key, task_id, id FROM {s}.message
            WHERE singleton_key = ANY(%(keys)s::text[])
            """
        ),
        # Acks ride along (a delivery is deleted only if it is still that delivery); rows
        # delivered max_deliveries times are buried instead of claimed and come back with
        # a NULL payload, so the caller counts them as claimed but delivers nothing.
        claim=q(
            f"""
            WITH acked AS (
                DELETE FROM {{s}}.message m USING unnest(%(ack_ids)s::bigint[],
                                                         %(ack_receipts)s::int[]) AS t(id, receipt)
                WHERE {_OF_TAGS}
            ),
            picked AS ({_READY}),
            poison AS (
                DELETE FROM {{s}}.message m USING picked p
                WHERE m.id = p.id AND p.delivery_count >= %(max_deliveries)s
                RETURNING m.*
            ),
            buried AS (
                INSERT INTO {{s}}.dead_letter ({_DEAD_COLS}, reason)
                SELECT {_DEAD_COLS},
                       'delivered ' || delivery_count || ' times without an ack'
                FROM poison
            ),
            claimed AS (
                UPDATE {{s}}.message m
                SET lease_owner = %(owner)s, visible_at = {lease},
                    delivery_count = m.delivery_count + 1, receipt = m.receipt + 1,
                    delivered_to = array_append(m.delivered_to, %(owner)s)
                FROM picked p
                WHERE m.id = p.id AND p.delivery_count < %(max_deliveries)s
                RETURNING p.ord, m.id, m.receipt, m.queue, m.delivery_count, m.payload,
                          extract(epoch FROM m.created_at)::float8 AS created
            )
            SELECT * FROM claimed
            UNION ALL
            SELECT NULL, id, receipt, queue, delivery_count, NULL, NULL FROM poison
            """
        ),
        claim_noack=q(
            f"""
            WITH picked AS ({_READY})
            DELETE FROM {{s}}.message m USING picked p WHERE m.id = p.id
            RETURNING p.ord, m.id, m.receipt + 1, m.queue, m.delivery_count + 1, m.payload,
                      extract(epoch FROM m.created_at)::float8
            """
        ),
        # Seconds until a row of these queues becomes claimable (a delay ends or a lease
        # runs out): one index probe per (queue, priority).
        next_due=q(
            f"""
            SELECT {_DUE_IN.format(v="min(m.visible_at)")}
            FROM unnest(%(queues)s::text[], %(prios)s::smallint[]) AS k(queue, prio)
            CROSS JOIN LATERAL (
                SELECT visible_at FROM {{s}}.message
                WHERE queue = k.queue AND priority = k.prio AND visible_at > now()
                ORDER BY visible_at LIMIT 1
            ) m
            """
        ),
        renew=q(
            f"""
            UPDATE {{s}}.message m SET visible_at = {lease}
            FROM {_TAGS}
            WHERE {_OF_TAGS} AND m.lease_owner IS NOT NULL
            RETURNING m.id, m.receipt
            """
        ),
        ack=q(f"DELETE FROM {{s}}.message m USING {_TAGS} WHERE {_OF_TAGS}"),
        # Graceful hand-back (shutdown, recover): not counted as a delivery, and the message
        # keeps its place in line.
        release=q(
            f"""
            WITH r AS (
                UPDATE {{s}}.message m
                SET lease_owner = NULL, visible_at = LEAST(m.visible_at, m.created_at),
                    delivery_count = GREATEST(m.delivery_count - 1, 0)
                FROM {_TAGS}
                WHERE {_OF_TAGS} AND m.lease_owner IS NOT NULL
                RETURNING m.queue
            )
            SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM r) d
            """
        ),
        # reject(requeue=True): counted, so a task that keeps killing its worker is buried.
        requeue=q(
            f"""
            WITH r AS (
                UPDATE {{s}}.message m
                SET lease_owner = NULL, visible_at = LEAST(m.visible_at, m.created_at)
                FROM {_TAGS}
                WHERE {_OF_TAGS} AND m.lease_owner IS NOT NULL
                RETURNING m.queue
            )
            SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM r) d
            """
        ),
        bury=q(
            f"""
            WITH moved AS (
                DELETE FROM {{s}}.message m USING {_TAGS} WHERE {_OF_TAGS}
                RETURNING m.*
            )
            INSERT INTO {{s}}.dead_letter ({_DEAD_COLS}, reason)
            SELECT {_DEAD_COLS}, %(reason)s FROM moved
            ON CONFLICT (id) DO NOTHING
            """
        ),
        bury_row=q(
            f"""
            INSERT INTO {{s}}.dead_letter ({_DEAD_COLS}, reason)
            VALUES (%(id)s, %(queue)s, 0, now(), %(delivery_count)s, NULL, NULL, NULL,
                    %(payload)s, %(reason)s)
            ON CONFLICT (id) DO NOTHING
            """
        ),
        # Consumers are rows kept alive by their process (as leases are), so an
        # auto_delete queue is deleted when its last consumer, in any process, goes.
        add_consumer=q(
            """
            WITH c AS (
                INSERT INTO {s}.consumer (queue, consumer, alive_until)
                VALUES (%(queue)s, %(consumer)s, now() + make_interval(secs => %(ttl)s))
                ON CONFLICT (queue, consumer) DO UPDATE SET alive_until = EXCLUDED.alive_until
            )
            UPDATE {s}.queue SET consumed = true, last_used = now()
            WHERE name = %(queue)s AND NOT consumed
            """
        ),
        keep_consumers=q(
            """
            UPDATE {s}.consumer SET alive_until = now() + make_interval(secs => %(ttl)s)
            WHERE consumer = ANY(%(consumers)s::text[])
            """
        ),
        # Run in a transaction after ``lock_queue``: two last consumers cancelling at once
        # then go one after the other, and the second sees that the first has gone.
        lock_queue=q("SELECT 1 FROM {s}.queue WHERE name = %(queue)s FOR UPDATE"),
        remove_consumer=q(
            """
            WITH gone AS (
                DELETE FROM {s}.consumer WHERE queue = %(queue)s AND consumer = %(consumer)s
            ),
            doomed AS (
                SELECT name FROM {s}.queue q
                WHERE q.name = %(queue)s AND q.auto_delete
                  AND NOT EXISTS (
                      SELECT 1 FROM {s}.consumer c
                      WHERE c.queue = q.name AND c.consumer <> %(consumer)s
                        AND c.alive_until > now())
            ),
            dm AS (DELETE FROM {s}.message WHERE queue IN (SELECT name FROM doomed)),
            db AS (DELETE FROM {s}.binding WHERE queue IN (SELECT name FROM doomed)),
            dc AS (DELETE FROM {s}.consumer WHERE queue IN (SELECT name FROM doomed)),
            dq AS (DELETE FROM {s}.queue WHERE name IN (SELECT name FROM doomed) RETURNING 1)
            SELECT count(*) FROM dq
            """
        ),
        size=q(
            """
            SELECT count(*) FROM {s}.message
            WHERE queue = %(queue)s AND (lease_owner IS NULL OR visible_at <= now())
              AND (expires_at IS NULL OR expires_at > now())
            """
        ),
        purge=q(
            """
            WITH gone AS (
                DELETE FROM {s}.message
                WHERE queue = %(queue)s AND (lease_owner IS NULL OR visible_at <= now())
                RETURNING 1
            )
            SELECT count(*) FROM gone
            """
        ),
        has_queue=q(
            """
            SELECT EXISTS (SELECT 1 FROM {s}.queue WHERE name = %(queue)s)
                OR EXISTS (SELECT 1 FROM {s}.message WHERE queue = %(queue)s)
            """
        ),
        declare_queue=q(
            """
            INSERT INTO {s}.queue (name, message_ttl, expires, auto_delete)
            VALUES (%(queue)s, make_interval(secs => %(message_ttl)s),
                    make_interval(secs => %(expires)s), %(auto_delete)s)
            ON CONFLICT (name) DO UPDATE
            SET message_ttl = EXCLUDED.message_ttl, expires = EXCLUDED.expires,
                auto_delete = EXCLUDED.auto_delete, last_used = now()
            """
        ),
        touch_queues=q("UPDATE {s}.queue SET last_used = now() WHERE name = ANY(%(queues)s)"),
        bind=q(
            """
            INSERT INTO {s}.binding (exchange, queue, routing_key, kind, regex)
            VALUES (%(exchange)s, %(queue)s, %(routing_key)s, %(kind)s, %(regex)s)
            ON CONFLICT (exchange, queue, routing_key) DO UPDATE
            SET kind = EXCLUDED.kind, regex = EXCLUDED.regex
            """
        ),
        unbind=q(
            """
            DELETE FROM {s}.binding
            WHERE exchange = %(exchange)s AND queue = %(queue)s AND routing_key = %(routing_key)s
            """
        ),
        # The NOTIFY channel is named after the schema: one per broker, whatever the queue.
        listen=f"LISTEN {s}",
        ping="SELECT 1",
        bindings_of=q(
            """
            SELECT routing_key, coalesce(regex, ''), queue FROM {s}.binding
            WHERE exchange = %(exchange)s
            """
        ),
        delete_queue=q(
            """
            WITH dm AS (DELETE FROM {s}.message WHERE queue = %(queue)s RETURNING 1),
            db AS (DELETE FROM {s}.binding WHERE queue = %(queue)s),
            dc AS (DELETE FROM {s}.consumer WHERE queue = %(queue)s)
            DELETE FROM {s}.queue WHERE name = %(queue)s
            """
        ),
        # -- maintenance: each statement is one short step of the pass (maintenance.py) --
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
        # Messages past their TTL (x-message-ttl, or the per-message expiration) go away;
        # a Celery task's (it has an id) is kept as a dead letter so that "what happened
        # to task X" still has an answer.
        sweep_messages=q(
            f"""
            WITH gone AS (
                DELETE FROM {{s}}.message
                WHERE expires_at <= now() AND (lease_owner IS NULL OR visible_at <= now())
                RETURNING *
            ),
            buried AS (
                INSERT INTO {{s}}.dead_letter ({_DEAD_COLS}, reason)
                SELECT {_DEAD_COLS}, 'expired' FROM gone WHERE task_id IS NOT NULL
                ON CONFLICT (id) DO NOTHING
            )
            SELECT count(*) FROM gone
            """
        ),
        # Consumers whose process stopped keeping them alive (killed, cut off).
        sweep_consumers=q(
            """
            WITH gone AS (DELETE FROM {s}.consumer WHERE alive_until <= now() RETURNING 1)
            SELECT count(*) FROM gone
            """
        ),
        # Queues unused past their x-expires, and auto_delete queues whose last consumer
        # is gone; a queue somebody still consumes never goes.
        sweep_queues=q(
            """
            WITH dq AS (
                DELETE FROM {s}.queue q
                WHERE ((q.expires IS NOT NULL AND q.last_used + q.expires < now())
                       OR (q.auto_delete AND q.consumed))
                  AND NOT EXISTS (
                      SELECT 1 FROM {s}.consumer c
                      WHERE c.queue = q.name AND c.alive_until > now())
                RETURNING name
            ),
            db AS (DELETE FROM {s}.binding WHERE queue IN (SELECT name FROM dq)),
            dc AS (DELETE FROM {s}.consumer WHERE queue IN (SELECT name FROM dq)),
            dm AS (DELETE FROM {s}.message WHERE queue IN (SELECT name FROM dq))
            SELECT count(*) FROM dq
            """
        ),
        # One pass at a time per schema, cluster-wide: a session lock, held by the one
        # connection that runs every step of the pass.
        maintenance_lock="SELECT pg_try_advisory_lock(hashtext('roast_jobs_maint:' || %(schema)s))",
        maintenance_unlock="SELECT pg_advisory_unlock(hashtext('roast_jobs_maint:' || %(schema)s))",
        maintenance_due=q(
            """
            SELECT NOT EXISTS (
                SELECT 1 FROM {s}.meta WHERE key = 'maintenance'
                AND updated_at > now() - make_interval(secs => %(interval)s))
            """
        ),
        maintenance_done=q(
            """
            INSERT INTO {s}.meta (key, value, updated_at)
            VALUES ('maintenance', %(value)s, now())
            ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
            """
        ),
        maintenance_last=q("SELECT value, updated_at FROM {s}.meta WHERE key = 'maintenance'"),
    )
