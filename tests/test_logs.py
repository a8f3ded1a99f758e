"""Structured logs (roast_jobs/logs.py): JSON lines with each job's fields from a real
Celery worker, the legacy worker and the API, and no password anywhere: not in logs, not
in CLI errors, not in tracebacks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import httpx
import pytest

from roast_jobs.cli import cli, main
from roast_jobs.db.session import transaction
from roast_jobs.domain import sample_data
from roast_jobs.logs import (
    JobContextFilter,
    JsonFormatter,
    SecretsFilter,
    job_context,
    mask_secrets,
)
from roast_jobs.service.job_service import EVALUATION_TASK, JobService
from tests.api_support import serve_api
from tests.domain_support import fetch, rollout, user_with_agent
from tests.workers import REPO, CeleryWorker, stop_process, wait_until

PASSWORD = "s3cret-pw"
UNREACHABLE = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nodb"
EVALUATOR = "tests.apps.logging_evaluator:LoggingEvaluator"
FLAKY = "fail 1: 503 service unavailable"  # the scripted evaluator fails its first run


def with_password(url: str) -> str:
    """``url`` with PASSWORD as its password (the test server trusts local users, so it
    connects all the same)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{PASSWORD}@{host}"))


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object with the fixed fields; fails on any other."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert {"time", "level", "logger", "message", "process"} <= record.keys(), line
        assert datetime.fromisoformat(record["time"]).utcoffset().total_seconds() == 0
        records.append(record)
    return records


def job_fields(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(record.get(k) for k in ("job_id", "task", "backend", "attempt"))


def wait_completed(url: str, job_id: str, timeout: float = 90) -> None:
    def done() -> bool:
        [(status,)] = fetch(url, 'SELECT status FROM "Job" WHERE id = %s', job_id)
        assert status != "FAILED", f"job {job_id} failed"
        return status == "COMPLETED"

    assert wait_until(done, timeout), f"job {job_id} did not complete"


@pytest.fixture(scope="module")
def people(app_db: str) -> dict[str, str]:
    return user_with_agent(app_db)


def new_document(url: str, user: str, title: str) -> str:
    with transaction(url) as s:
        return sample_data.create_document(s, user, title, sample_data.sample_text(7)[1])


def evaluator_env(url: str, state: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": with_password(url),
        "ROAST_JOBS_EVALUATOR": EVALUATOR,
        "ROAST_TEST_STATE_DIR": str(state),
        "ROAST_JOBS_RETRY_DELAY": "0.25",
    }


# -- (a) the Celery worker ---------------------------------------------------------------


def test_a_celery_worker_writes_json_lines_with_each_jobs_fields(
    service: JobService, people: dict[str, str], tmp_path: Path
) -> None:
    rollout(service, 100)
    plain = new_document(service.url, people["user"], "A plain essay")
    flaky = new_document(service.url, people["user"], FLAKY)
    env = {**evaluator_env(service.url, tmp_path), "ROAST_JOBS_LOG_FORMAT": "json"}
    worker = CeleryWorker(
        "logs", app="roast_jobs.tasks.worker", concurrency=1, args=["-Q", "evaluation"], env=env
    )
    with worker:
        jobs = {doc: service.create_evaluation_job(doc, people["agent"]) for doc in (plain, flaky)}
        for job in jobs.values():
            assert job.backend == "celery"
            wait_completed(service.url, job.id)
    text = worker.log()
    records = json_lines(text)  # the banner and the shutdown notice included
    assert PASSWORD not in text
    [banner] = [r for r in records if "[config]" in r["message"]]  # one record, not printed
    assert f"transport:   {mask_secrets(env['DATABASE_URL'])}" in banner["message"]
    assert "postgres:**@" in banner["message"]

    for doc, attempts in ((plain, [1]), (flaky, [1, 2])):
        job = jobs[doc]
        said = [
            r
            for r in records
            if r["logger"] == "tests.logging_evaluator"
            and r["level"] == "INFO"
            and doc in r["message"]
        ]
        # Logged inside the task: the Job row's id (not the task id), the run's attempt.
        assert [job_fields(r) for r in said] == [
            (job.id, EVALUATION_TASK, "celery", n) for n in attempts
        ]
        assert "postgres:**@" in said[0]["message"]
        hiccups = [r for r in records if r["level"] == "WARNING" and doc in r["message"]]
        assert hiccups and all(r["job_id"] == job.id for r in hiccups)
        assert all("password=**" in r["exception"] for r in hiccups)
        # Celery's own line for the run is logged while it runs too.
        [succeeded] = [r for r in records if f"[{job.broker_job_id}] succeeded" in r["message"]]
        assert job_fields(succeeded) == (job.id, EVALUATION_TASK, "celery", attempts[-1])
        # "received" comes from the main process, before any run: no attempt yet.
        received = [r for r in records if f"[{job.broker_job_id}] received" in r["message"]]
        assert len(received) == len(attempts)
        assert {job_fields(r) for r in received} == {(job.id, EVALUATION_TASK, "celery", None)}
        # "received" comes from the main process, before any run: no attempt yet.
        received = [r for r in records if f"[{job.broker_job_id}] received" in r["message"]]
        assert len(received) == len(attempts)
        assert {job_fields(r) for r in received} == {(job.id, EVALUATION_TASK, "celery", None)}
    [ready] = [r for r in records if r["message"].endswith(" ready.")]
    assert "job_id" not in ready, "no job, no job fields"


# -- (b) the legacy worker ---------------------------------------------------------------


def test_b_legacy_worker_writes_json_lines_with_each_jobs_fields(
    service: JobService, people: dict[str, str], tmp_path: Path
) -> None:
    rollout(service, 0)
    flaky = new_document(service.url, people["user"], FLAKY)
    first = service.create_evaluation_job(flaky, people["agent"])
    assert first.backend == "legacy"
    log_path = tmp_path / "legacy.log"
    env = evaluator_env(service.url, tmp_path)
    command = ["roast_jobs.cli", "--log-format", "json", "legacy-worker", "--poll-interval", "0.2"]
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # The legacy retry is a new row that names the first one.
        retry = wait_until(
            lambda: fetch(service.url, 'SELECT id FROM "Job" WHERE "originalJobId" = %s', first.id),
            60,
        )
        assert retry, log_path.read_text()
        wait_completed(service.url, retry[0][0])
    finally:
        stop_process(proc, 30)
    text = log_path.read_text()
    records = json_lines(text)
    assert PASSWORD not in text

    for job_id, attempt in ((first.id, 1), (retry[0][0], 2)):
        mine = [r for r in records if r.get("job_id") == job_id]
        loggers = {r["logger"] for r in mine}
        assert {"tests.logging_evaluator", "roast_jobs.legacy"} <= loggers, mine
        assert {job_fields(r) for r in mine} == {(job_id, "evaluation", "legacy", attempt)}
        # The poller's own lines about the job carry it too.
        assert any(r["message"].startswith(f"job {job_id} started") for r in mine)
        assert any(r["message"].startswith(f"job {job_id} ended") for r in mine)
        # The poller's own lines about the job carry it too.
        assert any(r["message"].startswith(f"job {job_id} started") for r in mine)
        assert any(r["message"].startswith(f"job {job_id} ended") for r in mine)
    [failed] = [r for r in records if r["message"].startswith(f"job {first.id} failed")]
    assert failed["job_id"] == first.id
    started = [r for r in records if r["message"].startswith("legacy worker started")]
    assert started and "job_id" not in started[0], "the poller itself runs no job"


# -- (c) no password in CLI output, API or worker logs -----------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["db", "current"],
        ["jobs", "status"],
        ["rollout", "status"],
        ["flags", "show"],
        ["api", "--port", "0"],
        ["legacy-worker"],
        ["worker"],
        ["--log-format", "json", "db", "upgrade"],
    ],
    ids=" ".join,
)
def test_c_failing_commands_never_show_the_password(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "roast_jobs.cli", *args],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": UNREACHABLE},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done
    assert PASSWORD not in done.stdout + done.stderr
    assert "postgres:**@127.0.0.1:1/nodb" in done.stderr, done.stderr  # shown, masked


def test_c_the_api_logs_json_lines_and_masks_secrets_in_requests(
    app_db: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "api.log"
    with serve_api(with_password(app_db), log_path, {"ROAST_JOBS_LOG_FORMAT": "json"}) as base:
        httpx.get(f"{base}/api/health/jobs?password=hunter2&page=1", timeout=10)
    text = log_path.read_text()
    records = json_lines(text)
    assert PASSWORD not in text and "hunter2" not in text
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any("/api/health/jobs?password=**&page=1" in r["message"] for r in access), access
    assert any(r["logger"] == "uvicorn.error" for r in records), "startup lines too"


@pytest.fixture
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("_restore_root_logger")
def test_c_errors_and_tracebacks_of_any_command_are_masked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    @click.command("boom-test")
    @click.option("--clean", is_flag=True)
    def boom(clean: bool) -> None:
        if clean:
            raise click.ClickException(f"gave up on {UNREACHABLE}")
        raise RuntimeError(f"unexpected trouble with {UNREACHABLE}")

    cli.add_command(boom)
    try:
        for argv in (["roast-jobs", "boom-test", "--clean"], ["roast-jobs", "boom-test"]):
            monkeypatch.setattr(sys, "argv", argv)
            with pytest.raises(SystemExit) as exited:
                main()
            assert exited.value.code == 1
            err = capsys.readouterr().err
            assert PASSWORD not in err and "postgres:**@127.0.0.1:1/nodb" in err, err
        assert "Traceback" in err and "RuntimeError" in err
    finally:
        cli.commands.pop("boom-test")


# -- (d) the masking function, the filters and the formatter -------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (UNREACHABLE, "postgresql://postgres:**@127.0.0.1:1/nodb"),
        (
            "at postgresql://u:pw@h:5432/db?sslmode=require&sslpassword=x&schema=jobs now",
            "at postgresql://u:**@h:5432/db?sslmode=require&sslpassword=**&schema=jobs now",
        ),
        ("postgresql://u@h/db?sslmode=require", "postgresql://u@h/db?sslmode=require"),
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),
        ("postgresql://u:p%40ss%3Aw%2Fd@h/db", "postgresql://u:**@h/db"),
        ("postgresql://u:p@ss/w:rd@h/db", "postgresql://u:**@h/db"),  # unencoded, still hidden
        ("postgresql://u:pa#ss@h/db", "postgresql://u:**@h/db"),
        ("postgresql+psycopg://u:pw@[::1]:5432/db", "postgresql+psycopg://u:**@[::1]:5432/db"),
        (
            "a postgresql://u:one@h/a, redis://:two@r:6379/0 and amqp://g:three@x// too",
            "a postgresql://u:**@h/a, redis://:**@r:6379/0 and amqp://g:**@x// too",
        ),
        (
            "'postgresql://u:pw@h/db' (postgresql://v:pw2@h/db).",
            "'postgresql://u:**@h/db' (postgresql://v:**@h/db).",
        ),
        (
            "postgresql://h/db?listen_url=postgresql%3A%2F%2Fu%3Apw%40h%2Fdb",
            "postgresql://h/db?listen_url=postgresql://u:**@h/db",
        ),
        ("host=db user=app password=s3cret dbname=x", "host=db user=app password=** dbname=x"),
        ("password='two words' port=5", "password=** port=5"),
        ("PASSWORD = hunter2; api_token=abc", "PASSWORD = **; api_token=**"),
        ("connect app:s3cret@db.internal:5432", "connect app:**@db.internal:5432"),
        (
            'FATAL:  password authentication failed for user "app" at 12:30',
            'FATAL:  password authentication failed for user "app" at 12:30',
        ),
        (
            "mail alice@example.org, see https://example.org/a?b=1#c",
            "mail alice@example.org, see https://example.org/a?b=1#c",
        ),
        ("", ""),
    ],
)
def test_d_mask_secrets(text: str, expected: str) -> None:
    masked = mask_secrets(text)
    assert masked == expected
    assert mask_secrets(masked) == masked, "masking twice changes nothing"


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("tests.logs", logging.INFO, __file__, 1, msg, args, exc_info)


def test_d_json_lines_carry_the_job_and_a_masked_exception() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError(f"cannot reach {UNREACHABLE}")
    except ValueError as exc:
        failure = exc
    with job_context("job-1", EVALUATION_TASK, "celery", 2):
        record = _record("connecting to %s\nnow", UNREACHABLE, exc=failure)
        assert JobContextFilter().filter(record)
    line = formatter.format(record)
    assert "\n" not in line and PASSWORD not in line
    entry = json.loads(line)
    assert job_fields(entry) == ("job-1", EVALUATION_TASK, "celery", 2)
    assert entry["message"] == "connecting to postgresql://postgres:**@127.0.0.1:1/nodb\nnow"
    assert "ValueError: cannot reach postgresql://postgres:**@" in entry["exception"]
    outside = _record("no job here")
    JobContextFilter().filter(outside)
    assert "job_id" not in json.loads(formatter.format(outside))


def test_d_the_secrets_filter_keeps_arguments_a_formatter_may_read() -> None:
    # uvicorn's access formatter unpacks record.args: masking must keep them a tuple.
    access = _record('%s - "%s %s HTTP/%s" %d', "1.2.3.4", "GET", "/x?password=a", "1.1", 200)
    SecretsFilter().filter(access)
    assert access.args == ("1.2.3.4", "GET", "/x?password=**", "1.1", 200)
    # A secret the arguments alone cannot mask (it is in an object's str): flattened.
    wrapped = _record("failed: %s", RuntimeError(UNREACHABLE))
    SecretsFilter().filter(wrapped)
    assert wrapped.args is None and PASSWORD not in wrapped.getMessage()
