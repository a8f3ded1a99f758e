"""Both backends side by side, as during a rollout: a legacy worker and a Celery worker on
one database. The same evaluation gives the same result on each; a flag change reaches
running processes without a restart; a batch split between them completes once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest

from roast_jobs.db.session import transaction
from roast_jobs.domain import sample_data
from roast_jobs.service.job_service import JobService
from tests.domain_support import fetch, rollout, user_with_agent
from tests.workers import REPO, both_backends, wait_until

EVALUATOR = "tests.apps.scripted_evaluator:ScriptedEvaluator"


@pytest.fixture(scope="module")
def env(app_db: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        "DATABASE_URL": app_db,
        "ROAST_JOBS_EVALUATOR": EVALUATOR,
        "ROAST_TEST_STATE_DIR": str(tmp_path_factory.mktemp("state")),
        "ROAST_JOBS_LEGACY_POLL_INTERVAL": "0.2",
        "PYTHONPATH": str(REPO),
    }


@pytest.fixture(scope="module")
def workers(env: dict[str, str], service: JobService) -> Iterator[None]:
    with both_backends(env, "both", celery_concurrency=2, legacy_max_workers=3):
        yield


@pytest.fixture(scope="module")
def people(app_db: str) -> dict[str, str]:
    return user_with_agent(app_db)


def status(url: str, job_id: str) -> str:
    return fetch(url, 'SELECT status FROM "Job" WHERE id = %s', job_id)[0][0]


def test_the_same_evaluation_gives_the_same_version_on_either_backend(
    service: JobService, workers: None, people: dict[str, str]
) -> None:
    with transaction(service.url) as s:
        [doc] = sample_data.create_documents(s, people["user"], 1, seed=42)
    rollout(service, 0)
    legacy = service.create_evaluation_job(doc, people["agent"])
    assert legacy.backend == "legacy"
    assert wait_until(lambda: status(service.url, legacy.id) == "COMPLETED", 60)
    rollout(service, 100)
    celery = service.create_evaluation_job(doc, people["agent"])
    assert celery.backend == "celery"
    assert wait_until(lambda: status(service.url, celery.id) == "COMPLETED", 60)
    rows = fetch(
        service.url,
        "SELECT v.version, v.grade, v.summary, v.analysis, j.backend, "
        'array(SELECT row(c.description, c.level, c.importance, h."startOffset", '
        'h."endOffset", h."quotedText")::text FROM "EvaluationComment" c '
        'JOIN "EvaluationHighlight" h ON h.id = c."highlightId" '
        'WHERE c."evaluationVersionId" = v.id ORDER BY h."startOffset", c.description) '
        'FROM "EvaluationVersion" v JOIN "Job" j ON j."evaluationVersionId" = v.id '
        'WHERE v."evaluationId" = %s ORDER BY v.version',
        legacy.evaluation_id,
    )
    assert [(r[0], r[4]) for r in rows] == [(1, "legacy"), (2, "celery")]
    assert rows[0][1:4] == rows[1][1:4] and rows[0][5] == rows[1][5]
    assert rows[0][5], "the evaluation has comments to compare"


CREATOR = """
import sys, time
from roast_jobs.db.session import transaction
from roast_jobs.service.job_service import JobService
url, agent, docs = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
service = JobService(url)
for doc in docs:
    job = service.create_evaluation_job(doc, agent)
    print(f"{time.time():.3f} {job.backend}", flush=True)
    time.sleep(0.1)
"""


def test_a_flag_change_reaches_a_running_process_within_five_seconds(
    service: JobService, people: dict[str, str], env: dict[str, str]
) -> None:
    rollout(service, 0)
    with transaction(service.url) as s:
        docs = sample_data.create_documents(s, people["user"], 120)
    creator = subprocess.Popen(
        [sys.executable, "-c", CREATOR, service.url, people["agent"], ",".join(docs)],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    try:
        assert creator.stdout is not None
        for line in creator.stdout:
            when, backend = line.split()
            lines.append((float(when), backend))
            if len(lines) == 20:
                flipped_at = time.time()
                rollout(service, 100)
        creator.wait(30)
    finally:
        creator.kill()
    assert creator.returncode == 0
    before = [b for t, b in lines if t < flipped_at]
    assert before and set(before) == {"legacy"}
    first_celery = min(t for t, b in lines if b == "celery")
    assert first_celery - flipped_at <= 5.0
    # Once seen, the change holds: everything created later goes to Celery.
    assert all(b == "celery" for t, b in lines if t >= first_celery)


def test_a_batch_split_between_backends_completes_once_when_its_last_job_ends(
    service: JobService, workers: None, people: dict[str, str]
) -> None:
    rollout(service, 50)
    with transaction(service.url) as s:
        docs = sample_data.create_documents(s, people["user"], 40, seed=7)
    batch = service.create_batch_jobs(people["agent"], document_ids=docs, name="split")
    backends = {j.backend for j in batch.jobs}
    assert backends == {"legacy", "celery"}
    done = wait_until(lambda: service.batch_progress(batch.id).is_complete, 90)
    assert done, service.batch_progress(batch.id)
    progress = service.batch_progress(batch.id)
    assert progress.completed == 40 and progress.legacy + progress.celery == 40
    [(completed_at, last_job)] = fetch(
        service.url,
        'SELECT b."completedAt", (SELECT max(j."completedAt") FROM "Job" j '
        'WHERE j."agentEvalBatchId" = b.id) FROM "AgentEvalBatch" b WHERE b.id = %s',
        batch.id,
    )
    # Recorded by the transaction of the job that ended last, not by a sweep later.
    assert completed_at == last_job
    time.sleep(0.5)
    assert fetch(
        service.url, 'SELECT "completedAt" FROM "AgentEvalBatch" WHERE id = %s', batch.id
    ) == [(completed_at,)]


def test_a_job_deleted_while_it_runs_does_not_stop_the_legacy_worker(
    service: JobService, workers: None, people: dict[str, str]
) -> None:
    rollout(service, 0)
    with transaction(service.url) as s:
        doomed = sample_data.create_document(s, people["user"], "sleep 2", "Going away soon.")
        [later] = sample_data.create_documents(s, people["user"], 1, seed=99)
    job = service.create_evaluation_job(doomed, people["agent"])
    assert wait_until(lambda: status(service.url, job.id) == "RUNNING", 30)
    # The document goes, and its evaluation and job with it (ON DELETE CASCADE).
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute('DELETE FROM "Document" WHERE id = %s', (doomed,))
    time.sleep(3)  # the run ends and finds no job to record its outcome on
    after = service.create_evaluation_job(later, people["agent"])
    assert wait_until(lambda: status(service.url, after.id) == "COMPLETED", 30), (
        "the legacy worker stopped claiming"
    )
