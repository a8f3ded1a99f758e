"""Job state changes that meet on the same rows: a legacy failure with its retry next to a
completing run of the same evaluation (no deadlock), and a batch that must not complete
while a retry of its last job waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from roast_jobs.db.session import transaction
from roast_jobs.domain import batches, job_records, runner, sample_data
from roast_jobs.domain.offline_evaluator import OfflineEvaluator
from roast_jobs.legacy import repository
from roast_jobs.service import flags
from roast_jobs.service.job_service import JobService
from tests.domain_support import fresh_database


@pytest.fixture(scope="module")
def service() -> Iterator[JobService]:
    with fresh_database() as url:
        flags.rollout(0, "tests", url)
        svc = JobService(url)
        yield svc
        svc.close()


@pytest.fixture(scope="module")
def people(service: JobService) -> dict[str, str]:
    with transaction(service.url) as s:
        user = sample_data.create_user(s)
        return {"user": user, "agent": sample_data.create_agent(s, user)}


def running_batch(service: JobService, people: dict[str, Any], jobs: int) -> tuple[str, list[str]]:
    """A legacy batch of ``jobs`` jobs on ONE document (as target_count repeats them), all
    RUNNING."""
    with transaction(service.url) as s:
        [doc] = sample_data.create_documents(s, people["user"], 1)
    batch = service.create_batch_jobs(people["agent"], document_ids=[doc])
    ids = [batch.jobs[0].id]
    with transaction(service.url) as s:
        for _ in range(jobs - 1):
            ids.append(repository.create(s, batch.jobs[0].evaluation_id, batch.id))
        s.execute(
            text('UPDATE "AgentEvalBatch" SET "requestedDocumentIds" = :docs WHERE id = :b'),
            {"docs": [doc] * jobs, "b": batch.id},
        )
    for job_id in ids:
        with transaction(service.url) as s:
            assert job_records.mark_running(s, job_id) is not None
    return batch.id, ids


def test_a_failure_with_retry_beside_a_completing_run_of_the_same_evaluation(
    service: JobService, people: dict[str, str]
) -> None:
    _batch_id, (completing, failing) = running_batch(service, people, 2)
    errors: list[BaseException] = []
    holding = threading.Event()

    def complete() -> None:
        # What a completing run does, slowed between its evaluation lock and the batch.
        try:
            with transaction(service.url) as s:
                _status, evaluation_id, batch = job_records.lock_status(s, completing)
                s.execute(text(runner._LOCK_EVALUATION), {"id": evaluation_id})
                holding.set()
                time.sleep(1.0)
                batches.complete_if_done(s, batch)
        except BaseException as exc:
            errors.append(exc)

    completer = threading.Thread(target=complete)
    completer.start()
    assert holding.wait(10)
    try:
        with transaction(service.url) as s:
            retry_id = repository.fail(s, failing, "Request timeout", retryable=True)
    except BaseException as exc:
        errors.append(exc)
        retry_id = None
    completer.join()
    assert errors == [], "the two transactions deadlocked"
    assert retry_id is not None


def test_a_batch_waits_for_the_retry_of_its_last_job(
    service: JobService, people: dict[str, str]
) -> None:
    batch_id, [job_id] = running_batch(service, people, 1)
    with transaction(service.url) as s:
        retry_id = repository.fail(s, job_id, "503 service unavailable", retryable=True)
    assert retry_id is not None
    assert service.batch_progress(batch_id).completed_at is None, "completed before its retry"
    with transaction(service.url) as s:
        assert job_records.mark_running(s, retry_id) is not None
    with transaction(service.url) as s:
        assert repository.fail(s, retry_id, "invalid input", retryable=False) is None
    progress = service.batch_progress(batch_id)
    assert progress.failed == 2 and progress.completed_at is not None


def test_two_runs_of_one_evaluation_saving_at_once_get_versions_1_and_2(
    service: JobService, people: dict[str, Any]
) -> None:
    """The second run waits on the evaluation's lock, then must see the first run's
    version: a max read before the wait gave both version 1 (a unique-key failure)."""
    _batch, (first, _second) = running_batch(service, people, 2)
    with transaction(service.url) as s:
        [evaluation_id] = s.execute(
            text('SELECT "evaluationId" FROM "Job" WHERE id = :id'), {"id": first}
        ).one()
        inputs = runner.load_inputs(s, evaluation_id)
    output = OfflineEvaluator().evaluate(inputs.document, inputs.agent)
    holding, results = threading.Event(), {}

    def save(name: str, wait: threading.Event | None) -> None:
        with transaction(service.url) as s:
            results[name] = runner._write_version(s, evaluation_id, inputs, output).version
            if wait is None:
                holding.set()
                time.sleep(0.5)  # hold the lock while the other run waits for it

    one = threading.Thread(target=save, args=("one", None))
    one.start()
    assert holding.wait(10)
    two = threading.Thread(target=save, args=("two", holding))
    two.start()
    one.join(10)
    two.join(10)
    assert sorted(results.values()) == [1, 2]
