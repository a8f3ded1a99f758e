"""What the domain commands share: DATABASE_URL (checked), a ``JobService`` on it, and
the service's refusals and database errors as one-line CLI errors (exit 1)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click
import psycopg

from roast_jobs.cli_jobs import check_database, one_line
from roast_jobs.config import get_settings
from roast_jobs.logs import first_line

if TYPE_CHECKING:
    from roast_jobs.service.job_service import JobService


def database_url() -> str:
    from pydantic import ValidationError

    try:
        url = get_settings().require_database_url()
    except ValidationError as exc:  # e.g. ROAST_JOBS_USE_CELERY=maybe
        raise click.ClickException(f"bad environment: {one_line(exc)}") from None
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    check_database(url)
    return url


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's request can raise; imported only when something was raised."""
    from kombu.exceptions import KombuError

    from roast_jobs.domain import job_records
    from roast_jobs.domain.evaluations import NotFound
    from roast_jobs.domain.payloads import InvalidPayload
    from roast_jobs.domain.url_safety import ArticleImportError
    from roast_jobs.jobs.errors import JobError
    from roast_jobs.service.flags import FlagError
    from roast_jobs.service.job_service import ServiceError

    return (
        ServiceError,
        NotFound,
        job_records.JobNotFound,
        job_records.InvalidJobState,
        InvalidPayload,
        ArticleImportError,
        FlagError,
        JobError,
        KombuError,
    )


@contextmanager
def one_line_errors() -> Iterator[None]:
    """The service's refusals and database errors as one-line CLI errors."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    try:
        yield
    except (DBAPIError, psycopg.Error) as exc:
        first = first_line(exc)
        if isinstance(getattr(exc, "orig", None) or exc, psycopg.errors.UndefinedTable):
            first += ": run `roast-jobs db upgrade` on this database first"
        raise click.ClickException(first) from None
    except SQLAlchemyError as exc:
        raise click.ClickException(one_line(exc)) from None
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            raise click.ClickException(one_line(exc)) from None
        raise


@contextmanager
def job_service(url: str) -> Iterator[JobService]:
    with one_line_errors():
        from roast_jobs.service.job_service import JobService

        service = JobService(url)
        try:
            yield service
        finally:
            service.close()
