"""Ephemeral agents and documents: made inside a batch's own transaction (RoastMyPost's
``POST /api/batches``), tied to it by ``ephemeralBatchId`` and deleted with it once it
expires (``batches.delete_expired_ephemeral``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.orm import Session

from . import agents, documents

#: Days an ephemeral batch lives when the request does not say (the legacy default).
DEFAULT_EXPIRES_IN_DAYS = 7
#: Inline documents per batch: all of them are made in the request's transaction.
MAX_INLINE_DOCUMENTS = 100


class InvalidDocument(ValueError):
    """An inline document breaks the document size rule; the message says which."""


@dataclass(frozen=True)
class EphemeralAgent:
    name: str
    description: str = ""
    primary_instructions: str | None = None
    self_critique_instructions: str | None = None
    provides_grades: bool = False
    readme: str | None = None


@dataclass(frozen=True)
class InlineDocument:
    title: str
    content: str
    authors: Sequence[str] = field(default_factory=tuple)
    url: str | None = None


def check_documents(docs: Sequence[InlineDocument]) -> None:
    """The size rule of imported articles, for each inline document (before any write)."""
    # Here, not at the top: article_import loads trafilatura, which nothing else on the
    # service's path needs.
    from .article_import import ArticleImportError, check_size

    for i, doc in enumerate(docs):
        try:
            check_size(doc.content, f"inline document {i} ({doc.title[:80]!r})")
        except ArticleImportError as exc:
            raise InvalidDocument(str(exc)) from None


def create_agent(session: Session, user_id: str, spec: EphemeralAgent) -> str:
    return agents.create_agent(
        session,
        user_id,
        name=spec.name,
        description=spec.description,
        primary_instructions=spec.primary_instructions,
        self_critique_instructions=spec.self_critique_instructions,
        provides_grades=spec.provides_grades,
        readme=spec.readme,
    )


def create_documents(session: Session, user_id: str, docs: Sequence[InlineDocument]) -> list[str]:
    """Private documents of ``user_id``, in the given order."""
    made = [
        documents.create_document(
            session,
            user_id,
            title=doc.title,
            content=doc.content,
            authors=doc.authors,
            urls=[doc.url] if doc.url else [],
        )
        for doc in docs
    ]
    return [doc.id for doc in made]


def attach(
    session: Session, batch_id: str, agent_id: str | None, document_ids: Sequence[str]
) -> None:
    """Tie the rows made for a batch to it, once it exists: the batch row needs its agent
    first (``agentId``), so the agent cannot name the batch when it is inserted."""
    if agent_id is not None:
        session.execute(
            text('UPDATE "Agent" SET "ephemeralBatchId" = :b WHERE id = :a'),
            {"b": batch_id, "a": agent_id},
        )
    if document_ids:
        session.execute(
            text('UPDATE "Document" SET "ephemeralBatchId" = :b WHERE id = ANY(:d)'),
            {"b": batch_id, "d": list(document_ids)},
        )
