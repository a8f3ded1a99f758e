"""The Alembic migrations: from an empty database and from RoastMyPost's Prisma database.

The Prisma database is ``fixtures/legacy_prisma_schema.sql`` (the last legacy commit), plus
two variants made from it: one older than the CANCELLED status, one from the pg-boss era
(``Job.pgBossJobId``). The central check: after the upgrade every pre-existing table, column
definition, index, constraint and row is still there, byte for byte. And one that 0001
refuses: duplicate evaluations, which RoastMyPost's later unique constraint forbids.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy.orm import Session

from roast_jobs.db import migrate
from roast_jobs.db.models import (
    AgentEvalBatch,
    Backend,
    Base,
    Document,
    DocumentVersion,
    Evaluation,
    EvaluationComment,
    EvaluationVersion,
    FeatureFlag,
    FeatureFlagChange,
    Job,
    JobMigrationStatus,
    JobStatus,
    Task,
)
from roast_jobs.jobs.results import sqlalchemy_url
from tests.domain_support import fresh_database

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_prisma_schema.sql"
ROAST_JOBS = Path(sys.executable).with_name("roast-jobs")
NEW_TABLES = {"JobMigrationStatus", "FeatureFlag", "FeatureFlagChange", "ApiKey", "WorkerHeartbeat"}
ROASTMYPOST_TABLES = set(Base.metadata.tables) - NEW_TABLES

# Indexes of Prisma's the models leave out: those on its search columns (not in the models),
# and the non-unique (documentId, agentId) one that RoastMyPost's 20251201141333 replaced by
# the unique constraint (0001 adds that constraint and drops nothing).
PRISMA_ONLY_INDEXES = {
    ("DocumentVersion", "idx_document_versions_searchable_text"),
    ("DocumentVersion", "idx_document_versions_content_fts"),
    ("Evaluation", "Evaluation_documentId_agentId_idx"),
}
# What 0001 adds to Prisma's tables in the way of indexes: nothing Prisma already has.
INDEXES_ADDED_TO_PRISMA = {
    ("Job", "Job_backend_pending_idx"),
    ("Job", "Job_brokerJobId_key"),
    ("Evaluation", "Evaluation_documentId_agentId_key"),
}

# Server defaults of the models that Prisma's columns lack, which 0001 sets (a catalog
# change: no row is rewritten), as information_schema shows them.
DEFAULTS_ADDED_TO_PRISMA = {
    **{
        (table, "updatedAt"): "CURRENT_TIMESTAMP"
        for table in ("Document", "DocumentVersion", "Agent", "AgentVersion", "Job", "Task")
    },
    ("Document", "publishedDate"): "CURRENT_TIMESTAMP",
    ("DocumentVersion", "version"): "1",
    ("AgentVersion", "description"): "''::text",
    **{
        ("DocumentVersion", column): "'{}'::text[]"
        for column in ("authors", "urls", "platforms", "intendedAgents")
    },
}

# A database from before 20250901125856_add_job_cancellation: no CANCELLED (Prisma would
# swap the type the same way to drop a value).
PRE_CANCELLED = """
DELETE FROM "Job" WHERE status = 'CANCELLED';
ALTER TYPE "JobStatus" RENAME TO "JobStatus_old";
CREATE TYPE "JobStatus" AS ENUM ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED');
ALTER TABLE "Job" ALTER COLUMN "status" DROP DEFAULT,
    ALTER COLUMN "status" TYPE "JobStatus" USING ("status"::text::"JobStatus"),
    ALTER COLUMN "status" SET DEFAULT 'PENDING';
DROP TYPE "JobStatus_old";
"""

# 20251130135339_pg_boss_job_tracking_field_in_jobs_table, with a few tracked jobs.
PG_BOSS = """
ALTER TABLE "Job" ADD COLUMN "pgBossJobId" TEXT;
CREATE UNIQUE INDEX "Job_pgBossJobId_key" ON "Job"("pgBossJobId");
UPDATE "Job" SET "pgBossJobId" = md5("id")::uuid::text WHERE status IN ('PENDING', 'RUNNING');
"""

VARIANTS = {"legacy": "", "pre_cancelled": PRE_CANCELLED, "pg_boss": PG_BOSS}

# Two (document, agent) pairs evaluated more than once, as the legacy schema allowed.
DUPLICATE_EVALUATIONS = """
INSERT INTO "Evaluation" ("id", "createdAt", "documentId", "agentId") VALUES
('dup-1', '2025-11-20 09:00:00.000', 'Hx1yZ2aB3cD4eF5gH6iJ7', 'Eph3meral0Agent0Id0x1'),
('dup-2', '2025-11-21 09:00:00.000', 'Dk3mZp9QrT2vW7xY1aB4c', 'system-fallacy-check'),
('dup-3', '2025-11-21 09:00:01.000', 'Dk3mZp9QrT2vW7xY1aB4c', 'system-fallacy-check');
"""


def load_legacy(url: str, variant: str = "legacy") -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FIXTURE.read_text())
        if VARIANTS[variant]:
            conn.execute(VARIANTS[variant])


def query(url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def tables(url: str) -> set[str]:
    rows = query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {name for (name,) in rows}


def catalog(url: str) -> dict[str, Any]:
    """Everything about the public schema's structure that a migration could change."""
    return {
        "columns": {
            (r[0], r[1]): r[2:]
            for r in query(
                url,
                """SELECT table_name, column_name, data_type, udt_name,
                          character_maximum_length, numeric_precision, numeric_scale,
                          datetime_precision, is_nullable, column_default, is_generated,
                          generation_expression
                   FROM information_schema.columns WHERE table_schema = 'public'""",
            )
        },
        "indexes": {
            (r[0], r[1]): r[2]
            for r in query(
                url,
                "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
            )
        },
        "constraints": {
            (r[0], r[1]): r[2]
            for r in query(
                url,
                """SELECT cl.relname, con.conname, pg_get_constraintdef(con.oid)
                   FROM pg_constraint con JOIN pg_class cl ON cl.oid = con.conrelid
                   WHERE con.connamespace = 'public'::regnamespace""",
            )
        },
        "enums": dict(
            query(
                url,
                """SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
                   FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
                   WHERE t.typnamespace = 'public'::regnamespace GROUP BY t.typname""",
            )
        ),
    }


def row_checksums(url: str, columns: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    """Per table: row count and an md5 over the full text of every row, in the given
    columns only (the pre-upgrade ones), independent of physical row order."""
    result = {}
    for table, names in columns.items():
        cols = ", ".join(f't."{name}"' for name in names)
        [(count, digest)] = query(
            url,
            f"""SELECT count(*), md5(coalesce(string_agg(r, E'\\n' ORDER BY r), ''))
                FROM (SELECT ROW({cols})::text AS r FROM "{table}" t) s""",
        )
        result[table] = (count, digest)
    return result


def columns_by_table(cat: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for table, column in sorted(cat["columns"]):
        out.setdefault(table, []).append(column)
    return out


def schema_diffs(url: str) -> list[Any]:
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn, warnings.catch_warnings():
            # Agent and AgentEvalBatch refer to each other (as in Prisma): SQLAlchemy warns
            # it cannot sort them, and still compares their foreign keys.
            warnings.filterwarnings("ignore", "Cannot correctly sort tables", sa.exc.SAWarning)
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


# -- an empty database -----------------------------------------------------------------------


def test_empty_database_gets_every_table_at_head() -> None:
    with fresh_database(upgrade=False) as url:
        assert migrate.current(url) is None
        assert tables(url) == set()

        migrate.upgrade(url)

        assert tables(url) == set(Base.metadata.tables) | {"alembic_version"}
        assert migrate.current(url) == migrate.head() == "0005"
        assert catalog(url)["enums"] == {
            "JobStatus": ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"],
            "UserRole": ["USER", "ADMIN"],
            "Plan": ["REGULAR", "PRO"],
        }


def test_migration_matches_the_models() -> None:
    """Alembic's autogenerate sees nothing to do between the models and an upgraded empty
    database: types, nullability, server defaults, keys, indexes, unique constraints.
    Nothing is ignored. What autogenerate does not compare is checked after it."""
    with fresh_database() as url:
        assert schema_diffs(url) == []

        cat = catalog(url)
        for table in Base.metadata.tables.values():
            for constraint in table.constraints:
                if isinstance(constraint, sa.CheckConstraint):  # not compared by alembic
                    assert (table.name, constraint.name) in cat["constraints"]
            for index in table.indexes:
                where = index.dialect_options["postgresql"]["where"]
                if where is not None:  # alembic ignores an index's predicate
                    indexdef = cat["indexes"][(table.name, index.name)]
                    assert f"WHERE ({where})" in indexdef.replace('::"JobStatus"', "")
            for column in table.columns:
                if isinstance(column.type, sa.Enum):  # nor the labels of an enum
                    assert cat["enums"][column.type.name] == list(column.type.enums)
        assert cat["constraints"][("Job", "Job_backend_check")] == (
            "CHECK (((backend)::text = ANY ((ARRAY['legacy'::character varying, "
            "'celery'::character varying])::text[])))"
        )


def test_upgrade_twice_is_a_no_op() -> None:
    with fresh_database(upgrade=False) as url:
        load_legacy(url)
        migrate.upgrade(url)
        before = catalog(url), row_checksums(url, columns_by_table(catalog(url)))

        migrate.upgrade(url)  # at head: Alembic runs nothing
        assert (catalog(url), row_checksums(url, columns_by_table(catalog(url)))) == before

        # Revision 0001 itself is idempotent too: re-run on a database that has it all.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM alembic_version")
        migrate.upgrade(url)
        assert (catalog(url), row_checksums(url, columns_by_table(catalog(url)))) == before
        assert migrate.current(url) == migrate.head()


# -- RoastMyPost's Prisma database -------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prisma_database_upgrade_loses_nothing(variant: str) -> None:
    with fresh_database(upgrade=False) as url:
        load_legacy(url, variant)
        old = catalog(url)
        old_columns = columns_by_table(old)
        old_rows = row_checksums(url, old_columns)
        assert old_rows["Job"][0] >= 8 and all(count for count, _ in old_rows.values())
        assert migrate.current(url) is None

        migrate.upgrade(url)

        new = catalog(url)
        assert migrate.current(url) == migrate.head()
        # Structure: every old column, index and constraint as it was (pgBossJobId too),
        # but for the server defaults the models insert with, set where Prisma has none.
        for kind in ("columns", "indexes", "constraints"):
            expected = old[kind]
            if kind == "columns":
                expected = {k: with_model_default(k, v) for k, v in expected.items()}
            assert {k: new[kind].get(k) for k in old[kind]} == expected, kind
        # Rows: the same rows, with the same content in every old column.
        assert row_checksums(url, old_columns) == old_rows
        # Enums: only CANCELLED may be new, at the end.
        for name, labels in old["enums"].items():
            expected = labels + ["CANCELLED"] * (name == "JobStatus" and "CANCELLED" not in labels)
            assert new["enums"][name] == expected

        # What roast-jobs added.
        assert tables(url) - tables_before(old) == NEW_TABLES | {"alembic_version"}
        assert query(url, 'SELECT DISTINCT backend, "brokerJobId" FROM "Job"') == [("legacy", None)]
        assert (
            query(url, 'SELECT count(*) FROM "AgentEvalBatch" WHERE "completedAt" IS NULL')[0][0]
            == old_rows["AgentEvalBatch"][0]
        )
        added = set(new["indexes"]) - set(old["indexes"])
        on_prisma_tables = {index for index in added if index[0] in tables_before(old)}
        assert on_prisma_tables == INDEXES_ADDED_TO_PRISMA
        assert ("Job", "Job_backend_check") in new["constraints"]
        # RoastMyPost's own later unique constraint (20251201141333), as it made it.
        assert new["constraints"][("Evaluation", "Evaluation_documentId_agentId_key")] == (
            'UNIQUE ("documentId", "agentId")'
        )
        # Nothing of Prisma's that the models want differently was touched: the scalar lists
        # stay nullable (checked with the columns above), User keeps its "plan" of type "Plan".
        assert set(new["enums"]) == set(old["enums"])


def with_model_default(column: tuple[str, str], info: tuple[Any, ...]) -> tuple[Any, ...]:
    default_at = 7  # column_default in catalog()'s column tuple
    if info[default_at] is None and column in DEFAULTS_ADDED_TO_PRISMA:
        return (*info[:default_at], DEFAULTS_ADDED_TO_PRISMA[column], *info[default_at + 1 :])
    return info


def tables_before(cat: dict[str, Any]) -> set[str]:
    return {table for table, _ in cat["columns"]}


def test_models_read_and_write_an_upgraded_prisma_database() -> None:
    with fresh_database(upgrade=False) as url:
        load_legacy(url, "pre_cancelled")
        migrate.upgrade(url)
        engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.NullPool)
        try:
            with Session(engine) as session:
                # Old rows through the models.
                jobs = {job.id: job for job in session.scalars(sa.select(Job))}
                assert len(jobs) == 8
                assert {job.backend for job in jobs.values()} == {Backend.LEGACY}
                priced = jobs["d28e92a3-b4c5-46d7-8283-5e6f708192a3"]
                assert priced.status is JobStatus.COMPLETED
                assert priced.price_in_dollars == Decimal("0.123456")
                retries = [j for j in jobs.values() if j.original_job_id]
                assert {j.original_job_id for j in retries} == {
                    "e39fa3b4-c5d6-47e8-8394-6f708192a3b4"
                }
                assert "Lm4nO5pQ6rS7tU8vW9xY0" in jobs  # a 21-character nanoid
                for model in (
                    Document,
                    DocumentVersion,
                    Evaluation,
                    EvaluationVersion,
                    EvaluationComment,
                    AgentEvalBatch,
                    Task,
                ):
                    assert session.scalars(sa.select(model)).all(), model.__name__
                versions = session.scalars(
                    sa.select(DocumentVersion).order_by(DocumentVersion.id)
                ).all()
                assert versions[1].authors == ["Ozzie Gooen", "A. N. Other"]

                # A Celery job next to them; CANCELLED (just added to the enum) usable.
                evaluation_id = priced.evaluation_id
                session.add(
                    Job(
                        evaluation_id=evaluation_id,
                        backend=Backend.CELERY,
                        broker_job_id="celery-task-1",
                        status=JobStatus.CANCELLED,
                    )
                )
                jobs["05b1c5d6-e7f8-490a-a5b6-8192a3b4c5d7"].status = JobStatus.CANCELLED
                session.add(FeatureFlag(name="use_celery", value=True, updated_by="test"))
                session.add(
                    FeatureFlagChange(flag_name="use_celery", new_value=True, changed_by="test")
                )
                session.add(
                    JobMigrationStatus(
                        job_id="Nq1rS2tU3vW4xY5zA6bC7",
                        from_backend="legacy",
                        to_backend="celery",
                        status="moved",
                    )
                )
                session.commit()

            with Session(engine) as session:
                celery = session.scalars(sa.select(Job).where(Job.backend == "celery")).one()
                assert celery.broker_job_id == "celery-task-1"
                assert celery.status is JobStatus.CANCELLED
                assert celery.updated_at is not None  # the server default we add
                counts = dict(
                    session.execute(
                        sa.select(Job.status, sa.func.count()).group_by(Job.status)
                    ).all()
                )
                assert counts[JobStatus.CANCELLED] == 2

                # The check constraint and the unique broker id hold.
                for bad in (
                    {"backend": "bogus"},
                    {"backend": "celery", "broker_job_id": "celery-task-1"},
                ):
                    with pytest.raises(sa.exc.IntegrityError):
                        session.add(Job(evaluation_id=evaluation_id, **bad))
                        session.flush()
                    session.rollback()
        finally:
            engine.dispose()


def test_model_columns_missing_from_an_upgraded_prisma_database() -> None:
    """Every model column exists after the upgrade."""
    with fresh_database(upgrade=False) as url:
        load_legacy(url)
        migrate.upgrade(url)
        existing = set(catalog(url)["columns"])
        wanted = {(t.name, c.name) for t in Base.metadata.tables.values() for c in t.columns}
        assert wanted - existing == set()


def test_models_have_prismas_foreign_keys_and_indexes() -> None:
    """On RoastMyPost's tables, a new database (the models, by the test above) and an
    upgraded Prisma one have the same foreign keys (actions included) and the same indexes,
    but for the few of Prisma's the models leave out."""
    with fresh_database() as new_url, fresh_database(upgrade=False) as prisma_url:
        load_legacy(prisma_url)
        migrate.upgrade(prisma_url)
        new, prisma = catalog(new_url), catalog(prisma_url)

        def foreign_keys(cat: dict[str, Any]) -> dict[tuple[str, str], str]:
            return {
                key: definition
                for key, definition in cat["constraints"].items()
                if key[0] in ROASTMYPOST_TABLES and definition.startswith("FOREIGN KEY")
            }

        def indexes(cat: dict[str, Any]) -> dict[tuple[str, str], str]:
            return {key: d for key, d in cat["indexes"].items() if key[0] in ROASTMYPOST_TABLES}

        assert foreign_keys(new) == foreign_keys(prisma)
        assert set(indexes(prisma)) - set(indexes(new)) == PRISMA_ONLY_INDEXES
        assert {key: indexes(prisma).get(key) for key in indexes(new)} == indexes(new)


def test_duplicate_evaluations_stop_the_upgrade_and_change_nothing() -> None:
    """A Prisma database older than RoastMyPost's unique (documentId, agentId) may have
    duplicates: 0001 names them and stops, and its transaction undoes what it did before
    (here: the CANCELLED status, Job's new columns, the defaults)."""
    with fresh_database(upgrade=False) as url:
        load_legacy(url, "pre_cancelled")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(DUPLICATE_EVALUATIONS)
        before = catalog(url)
        rows = row_checksums(url, columns_by_table(before))

        with pytest.raises(CommandError) as failed:
            migrate.upgrade(url)

        message = str(failed.value)
        assert "Evaluation_documentId_agentId_key" in message and "2 pair(s)" in message
        assert (
            "(documentId='Dk3mZp9QrT2vW7xY1aB4c', agentId='system-fallacy-check'): 3 rows, "
            "(documentId='Hx1yZ2aB3cD4eF5gH6iJ7', agentId='Eph3meral0Agent0Id0x1'): 2 rows."
        ) in message
        assert "Merge each pair's evaluations into one row first" in message
        assert (catalog(url), row_checksums(url, columns_by_table(before))) == (before, rows)
        assert migrate.current(url) is None

        # The operator's view: one line, through the CLI.
        done = roast_jobs(url, "upgrade")
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr.startswith("Error: migration failed: cannot add the unique")
        assert len(done.stderr.strip().splitlines()) == 1
        assert catalog(url) == before

        # Once merged, the upgrade goes through.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("""DELETE FROM "Evaluation" WHERE id LIKE 'dup-%'""")
        migrate.upgrade(url)
        assert migrate.current(url) == migrate.head()
        assert ("Evaluation", "Evaluation_documentId_agentId_key") in catalog(url)["constraints"]


# -- concurrency -----------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["empty", "legacy"])
def test_concurrent_upgrades_both_succeed(start: str) -> None:
    with fresh_database(upgrade=False) as url:
        if start == "legacy":
            load_legacy(url)
        old = catalog(url)
        old_rows = row_checksums(url, columns_by_table(old))
        spawn = multiprocessing.get_context("spawn")  # no inherited sockets or engines
        procs = [spawn.Process(target=migrate.upgrade, args=(url,)) for _ in range(2)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
        assert [proc.exitcode for proc in procs] == [0, 0]

        assert migrate.current(url) == migrate.head()
        assert query(url, "SELECT count(*) FROM alembic_version") == [(1,)]
        if start == "empty":
            assert schema_diffs(url) == []
        else:
            assert row_checksums(url, columns_by_table(old)) == old_rows
            assert tables(url) >= NEW_TABLES


def test_upgrade_waits_for_the_migration_lock() -> None:
    with fresh_database(upgrade=False) as url, psycopg.connect(url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (migrate.LOCK_KEY,))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                migrate.upgrade(url)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive() and migrate.current(url) is None  # waiting, nothing done
        holder.execute("SELECT pg_advisory_unlock(%s)", (migrate.LOCK_KEY,))
        thread.join(60)
        assert not thread.is_alive() and not errors
        assert migrate.current(url) == migrate.head()


# -- the CLI ---------------------------------------------------------------------------------


def roast_jobs(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url}  # keeps conftest's broker and result schemas
    return subprocess.run(
        [str(ROAST_JOBS), "db", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_db_upgrade_and_current() -> None:
    with fresh_database(upgrade=False) as url:
        done = roast_jobs(url, "current")
        assert (done.returncode, done.stdout) == (0, "none\n"), done.stderr

        done = roast_jobs(url, "upgrade")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == "database at revision 0005 (was: none)"
        assert "broker schema" in lines[1] and lines[1].endswith("are ready")
        schemas = [os.environ["ROAST_JOBS_BROKER_SCHEMA"], os.environ["ROAST_JOBS_RESULT_SCHEMA"]]
        found = query(
            url, "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%(s)s)", {"s": schemas}
        )
        assert {name for (name,) in found} == set(schemas)

        done = roast_jobs(url, "current")
        assert (done.returncode, done.stdout) == (0, "0005\n"), done.stderr
        done = roast_jobs(url, "upgrade")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] == "database at revision 0005 (was: 0005)"


def test_cli_db_upgrade_reports_an_unreachable_database_in_one_line() -> None:
    done = roast_jobs("postgresql://nobody@127.0.0.1:1/nowhere", "upgrade")
    assert done.returncode == 1
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("Error: cannot connect to PostgreSQL")
