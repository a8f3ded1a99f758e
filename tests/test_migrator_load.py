"""The migrator under load, killed: thousands of jobs moved while a legacy worker and a
Celery worker run, with migrators SIGKILLed mid-run and others started beside them.
Every job must run exactly once (counted by the evaluator, per evaluation), finish,
and carry one migration record per move it made."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roast_jobs.db.session import transaction
from roast_jobs.domain import sample_data
from roast_jobs.service.job_service import JobService
from tests.apps.evaluators import read_calls
from tests.domain_support import fetch, rollout
from tests.workers import REPO, both_backends, wait_until

AGENTS = 50


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calls")


@pytest.fixture(scope="module")
def env(app_db: str, state: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": app_db,
        "ROAST_JOBS_EVALUATOR": "tests.apps.evaluators:CountingEvaluator",
        "ROAST_TEST_STATE_DIR": str(state),
        "ROAST_TEST_EVAL_SLEEP": "0.01",
        "ROAST_JOBS_LEGACY_POLL_INTERVAL": "0.2",
        "PYTHONPATH": str(REPO),
    }


@pytest.fixture(scope="module")
def people(app_db: str) -> dict[str, Any]:
    with transaction(app_db) as s:
        user = sample_data.create_user(s)
        agents = [sample_data.create_agent(s, user, name=f"agent {i}") for i in range(AGENTS)]
    return {"user": user, "agents": agents}


@pytest.fixture(scope="module")
def workers(env: dict[str, str], service: JobService) -> Iterator[None]:
    with both_backends(env, "migrate", celery_concurrency=3, legacy_max_workers=4):
        yield


def create_jobs(service: JobService, people: dict[str, Any], documents: int) -> list[str]:
    with transaction(service.url) as s:
        docs = sample_data.create_documents(s, people["user"], documents)
    ids: list[str] = []
    for doc in docs:
        ids += [j.id for j in service.create_evaluation_jobs(doc, people["agents"])]
    return ids


def migrator(env: dict[str, str], direction: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roast_jobs.cli",
            "migrate",
            direction,
            "--batch-size",
            "50",
            "--pause",
            "0.05",
            *extra,
        ],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def records(url: str, direction: tuple[str, str], jobs: list[str]) -> int:
    return fetch(
        url,
        'SELECT count(*) FROM "JobMigrationStatus" WHERE ("fromBackend", "toBackend") = (%s, %s) '
        'AND "jobId" = ANY(%s)',
        *direction,
        jobs,
    )[0][0]


def kill_after(
    proc: subprocess.Popen[str], url: str, direction: tuple[str, str], jobs: list[str], count: int
) -> None:
    """SIGKILL ``proc`` once ``count`` records of ``jobs`` exist (it must still be running)."""
    assert wait_until(lambda: records(url, direction, jobs) >= count or proc.poll() is not None, 60)
    assert proc.poll() is None, "the migrator finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


def finish(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out


def all_done(url: str, jobs: list[str]) -> bool:
    return (
        fetch(
            url, "SELECT count(*) FROM \"Job\" WHERE id = ANY(%s) AND status <> 'COMPLETED'", jobs
        )[0][0]
        == 0
    )


def check_ran_once(url: str, state: Path, jobs: list[str]) -> dict[str, str]:
    """Every job COMPLETED after exactly one run; returns the backend each ran on."""
    rows = fetch(
        url,
        'SELECT j.id, j.status, j.attempts, j.backend, e."documentId" || \'/\' || e."agentId", '
        '(SELECT count(*) FROM "EvaluationVersion" v WHERE v."evaluationId" = e.id) '
        'FROM "Job" j JOIN "Evaluation" e ON e.id = j."evaluationId" WHERE j.id = ANY(%s)',
        jobs,
    )
    assert len(rows) == len(jobs)
    runs = Counter(doc for _t, doc, _p, what in read_calls(state) if what == "start")
    bad = [r for r in rows if (r[1], r[2], r[5], runs[r[4]]) != ("COMPLETED", 1, 1, 1)]
    assert not bad, f"{len(bad)} jobs did not run exactly once, e.g. {bad[:3]}"
    return {r[0]: r[3] for r in rows}


def moves(url: str, jobs: list[str]) -> dict[str, list[tuple[str, str, str]]]:
    out: dict[str, list[tuple[str, str, str]]] = {j: [] for j in jobs}
    for job_id, src, dst, run_id, status in fetch(
        url,
        'SELECT "jobId", "fromBackend", "toBackend", "runId", status FROM "JobMigrationStatus" '
        'WHERE "jobId" = ANY(%s) ORDER BY "createdAt", id',
        jobs,
    ):
        assert status == "moved"
        out[job_id].append((src, dst, run_id))
    return out


def test_forward_under_load_with_kills_runs_every_job_once(
    service: JobService,
    people: dict[str, Any],
    env: dict[str, str],
    state: Path,
    workers: None,
) -> None:
    rollout(service, 0)
    jobs = create_jobs(service, people, 100)  # 5,000 legacy jobs
    assert len(jobs) == 5000
    forward = ("legacy", "celery")

    first = migrator(env, "legacy-to-celery")
    kill_after(first, service.url, forward, jobs, 800)
    second = migrator(env, "legacy-to-celery")
    kill_after(second, service.url, forward, jobs, 2000)
    # The rest by two migrators side by side, one with two batches in flight.
    third = migrator(env, "legacy-to-celery", "--parallel", "2")
    fourth = migrator(env, "legacy-to-celery")
    finish(third, fourth)

    assert wait_until(lambda: all_done(service.url, jobs), 300, every=1.0)
    ran_on = check_ran_once(service.url, state, jobs)
    history = moves(service.url, jobs)
    for job_id, backend in ran_on.items():
        # Moved once (and run on Celery), or taken by the legacy worker first (no record).
        expected = [forward] if backend == "celery" else []
        assert [m[:2] for m in history[job_id]] == expected, job_id
    assert Counter(ran_on.values())["legacy"] > 0
    assert Counter(ran_on.values())["celery"] > 2000
    assert len({m[2] for h in history.values() for m in h}) >= 3  # several runs shared it


def test_reverse_under_load_with_a_kill_then_forward_again(
    service: JobService,
    people: dict[str, Any],
    env: dict[str, str],
    state: Path,
    workers: None,
) -> None:
    rollout(service, 100)
    jobs = create_jobs(service, people, 40)  # 2,000 Celery jobs, a worker eating them
    backward = ("celery", "legacy")

    first = migrator(env, "celery-to-legacy")
    kill_after(first, service.url, backward, jobs, 300)
    second, third = migrator(env, "celery-to-legacy"), migrator(env, "celery-to-legacy")
    finish(second, third)
    rollout(service, 0)
    moved_back = records(service.url, backward, jobs)
    assert moved_back > 500
    again = migrator(env, "legacy-to-celery")
    finish(again)

    assert wait_until(lambda: all_done(service.url, jobs), 300, every=1.0)
    ran_on = check_ran_once(service.url, state, jobs)
    for job_id, history in moves(service.url, jobs).items():
        # Each move starts where the previous one ended, one per run, and the last one
        # says where the job ran.
        where = "celery"
        for src, dst, _run in history:
            assert src == where, (job_id, history)
            where = dst
        assert len({run for _s, _d, run in history}) == len(history), (job_id, history)
        assert ran_on[job_id] == where, (job_id, history)
    assert (
        fetch(
            service.url,
            'SELECT count(*) FROM "JobMigrationStatus" WHERE "jobId" = ANY(%s) '
            "AND \"toBackend\" = 'celery'",
            jobs,
        )[0][0]
        > 0
    )
