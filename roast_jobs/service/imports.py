"""Running an article import: fetch, store the document, queue its evaluations, in that
order; the document and its jobs are written in one transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from roast_jobs.domain.article_import import fetch_article
from roast_jobs.domain.documents import store_article
from roast_jobs.domain.payloads import ImportPayload

from . import quotas
from .job_service import check_pause

if TYPE_CHECKING:
    from .job_service import JobService

#: Who owns imported documents when the request names nobody.
IMPORT_USER_EMAIL = "importer@roast-jobs.invalid"


def _importer(session: Any) -> str:
    row = session.execute(
        text(
            'INSERT INTO "User" (id, name, email) VALUES (gen_random_uuid()::text, '
            "'Importer', :email) ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email "
            "RETURNING id"
        ),
        {"email": IMPORT_USER_EMAIL},
    )
    return str(row.scalar_one())


def run_import(service: JobService, payload: ImportPayload) -> dict[str, Any]:
    """Import ``payload.url``; raises ``ArticleImportError`` (``.retryable`` says whether
    trying again may help). Returns the legacy response's shape plus the jobs. With
    ``payload.quota`` the evaluations go on the submitter's quota with the jobs
    (``QuotaExceeded``: nothing is stored)."""
    article = fetch_article(payload.url)
    with service._tx() as session:
        check_pause(session)
        owner = payload.submitted_by_id or _importer(session)
        doc = store_article(session, article, owner)
        jobs = (
            service.create_evaluation_jobs(doc.id, payload.agent_ids, session=session)
            if payload.agent_ids
            else []
        )
        if payload.quota and payload.submitted_by_id is not None:
            quotas.charge(session, payload.submitted_by_id, len(jobs))
        return {
            "success": True,
            "documentId": doc.id,
            "document": {"id": doc.id, "title": article.title, "authors": list(article.authors)},
            "platforms": list(article.platforms),
            "wordCount": article.word_count,
            "jobs": [job.as_dict() for job in jobs],
        }
