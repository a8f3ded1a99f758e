"""How refusals become answers: one ``{"error": message}`` body for every 4xx/5xx, and
the domain's exceptions mapped to their status (a bad request is 4xx, never a 500)."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from roast_jobs.domain import job_records
from roast_jobs.domain.evaluations import NotFound
from roast_jobs.domain.payloads import InvalidPayload
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
        return JSONResponse(
            {**_body(_validation_message(exc)), "detail": exc.errors()}, 422
        )  # fmt: skip

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
