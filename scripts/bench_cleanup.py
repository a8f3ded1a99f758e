#!/usr/bin/env python
"""What the clean-up of expired ephemeral batches (``batches.delete_expired_ephemeral``,
run by the ``maintenance`` task and the legacy worker) costs the database: an idle pass
(nothing to delete: the common case) and a pass that deletes 100 batches, next to a
background of N ordinary jobs.

Run from the repository root:

    .venv/bin/python scripts/bench_cleanup.py [--database-url URL] [--jobs N] [--batches B]
        [--docs-per-batch D] [--comments C] [--rounds R] [--explain]

On a scratch database (created on the server of ``--database-url`` / $DATABASE_URL,
migrated, dropped at the end), built with set-based ``INSERT ... SELECT generate_series``:

- the background: 5 agents, N / 2 evaluations (N / 10 documents, each evaluated by every
  agent), each with one version of C comments (with their highlights), and N jobs, two
  per evaluation (1 % PENDING, 0.5 % RUNNING, 2 % FAILED, the rest COMPLETED); the first
  10 % of them in ordinary batches of 100;
- B expired ephemeral batches, each with its own ephemeral agent and D ephemeral
  documents, one evaluation (one version, C comments) and one COMPLETED job per document;
- 100 that must stay, built the same way: 50 not expired yet, 50 expired long ago (so
  the claim, oldest first, meets them first) with one PENDING job each;

then ``VACUUM ANALYZE``. Timed, median of R after one warm-up:

- a full pass (``delete_expired_ephemeral(session, limit=100)``), each in a transaction
  rolled back afterwards so every round sees the same rows (the rollback is not timed,
  nor is a commit), with the time of its statements (the cascades are in their DELETE);
- then, once one committed pass has deleted them for real and ``VACUUM ANALYZE`` ran, the
  idle pass: the same call, which finds nothing and so runs only the claim query.

Every pass is checked: it deleted min(B, 100) batches, none of the 100 that must stay,
and exactly their rows (counts of every table). Prints a table of medians (ms); exits
1 if a check failed. ``--explain`` also prints ``EXPLAIN (ANALYZE, BUFFERS)`` of each
statement of one full pass and of the idle pass.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from bench_domain_support import log, machine_info, markdown, raise_interrupt, throwaway_database
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from roast_jobs.db.session import get_engine, session_factory
from roast_jobs.domain.batches import delete_expired_ephemeral

AGENTS = 5  # background agents
KEPT_UNEXPIRED = 50  # ephemeral batches not expired yet
KEPT_PENDING = 50  # expired ephemeral batches with a PENDING job
KEPT = KEPT_UNEXPIRED + KEPT_PENDING
LIMIT = 100  # the pass's limit (delete_expired_ephemeral's default)
USER = "bench-user"

# Ids: md5 of (kind, number) as a UUID, so they are in random order like real ones and
# every statement can name the rows of another without a lookup.
_ID_FUNCTION = """
CREATE FUNCTION pg_temp.bid(kind text, i bigint) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$ SELECT md5(kind || '-' || i)::uuid::text $$
"""

# %(e)s evaluations on %(n)s documents (evaluation e: document e mod n, agent e / n),
# %(j)s jobs (job j on evaluation j mod e), the first %(bj)s of them in batches of 100.
_BACKGROUND = [
    """INSERT INTO "User" (id, name, email) VALUES ('bench-user', 'bench', 'bench@example.org')""",
    """INSERT INTO "Agent" (id, "submittedById")
       SELECT pg_temp.bid('agent', a), 'bench-user' FROM generate_series(0, %(agents)s - 1) a""",
    """INSERT INTO "AgentVersion" (id, version, name, "agentId")
       SELECT pg_temp.bid('agentv', a), 1, 'Agent ' || a, pg_temp.bid('agent', a)
         FROM generate_series(0, %(agents)s - 1) a""",
    """INSERT INTO "Document" (id, "submittedById")
       SELECT pg_temp.bid('doc', i), 'bench-user' FROM generate_series(0, %(n)s - 1) i""",
    """INSERT INTO "DocumentVersion" (id, title, content, "documentId")
       SELECT pg_temp.bid('docv', i), 'Document ' || i, 'Some text to evaluate.',
              pg_temp.bid('doc', i)
         FROM generate_series(0, %(n)s - 1) i""",
    """INSERT INTO "Evaluation" (id, "documentId", "agentId")
       SELECT pg_temp.bid('eval', e), pg_temp.bid('doc', e %% %(n)s),
              pg_temp.bid('agent', e / %(n)s)
         FROM generate_series(0, %(e)s - 1) e""",
    """INSERT INTO "EvaluationVersion" (id, "agentId", "agentVersionId", "evaluationId",
                                        "documentVersionId", grade, summary)
       SELECT pg_temp.bid('evalv', e), pg_temp.bid('agent', e / %(n)s),
              pg_temp.bid('agentv', e / %(n)s), pg_temp.bid('eval', e),
              pg_temp.bid('docv', e %% %(n)s), 70, 'Fine.'
         FROM generate_series(0, %(e)s - 1) e""",
    """INSERT INTO "EvaluationHighlight" (id, "startOffset", "endOffset", "quotedText")
       SELECT pg_temp.bid('hl', m), 0, 9, 'Some text'
         FROM generate_series(0, %(e)s * %(c)s - 1) m""",
    """INSERT INTO "EvaluationComment" (id, description, "evaluationVersionId", "highlightId")
       SELECT pg_temp.bid('cm', m), 'A comment.', pg_temp.bid('evalv', m / %(c)s),
              pg_temp.bid('hl', m)
         FROM generate_series(0, %(e)s * %(c)s - 1) m""",
    """INSERT INTO "AgentEvalBatch" (id, "agentId", "userId", "targetCount", "completedAt")
       SELECT pg_temp.bid('batch', b), pg_temp.bid('agent', (b * 100 %% %(e)s) / %(n)s),
              'bench-user', 100, now() AT TIME ZONE 'UTC'
         FROM generate_series(0, %(batches)s - 1) b""",
    """INSERT INTO "Job" (id, status, attempts, "evaluationId", "agentEvalBatchId", backend)
       SELECT pg_temp.bid('job', j),
              CASE WHEN j %% 200 = 0 THEN 'RUNNING' WHEN j %% 100 = 0 THEN 'PENDING'
                   WHEN j %% 50 = 1 THEN 'FAILED' ELSE 'COMPLETED' END::"JobStatus",
              1, pg_temp.bid('eval', j %% %(e)s),
              CASE WHEN j < %(bj)s THEN pg_temp.bid('batch', j / 100) END,
              CASE WHEN j %% 2 = 0 THEN 'legacy' ELSE 'celery' END
         FROM generate_series(0, %(j)s - 1) j""",
]

# Ephemeral batch k of %(t)s: deletable below %(b)s, then %(kept_unexpired)s not expired,
# then expired ones with a PENDING job; document n (of %(t)s * %(d)s) is batch n / %(d)s's.
_EPHEMERAL = [
    """INSERT INTO "Agent" (id, "submittedById")
       SELECT pg_temp.bid('eagent', k), 'bench-user' FROM generate_series(0, %(t)s - 1) k""",
    """INSERT INTO "AgentVersion" (id, version, name, "agentId")
       SELECT pg_temp.bid('eagentv', k), 1, 'Ephemeral agent ' || k, pg_temp.bid('eagent', k)
         FROM generate_series(0, %(t)s - 1) k""",
    """INSERT INTO "AgentEvalBatch" (id, "agentId", "userId", "targetCount", "isEphemeral",
                                     "expiresAt", "completedAt")
       SELECT pg_temp.bid('ebatch', k), pg_temp.bid('eagent', k), 'bench-user', %(d)s, true,
              now() AT TIME ZONE 'UTC' + CASE
                WHEN k < %(b)s THEN -interval '1 day' - make_interval(mins => k::int)
                WHEN k < %(b)s + %(kept_unexpired)s
                  THEN interval '1 day' + make_interval(mins => k::int)
                ELSE -interval '30 days' - make_interval(mins => k::int) END,
              CASE WHEN k < %(b)s + %(kept_unexpired)s THEN now() AT TIME ZONE 'UTC' END
         FROM generate_series(0, %(t)s - 1) k""",
    # The batch row needs its agent first, so the agent names its batch afterwards.
    """UPDATE "Agent" a SET "ephemeralBatchId" = pg_temp.bid('ebatch', k)
         FROM generate_series(0, %(t)s - 1) k WHERE a.id = pg_temp.bid('eagent', k)""",
    """INSERT INTO "Document" (id, "submittedById", "ephemeralBatchId")
       SELECT pg_temp.bid('edoc', n), 'bench-user', pg_temp.bid('ebatch', n / %(d)s)
         FROM generate_series(0, %(t)s * %(d)s - 1) n""",
    """INSERT INTO "DocumentVersion" (id, title, content, "documentId")
       SELECT pg_temp.bid('edocv', n), 'Inline document ' || n, 'Some text to evaluate.',
              pg_temp.bid('edoc', n)
         FROM generate_series(0, %(t)s * %(d)s - 1) n""",
    """INSERT INTO "Evaluation" (id, "documentId", "agentId")
       SELECT pg_temp.bid('eeval', n), pg_temp.bid('edoc', n), pg_temp.bid('eagent', n / %(d)s)
         FROM generate_series(0, %(t)s * %(d)s - 1) n""",
    """INSERT INTO "EvaluationVersion" (id, "agentId", "agentVersionId", "evaluationId",
                                        "documentVersionId", grade, summary)
       SELECT pg_temp.bid('eevalv', n), pg_temp.bid('eagent', n / %(d)s),
              pg_temp.bid('eagentv', n / %(d)s), pg_temp.bid('eeval', n),
              pg_temp.bid('edocv', n), 70, 'Fine.'
         FROM generate_series(0, %(t)s * %(d)s - 1) n""",
    """INSERT INTO "EvaluationHighlight" (id, "startOffset", "endOffset", "quotedText")
       SELECT pg_temp.bid('ehl', m), 0, 9, 'Some text'
         FROM generate_series(0, %(t)s * %(d)s * %(c)s - 1) m""",
    """INSERT INTO "EvaluationComment" (id, description, "evaluationVersionId", "highlightId")
       SELECT pg_temp.bid('ecm', m), 'A comment.', pg_temp.bid('eevalv', m / %(c)s),
              pg_temp.bid('ehl', m)
         FROM generate_series(0, %(t)s * %(d)s * %(c)s - 1) m""",
    """INSERT INTO "Job" (id, status, attempts, "evaluationId", "evaluationVersionId",
                          "agentEvalBatchId", backend)
       SELECT pg_temp.bid('ejob', n), p.status::"JobStatus", 1, pg_temp.bid('eeval', n),
              CASE WHEN p.status = 'COMPLETED' THEN pg_temp.bid('eevalv', n) END,
              pg_temp.bid('ebatch', n / %(d)s), 'celery'
         FROM generate_series(0, %(t)s * %(d)s - 1) n,
              LATERAL (SELECT CASE WHEN n / %(d)s >= %(b)s + %(kept_unexpired)s
                                    AND n %% %(d)s = 0 THEN 'PENDING'
                                   ELSE 'COMPLETED' END AS status) p""",
]

_TABLES = [
    "AgentEvalBatch",
    "Agent",
    "AgentVersion",
    "Document",
    "DocumentVersion",
    "Evaluation",
    "EvaluationVersion",
    "EvaluationComment",
    "EvaluationHighlight",
    "Job",
]


@dataclass(frozen=True)
class Shape:
    jobs: int
    batches: int  # deletable ephemeral batches
    docs_per_batch: int
    comments: int

    @property
    def evaluations(self) -> int:
        return max(1, self.jobs // 2)

    @property
    def documents(self) -> int:
        return math.ceil(self.evaluations / AGENTS)

    @property
    def batched_jobs(self) -> int:
        return self.jobs // 10

    @property
    def ordinary_batches(self) -> int:
        return math.ceil(self.batched_jobs / 100)

    @property
    def ephemeral_batches(self) -> int:
        return self.batches + KEPT

    @property
    def per_pass(self) -> int:
        return min(self.batches, LIMIT)

    def params(self) -> dict[str, int]:
        return {
            "agents": AGENTS,
            "n": self.documents,
            "e": self.evaluations,
            "c": self.comments,
            "j": self.jobs,
            "bj": self.batched_jobs,
            "batches": self.ordinary_batches,
            "t": self.ephemeral_batches,
            "b": self.batches,
            "d": self.docs_per_batch,
            "kept_unexpired": KEPT_UNEXPIRED,
        }

    def counts(self, ephemeral: int) -> dict[str, int]:
        """Rows of each table while ``ephemeral`` ephemeral batches remain."""
        docs = ephemeral * self.docs_per_batch  # and evaluations, versions, jobs
        evaluations = self.evaluations + docs
        return {
            "AgentEvalBatch": self.ordinary_batches + ephemeral,
            "Agent": AGENTS + ephemeral,
            "AgentVersion": AGENTS + ephemeral,
            "Document": self.documents + docs,
            "DocumentVersion": self.documents + docs,
            "Evaluation": evaluations,
            "EvaluationVersion": evaluations,
            "EvaluationComment": evaluations * self.comments,
            "EvaluationHighlight": evaluations * self.comments,
            "Job": self.jobs + docs,
        }


def populate(url: str, shape: Shape) -> None:
    params = shape.params()
    with psycopg.connect(url, options="-c timezone=UTC") as conn:
        conn.execute(_ID_FUNCTION)
        for sql in [*_BACKGROUND, *_EPHEMERAL]:
            conn.execute(sql, params)  # type: ignore[arg-type]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def ephemeral_ids(url: str, shape: Shape) -> tuple[set[str], set[str]]:
    """(the deletable ephemeral batches, the ones that must stay)."""
    with psycopg.connect(url) as conn:
        conn.execute(_ID_FUNCTION)
        rows = conn.execute(
            "SELECT k, pg_temp.bid('ebatch', k) FROM generate_series(0, %s - 1) k",
            (shape.ephemeral_batches,),
        ).fetchall()
        conn.rollback()
    deletable = {bid for k, bid in rows if k < shape.batches}
    return deletable, {bid for k, bid in rows if k >= shape.batches}


def table_counts(session: Session) -> dict[str, int]:
    sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM \"{t}\"" for t in _TABLES)
    counts = {name: int(n) for name, n in session.execute(text(sql)).all()}
    return {t: counts[t] for t in _TABLES}


# -- timing the statements of a pass -------------------------------------------------------


def label(statement: str) -> str:
    s = " ".join(statement.split())
    if "FOR UPDATE OF b SKIP LOCKED" in s:
        return "claim"
    if s.startswith('SELECT b.id FROM "AgentEvalBatch" b WHERE b.id = ANY'):
        return "second look"
    if s.startswith("DELETE FROM"):
        return f"delete {s.split()[2]}"
    return "lock rows"


@dataclass
class StatementClock:
    """Wall time of each statement the engine runs while ``recording``, by label."""

    recording: bool = False
    took: dict[str, float] = field(default_factory=dict)
    statements: list[tuple[str, Any]] = field(default_factory=list)
    _started: float = 0.0

    def install(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if self.recording:
            name = label(statement)
            self.took[name] = self.took.get(name, 0.0) + time.perf_counter() - self._started
            self.statements.append((statement, parameters))

    @contextmanager
    def record(self) -> Iterator[None]:
        self.took, self.statements, self.recording = {}, [], True
        try:
            yield
        finally:
            self.recording = False


# -- the passes ----------------------------------------------------------------------------


@dataclass
class Results:
    full_ms: list[float] = field(default_factory=list)
    steps_ms: dict[str, list[float]] = field(default_factory=dict)
    full_deleted: list[int] = field(default_factory=list)
    idle_ms: list[float] = field(default_factory=list)
    idle_deleted: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    full_statements: list[tuple[str, Any]] = field(default_factory=list)


def check_pass(
    session: Session, shape: Shape, deleted: list[str], deletable: set[str], kept: set[str],
    remaining_before: int, what: str,
) -> list[str]:  # fmt: skip
    """What is wrong with a pass that deleted ``deleted`` (in ``session``'s transaction)."""
    problems = []
    if len(deleted) != min(LIMIT, remaining_before):
        problems.append(f"{what}: deleted {len(deleted)}, not {min(LIMIT, remaining_before)}")
    if wrong := set(deleted) & kept:
        problems.append(f"{what}: deleted {len(wrong)} batches that must stay")
    if stray := set(deleted) - deletable - kept:
        problems.append(f"{what}: deleted {len(stray)} ordinary batches")
    left = session.execute(
        text('SELECT count(*) FROM "AgentEvalBatch" WHERE id = ANY(:ids)'), {"ids": list(kept)}
    ).scalar_one()
    if left != len(kept):
        problems.append(f"{what}: {len(kept) - left} of the batches that must stay are gone")
    want = shape.counts(KEPT + remaining_before - len(deleted))
    have = table_counts(session)
    for table, n in want.items():
        if have[table] != n:
            problems.append(f'{what}: "{table}" has {have[table]:,} rows, expected {n:,}')
    return problems


def full_passes(
    url: str, shape: Shape, rounds: int, clock: StatementClock, deletable: set[str],
    kept: set[str], results: Results,
) -> None:  # fmt: skip
    """Warm-up + ``rounds`` passes, each rolled back."""
    make = session_factory(url)
    for i in range(rounds + 1):
        with make() as session:
            session.begin()
            with clock.record():
                start = time.perf_counter()
                deleted = delete_expired_ephemeral(session, limit=LIMIT)
                took = time.perf_counter() - start
            steps, statements = dict(clock.took), list(clock.statements)
            results.problems += check_pass(
                session, shape, deleted, deletable, kept, shape.batches, f"full pass {i}"
            )
            session.rollback()
        if i == 0:  # warm-up: plans, caches, connections
            results.full_statements = statements
            continue
        results.full_ms.append(took * 1000)
        results.full_deleted.append(len(deleted))
        for name, seconds in steps.items():
            results.steps_ms.setdefault(name, []).append(seconds * 1000)


def delete_all(url: str, shape: Shape, deletable: set[str], kept: set[str]) -> list[str]:
    """Committed passes until nothing is left to delete; the problems found."""
    problems: list[str] = []
    remaining = shape.batches
    while remaining:
        with session_factory(url)() as session, session.begin():
            deleted = delete_expired_ephemeral(session, limit=LIMIT)
            problems += check_pass(
                session, shape, deleted, deletable, kept, remaining, "committed pass"
            )
        if not deleted:
            problems.append(f"committed pass: {remaining} deletable batches left undeleted")
            break
        remaining -= len(deleted)
    return problems


def idle_passes(url: str, shape: Shape, rounds: int, results: Results) -> None:
    make = session_factory(url)
    for i in range(rounds + 1):
        with make() as session:
            session.begin()
            start = time.perf_counter()
            deleted = delete_expired_ephemeral(session, limit=LIMIT)
            took = time.perf_counter() - start
            session.rollback()
        if deleted:
            results.problems.append(f"idle pass {i}: deleted {len(deleted)} batches")
        if i:
            results.idle_ms.append(took * 1000)
            results.idle_deleted.append(len(deleted))


def explain(url: str, statements: list[tuple[str, Any]], title: str) -> None:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of ``statements``, in order, in one transaction that
    is rolled back (EXPLAIN ANALYZE runs them: each sees what the previous did)."""
    print(f"\n== {title}")
    with get_engine(url).connect() as conn:
        for statement, parameters in statements:
            print(f"\n-- {label(statement)}")
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)
            print("\n".join(row[0] for row in plan))
        conn.rollback()


# -- the report ----------------------------------------------------------------------------


def ms(values: list[float]) -> list[str]:
    return [f"{statistics.median(values):.1f}", f"{min(values):.1f}", f"{max(values):.1f}"]


def report(url: str, shape: Shape, sizes: dict[str, int], rounds: int, results: Results) -> str:
    lines = [*machine_info(url), ""]
    lines.append(
        f"data: {shape.jobs:,} background jobs ({shape.batched_jobs:,} of them in "
        f"{shape.ordinary_batches:,} ordinary batches), {shape.batches:,} expired ephemeral "
        f"batches of {shape.docs_per_batch} documents (agent, {shape.docs_per_batch} "
        f"evaluations, {shape.docs_per_batch} COMPLETED jobs, {shape.comments} comments per "
        f"evaluation), {KEPT} to keep ({KEPT_UNEXPIRED} unexpired, {KEPT_PENDING} with a "
        "PENDING job)"
    )
    lines.append("rows: " + ", ".join(f'"{t}" {n:,}' for t, n in sizes.items()))
    lines.append("")
    rows = [
        ["idle pass (nothing to delete: the claim only)", *ms(results.idle_ms),
         "/".join(map(str, sorted(set(results.idle_deleted))))],
        [f"full pass (limit {LIMIT})", *ms(results.full_ms),
         "/".join(map(str, sorted(set(results.full_deleted))))],
    ]  # fmt: skip
    rows += [[f"  {name}", *ms(values), ""] for name, values in results.steps_ms.items()]
    lines.append(f"delete_expired_ephemeral, median of {rounds} passes after a warm-up (ms)")
    lines.append(markdown(["pass", "median (ms)", "min (ms)", "max (ms)", "deleted"], rows))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL",
                   "postgresql://postgres@127.0.0.1:5432/postgres"))  # fmt: skip
    p.add_argument("--jobs", type=int, default=200_000)
    p.add_argument("--batches", type=int, default=100, help="expired ephemeral batches")
    p.add_argument("--docs-per-batch", type=int, default=5)
    p.add_argument("--comments", type=int, default=3, help="per evaluation version")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--explain", action="store_true", help="print the plans of one pass")
    args = p.parse_args()
    if args.jobs < 1 or args.batches < 1 or args.docs_per_batch < 1 or args.rounds < 1:
        p.error("--jobs, --batches, --docs-per-batch and --rounds must be at least 1")
    signal.signal(signal.SIGTERM, raise_interrupt)
    shape = Shape(args.jobs, args.batches, args.docs_per_batch, args.comments)
    results = Results()
    clock = StatementClock()
    with throwaway_database(args.database_url) as url:
        log(f"{shape.jobs:,} jobs, {shape.ephemeral_batches} ephemeral batches ...")
        start = time.perf_counter()
        populate(url, shape)
        log(f"built in {time.perf_counter() - start:.1f}s")
        deletable, kept = ephemeral_ids(url, shape)
        clock.install(get_engine(url))
        with session_factory(url)() as session:
            sizes = table_counts(session)
        if sizes != shape.counts(shape.ephemeral_batches):
            want = shape.counts(shape.ephemeral_batches)
            results.problems.append(f"built {sizes}, expected {want}")
        log(f"{args.rounds} full passes ...")
        full_passes(url, shape, args.rounds, clock, deletable, kept, results)
        if args.explain:
            explain(url, results.full_statements, "a full pass")
        results.problems += delete_all(url, shape, deletable, kept)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        log(f"{args.rounds} idle passes ...")
        idle_passes(url, shape, args.rounds, results)
        if args.explain:
            with clock.record(), session_factory(url)() as session:
                delete_expired_ephemeral(session, limit=LIMIT)
                session.rollback()
            explain(url, clock.statements, "an idle pass")
        print(report(url, shape, sizes, args.rounds, results))
    for problem in results.problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    if results.problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
