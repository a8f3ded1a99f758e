"""RoastMyPost's tables as SQLAlchemy 2.0 models, with Prisma's table and column names.

Python names are snake_case; the database keeps Prisma's (``"Job"."evaluationId"``), so
these models attach to a database that RoastMyPost's own migrations made. Timestamps are
Prisma's ``timestamp(3) without time zone`` holding UTC (sessions run in UTC, see
``session``). What roast-jobs adds: ``Job.backend`` and ``Job.brokerJobId``, and the tables
``JobMigrationStatus``, ``FeatureFlag`` and ``FeatureFlagChange``.

The contract is RoastMyPost's schema.prisma at its last legacy commit (2025-12-03): foreign
keys with Prisma's actions (ON UPDATE CASCADE, ON DELETE as the relation declares it) and
Prisma's indexes under the names Prisma generates. Models cover only the columns roast-jobs
uses: a Prisma table has more (``User`` most of all), which the models leave alone.

Differences from a Prisma database, on purpose:

* Prisma's scalar lists (``authors``, ``urls``, ``platforms``, ``intendedAgents``,
  ``pluginIds``, ``requestedDocumentIds``) are nullable ``TEXT[]`` there. The models declare
  them NOT NULL with default ``'{}'``, which is what a new database gets; on a database made
  by Prisma, migration 0001 leaves the columns nullable (it only adds the ``'{}'`` default
  where there is none), so code reading them must still accept NULL from old rows.
* ``updatedAt`` has a server default here (Prisma's client fills ``@updatedAt`` itself).
"""

from __future__ import annotations

import enum
import secrets
import string
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    Boolean,
    CheckConstraint,
    Enum,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import TIMESTAMP as PG_TIMESTAMP
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NOW = text("CURRENT_TIMESTAMP")  # sessions run in UTC, so this is Prisma's now()
Timestamp = PG_TIMESTAMP(precision=3)

_ALPHABET = string.ascii_letters + string.digits


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_nanoid() -> str:
    """RoastMyPost's ``generateId()``: 21 alphanumeric characters (Document, Agent ids)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(21))


class Base(DeclarativeBase):
    pass


class JobStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


ACTIVE_STATUSES = (JobStatus.PENDING, JobStatus.RUNNING)
FINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class UserRole(enum.StrEnum):
    USER = "USER"
    ADMIN = "ADMIN"


class Plan(enum.StrEnum):
    REGULAR = "REGULAR"
    PRO = "PRO"


class Backend(enum.StrEnum):
    LEGACY = "legacy"
    CELERY = "celery"


def _ref(target: str, ondelete: str) -> ForeignKey:
    """A foreign key as Prisma makes it: ON UPDATE CASCADE, and ON DELETE as the Prisma
    relation says (its defaults: RESTRICT for a required relation, SET NULL for an optional
    one)."""
    return ForeignKey(target, ondelete=ondelete, onupdate="CASCADE")


def _created() -> Mapped[datetime]:
    return mapped_column("createdAt", Timestamp, server_default=NOW, nullable=False)


def _updated() -> Mapped[datetime]:
    # Prisma's @updatedAt has no database default; ours has one so raw inserts work too.
    return mapped_column(
        "updatedAt",
        Timestamp,
        server_default=NOW,
        onupdate=text("CURRENT_TIMESTAMP"),
        nullable=False,
    )


class User(Base):
    """What the foreign keys, the API's roles and the quota need. RoastMyPost's User has
    more (emailVerified, image; no createdAt/updatedAt), all with defaults: rows inserted
    with just these columns are valid there too."""

    __tablename__ = "User"

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    name: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text, unique=True)
    # Prisma's; migration 0003 adds it where missing. Admin routes of the API check it.
    role: Mapped[UserRole] = mapped_column(
        Enum(UserRole, name="UserRole"), server_default=UserRole.USER.value, nullable=False
    )
    # Prisma's evaluation quota; migration 0005 adds them where missing (service/quotas.py).
    plan: Mapped[Plan] = mapped_column(
        Enum(Plan, name="Plan"), server_default=Plan.REGULAR.value, nullable=False
    )
    evals_this_hour: Mapped[int] = mapped_column(
        "evalsThisHour", Integer, server_default=text("0"), nullable=False
    )
    evals_this_month: Mapped[int] = mapped_column(
        "evalsThisMonth", Integer, server_default=text("0"), nullable=False
    )
    hour_reset_at: Mapped[datetime | None] = mapped_column("hourResetAt", Timestamp)
    month_reset_at: Mapped[datetime | None] = mapped_column("monthResetAt", Timestamp)


class Document(Base):
    __tablename__ = "Document"
    __table_args__ = (
        Index("Document_ephemeralBatchId_idx", "ephemeralBatchId"),
        Index("Document_isPrivate_idx", "isPrivate"),
        Index("Document_isPrivate_submittedById_idx", "isPrivate", "submittedById"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_nanoid)
    published_date: Mapped[datetime] = mapped_column(
        "publishedDate", Timestamp, server_default=NOW, nullable=False
    )
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    submitted_by_id: Mapped[str] = mapped_column(
        "submittedById", Text, _ref("User.id", "CASCADE"), nullable=False
    )
    ephemeral_batch_id: Mapped[str | None] = mapped_column(
        "ephemeralBatchId", Text, _ref("AgentEvalBatch.id", "CASCADE")
    )
    is_private: Mapped[bool] = mapped_column(
        "isPrivate", Boolean, server_default=text("true"), nullable=False
    )


class DocumentVersion(Base):
    __tablename__ = "DocumentVersion"
    __table_args__ = (
        UniqueConstraint("documentId", "version"),
        Index("DocumentVersion_documentId_idx", "documentId"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"), nullable=False)
    title: Mapped[str] = mapped_column(Text, nullable=False)
    # Scalar lists: NOT NULL here, nullable TEXT[] on a Prisma database (module docstring).
    authors: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}", nullable=False)
    urls: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}", nullable=False)
    platforms: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default="{}", nullable=False)
    intended_agents: Mapped[list[str]] = mapped_column(
        "intendedAgents", ARRAY(Text), server_default="{}", nullable=False
    )
    content: Mapped[str] = mapped_column(Text, nullable=False)
    document_id: Mapped[str] = mapped_column(
        "documentId", Text, _ref("Document.id", "CASCADE"), nullable=False
    )
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    import_url: Mapped[str | None] = mapped_column("importUrl", Text)
    markdown_prepend: Mapped[str | None] = mapped_column("markdownPrepend", Text)
    submitter_notes: Mapped[str | None] = mapped_column("submitterNotes", Text)


class Agent(Base):
    __tablename__ = "Agent"

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_nanoid)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    submitted_by_id: Mapped[str] = mapped_column(
        "submittedById", Text, _ref("User.id", "CASCADE"), nullable=False
    )
    ephemeral_batch_id: Mapped[str | None] = mapped_column(
        "ephemeralBatchId", Text, _ref("AgentEvalBatch.id", "CASCADE"), unique=True
    )
    is_system_managed: Mapped[bool] = mapped_column(
        "isSystemManaged", Boolean, server_default=text("false"), nullable=False
    )
    is_deprecated: Mapped[bool] = mapped_column(
        "isDeprecated", Boolean, server_default=text("false"), nullable=False
    )
    is_recommended: Mapped[bool] = mapped_column(
        "isRecommended", Boolean, server_default=text("false"), nullable=False
    )
    is_llm_cost_tracked: Mapped[bool] = mapped_column(
        "isLlmCostTracked", Boolean, server_default=text("true"), nullable=False
    )


class AgentVersion(Base):
    __tablename__ = "AgentVersion"
    __table_args__ = (UniqueConstraint("agentId", "version"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str] = mapped_column(Text, server_default="", nullable=False)
    agent_id: Mapped[str] = mapped_column(
        "agentId", Text, _ref("Agent.id", "CASCADE"), nullable=False
    )
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    extended_capability_id: Mapped[str | None] = mapped_column("extendedCapabilityId", Text)
    readme: Mapped[str | None] = mapped_column(Text)
    self_critique_instructions: Mapped[str | None] = mapped_column("selfCritiqueInstructions", Text)
    primary_instructions: Mapped[str | None] = mapped_column("primaryInstructions", Text)
    provides_grades: Mapped[bool] = mapped_column(
        "providesGrades", Boolean, server_default=text("false"), nullable=False
    )
    # Scalar list: NOT NULL here, nullable TEXT[] on a Prisma database (module docstring).
    plugin_ids: Mapped[list[str]] = mapped_column(
        "pluginIds", ARRAY(Text), server_default="{}", nullable=False
    )


class AgentEvalBatch(Base):
    __tablename__ = "AgentEvalBatch"
    __table_args__ = (
        UniqueConstraint("userId", "trackingId"),
        Index("AgentEvalBatch_userId_idx", "userId"),
        Index("AgentEvalBatch_expiresAt_idx", "expiresAt"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    name: Mapped[str | None] = mapped_column(Text)
    agent_id: Mapped[str] = mapped_column(
        "agentId", Text, _ref("Agent.id", "CASCADE"), nullable=False
    )
    created_at: Mapped[datetime] = _created()
    target_count: Mapped[int | None] = mapped_column("targetCount", Integer)
    # Scalar list: NOT NULL here, nullable TEXT[] on a Prisma database (module docstring).
    requested_document_ids: Mapped[list[str]] = mapped_column(
        "requestedDocumentIds", ARRAY(Text), server_default="{}", nullable=False
    )
    user_id: Mapped[str] = mapped_column(
        "userId", Text, _ref("User.id", "RESTRICT"), nullable=False
    )
    tracking_id: Mapped[str | None] = mapped_column("trackingId", Text)
    description: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None] = mapped_column("expiresAt", Timestamp)
    is_ephemeral: Mapped[bool] = mapped_column(
        "isEphemeral", Boolean, server_default=text("false"), nullable=False
    )
    completed_at: Mapped[datetime | None] = mapped_column("completedAt", Timestamp)


class Evaluation(Base):
    __tablename__ = "Evaluation"
    __table_args__ = (
        # RoastMyPost's 20251201141333 (it replaced "Evaluation_documentId_agentId_idx");
        # upsert_evaluations' ON CONFLICT ("documentId", "agentId") needs it.
        UniqueConstraint("documentId", "agentId", name="Evaluation_documentId_agentId_key"),
        Index("Evaluation_documentId_idx", "documentId"),
        Index("Evaluation_agentId_idx", "agentId"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    created_at: Mapped[datetime] = _created()
    document_id: Mapped[str] = mapped_column(
        "documentId", Text, _ref("Document.id", "CASCADE"), nullable=False
    )
    agent_id: Mapped[str] = mapped_column(
        "agentId", Text, _ref("Agent.id", "CASCADE"), nullable=False
    )


class EvaluationVersion(Base):
    __tablename__ = "EvaluationVersion"
    __table_args__ = (
        UniqueConstraint("evaluationId", "version"),
        Index("EvaluationVersion_evaluationId_idx", "evaluationId"),
        Index("EvaluationVersion_agentVersionId_idx", "agentVersionId"),
        Index("EvaluationVersion_documentVersionId_idx", "documentVersionId"),
        Index("EvaluationVersion_isStale_idx", "isStale"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    # No foreign key: Prisma declares no relation on this column.
    agent_id: Mapped[str] = mapped_column("agentId", Text, nullable=False)
    created_at: Mapped[datetime] = _created()
    summary: Mapped[str | None] = mapped_column(Text)
    grade: Mapped[int | None] = mapped_column(Integer)
    agent_version_id: Mapped[str] = mapped_column(
        "agentVersionId", Text, _ref("AgentVersion.id", "RESTRICT"), nullable=False
    )
    evaluation_id: Mapped[str] = mapped_column(
        "evaluationId", Text, _ref("Evaluation.id", "CASCADE"), nullable=False
    )
    document_version_id: Mapped[str] = mapped_column(
        "documentVersionId", Text, _ref("DocumentVersion.id", "CASCADE"), nullable=False
    )
    analysis: Mapped[str | None] = mapped_column(Text)
    self_critique: Mapped[str | None] = mapped_column("selfCritique", Text)
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"), nullable=False)
    is_stale: Mapped[bool] = mapped_column(
        "isStale", Boolean, server_default=text("false"), nullable=False
    )


class EvaluationHighlight(Base):
    __tablename__ = "EvaluationHighlight"

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    start_offset: Mapped[int] = mapped_column("startOffset", Integer, nullable=False)
    end_offset: Mapped[int] = mapped_column("endOffset", Integer, nullable=False)
    quoted_text: Mapped[str] = mapped_column("quotedText", Text, nullable=False)
    prefix: Mapped[str | None] = mapped_column(Text)
    is_valid: Mapped[bool] = mapped_column(
        "isValid", Boolean, server_default=text("true"), nullable=False
    )
    error: Mapped[str | None] = mapped_column(Text)


class EvaluationComment(Base):
    __tablename__ = "EvaluationComment"
    __table_args__ = (Index("EvaluationComment_evaluationVersionId_idx", "evaluationVersionId"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    importance: Mapped[int | None] = mapped_column(Integer)
    grade: Mapped[int | None] = mapped_column(Integer)
    header: Mapped[str | None] = mapped_column(Text)
    level: Mapped[str | None] = mapped_column(Text)
    evaluation_version_id: Mapped[str] = mapped_column(
        "evaluationVersionId", Text, _ref("EvaluationVersion.id", "CASCADE"), nullable=False
    )
    highlight_id: Mapped[str] = mapped_column(
        "highlightId",
        Text,
        _ref("EvaluationHighlight.id", "CASCADE"),
        unique=True,
        nullable=False,
    )


class Job(Base):
    __tablename__ = "Job"
    __table_args__ = (
        Index("Job_evaluationId_idx", "evaluationId"),
        Index("Job_agentEvalBatchId_idx", "agentEvalBatchId"),
        Index("Job_originalJobId_idx", "originalJobId"),
        Index("Job_cancelledById_idx", "cancelledById"),
        # What the legacy poller claims (the oldest PENDING legacy row) and the migrator
        # walks: waiting jobs of a backend in (createdAt, id) order (migration 0002).
        Index(
            "Job_backend_pending_idx",
            "backend",
            "createdAt",
            "id",
            postgresql_where=text("status = 'PENDING'"),
        ),
        CheckConstraint("backend IN ('legacy', 'celery')", name="Job_backend_check"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="JobStatus"), server_default=JobStatus.PENDING.value, nullable=False
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"), nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    llm_thinking: Mapped[str | None] = mapped_column("llmThinking", Text)
    logs: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column("startedAt", Timestamp)
    completed_at: Mapped[datetime | None] = mapped_column("completedAt", Timestamp)
    cancelled_at: Mapped[datetime | None] = mapped_column("cancelledAt", Timestamp)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    duration_in_seconds: Mapped[int | None] = mapped_column("durationInSeconds", Integer)
    evaluation_id: Mapped[str] = mapped_column(
        "evaluationId", Text, _ref("Evaluation.id", "CASCADE"), nullable=False
    )
    evaluation_version_id: Mapped[str | None] = mapped_column(
        "evaluationVersionId", Text, _ref("EvaluationVersion.id", "SET NULL"), unique=True
    )
    agent_eval_batch_id: Mapped[str | None] = mapped_column(
        "agentEvalBatchId", Text, _ref("AgentEvalBatch.id", "SET NULL")
    )
    original_job_id: Mapped[str | None] = mapped_column(
        "originalJobId", Text, _ref("Job.id", "SET NULL")
    )
    price_in_dollars: Mapped[Decimal | None] = mapped_column("priceInDollars", Numeric(10, 6))
    cancelled_by_id: Mapped[str | None] = mapped_column(
        "cancelledById", Text, _ref("User.id", "SET NULL")
    )
    cancellation_reason: Mapped[str | None] = mapped_column("cancellationReason", Text)
    # roast-jobs: which queue holds the job, and its Celery task id on the Celery path.
    backend: Mapped[Backend] = mapped_column(
        String(16), server_default=Backend.LEGACY.value, nullable=False
    )
    broker_job_id: Mapped[str | None] = mapped_column("brokerJobId", Text, unique=True)


class Task(Base):
    """One LLM call's cost record."""

    __tablename__ = "Task"
    __table_args__ = (Index("Task_jobId_idx", "jobId"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    model_name: Mapped[str] = mapped_column("modelName", Text, nullable=False)
    time_in_seconds: Mapped[int | None] = mapped_column("timeInSeconds", Integer)
    log: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    job_id: Mapped[str] = mapped_column("jobId", Text, _ref("Job.id", "CASCADE"), nullable=False)
    llm_interactions: Mapped[Any | None] = mapped_column("llmInteractions", JSONB)
    price_in_dollars: Mapped[Decimal] = mapped_column(
        "priceInDollars", Numeric(10, 6), nullable=False
    )


class SystemPause(Base):
    """A global kill switch: while a row has no ``endedAt``, no job is created."""

    __tablename__ = "SystemPause"
    __table_args__ = (Index("SystemPause_endedAt_idx", "endedAt"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    started_at: Mapped[datetime] = mapped_column(
        "startedAt", Timestamp, server_default=NOW, nullable=False
    )
    ended_at: Mapped[datetime | None] = mapped_column("endedAt", Timestamp)
    reason: Mapped[str] = mapped_column(Text, nullable=False)


class JobMigrationStatus(Base):
    """One move of a waiting job between backends (the migrator's ledger)."""

    __tablename__ = "JobMigrationStatus"
    __table_args__ = (Index("JobMigrationStatus_jobId_idx", "jobId"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    job_id: Mapped[str] = mapped_column(
        "jobId", Text, ForeignKey("Job.id", ondelete="CASCADE"), nullable=False
    )
    from_backend: Mapped[str] = mapped_column("fromBackend", String(16), nullable=False)
    to_backend: Mapped[str] = mapped_column("toBackend", String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # moved | skipped | failed
    broker_job_id: Mapped[str | None] = mapped_column("brokerJobId", Text)
    error: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column("runId", Text)
    created_at: Mapped[datetime] = _created()


class FeatureFlag(Base):
    __tablename__ = "FeatureFlag"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[Any] = mapped_column(JSONB, nullable=False)
    updated_at: Mapped[datetime] = _updated()
    updated_by: Mapped[str | None] = mapped_column("updatedBy", Text)


class FeatureFlagChange(Base):
    __tablename__ = "FeatureFlagChange"
    __table_args__ = (Index("FeatureFlagChange_flagName_idx", "flagName", "changedAt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flag_name: Mapped[str] = mapped_column("flagName", Text, nullable=False)
    old_value: Mapped[Any | None] = mapped_column("oldValue", JSONB)
    new_value: Mapped[Any] = mapped_column("newValue", JSONB, nullable=False)
    changed_by: Mapped[str] = mapped_column("changedBy", Text, nullable=False)
    changed_at: Mapped[datetime] = mapped_column(
        "changedAt", Timestamp, server_default=NOW, nullable=False
    )


class ApiKey(Base):
    """A user's key for the HTTP API: only its SHA-256 is stored (migration 0003)."""

    __tablename__ = "ApiKey"
    __table_args__ = (Index("ApiKey_userId_idx", "userId"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_uuid)
    user_id: Mapped[str] = mapped_column("userId", Text, _ref("User.id", "CASCADE"), nullable=False)
    name: Mapped[str | None] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(Text, nullable=False)
    key_hash: Mapped[str] = mapped_column("keyHash", Text, nullable=False, unique=True)
    created_at: Mapped[datetime] = _created()
    last_used_at: Mapped[datetime | None] = mapped_column("lastUsedAt", Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column("revokedAt", Timestamp)


class WorkerHeartbeat(Base):
    """A live worker process (migration 0004); written by ``legacy.heartbeat``."""

    __tablename__ = "WorkerHeartbeat"

    id: Mapped[str] = mapped_column(Text, primary_key=True)  # hostname:pid:random
    kind: Mapped[str] = mapped_column(Text, nullable=False)  # legacy
    hostname: Mapped[str] = mapped_column(Text, nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(
        "startedAt", Timestamp, server_default=NOW, nullable=False
    )
    beat_at: Mapped[datetime] = mapped_column(
        "beatAt", Timestamp, server_default=NOW, nullable=False
    )
    slots: Mapped[int] = mapped_column(Integer, nullable=False)  # max children
    running: Mapped[int] = mapped_column(Integer, nullable=False)  # children now
    version: Mapped[str] = mapped_column(Text, nullable=False)
