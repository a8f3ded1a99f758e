"""What each kind of job carries, validated when the job is created and again when it runs.

A payload that fails validation fails its job at once, with pydantic's message, and is
never retried (``InvalidPayload`` is permanent in ``retry_classes``: "invalid").
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Id = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")]
#: The same rule for PostgreSQL's ``~``, with the length checked apart (the migrator checks
#: rows before sending them; a bounded repeat like {1,200} makes the match 60x slower).
ID_REGEX_SQL = "^[A-Za-z0-9_-]+$"
ID_MAX_LENGTH = 200

MAX_BATCH_DOCUMENTS = 50_000
MAX_IMPORT_AGENTS = 50
#: A document's text, in characters (RoastMyPost caps it at 100,000 words; a "word" can
#: be any length, so characters are capped too), and all inline documents of one batch.
MAX_CONTENT_CHARS = 1_000_000
MAX_INLINE_TOTAL_CHARS = 10_000_000


class InvalidPayload(ValueError):
    """A job's payload is invalid; the message says which field and why."""


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvaluationPayload(Payload):
    job_id: Id
    evaluation_id: Id
    agent_eval_batch_id: Id | None = None


class BatchPayload(Payload):
    batch_id: Id


class ImportPayload(Payload):
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    agent_ids: Annotated[list[Id], Field(max_length=MAX_IMPORT_AGENTS)] = []
    submitted_by_id: Id | None = None
    # The evaluations count on the submitter's quota (HTTP API imports), charged when the
    # document and its jobs are stored.
    quota: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from .article_import import ArticleImportError, validate_import_url

        try:
            return validate_import_url(value)
        except ArticleImportError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("agent_ids")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


P = TypeVar("P", bound=Payload)


def parse(model: type[P], data: Any) -> P:
    """``data`` as a ``model``, or ``InvalidPayload`` with a one-paragraph message."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'payload'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidPayload(f"invalid {model.__name__} payload: {problems}") from None
