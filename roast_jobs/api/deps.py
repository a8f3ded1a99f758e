"""What every route depends on: the app's context (database URL, ``JobService``), a
transaction, and who is calling (API key), as FastAPI dependencies.

Routers are module-level ``APIRouter``s; ``create_app`` puts an ``ApiContext`` on
``app.state.ctx`` and these read it from the request.
"""

# No "from __future__ import annotations": FastAPI reads dependencies from annotations.

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from roast_jobs.db.session import transaction
from roast_jobs.domain.payloads import ID_MAX_LENGTH, ID_REGEX_SQL
from roast_jobs.service import api_keys
from roast_jobs.service.api_keys import Caller
from roast_jobs.service.job_service import JobService

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


def session(ctx: Annotated[ApiContext, Depends(context)]) -> Iterator[Session]:
    """A transaction for the request: committed when the route returns, rolled back when
    it raises (so a refused request writes nothing)."""
    with transaction(ctx.url) as s:
        yield s


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

#: An id in a path: the ids' own alphabet, so junk is a 422 before any query runs.
PathId = Annotated[
    str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_REGEX_SQL, description="An id")
]
