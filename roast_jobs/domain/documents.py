"""Storing documents: a ``Document`` with ``DocumentVersion`` 1, from an imported article
or from text given inline."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from roast_jobs.db.models import Document, DocumentVersion

if TYPE_CHECKING:  # article_import pulls in httpx and trafilatura: only when importing
    from .article_import import ImportedArticle


def markdown_prepend(article: ImportedArticle) -> str:
    """The header RoastMyPost shows above an imported article."""
    lines = [f"# {article.title}", "", f"**Author:** {', '.join(article.authors)}"]
    if article.published_date is not None:
        lines.append(f"**Published:** {article.published_date.date().isoformat()}")
    if article.platforms:
        lines.append(f"**Platform:** {', '.join(article.platforms)}")
    lines += [f"**Source:** {article.url}", "", "---", ""]
    return "\n".join(lines)


def create_document(
    session: Session,
    submitted_by_id: str,
    *,
    title: str,
    content: str,
    authors: Sequence[str] = (),
    urls: Sequence[str] = (),
    platforms: Sequence[str] = (),
    import_url: str | None = None,
    markdown_prepend: str | None = None,
    published_date: datetime | None = None,
) -> Document:
    """A private Document of ``submitted_by_id`` with version 1."""
    doc = Document(submitted_by_id=submitted_by_id, is_private=True)
    if published_date is not None:
        doc.published_date = published_date.replace(tzinfo=None)
    session.add(doc)
    session.flush()
    session.add(
        DocumentVersion(
            document_id=doc.id,
            version=1,
            title=title,
            content=content,
            authors=list(authors),
            urls=list(urls),
            platforms=list(platforms),
            import_url=import_url,
            markdown_prepend=markdown_prepend,
        )
    )
    session.flush()
    return doc


def store_article(session: Session, article: ImportedArticle, submitted_by_id: str) -> Document:
    """A private Document with version 1 holding the article (``importUrl`` = the URL
    asked for)."""
    return create_document(
        session,
        submitted_by_id,
        title=article.title,
        content=article.content,
        authors=article.authors,
        urls=[article.url],
        platforms=article.platforms,
        import_url=article.url,
        markdown_prepend=markdown_prepend(article),
        published_date=article.published_date,
    )
