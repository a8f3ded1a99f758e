"""The import task: fetches an article, stores it, queues its evaluations. One import of
a URL is in flight at a time (singleton key ``import:<url>``, set by JobService)."""

from __future__ import annotations

from typing import Any

from roast_jobs.domain.article_import import ArticleImportError
from roast_jobs.domain.payloads import ImportPayload, InvalidPayload, parse
from roast_jobs.jobs import RoastTask
from roast_jobs.service.imports import run_import
from roast_jobs.service.job_service import IMPORT_TASK
from roast_jobs.service.outcomes import InvalidRequest
from roast_jobs.service.quotas import QuotaExceeded

from .services import job_service
from .worker import app


class ImportFailed(Exception):
    """An import that trying again will not fix (bad page, private address, too short)."""


class ImportTask(RoastTask):
    abstract = True
    # Over the quota when it ran (imports sent at once all passed the check), or more
    # than the plan allows at all (its limits lowered meanwhile): trying again in the
    # window would not fit either.
    dont_retry_on = (ImportFailed, InvalidPayload, QuotaExceeded, InvalidRequest)


@app.task(name=IMPORT_TASK, base=ImportTask, acks_late=True)
def import_article(**payload: Any) -> dict[str, Any]:
    checked = parse(ImportPayload, payload)
    try:
        return run_import(job_service(), checked)
    except ArticleImportError as exc:
        if exc.retryable:
            raise
        raise ImportFailed(f"{exc.reason}: {exc}") from None
