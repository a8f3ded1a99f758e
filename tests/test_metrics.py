"""`roast-jobs metrics`: scraped over HTTP while a legacy worker and a Celery worker run,
every figure checked against the database; histogram buckets exact at their bounds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from roast_jobs.db.session import transaction
from roast_jobs.domain import sample_data
from roast_jobs.metrics import DURATION_BUCKETS, JobMetrics
from roast_jobs.migrator import Direction, migrate
from roast_jobs.service.job_service import JobService
from tests.domain_support import fetch, fresh_database, rollout
from tests.workers import REPO, both_backends, stop_process, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def env(app_db: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        "DATABASE_URL": app_db,
        "ROAST_JOBS_EVALUATOR": "tests.apps.evaluators:CountingEvaluator",
        "ROAST_TEST_STATE_DIR": str(tmp_path_factory.mktemp("calls")),
        "ROAST_JOBS_LEGACY_POLL_INTERVAL": "0.2",
        "PYTHONPATH": str(REPO),
    }


@pytest.fixture(scope="module")
def exporter(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`roast-jobs metrics --port 0` as a subprocess; yields its /metrics URL."""
    log = Path(tmp_path_factory.mktemp("exporter")) / "stderr"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "roast_jobs.cli", "metrics", "--port", "0"],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        found = wait_until(lambda: re.search(r"http://\S+/metrics", log.read_text()), 30)
        assert found, log.read_text()
        yield found.group(0)
    finally:
        stop_process(proc)


def scrape(url: str) -> Samples:
    body = httpx.get(url, timeout=30).raise_for_status().text
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_a_scrape_during_a_run_agrees_with_the_database(
    service: JobService, env: dict[str, str], exporter: str
) -> None:
    with transaction(service.url) as s:
        user = sample_data.create_user(s)
        agents = [sample_data.create_agent(s, user, name=f"a{i}") for i in range(3)]
        docs = sample_data.create_documents(s, user, 8)
    rollout(service, 0)
    legacy = [j.id for d in docs[:4] for j in service.create_evaluation_jobs(d, agents)]
    moved = migrate(Direction.LEGACY_TO_CELERY, service.url, limit=5, service=service)
    assert moved.moved == 5
    rollout(service, 50)
    split = [j.id for d in docs[4:] for j in service.create_evaluation_jobs(d, agents)]
    jobs = legacy + split

    with both_backends(env, "metrics", celery_concurrency=2, legacy_max_workers=3) as worker:

        def done() -> bool:
            sql = "SELECT count(*) FROM \"Job\" WHERE id = ANY(%s) AND status = 'COMPLETED'"
            return fetch(service.url, sql, jobs)[0][0] == len(jobs)

        assert wait_until(done, 180, every=0.5), worker.log()[-3000:]
        samples = scrape(exporter)  # the workers still run

    by_state = {
        (backend, status.lower()): count
        for backend, status, count in fetch(
            service.url, 'SELECT backend, status, count(*) FROM "Job" GROUP BY 1, 2'
        )
    }
    assert set(by_state) == {("legacy", "completed"), ("celery", "completed")}
    for backend in ("legacy", "celery"):
        key = {"task": "evaluation", "backend": backend}
        completed = by_state[(backend, "completed")]
        assert value(samples, "roast_jobs_jobs", state="completed", **key) == completed
        assert value(samples, "roast_jobs_jobs", state="pending", **key) == 0
        assert value(samples, "roast_jobs_jobs_created_total", **key) == completed
        assert value(samples, "roast_jobs_jobs_completed_total", **key) == completed
        assert value(samples, "roast_jobs_job_runs_total", **key) == completed  # one run each
        assert value(samples, "roast_jobs_jobs_retried_total", **key) == 0
        assert value(samples, "roast_jobs_job_duration_seconds_count", **key) == completed
        inf = value(samples, "roast_jobs_job_duration_seconds_bucket", le="+Inf", **key)
        assert inf == completed
        assert value(samples, "roast_jobs_job_pickup_latency_seconds_count", **key) == completed
        total = fetch(
            service.url,
            'SELECT sum(extract(epoch FROM "completedAt" - "startedAt")) FROM "Job" '
            "WHERE backend = %s",
            backend,
        )[0][0]
        assert value(samples, "roast_jobs_job_duration_seconds_sum", **key) == pytest.approx(
            float(total)
        )
    assert value(
        samples, "roast_jobs_migrated_jobs_total", from_backend="legacy", to_backend="celery",
        status="moved",
    ) == 5  # fmt: skip
    assert value(samples, "roast_jobs_rollout_percent") == 50
    # The Celery worker's consumer is alive, and nothing waits.
    assert value(samples, "roast_jobs_queue_live_consumers", queue="evaluation") >= 1
    assert value(samples, "roast_jobs_queue_messages", queue="evaluation", state="waiting") == 0
    assert value(samples, "roast_jobs_oldest_pending_job_age_seconds") == 0


def test_histogram_buckets_count_values_at_their_bound_and_queue_states() -> None:
    """A run of exactly 1 s falls in the le="1.0" bucket; the queue gauges split waiting,
    scheduled, active and dead messages."""
    with fresh_database() as url:
        svc = JobService(url)
        try:
            with transaction(url) as s:
                user = sample_data.create_user(s)
                agent = sample_data.create_agent(s, user)
                docs = sample_data.create_documents(s, user, 3)
            rollout(svc, 100)
            jobs = [svc.create_evaluation_job(d, agent) for d in docs]
            with psycopg.connect(url, autocommit=True) as conn:
                for job, seconds in zip(jobs[:2], (1.0, 5.5), strict=True):
                    conn.execute(
                        "UPDATE \"Job\" SET status = 'COMPLETED', "
                        '"startedAt" = "createdAt", '
                        '"completedAt" = "createdAt" + make_interval(secs => %s) WHERE id = %s',
                        (seconds, job.id),
                    )
                schema = os.environ["ROAST_JOBS_BROKER_SCHEMA"]
                conn.execute(  # the first two ran: their messages were acked
                    f'DELETE FROM "{schema}".message WHERE task_id = ANY(%s)',
                    ([j.broker_job_id for j in jobs[:2]],),
                )
                conn.execute(  # the third job's message: leased by a worker
                    f'UPDATE "{schema}".message SET lease_owner = %s, '
                    "visible_at = now() + interval '30 s' WHERE task_id = %s",
                    ("w1", jobs[2].broker_job_id),
                )
            samples = collect_samples(JobMetrics(url))
        finally:
            svc.close()
    key = {"task": "evaluation", "backend": "celery"}
    buckets = {
        float(le): samples[("roast_jobs_job_duration_seconds_bucket", lbl)]
        for (name, lbl) in samples
        if name == "roast_jobs_job_duration_seconds_bucket"
        and dict(lbl)["backend"] == "celery"
        and (le := dict(lbl)["le"]) != "+Inf"
    }
    assert buckets[0.5] == 0 and buckets[1.0] == 1 and buckets[5.0] == 1
    assert buckets[15.0] == 2 and len(buckets) == len(DURATION_BUCKETS)
    assert value(samples, "roast_jobs_job_duration_seconds_sum", **key) == pytest.approx(6.5)
    assert value(samples, "roast_jobs_queue_messages", queue="evaluation", state="active") == 1
    assert value(samples, "roast_jobs_queue_messages", queue="evaluation", state="waiting") == 0


def collect_samples(collector: JobMetrics) -> Samples:
    out: Samples = {}
    for family in collector.collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_database_without_the_broker_schema_reads_as_empty_and_stays_so() -> None:
    schema = os.environ["ROAST_JOBS_BROKER_SCHEMA"]
    with fresh_database() as url:
        samples = collect_samples(JobMetrics(url))
        left = fetch(url, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", schema)
    assert left == [(0,)]
    assert value(samples, "roast_jobs_rollout_percent") == 0
    assert not [name for name, _ in samples if name.startswith("roast_jobs_queue_")]
