"""How refusals become answers: one ``{"error": message}`` body for every 4xx/5xx, and
the domain's exceptions mapped to their status (a bad request is 4xx, never a 500)."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError

from roast_jobs.domain import job_records
from roast_jobs.domain.evaluations import NotFound
from roast_jobs.domain.payloads import InvalidPayload
from roast_jobs.domain.url_safety import ArticleImportError
from roast_jobs.jobs.errors import DeadLetterNotFound, InvalidTransition
from roast_jobs.jobs.errors import JobNotFound as BrokerJobNotFound
from roast_jobs.service.outcomes import InvalidRequest, SystemPaused


def _body(message: str) -> dict[str, str]:
    return {"error": message}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    def _http(_r: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(_body(str(exc.detail)), exc.status_code, headers=exc.headers)

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

    @app.exception_handler(DataError)
    def _data(_r: Request, exc: DataError) -> JSONResponse:
        # A value PostgreSQL refused (out of range, a NUL byte...): the request's fault,
        # and its transaction rolled back.
        first = (str(exc.orig).strip().splitlines() or ["invalid value"])[0]
        return JSONResponse(_body(f"invalid value: {first}"), 400)
