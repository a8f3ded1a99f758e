"""RoastMyPost's tables, and what roast-jobs adds to them.

Revision 0001 starts from either of two databases:

* an empty one: part 1 creates RoastMyPost's tables as the models had them when roast-jobs
  took over (frozen DDL, not ``metadata.create_all``: the models move on, this must not):
  RoastMyPost's schema.prisma of 2025-12-03 for the columns roast-jobs uses, with Prisma's
  foreign key actions, index and constraint names;
* one made by RoastMyPost's Prisma migrations (its tables there, no alembic_version): part 1
  skips every table that exists, so Prisma's columns, indexes, constraints and rows stay as
  they are (including a pg-boss era ``Job.pgBossJobId``).

Part 2 then runs on both: each addition is made only where it is missing (IF NOT EXISTS, or
a catalog check where PostgreSQL has no such clause). Nothing is dropped or rewritten; the
one table rewrite PostgreSQL could do, a new NOT NULL column, is avoided by a constant
default (``Job.backend``: existing rows read 'legacy' without being touched). Prisma's
columns also get the server defaults the models insert with (``updatedAt``: Prisma's client
sets it, the models leave it to the database), where they have none. A Prisma database
older than 20251201141333 gets RoastMyPost's unique (documentId, agentId) on Evaluation; if
its rows break it, the upgrade stops and, being one transaction, changes nothing.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError
from sqlalchemy.dialects import postgresql as pg

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")

# The column refers to the type; part 1 creates it explicitly (create_type=False).
JobStatus = pg.ENUM(*JOB_STATUSES, name="JobStatus", create_type=False)
Timestamp = pg.TIMESTAMP(precision=3)  # Prisma's DateTime: timestamp(3), UTC, no zone
TextArray = pg.ARRAY(sa.Text())
NOW = sa.text("CURRENT_TIMESTAMP")


def _id() -> sa.Column:
    return sa.Column("id", sa.Text(), nullable=False)


def _created() -> sa.Column:
    return sa.Column("createdAt", Timestamp, server_default=NOW, nullable=False)


def _updated() -> sa.Column:
    return sa.Column("updatedAt", Timestamp, server_default=NOW, nullable=False)


def _flag(name: str, default: bool) -> sa.Column:
    return sa.Column(
        name, sa.Boolean(), server_default=sa.text(str(default).lower()), nullable=False
    )


def _text_array(name: str) -> sa.Column:
    return sa.Column(name, TextArray, server_default="{}", nullable=False)


def _fk(table: str, column: str, target: str, ondelete: str) -> Callable[[], None]:
    """A foreign key named as Prisma (and PostgreSQL) name it, with Prisma's actions (ON
    UPDATE CASCADE, ON DELETE as the relation says), added after all tables exist: Agent and
    AgentEvalBatch refer to each other."""

    def add() -> None:
        op.create_foreign_key(
            f"{table}_{column}_fkey",
            table,
            target,
            [column],
            ["id"],
            ondelete=ondelete,
            onupdate="CASCADE",
        )

    return add


def _indexes(table: str, *columns: str | tuple[str, ...]) -> None:
    """Prisma's @@index: named "<table>_<columns joined by _>_idx"."""
    for spec in columns:
        cols = [spec] if isinstance(spec, str) else list(spec)
        op.create_index(f"{table}_{'_'.join(cols)}_idx", table, cols)


# -- part 1: RoastMyPost's tables ----------------------------------------------------------


def create_user() -> list[Callable[[], None]]:
    op.create_table(
        "User",
        _id(),
        sa.Column("name", sa.Text()),
        sa.Column("email", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="User_pkey"),
        sa.UniqueConstraint("email", name="User_email_key"),
    )
    return []


def create_document() -> list[Callable[[], None]]:
    op.create_table(
        "Document",
        _id(),
        sa.Column("publishedDate", Timestamp, server_default=NOW, nullable=False),
        _created(),
        _updated(),
        sa.Column("submittedById", sa.Text(), nullable=False),
        sa.Column("ephemeralBatchId", sa.Text()),
        _flag("isPrivate", True),
        sa.PrimaryKeyConstraint("id", name="Document_pkey"),
    )
    _indexes("Document", "ephemeralBatchId", "isPrivate", ("isPrivate", "submittedById"))
    return [
        _fk("Document", "submittedById", "User", "CASCADE"),
        _fk("Document", "ephemeralBatchId", "AgentEvalBatch", "CASCADE"),
    ]


def create_document_version() -> list[Callable[[], None]]:
    op.create_table(
        "DocumentVersion",
        _id(),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        _text_array("authors"),
        _text_array("urls"),
        _text_array("platforms"),
        _text_array("intendedAgents"),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("documentId", sa.Text(), nullable=False),
        _created(),
        _updated(),
        sa.Column("importUrl", sa.Text()),
        sa.Column("markdownPrepend", sa.Text()),
        sa.Column("submitterNotes", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="DocumentVersion_pkey"),
        sa.UniqueConstraint("documentId", "version", name="DocumentVersion_documentId_version_key"),
    )
    _indexes("DocumentVersion", "documentId")
    return [_fk("DocumentVersion", "documentId", "Document", "CASCADE")]


def create_agent() -> list[Callable[[], None]]:
    op.create_table(
        "Agent",
        _id(),
        _created(),
        _updated(),
        sa.Column("submittedById", sa.Text(), nullable=False),
        sa.Column("ephemeralBatchId", sa.Text()),
        _flag("isSystemManaged", False),
        _flag("isDeprecated", False),
        _flag("isRecommended", False),
        _flag("isLlmCostTracked", True),
        sa.PrimaryKeyConstraint("id", name="Agent_pkey"),
        sa.UniqueConstraint("ephemeralBatchId", name="Agent_ephemeralBatchId_key"),
    )
    return [
        _fk("Agent", "submittedById", "User", "CASCADE"),
        _fk("Agent", "ephemeralBatchId", "AgentEvalBatch", "CASCADE"),
    ]


def create_agent_version() -> list[Callable[[], None]]:
    op.create_table(
        "AgentVersion",
        _id(),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("agentId", sa.Text(), nullable=False),
        _created(),
        _updated(),
        sa.Column("extendedCapabilityId", sa.Text()),
        sa.Column("readme", sa.Text()),
        sa.Column("selfCritiqueInstructions", sa.Text()),
        sa.Column("primaryInstructions", sa.Text()),
        _flag("providesGrades", False),
        _text_array("pluginIds"),
        sa.PrimaryKeyConstraint("id", name="AgentVersion_pkey"),
        sa.UniqueConstraint("agentId", "version", name="AgentVersion_agentId_version_key"),
    )
    return [_fk("AgentVersion", "agentId", "Agent", "CASCADE")]


def create_agent_eval_batch() -> list[Callable[[], None]]:
    # completedAt is not here: part 2 adds it, to this table and to Prisma's.
    op.create_table(
        "AgentEvalBatch",
        _id(),
        sa.Column("name", sa.Text()),
        sa.Column("agentId", sa.Text(), nullable=False),
        _created(),
        sa.Column("targetCount", sa.Integer()),
        _text_array("requestedDocumentIds"),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("trackingId", sa.Text()),
        sa.Column("description", sa.Text()),
        sa.Column("expiresAt", Timestamp),
        _flag("isEphemeral", False),
        sa.PrimaryKeyConstraint("id", name="AgentEvalBatch_pkey"),
        sa.UniqueConstraint("userId", "trackingId", name="AgentEvalBatch_userId_trackingId_key"),
    )
    _indexes("AgentEvalBatch", "userId", "expiresAt")
    return [
        _fk("AgentEvalBatch", "agentId", "Agent", "CASCADE"),
        _fk("AgentEvalBatch", "userId", "User", "RESTRICT"),
    ]


def create_evaluation() -> list[Callable[[], None]]:
    op.create_table(
        "Evaluation",
        _id(),
        _created(),
        sa.Column("documentId", sa.Text(), nullable=False),
        sa.Column("agentId", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="Evaluation_pkey"),
        sa.UniqueConstraint("documentId", "agentId", name="Evaluation_documentId_agentId_key"),
    )
    _indexes("Evaluation", "documentId", "agentId")
    return [
        _fk("Evaluation", "documentId", "Document", "CASCADE"),
        _fk("Evaluation", "agentId", "Agent", "CASCADE"),
    ]


def create_evaluation_version() -> list[Callable[[], None]]:
    op.create_table(
        "EvaluationVersion",
        _id(),
        sa.Column("agentId", sa.Text(), nullable=False),
        _created(),
        sa.Column("summary", sa.Text()),
        sa.Column("grade", sa.Integer()),
        sa.Column("agentVersionId", sa.Text(), nullable=False),
        sa.Column("evaluationId", sa.Text(), nullable=False),
        sa.Column("documentVersionId", sa.Text(), nullable=False),
        sa.Column("analysis", sa.Text()),
        sa.Column("selfCritique", sa.Text()),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        _flag("isStale", False),
        sa.PrimaryKeyConstraint("id", name="EvaluationVersion_pkey"),
        sa.UniqueConstraint(
            "evaluationId", "version", name="EvaluationVersion_evaluationId_version_key"
        ),
    )
    _indexes("EvaluationVersion", "evaluationId", "agentVersionId", "documentVersionId", "isStale")
    # agentId has no foreign key: Prisma declares no relation on it.
    return [
        _fk("EvaluationVersion", "agentVersionId", "AgentVersion", "RESTRICT"),
        _fk("EvaluationVersion", "evaluationId", "Evaluation", "CASCADE"),
        _fk("EvaluationVersion", "documentVersionId", "DocumentVersion", "CASCADE"),
    ]


def create_evaluation_highlight() -> list[Callable[[], None]]:
    op.create_table(
        "EvaluationHighlight",
        _id(),
        sa.Column("startOffset", sa.Integer(), nullable=False),
        sa.Column("endOffset", sa.Integer(), nullable=False),
        sa.Column("quotedText", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text()),
        _flag("isValid", True),
        sa.Column("error", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="EvaluationHighlight_pkey"),
    )
    return []


def create_evaluation_comment() -> list[Callable[[], None]]:
    op.create_table(
        "EvaluationComment",
        _id(),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("importance", sa.Integer()),
        sa.Column("grade", sa.Integer()),
        sa.Column("header", sa.Text()),
        sa.Column("level", sa.Text()),
        sa.Column("evaluationVersionId", sa.Text(), nullable=False),
        sa.Column("highlightId", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="EvaluationComment_pkey"),
        sa.UniqueConstraint("highlightId", name="EvaluationComment_highlightId_key"),
    )
    _indexes("EvaluationComment", "evaluationVersionId")
    return [
        _fk("EvaluationComment", "evaluationVersionId", "EvaluationVersion", "CASCADE"),
        _fk("EvaluationComment", "highlightId", "EvaluationHighlight", "CASCADE"),
    ]


def create_job() -> list[Callable[[], None]]:
    # backend and brokerJobId are not here: part 2 adds them, to this table and to Prisma's.
    op.create_table(
        "Job",
        _id(),
        sa.Column("status", JobStatus, server_default="PENDING", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("llmThinking", sa.Text()),
        sa.Column("logs", sa.Text()),
        sa.Column("startedAt", Timestamp),
        sa.Column("completedAt", Timestamp),
        sa.Column("cancelledAt", Timestamp),
        _created(),
        _updated(),
        sa.Column("durationInSeconds", sa.Integer()),
        sa.Column("evaluationId", sa.Text(), nullable=False),
        sa.Column("evaluationVersionId", sa.Text()),
        sa.Column("agentEvalBatchId", sa.Text()),
        sa.Column("originalJobId", sa.Text()),
        sa.Column("priceInDollars", sa.Numeric(10, 6)),
        sa.Column("cancelledById", sa.Text()),
        sa.Column("cancellationReason", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="Job_pkey"),
        sa.UniqueConstraint("evaluationVersionId", name="Job_evaluationVersionId_key"),
    )
    _indexes("Job", "evaluationId", "agentEvalBatchId", "originalJobId", "cancelledById")
    return [
        _fk("Job", "evaluationId", "Evaluation", "CASCADE"),
        _fk("Job", "evaluationVersionId", "EvaluationVersion", "SET NULL"),
        _fk("Job", "agentEvalBatchId", "AgentEvalBatch", "SET NULL"),
        _fk("Job", "originalJobId", "Job", "SET NULL"),
        _fk("Job", "cancelledById", "User", "SET NULL"),
    ]


def create_task() -> list[Callable[[], None]]:
    op.create_table(
        "Task",
        _id(),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("modelName", sa.Text(), nullable=False),
        sa.Column("timeInSeconds", sa.Integer()),
        sa.Column("log", sa.Text()),
        _created(),
        _updated(),
        sa.Column("jobId", sa.Text(), nullable=False),
        sa.Column("llmInteractions", pg.JSONB()),
        sa.Column("priceInDollars", sa.Numeric(10, 6), nullable=False),
        sa.PrimaryKeyConstraint("id", name="Task_pkey"),
    )
    _indexes("Task", "jobId")
    return [_fk("Task", "jobId", "Job", "CASCADE")]


def create_system_pause() -> list[Callable[[], None]]:
    op.create_table(
        "SystemPause",
        _id(),
        sa.Column("startedAt", Timestamp, server_default=NOW, nullable=False),
        sa.Column("endedAt", Timestamp),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="SystemPause_pkey"),
    )
    _indexes("SystemPause", "endedAt")
    return []


ROASTMYPOST_TABLES: dict[str, Callable[[], list[Callable[[], None]]]] = {
    "User": create_user,
    "Document": create_document,
    "DocumentVersion": create_document_version,
    "Agent": create_agent,
    "AgentVersion": create_agent_version,
    "AgentEvalBatch": create_agent_eval_batch,
    "Evaluation": create_evaluation,
    "EvaluationVersion": create_evaluation_version,
    "EvaluationHighlight": create_evaluation_highlight,
    "EvaluationComment": create_evaluation_comment,
    "Job": create_job,
    "Task": create_task,
    "SystemPause": create_system_pause,
}


def create_missing_roastmypost_tables(existing: set[str]) -> None:
    missing = [name for name in ROASTMYPOST_TABLES if name not in existing]
    if "Job" in missing:
        JobStatus.create(op.get_bind(), checkfirst=True)
    foreign_keys = [fk for name in missing for fk in ROASTMYPOST_TABLES[name]()]
    # Only the new tables' keys: an existing (Prisma) table keeps its own.
    for add in foreign_keys:
        add()


# -- part 2: what roast-jobs adds (both starting points) -----------------------------------

EVALUATION_UNIQUE = "Evaluation_documentId_agentId_key"
DUPLICATES_SHOWN = 5


def add_evaluation_unique() -> None:
    """RoastMyPost's 20251201141333_add_evaluation_unique_constraint, for a Prisma database
    older than it: roast-jobs upserts evaluations ON CONFLICT ("documentId", "agentId").

    Rows that break it are not ours to merge: the upgrade stops with the pairs to merge,
    and the transaction it runs in (``migrate.upgrade``) undoes everything 0001 did so far.
    Prisma's non-unique "Evaluation_documentId_agentId_idx", which RoastMyPost's migration
    drops, stays: nothing of Prisma's is dropped here."""
    if has_relation(EVALUATION_UNIQUE):
        return
    conn = op.get_bind()
    duplicates = conn.execute(
        sa.text(
            'SELECT "documentId", "agentId", count(*) AS n, count(*) OVER () AS pairs'
            ' FROM "Evaluation" GROUP BY "documentId", "agentId" HAVING count(*) > 1'
            ' ORDER BY n DESC, "documentId", "agentId" LIMIT :shown'
        ),
        {"shown": DUPLICATES_SHOWN},
    ).all()
    if duplicates:
        pairs = duplicates[0].pairs
        shown = ", ".join(
            f"(documentId={row.documentId!r}, agentId={row.agentId!r}): {row.n} rows"
            for row in duplicates
        )
        more = f" and {pairs - len(duplicates)} more" if pairs > len(duplicates) else ""
        # One line: the CLI prints a migration error's first line only.
        raise CommandError(
            f'cannot add the unique constraint {EVALUATION_UNIQUE} on "Evaluation"'
            f' ("documentId", "agentId"): {pairs} pair(s) have more than one evaluation:'
            f" {shown}{more}. Merge each pair's evaluations into one row first (moving their"
            ' "EvaluationVersion" and "Job" rows to it), then run the upgrade again; the'
            " database was left unchanged."
        )
    op.create_unique_constraint(EVALUATION_UNIQUE, "Evaluation", ["documentId", "agentId"])


def has_relation(name: str) -> bool:
    """Whether a table or index of that name exists (a unique constraint has its index)."""
    return (
        op.get_bind().scalar(sa.text("SELECT to_regclass(:name)"), {"name": f'"{name}"'})
        is not None
    )


def has_constraint(table: str, name: str) -> bool:
    return bool(
        op.get_bind().scalar(
            sa.text(
                "SELECT 1 FROM pg_constraint"
                " WHERE conrelid = to_regclass(:table) AND conname = :name"
            ),
            {"table": f'"{table}"', "name": name},
        )
    )


# Server defaults the models rely on when they insert, which Prisma's DDL leaves out
# (Prisma's client fills @updatedAt itself). Catalog-only changes: no row is touched.
MODEL_DEFAULTS = {
    ("Document", "publishedDate"): "CURRENT_TIMESTAMP",
    ("Document", "updatedAt"): "CURRENT_TIMESTAMP",
    ("DocumentVersion", "version"): "1",
    ("DocumentVersion", "authors"): "'{}'",
    ("DocumentVersion", "urls"): "'{}'",
    ("DocumentVersion", "platforms"): "'{}'",
    ("DocumentVersion", "intendedAgents"): "'{}'",
    ("DocumentVersion", "updatedAt"): "CURRENT_TIMESTAMP",
    ("Agent", "updatedAt"): "CURRENT_TIMESTAMP",
    ("AgentVersion", "description"): "''",
    ("AgentVersion", "updatedAt"): "CURRENT_TIMESTAMP",
    ("Job", "updatedAt"): "CURRENT_TIMESTAMP",
    ("Task", "updatedAt"): "CURRENT_TIMESTAMP",
}


def set_missing_defaults() -> None:
    """Set a model default where the column has none (an existing default stays)."""
    without_default = set(
        op.get_bind().execute(
            sa.text(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND column_default IS NULL"
            )
        )
    )
    for (table, column), default in MODEL_DEFAULTS.items():
        if (table, column) in without_default:
            op.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET DEFAULT {default}')


def extend_roastmypost_tables() -> None:
    # Prisma databases older than 20250901125856_add_job_cancellation lack CANCELLED.
    # (PostgreSQL >= 12 allows this in a transaction; the value is usable after commit.)
    op.execute("""ALTER TYPE "JobStatus" ADD VALUE IF NOT EXISTS 'CANCELLED'""")

    # Which queue holds a job: the rows already there belong to the legacy poller. A
    # constant default fills them without rewriting the table.
    op.execute(
        """ALTER TABLE "Job" ADD COLUMN IF NOT EXISTS "backend" VARCHAR(16)"""
        """ NOT NULL DEFAULT 'legacy'"""
    )
    if not has_constraint("Job", "Job_backend_check"):
        op.create_check_constraint(
            "Job_backend_check", "Job", sa.text("backend IN ('legacy', 'celery')")
        )
    # The Celery task id of a job on the Celery path. (A pg-boss era Prisma database also
    # has "pgBossJobId": it is not ours, it stays.)
    op.execute("""ALTER TABLE "Job" ADD COLUMN IF NOT EXISTS "brokerJobId" TEXT""")
    if not has_constraint("Job", "Job_brokerJobId_key"):
        op.create_unique_constraint("Job_brokerJobId_key", "Job", ["brokerJobId"])
    # The legacy poller's claim: the oldest PENDING row of a backend.
    op.execute(
        """CREATE INDEX IF NOT EXISTS "Job_backend_pending_idx" ON "Job" ("backend", "createdAt")"""
        """ WHERE status = 'PENDING'"""
    )

    set_missing_defaults()
    add_evaluation_unique()

    # RoastMyPost added this in 2026 (20260302000000); legacy databases predate it.
    op.execute(
        """ALTER TABLE "AgentEvalBatch" ADD COLUMN IF NOT EXISTS "completedAt" TIMESTAMP(3)"""
    )


def create_job_migration_status() -> None:
    op.create_table(
        "JobMigrationStatus",
        _id(),
        sa.Column("jobId", sa.Text(), nullable=False),
        sa.Column("fromBackend", sa.String(16), nullable=False),
        sa.Column("toBackend", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("brokerJobId", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("runId", sa.Text()),
        _created(),
        sa.PrimaryKeyConstraint("id", name="JobMigrationStatus_pkey"),
        sa.ForeignKeyConstraint(
            ["jobId"], ["Job.id"], name="JobMigrationStatus_jobId_fkey", ondelete="CASCADE"
        ),
    )
    op.create_index("JobMigrationStatus_jobId_idx", "JobMigrationStatus", ["jobId"])


def create_feature_flag() -> None:
    op.create_table(
        "FeatureFlag",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", pg.JSONB(), nullable=False),
        _updated(),
        sa.Column("updatedBy", sa.Text()),
        sa.PrimaryKeyConstraint("name", name="FeatureFlag_pkey"),
    )


def create_feature_flag_change() -> None:
    op.create_table(
        "FeatureFlagChange",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),  # serial
        sa.Column("flagName", sa.Text(), nullable=False),
        sa.Column("oldValue", pg.JSONB()),
        sa.Column("newValue", pg.JSONB(), nullable=False),
        sa.Column("changedBy", sa.Text(), nullable=False),
        sa.Column("changedAt", Timestamp, server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="FeatureFlagChange_pkey"),
    )
    op.create_index(
        "FeatureFlagChange_flagName_idx", "FeatureFlagChange", ["flagName", "changedAt"]
    )


ROAST_JOBS_TABLES: dict[str, Callable[[], None]] = {
    "JobMigrationStatus": create_job_migration_status,
    "FeatureFlag": create_feature_flag,
    "FeatureFlagChange": create_feature_flag_change,
}


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    create_missing_roastmypost_tables(existing)
    extend_roastmypost_tables()
    for name, create in ROAST_JOBS_TABLES.items():
        if name not in existing:
            create()


def downgrade() -> None:
    # Going below 0001 would mean telling our additions from RoastMyPost's data; restore a
    # backup instead.
    raise NotImplementedError("0001 cannot be downgraded")
