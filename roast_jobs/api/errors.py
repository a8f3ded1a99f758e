"""How refusals become answers: one ``{"error": message}`` body for every 4xx/5xx, and
the domain's exceptions mapped to their status (a bad request is 4xx, never a 500)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from roast_jobs.domain import job_records
from roast_jobs.domain.evaluations import NotFound
from roast_jobs.domain.payloads import InvalidPayload
from roast_jobs.domain.url_safety import ArticleImportError
from roast_jobs.jobs.errors import DeadLetterNotFound, InvalidTransition
from roast_jobs.jobs.errors import JobNotFound as BrokerJobNotFound
from roast_jobs.logs import first_line
from roast_jobs.service.outcomes import InvalidRequest, SystemPaused
from roast_jobs.service.quotas import QuotaExceeded


class ErrorBody(BaseModel):
    error: str


#: The refusals any route may answer with, for the OpenAPI document.
RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": why}
    for code, why in (
        (400, "The request cannot be carried out (the message says why)"),
        (401, "No valid API key"),
        (403, "Admins only"),
        (404, "Unknown, or someone else's"),
        (409, "Conflicts with what exists"),
        (503, "Job creation is paused, or the system is degraded"),
    )
}


class QuotaWindow(BaseModel):
    used: int
    limit: int
    resetsAt: datetime | None


class QuotaBody(BaseModel):
    """The caller's plan and what is counted in each window (before the refused request)."""

    plan: str
    hour: QuotaWindow
    month: QuotaWindow


class QuotaExceededBody(QuotaBody):
    error: str
    asked: int
    window: str


#: For the routes that charge the caller's evaluation quota.
QUOTA_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {
        "model": QuotaExceededBody,
        "description": "Over the plan's evaluations per hour or month (Retry-After says "
        "when the window starts again); nothing was created",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    }
}


def _body(message: str) -> dict[str, str]:
    return {"error": message}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _allowed(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _child = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; the path's
            # other routes (GET and PUT of the same URL...) are allowed too.
            headers["Allow"] = ", ".join(_allowed(request))
        return JSONResponse(_body(str(exc.detail)), exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        # loc, msg and type only: "input" and "ctx" may hold what JSON cannot carry.
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse({**_body(_validation_message(exc)), "detail": detail}, 422)

    def status(code: int) -> object:
        def handler(_r: Request, exc: Exception) -> JSONResponse:
            return JSONResponse(_body(str(exc).strip("'\"") or type(exc).__name__), code)

        return handler

    for exc_type, code in (
        (NotFound, 404),
        (job_records.JobNotFound, 404),
        (BrokerJobNotFound, 404),
        (DeadLetterNotFound, 404),
        (InvalidRequest, 400),
        (InvalidPayload, 400),
        (job_records.InvalidJobState, 400),
        (InvalidTransition, 400),
        (SystemPaused, 503),
    ):
        app.add_exception_handler(exc_type, status(code))  # type: ignore[arg-type]

    @app.exception_handler(ArticleImportError)
    def _import(_r: Request, exc: ArticleImportError) -> JSONResponse:
        # The page could not be fetched (may pass later: 502), or is not importable (422).
        body = {**_body(f"import failed: {exc}"), "reason": exc.reason}
        return JSONResponse(body, 502 if exc.retryable else 422)

    @app.exception_handler(QuotaExceeded)
    def _quota(_r: Request, exc: QuotaExceeded) -> JSONResponse:
        body = jsonable_encoder({**_body(str(exc)), **exc.as_dict()})
        return JSONResponse(body, 429, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(psycopg.DataError)
    def _driver_data(_r: Request, exc: psycopg.DataError) -> JSONResponse:
        # The same, from code that talks to psycopg directly (the broker's tables).
        return JSONResponse(_body(f"invalid value: {first_line(exc)}"), 400)

    @app.exception_handler(DataError)
    def _data(_r: Request, exc: DataError) -> JSONResponse:
        # A value PostgreSQL refused (out of range, a NUL byte...): the request's fault,
        # and its transaction rolled back.
        return JSONResponse(_body(f"invalid value: {first_line(exc)}"), 400)
