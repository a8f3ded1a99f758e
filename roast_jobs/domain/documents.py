"""Storing documents: an imported article becomes a ``Document`` with ``DocumentVersion`` 1."""

from __future__ import annotations

from sqlalchemy.orm import Session

from roast_jobs.db.models import Document, DocumentVersion

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


def store_article(session: Session, article: ImportedArticle, submitted_by_id: str) -> Document:
    """A private Document with version 1 holding the article (``importUrl`` = the URL
    asked for)."""
    doc = Document(submitted_by_id=submitted_by_id, is_private=True)
    if article.published_date is not None:
        doc.published_date = article.published_date.replace(tzinfo=None)
    session.add(doc)
    session.flush()
    session.add(
        DocumentVersion(
            document_id=doc.id,
            version=1,
            title=article.title,
            content=article.content,
            authors=list(article.authors),
            urls=[article.url],
            platforms=list(article.platforms),
            import_url=article.url,
            markdown_prepend=markdown_prepend(article),
        )
    )
    session.flush()
    return doc
