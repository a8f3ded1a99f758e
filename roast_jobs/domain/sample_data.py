"""Rows to work on: users, documents, agents and evaluations, for the demo, the benchmark
and the tests. Texts are generated from a seed, so a run can be repeated exactly."""

from __future__ import annotations

import random
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from roast_jobs.db.models import Document, User, new_uuid

from . import agents, documents

_TOPICS = [
    "forecasting",
    "charity evaluation",
    "AI alignment",
    "pandemic preparedness",
    "animal welfare",
    "nuclear risk",
    "global health",
    "epistemics",
]
_SENTENCES = [
    "We estimate the effect with a simple model and state its assumptions.",
    "Clearly, this is the most important problem of our time.",
    "Studies show that most interventions fail, although the evidence is mixed.",
    "It might perhaps be the case that the numbers are arguably too optimistic.",
    "See the [original report](https://example.org/report) for the full data.",
    "The cost per outcome was 4,500 dollars in 2023, about twice the 2019 figure.",
    "Everyone knows that forecasts beyond five years are almost always wrong.",
    "This section summarizes the main counterarguments and our replies to them.",
]


def sample_text(seed: int, paragraphs: int = 4) -> tuple[str, str]:
    """A (title, markdown) pair that gives the evaluator something to find."""
    rng = random.Random(seed)
    topic = rng.choice(_TOPICS)
    parts = [f"# Notes on {topic}", ""]
    for i in range(paragraphs):
        if i and rng.random() < 0.5:
            parts += [f"## Part {i}", ""]
        parts.append(" ".join(rng.choice(_SENTENCES) for _ in range(rng.randint(2, 6))))
        parts.append("")
        if rng.random() < 0.3:
            parts += ["- first point", "- second point", ""]
    return f"Notes on {topic} #{seed}", "\n".join(parts)


def create_user(session: Session, name: str = "demo") -> str:
    user = User(name=name, email=f"{name}-{new_uuid()[:8]}@example.org")
    session.add(user)
    session.flush()
    return user.id


def create_document(
    session: Session, user_id: str, title: str, content: str, import_url: str | None = None
) -> str:
    doc = documents.create_document(
        session,
        user_id,
        title=title,
        content=content,
        authors=["Unknown Author"],
        urls=[import_url] if import_url else [],
        import_url=import_url,
    )
    return doc.id


def create_documents(session: Session, user_id: str, count: int, seed: int = 0) -> list[str]:
    """``count`` documents in two statements (fast enough for thousands)."""
    docs = [Document(submitted_by_id=user_id) for _ in range(count)]
    session.add_all(docs)
    session.flush()
    versions = []
    for i, doc in enumerate(docs):
        title, content = sample_text(seed + i)
        versions.append(
            {
                "id": new_uuid(),
                "documentId": doc.id,
                "version": 1,
                "title": title,
                "content": content,
            }
        )
    session.execute(
        text(
            'INSERT INTO "DocumentVersion" (id, "documentId", version, title, content) '
            "VALUES (:id, :documentId, :version, :title, :content)"
        ),
        versions,
    )
    return [doc.id for doc in docs]


def create_agent(
    session: Session,
    user_id: str,
    name: str = "Clarity coach",
    instructions: str = "Comment on clarity, evidence and structure.",
    capability: str | None = None,
    provides_grades: bool = True,
) -> str:
    return agents.create_agent(
        session,
        user_id,
        name=name,
        description=f"{name} (sample)",
        primary_instructions=instructions,
        extended_capability_id=capability,
        provides_grades=provides_grades,
    )


def ensure_evaluations(
    session: Session, document_ids: Sequence[str], agent_id: str
) -> dict[str, str]:
    """Evaluation ids by document id, created where missing (upsert on documentId, agentId)."""
    from roast_jobs.domain.evaluations import upsert_evaluations

    return upsert_evaluations(session, document_ids, agent_id)
