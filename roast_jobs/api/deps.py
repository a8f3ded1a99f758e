"""What every route depends on: the app's context (database URL, ``JobService``), a
transaction, and who is calling (API key), as FastAPI dependencies.

Routers are module-level ``APIRouter``s; ``create_app`` puts an ``ApiContext`` on
``app.state.ctx`` and these read it from the request.
"""

# No "from __future__ import annotations": FastAPI reads dependencies from annotations.

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

from fastapi import Depends, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, model_validator
from sqlalchemy.orm import Session

from roast_jobs.db.session import transaction
from roast_jobs.domain.payloads import ID_MAX_LENGTH, ID_REGEX_SQL
from roast_jobs.service import api_keys
from roast_jobs.service.api_keys import Caller
from roast_jobs.service.job_service import JobService
from roast_jobs.service.outcomes import InvalidRequest

_bearer = HTTPBearer(auto_error=False, description="An API key: rmp_...")


@dataclass
class ApiContext:
    url: str
    service: JobService


def context(request: Request) -> ApiContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


def service(ctx: Annotated[ApiContext, Depends(context)]) -> JobService:
    return ctx.service


def database_url(ctx: Annotated[ApiContext, Depends(context)]) -> str:
    return ctx.url


def caller(
    ctx: Annotated[ApiContext, Depends(context)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    found = None
    if creds is not None and creds.scheme.lower() == "bearer":
        with transaction(ctx.url) as s:
            found = api_keys.authenticate(s, creds.credentials)
    if found is None:
        raise HTTPException(
            401, "a valid API key is needed: Authorization: Bearer rmp_...",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    return found


def session(
    ctx: Annotated[ApiContext, Depends(context)],
    _who: Annotated[Caller, Depends(caller)],
) -> Iterator[Session]:
    """A transaction for the request: committed when the route returns, rolled back when
    it raises (so a refused request writes nothing). Opened after the key is checked
    (whose own connection is back in the pool by then): one connection per request."""
    with transaction(ctx.url) as s:
        yield s


def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if not who.is_admin:
        raise HTTPException(403, "admins only")
    return who


# Shorthands for route signatures.
Url = Annotated[str, Depends(database_url)]
Service = Annotated[JobService, Depends(service)]
# scope="function": commit before the response goes out, so a client never reads a
# 2xx for something not committed (nor something whose commit then failed).
Tx = Annotated[Session, Depends(session, scope="function")]
User = Annotated[Caller, Depends(caller)]
Admin = Annotated[Caller, Depends(admin)]

#: A broker queue's name: any text PostgreSQL can hold (no NUL byte).
QUEUE_NAME = {"min_length": 1, "max_length": 255, "pattern": r"^[^\x00]*$"}

#: An id in a path: the ids' own alphabet, so junk is a 422 before any query runs.
PathId = Annotated[
    str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_REGEX_SQL, description="An id")
]


class Body(BaseModel):
    """A request body: unknown fields and loose types (``false`` or ``"5"`` for a number,
    ``1`` for a boolean) are refused with 422, not guessed at. (Pydantic's strict mode
    would also refuse 5.0, which JSON Schema calls an integer.)"""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_guessing(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                _check_kind(name, data.get(name), field.annotation)
        return data


def _check_kind(name: str, value: Any, annotation: Any) -> None:
    """Refuse the coercions pydantic's lax mode would make; list items too."""
    if value is None:
        return
    kinds, items = _kinds(annotation)
    if isinstance(value, list):
        for item in value:
            for inner in items:
                _check_kind(f"{name}[]", item, inner)
        return
    if type(value) in kinds:
        return
    if bool in kinds and not isinstance(value, bool):
        raise ValueError(f"{name}: must be true or false")
    if int in kinds and (
        isinstance(value, (bool, str)) or (isinstance(value, float) and not value.is_integer())
    ):
        raise ValueError(f"{name}: must be a whole number")


def _kinds(annotation: Any) -> tuple[set[type], list[Any]]:
    """The plain types an annotation admits (``int | None`` -> {int, NoneType}), and the
    item annotations of the lists it admits."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin is list:
        return {list}, list(get_args(annotation)[:1])
    if isinstance(annotation, type):
        return {annotation}, []
    kinds: set[type] = set()
    items: list[Any] = []
    for arg in get_args(annotation):
        more, inner = _kinds(arg)
        kinds |= more
        items += inner
    return kinds, items


def exactly_one(what: str, *given: object) -> None:
    """A rule between fields, checked in the route (400): the schema cannot say it."""
    if sum(value is not None for value in given) != 1:
        raise InvalidRequest(f"give exactly one of {what}")


def no_unknown_query(request: Request) -> None:
    """Refuse query parameters the route does not take (a misspelt ``?limt=5`` would
    otherwise be ignored silently)."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None or not request.query_params:
        return
    unknown = sorted(set(request.query_params) - _query_names(dependant))
    if unknown:
        raise RequestValidationError(
            [{"loc": ("query", name), "msg": "unknown query parameter", "type": "extra_forbidden"}
             for name in unknown]
        )  # fmt: skip


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for child in dependant.dependencies:
        names |= _query_names(child)
    return names
