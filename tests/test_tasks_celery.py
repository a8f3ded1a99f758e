"""The domain's Celery tasks in a real worker: evaluations (retries, time limits,
cancellation, bad payloads), imports, and the batch fan-out surviving a SIGKILLed worker."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from roast_jobs.config import get_settings
from roast_jobs.db.session import transaction
from roast_jobs.domain import job_records, sample_data
from roast_jobs.domain.ephemeral import EphemeralAgent, InlineDocument
from roast_jobs.service import flags
from roast_jobs.service.job_service import EVALUATION_TASK, JobService
from tests.apps.scripted_evaluator import calls
from tests.domain_support import fetch, rollout, user_with_agent
from tests.workers import CeleryWorker, wait_until

ARTICLE = b"""<!doctype html><html><head><title>On Calibration | Blog</title>
<meta name="author" content="Ada Forecaster">
<meta property="article:published_time" content="2025-06-01T10:00:00Z"></head>
<body><article><h1>On Calibration</h1>
<p>Calibrated forecasters say 70% and are right about 70% of the time. This essay explains
how to check your own calibration with a spreadsheet and a year of predictions.</p>
<h2>Method</h2><p>Write down each prediction with a probability, wait, score them, and plot
the outcomes by bucket. See <a href="https://example.org/data">the data</a>.</p>
</article></body></html>"""


class Pages(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.path == "/article":
            self._send(200, ARTICLE)
        elif self.path == "/slow-article":
            time.sleep(3)
            self._send(200, ARTICLE)
        elif self.path == "/short":
            self._send(200, b"<html><body><p>Too short.</p></body></html>")
        elif self.path == "/huge":
            self._send(200, b"<html><body>" + b"<p>word </p>" * 400_000 + b"</body></html>")
        elif self.path == "/json":
            self._send(200, b'{"a": 1}', "application/json")
        elif self.path == "/loop":
            self._redirect("/loop2")
        elif self.path == "/loop2":
            self._redirect("/loop")
        elif self.path == "/to-private":
            self._redirect(f"http://127.0.0.2:{port}/article")
        else:
            self._send(404, b"not here")

    def _send(self, code: int, body: bytes, kind: str = "text/html; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, where: str) -> None:
        self.send_response(302)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def pages() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def service(app_db: str) -> Iterator[JobService]:
    svc = JobService(app_db)
    svc.manager  # noqa: B018 - the broker schema
    flags.rollout(100, "tests", app_db)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evaluator-state")


def worker_env(url: str, state_dir: Path, **more: str) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "ROAST_JOBS_EVALUATOR": "tests.apps.scripted_evaluator:ScriptedEvaluator",
        "ROAST_TEST_STATE_DIR": str(state_dir),
        "ROAST_JOBS_RETRY_DELAY": "0.25",
        # More runs than Celery's default max_retries (3) allows: the row's count rules.
        "ROAST_JOBS_EVALUATION_MAX_ATTEMPTS": "5",
        "ROAST_JOBS_IMPORT_ALLOW_NETWORKS": "127.0.0.1/32",
        "ROAST_JOBS_IMPORT_MAX_BYTES": "1000000",
        **more,
    }


@pytest.fixture(scope="module")
def worker(app_db: str, state_dir: Path, service: JobService) -> Iterator[CeleryWorker]:
    w = CeleryWorker(
        "domain",
        app="roast_jobs.tasks.worker",
        concurrency=2,
        args=["-Q", "evaluation,import,maintenance"],
        env=worker_env(app_db, state_dir),
    )
    w.start(timeout=120)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def people(app_db: str) -> dict[str, str]:
    return user_with_agent(app_db)


def document(url: str, user: str, title: str, content: str | None = None) -> str:
    with transaction(url) as s:
        return sample_data.create_document(
            s, user, title, content or sample_data.sample_text(len(title))[1]
        )


def job_row(url: str, job_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        cur = conn.execute('SELECT * FROM "Job" WHERE id = %s', (job_id,))
        names = [c.name for c in cur.description or []]
        row = cur.fetchone()
        assert row is not None
        return dict(zip(names, row, strict=True))


def wait_status(url: str, job_id: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
    row = wait_until(lambda: (r := job_row(url, job_id))["status"] in statuses and r, timeout)
    assert row, f"job {job_id} is {job_row(url, job_id)['status']}, not {statuses}"
    return row


def versions(url: str, evaluation_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            'SELECT version, grade, summary FROM "EvaluationVersion" WHERE "evaluationId" = %s '
            "ORDER BY version",
            (evaluation_id,),
        ).fetchall()


def starts(state_dir: Path, doc: str) -> list[float]:
    return [when for when, d, _pid, event in calls(state_dir) if d == doc and event == "start"]


def test_an_evaluation_runs_and_writes_a_new_version_each_time(
    service: JobService, worker: CeleryWorker, people: dict[str, str]
) -> None:
    doc = document(service.url, people["user"], "A plain essay")
    first = service.create_evaluation_job(doc, people["agent"])
    assert first.backend == "celery"
    row = wait_status(service.url, first.id, "COMPLETED")
    assert row["attempts"] == 1 and isinstance(row["durationInSeconds"], int)
    assert row["evaluationVersionId"] and row["logs"].startswith(f"# Job {first.id}")
    with psycopg.connect(service.url) as conn:
        content = conn.execute(
            'SELECT content FROM "DocumentVersion" WHERE "documentId" = %s', (doc,)
        ).fetchone()[0]
        highlights = conn.execute(
            'SELECT h."startOffset", h."endOffset", h."quotedText", h."isValid" '
            'FROM "EvaluationComment" c JOIN "EvaluationHighlight" h ON h.id = c."highlightId" '
            'WHERE c."evaluationVersionId" = %s',
            (row["evaluationVersionId"],),
        ).fetchall()
    assert highlights, "the offline evaluator comments on the sample text"
    for start, end, quoted, valid in highlights:
        assert content[start:end] == quoted and valid
    second = service.create_evaluation_job(doc, people["agent"])
    wait_status(service.url, second.id, "COMPLETED")
    got = versions(service.url, first.evaluation_id)
    assert [v[0] for v in got] == [1, 2]
    assert got[0][1:] == got[1][1:], "the same input gives the same evaluation"


def test_retryable_errors_are_retried_with_backoff_up_to_the_limit(
    service: JobService, worker: CeleryWorker, people: dict[str, str], state_dir: Path
) -> None:
    always = document(service.url, people["user"], "fail always: 503 service unavailable")
    once = document(service.url, people["user"], "fail 1: rate limit exceeded")
    failing = service.create_evaluation_job(always, people["agent"])
    flaky = service.create_evaluation_job(once, people["agent"])
    row = wait_status(service.url, failing.id, "FAILED")
    assert row["attempts"] == 5 and row["error"] == "503 service unavailable"
    assert row["originalJobId"] is None, "the Celery path retries the same row"
    runs = starts(state_dir, always)
    assert len(runs) == 5
    # Equal-jitter backoff from 0.25 s: each wait is at least half of 0.25 s doubled n times.
    for n, (before, after) in enumerate(itertools.pairwise(runs)):
        assert after - before >= 0.125 * 2**n, runs
    row = wait_status(service.url, flaky.id, "COMPLETED")
    assert row["attempts"] == 2 and row["error"] is None
    assert len(starts(state_dir, once)) == 2


def test_a_retry_and_the_end_of_its_delivery_commit_together(
    service: JobService, people: dict[str, str], state_dir: Path
) -> None:
    """The run fails retryably while the worker's main process is stopped (so it cannot
    ack): the retry is committed and the failed delivery is gone with it. Killed there,
    the worker leaves one message, the retry, not a second delivery to run next to it."""
    rollout(service, 100)
    doc = document(service.url, people["user"], "fail 1 on release: 503 service unavailable")
    stalled = CeleryWorker(
        "stalled", app="roast_jobs.tasks.worker", concurrency=1, args=["-Q", "evaluation"],
        env=worker_env(service.url, state_dir, ROAST_JOBS_RETRY_DELAY="5"),
    )  # fmt: skip
    with stalled:
        job = service.create_evaluation_job(doc, people["agent"])
        wait_status(service.url, job.id, "RUNNING")
        assert stalled.proc is not None
        os.kill(stalled.proc.pid, signal.SIGSTOP)  # the main process: no ack, no renewal
        (state_dir / f"release-{doc}").touch()  # the child's run fails now
        row = wait_until(
            lambda: (r := job_row(service.url, job.id))["status"] == "PENDING" and r, 60
        )
        assert row and row["attempts"] == 1 and row["error"] == "503 service unavailable"
        schema = get_settings().broker_schema
        left = fetch(service.url, f'SELECT count(*) FROM "{schema}".message WHERE task_id = %s',
                     job.broker_job_id)  # fmt: skip
        assert left == [(1,)], "the failed delivery is still there beside its retry"
        stalled.kill()
    with CeleryWorker(
        "after", app="roast_jobs.tasks.worker", concurrency=1, args=["-Q", "evaluation"],
        env=worker_env(service.url, state_dir),
    ):  # fmt: skip
        row = wait_status(service.url, job.id, "COMPLETED", timeout=120)
    assert row["attempts"] == 2 and len(starts(state_dir, doc)) == 2


def test_non_retryable_errors_fail_at_once(
    service: JobService, worker: CeleryWorker, people: dict[str, str], state_dir: Path
) -> None:
    doc = document(service.url, people["user"], "fail always: invalid input: no text")
    job = service.create_evaluation_job(doc, people["agent"])
    row = wait_status(service.url, job.id, "FAILED")
    assert row["attempts"] == 1 and row["error"] == "invalid input: no text"
    time.sleep(1.5)  # a retry would have run by now
    assert len(starts(state_dir, doc)) == 1
    assert service.manager.get_job(job.broker_job_id).state.value == "failed"


def test_a_job_cancelled_before_it_starts_does_nothing(
    service: JobService, worker: CeleryWorker, people: dict[str, str], state_dir: Path
) -> None:
    doc = document(service.url, people["user"], "Never evaluated")
    with transaction(service.url) as session:
        [job] = service.create_evaluation_jobs(doc, [people["agent"]], session=session)
        # Cancelled in the same transaction: its message reaches the worker anyway.
        session.flush()
        job_records.cancel(session, job.id, reason="changed my mind")
    result = wait_until(
        lambda: service.manager.get_job(job.broker_job_id).state.value == "completed", 30
    )
    assert result
    assert service.manager.get_job(job.broker_job_id).result == {
        "job_id": job.id,
        "status": "skipped",
    }
    row = job_row(service.url, job.id)
    assert row["status"] == "CANCELLED" and row["attempts"] == 0
    assert versions(service.url, job.evaluation_id) == []
    assert starts(state_dir, doc) == []


def test_a_run_past_its_time_limit_fails_without_retry(
    service: JobService,
    worker: CeleryWorker,
    people: dict[str, str],
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The limit travels with the message, from the creating process's settings.
    monkeypatch.setattr(get_settings(), "evaluation_time_limit", 1.0)
    doc = document(service.url, people["user"], "sleep 4")
    job = service.create_evaluation_job(doc, people["agent"])
    row = wait_status(service.url, job.id, "FAILED", timeout=30)
    assert row["error"] == "evaluation exceeded its time limit of 1 s"
    assert row["attempts"] == 1
    time.sleep(1.5)
    assert len(starts(state_dir, doc)) == 1


def test_cancelling_a_running_job_revokes_it_and_it_stays_cancelled(
    service: JobService, worker: CeleryWorker, people: dict[str, str], state_dir: Path
) -> None:
    doc = document(service.url, people["user"], "sleep 6")
    job = service.create_evaluation_job(doc, people["agent"])
    wait_status(service.url, job.id, "RUNNING")
    assert wait_until(lambda: starts(state_dir, doc), 10)
    status = service.cancel_job(job.id, reason="too slow")
    assert status["status"] == "CANCELLED"
    time.sleep(7)  # past the evaluator's end, had it kept running
    row = job_row(service.url, job.id)
    assert row["status"] == "CANCELLED" and row["evaluationVersionId"] is None
    assert versions(service.url, job.evaluation_id) == []


def test_an_invalid_payload_fails_the_job_at_once(
    service: JobService, worker: CeleryWorker, people: dict[str, str]
) -> None:
    flags.rollout(0, "tests", service.url)
    service.flags.invalidate()
    try:
        job = service.create_evaluation_job(
            document(service.url, people["user"], "Bad payload"), people["agent"]
        )
    finally:
        flags.rollout(100, "tests", service.url)
        service.flags.invalidate()
    # The job is this message's (a Celery job with its task id): a message that does not
    # own its job changes nothing (test_migrator).
    task_id = str(uuid.uuid4())
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute(
            'UPDATE "Job" SET backend = \'celery\', "brokerJobId" = %s WHERE id = %s',
            (task_id, job.id),
        )
    sent = service.app.send_task(
        EVALUATION_TASK,
        kwargs={"job_id": job.id, "evaluation_id": "not an id!", "extra": 1},
        queue="evaluation",
        task_id=task_id,
    )
    row = wait_status(service.url, job.id, "FAILED")
    assert row["error"].startswith("invalid EvaluationPayload payload: evaluation_id:")
    assert "extra: Extra inputs are not permitted" in row["error"]
    assert row["attempts"] == 0
    assert wait_until(lambda: service.manager.get_job(sent.id).state.value == "failed", 10)


def test_import_of_an_article_stores_it_and_queues_its_evaluations(
    service: JobService, worker: CeleryWorker, people: dict[str, str], pages: str
) -> None:
    created = service.create_import_job(f"{pages}/article", [people["agent"]])
    assert created.backend == "celery" and created.created
    job = wait_until(
        lambda: (
            (j := service.manager.get_job(created.task_id)).state.value in ("completed", "failed")
            and j
        ),
        30,
    )
    assert job and job.state.value == "completed", job
    result = job.result
    assert result["document"]["title"] == "On Calibration"
    assert result["document"]["authors"] == ["Ada Forecaster"]
    [evaluation_job] = result["jobs"]
    wait_status(service.url, evaluation_job["id"], "COMPLETED")
    with psycopg.connect(service.url) as conn:
        row = conn.execute(
            'SELECT version, "importUrl", urls, content FROM "DocumentVersion" '
            'WHERE "documentId" = %s',
            (result["documentId"],),
        ).fetchone()
    assert row[:3] == (1, f"{pages}/article", [f"{pages}/article"])
    assert "## Method" in row[3]


def test_one_import_of_a_url_is_in_flight_at_a_time(
    service: JobService, worker: CeleryWorker, pages: str
) -> None:
    first = service.create_import_job(f"{pages}/slow-article")
    second = service.create_import_job(f"{pages}/slow-article")
    assert first.created and not second.created
    assert second.task_id == first.task_id
    assert wait_until(lambda: service.manager.get_job(first.task_id).state.value == "completed", 30)


@pytest.mark.parametrize(
    ("path", "reason", "words"),
    [
        ("/short", "too_short", "invalid document"),
        ("/huge", "too_large", "larger than"),
        ("/json", "not_html", "application/json"),
        ("/loop", "redirect_loop", "loop"),
        ("/to-private", "private_address", "127.0.0.2"),
    ],
)
def test_imports_that_cannot_succeed_fail_with_their_reason_and_store_nothing(
    service: JobService, worker: CeleryWorker, pages: str, path: str, reason: str, words: str
) -> None:
    before = _documents(service.url)
    created = service.create_import_job(f"{pages}{path}")
    job = wait_until(
        lambda: (j := service.manager.get_job(created.task_id)).state.value == "failed" and j,
        30,
    )
    assert job, service.manager.get_job(created.task_id)
    assert reason in job.error and words in job.error, job.error
    assert job.retry_count == 0
    assert _documents(service.url) == before


def _documents(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute('SELECT count(*) FROM "Document"').fetchone()[0]  # type: ignore[index]


def test_a_batch_of_5000_fans_out_once_through_a_sigkilled_worker(
    service: JobService, people: dict[str, str], state_dir: Path
) -> None:
    url = service.url
    # 1%: the batch task runs on Celery; almost every job lands on the (idle) legacy side.
    flags.rollout(1, "tests", url)
    service.flags.invalidate()
    with transaction(url) as s:
        docs = sample_data.create_documents(s, people["user"], 5000)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.15); RETURN NULL; END $$"
        )
        admin.execute(
            'CREATE TRIGGER slow_insert AFTER INSERT ON "Job" '
            "FOR EACH STATEMENT EXECUTE FUNCTION slow_insert()"
        )
    env = worker_env(url, state_dir, ROAST_JOBS_BATCH_CHUNK_SIZE="100",
                     ROAST_JOBS_LEASE_SECONDS="3")  # fmt: skip
    first = CeleryWorker("batch-a", app="roast_jobs.tasks.worker", concurrency=1,
                         args=["-Q", "batch"], env=env)  # fmt: skip
    second = CeleryWorker("batch-b", app="roast_jobs.tasks.worker", concurrency=1,
                          args=["-Q", "batch"], env=env)  # fmt: skip
    try:
        batch = service.create_batch_jobs(people["agent"], document_ids=docs)
        assert batch.fan_out == "task"
        first.start(timeout=120)
        made = wait_until(lambda: service.batch_progress(batch.id).created >= 1000, 60)
        assert made
        first.kill()
        half = service.batch_progress(batch.id).created
        assert half < 5000, "the fan-out finished before the kill"
        second.start(timeout=120)
        assert wait_until(lambda: service.batch_progress(batch.id).created >= 5000, 120)
        assert wait_until(
            lambda: service.manager.get_job(batch.task_id).state.value == "completed", 30
        )
    finally:
        first.kill()
        second.stop()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute('DROP TRIGGER slow_insert ON "Job"')
            admin.execute("DROP FUNCTION slow_insert()")
        flags.rollout(100, "tests", url)
        service.flags.invalidate()
    progress = service.batch_progress(batch.id)
    assert progress.total == progress.created == 5000
    with psycopg.connect(url) as conn:
        per_position = conn.execute(
            'SELECT count(DISTINCT "evaluationId"), count(*) FROM "Job" '
            'WHERE "agentEvalBatchId" = %s',
            (batch.id,),
        ).fetchone()
    assert per_position == (5000, 5000), "one job per document, none twice"
    # The Celery ones each had their message: the module's worker runs them all.
    assert 0 < progress.celery < 200
    assert wait_until(lambda: service.batch_progress(batch.id).completed == progress.celery, 60)


def test_the_maintenance_task_reconciles_and_sweeps_batches(
    service: JobService, worker: CeleryWorker, people: dict[str, str]
) -> None:
    doc = document(service.url, people["user"], "Lost message")
    job = service.create_evaluation_job(doc, people["agent"])
    wait_status(service.url, job.id, "COMPLETED")
    # A PENDING Celery row whose message is gone, 11 minutes old (made so in its own
    # transaction: the worker must not run it first).
    schema = get_settings().broker_schema
    with transaction(service.url) as session:
        [lost] = service.create_evaluation_jobs(doc, [people["agent"]], session=session)
        session.execute(
            text(f'DELETE FROM "{schema}".message WHERE task_id = :t'),
            {"t": lost.broker_job_id},
        )
        session.execute(
            text(
                """UPDATE "Job" SET "updatedAt" = CURRENT_TIMESTAMP - interval '11 minutes'
                    WHERE id = :id"""
            ),
            {"id": lost.id},
        )
    sent = service.app.send_task("roast_jobs.maintenance", queue="maintenance")
    done = wait_until(
        lambda: (j := service.manager.get_job(sent.id)).state.value == "completed" and j, 30
    )
    assert done, service.manager.get_job(sent.id)
    assert [r["job_id"] for r in done.result["reconciled"]] == [lost.id]
    assert job_row(service.url, lost.id)["status"] == "FAILED"


def test_a_failing_maintenance_step_leaves_the_others_to_run(
    service: JobService, worker: CeleryWorker, people: dict[str, str]
) -> None:
    """The batch sweep fails (a trigger refuses its update once): the clean-up after it
    still deletes an expired ephemeral batch, and the task fails naming the step."""
    rollout(service, 0)  # jobs on the legacy side, which nobody runs here: made done below
    try:
        done_batch = service.create_batch_jobs(
            people["agent"], document_ids=[document(service.url, people["user"], "Swept")],
            user_id=people["user"],
        )  # fmt: skip
        gone = service.create_batch_jobs(
            ephemeral_agent=EphemeralAgent(name="throwaway"),
            inline_documents=[InlineDocument("Ephemeral", sample_data.sample_text(7)[1])],
            user_id=people["user"],
        )
    finally:
        rollout(service, 100)
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute(
            """UPDATE "Job" SET status = 'COMPLETED', "completedAt" = CURRENT_TIMESTAMP
                WHERE "agentEvalBatchId" = ANY(%s)""",
            ([done_batch.id, gone.id],),
        )
        conn.execute(
            """UPDATE "AgentEvalBatch" SET "expiresAt" = CURRENT_TIMESTAMP - interval '1 hour'
                WHERE id = %s""",
            (gone.id,),
        )
    _fail_once(service.url, "sweep_blip", "AgentEvalBatch",
               f"NEW.id = '{done_batch.id}' AND NEW.\"completedAt\" IS NOT NULL",
               "sweep refused")  # fmt: skip
    sent = service.app.send_task("roast_jobs.maintenance", queue="maintenance")
    failed = wait_until(
        lambda: (j := service.manager.get_job(sent.id)).state.value == "failed" and j, 60
    )
    assert failed, service.manager.get_job(sent.id)
    assert "failed: {'batches_completed': " in failed.error and "sweep refused" in failed.error
    assert f"'ephemeral_batches_deleted': ['{gone.id}']" in failed.error
    assert fetch(service.url, 'SELECT 1 FROM "AgentEvalBatch" WHERE id = %s', gone.id) == []


def _fail_once(url: str, name: str, table: str, when: str, message: str) -> None:
    """A trigger that raises ``message`` the first time ``when`` holds for a row of
    ``table``: a real database error at one point of a run, once (a sequence counts, as
    it is not rolled back with the failed transaction)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SEQUENCE {name}_fired")
        conn.execute(
            f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF ({when}) AND nextval('{name}_fired') = 1 THEN
                    RAISE EXCEPTION '{message}';
                  END IF;
                  RETURN NEW;
                END $$"""
        )
        conn.execute(
            f'CREATE TRIGGER {name} BEFORE INSERT OR UPDATE ON "{table}" '
            f"FOR EACH ROW EXECUTE FUNCTION {name}()"
        )


def test_a_database_error_before_the_run_starts_is_retried(
    service: JobService, worker: CeleryWorker, people: dict[str, str]
) -> None:
    doc = document(service.url, people["user"], "Blip before the start")
    with transaction(service.url) as s:
        evaluation = sample_data.ensure_evaluations(s, [doc], people["agent"])[doc]
    _fail_once(
        service.url,
        "blip_start",
        "Job",
        f"NEW.\"evaluationId\" = '{evaluation}' AND NEW.status = 'RUNNING'",
        "connection reset by peer",
    )
    job = service.create_evaluation_job(doc, people["agent"])
    row = wait_status(service.url, job.id, "COMPLETED", "FAILED")
    assert row["status"] == "COMPLETED", row
    # The failed first try rolled back its RUNNING mark: one run counted.
    assert row["attempts"] == 1


def test_a_database_error_while_saving_the_result_is_retried(
    service: JobService, worker: CeleryWorker, people: dict[str, str]
) -> None:
    doc = document(service.url, people["user"], "Blip while saving")
    with transaction(service.url) as s:
        evaluation = sample_data.ensure_evaluations(s, [doc], people["agent"])[doc]
    _fail_once(
        service.url,
        "blip_save",
        "EvaluationVersion",
        f"NEW.\"evaluationId\" = '{evaluation}'",
        "503 service unavailable",
    )
    job = service.create_evaluation_job(doc, people["agent"])
    row = wait_status(service.url, job.id, "COMPLETED", "FAILED")
    assert row["status"] == "COMPLETED", row
    assert row["attempts"] == 2
    assert [v[0] for v in versions(service.url, evaluation)] == [1]
