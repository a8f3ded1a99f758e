"""JobManager on real workers: every state get_job reports, retry and cancel in each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import psutil
import psycopg
import pytest

from roast_jobs.jobs import InvalidTransition, JobManager, JobNotFound, JobState
from tests.apps.jobs_app import (
    job_ack_in_then_retry,
    job_fail,
    job_fail_first_on_release,
    job_fail_slow_retry,
    job_flaky,
    job_hold,
    job_record,
    job_reject,
    job_resend_and_return,
    job_retry_inside_its_transaction,
    job_retry_with_a_database_error,
    record_run,
)
from tests.conftest import BROKER_SCHEMA, DATABASE_URL
from tests.jobs_support import jm, new_queue, runs, start_worker, wait_until, worker_fixture
from tests.workers import REPO, CeleryWorker

__all__ = ["jm"]

WORKED = new_queue("jm-worked")  # a worker consumes this one
IDLE = new_queue("jm-idle")  # nobody does: jobs stay waiting


worker = worker_fixture("jm", WORKED)


def label() -> str:
    return uuid.uuid4().hex


def state_of(jm: JobManager, job_id: str, want: JobState, timeout: float = 60) -> JobState:
    return wait_until(lambda: jm.get_job(job_id).state == want, timeout=timeout) and want


def broker_rows(job_id: str) -> int:
    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        sql = f'SELECT count(*) FROM "{BROKER_SCHEMA}".message WHERE task_id = %s'
        return c.execute(sql, (job_id,)).fetchone()[0]


def running_pid(worker: CeleryWorker, job_id: str) -> int | None:
    """The pid of the pool process running ``job_id``, as the worker reports it; None while
    it does not (``inspect`` replies within 1 s or not at all: callers ask again)."""
    cp = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.apps.jobs_app", "inspect", "active",
         "-d", worker.hostname, "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if cp.returncode != 0:
        return None
    try:
        replies = json.loads(cp.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    for request in replies.get(worker.hostname) or []:
        if request.get("id") == job_id:
            return int(request["worker_pid"])
    return None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- states ----------------------------------------------------------------------------


def test_waiting_job_is_created_with_its_details(jm: JobManager) -> None:
    job_id = jm.send(job_record, {"label": "w", "n": 3}, queue=IDLE, priority=7)
    job = jm.get_job(job_id)
    assert job.state is JobState.CREATED
    assert (job.name, job.queue, job.priority) == (job_record.name, IDLE, 7)
    assert job.created_at is not None and job.started_at is None
    assert job.as_dict()["state"] == "created"


def test_delayed_job_is_scheduled_until_its_time(jm: JobManager) -> None:
    before = datetime.now(UTC)
    job_id = jm.send(job_record, {"label": "s"}, queue=IDLE, countdown=600)
    after = datetime.now(UTC)
    job = jm.get_job(job_id)
    assert job.state is JobState.SCHEDULED
    assert job.run_at is not None and job.created_at is not None
    # Due 600 s after the send, whenever within [before, after] the send happened (one
    # host clock; 1 ms for PostgreSQL's microsecond rounding). No window to meet.
    ms = timedelta(milliseconds=1)
    assert before - ms <= job.created_at <= after + ms
    assert before + timedelta(seconds=600) - ms <= job.run_at <= after + timedelta(seconds=600) + ms


def test_running_job_is_active_then_completed(jm: JobManager, worker: CeleryWorker) -> None:
    name = label()
    job_id = jm.send(job_hold, {"label": name}, queue=WORKED)
    assert state_of(jm, job_id, JobState.ACTIVE), worker.log()[-2000:]
    # Active from its lease on; started once the worker's STARTED is stored (just after).
    started = wait_until(lambda: (j := jm.get_job(job_id)).started_at is not None and j)
    assert started and started.state is JobState.ACTIVE
    record_run(None, f"release:{name}")
    assert state_of(jm, job_id, JobState.COMPLETED), worker.log()[-2000:]
    done = jm.get_job(job_id)
    assert done.result == "released"
    assert done.worker and done.worker.startswith("jm@")
    assert done.created_at and done.started_at and done.completed_at
    assert done.created_at <= done.started_at <= done.completed_at


def test_failed_job_reports_error_after_its_retries(jm: JobManager, worker: CeleryWorker) -> None:
    name = label()
    job_id = jm.send(job_fail, {"label": name}, queue=WORKED)
    assert state_of(jm, job_id, JobState.FAILED), worker.log()[-3000:]
    job = jm.get_job(job_id)
    assert job.retry_count == 2 and runs(name) == 3  # the policy's limit of 2 retries
    assert job.error and "job_fail" in job.error and job.traceback


def test_job_waiting_for_its_retry_is_in_retry(jm: JobManager, worker: CeleryWorker) -> None:
    name = label()
    job_id = jm.send(job_fail_slow_retry, {"label": name}, queue=WORKED)
    assert state_of(jm, job_id, JobState.RETRY), worker.log()[-3000:]
    job = jm.get_job(job_id)
    assert job.retry_count == 1 and job.run_at is not None
    with pytest.raises(InvalidTransition, match="retry"):
        jm.retry_job(job_id)
    assert jm.cancel_job(job_id).state is JobState.CANCELLED  # the delayed retry goes
    assert runs(name) == 1


def test_rejected_job_is_a_dead_letter_and_retry_redrives_it(
    jm: JobManager, worker: CeleryWorker
) -> None:
    name = label()
    job_id = jm.send(job_reject, {"label": name}, queue=WORKED)
    assert state_of(jm, job_id, JobState.DEAD_LETTER), worker.log()[-3000:]
    assert jm.get_job(job_id).reason == "rejected"
    assert jm.retry_job(job_id) == job_id
    assert wait_until(lambda: runs(name) == 2)
    assert state_of(jm, job_id, JobState.DEAD_LETTER)  # rejected again


def test_expired_job_is_expired(jm: JobManager) -> None:
    job_id = jm.send(job_record, {"label": "x"}, queue=IDLE, expires=0.2)
    assert state_of(jm, job_id, JobState.EXPIRED)  # eventually; nobody consumes IDLE
    with pytest.raises(InvalidTransition):
        jm.cancel_job(job_id)


# -- cancel ----------------------------------------------------------------------------


def test_cancel_waiting_and_delayed_jobs(jm: JobManager) -> None:
    for options in ({}, {"countdown": 300}):
        job_id = jm.send(job_record, {"label": "c"}, queue=IDLE, **options)
        job = jm.cancel_job(job_id)
        assert job.state is JobState.CANCELLED
        assert job.name == job_record.name  # kept for a retry
        with pytest.raises(InvalidTransition, match="cancel"):
            jm.cancel_job(job_id)


def test_a_cancel_that_cannot_record_the_job_removes_nothing(jm: JobManager) -> None:
    """The message's delete and the REVOKED row are one transaction: when the row cannot
    be written (a trigger refuses it here, as a crash or a lost connection would), the
    job is still waiting, not gone without a trace."""
    name = label()
    job_id = jm.send(job_record, {"label": name}, queue=IDLE)
    table = jm.link.result_table
    refuse = f"""
        CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.task_id = '{job_id}' THEN RAISE EXCEPTION 'result store refused'; END IF;
            RETURN NEW;
        END $$;
        """
    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        trigger = f"refuse_{job_id.replace('-', '')}"
        c.execute(refuse.replace("pg_temp.refuse", f"public.{trigger}"))
        c.execute(
            f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION public.{trigger}()"
        )
        try:
            with pytest.raises(Exception, match=r"result store refused|failed to store result"):
                jm.cancel_job(job_id)
            assert broker_rows(job_id) == 1
            assert jm.get_job(job_id).state is JobState.CREATED
        finally:
            c.execute(f"DROP TRIGGER {trigger} ON {table}")
            c.execute(f"DROP FUNCTION public.{trigger}()")
    assert jm.cancel_job(job_id).state is JobState.CANCELLED
    job = jm.get_job(job_id)  # read back: the REVOKED row keeps what retry_job sends
    assert (job.state, job.name, job.kwargs) == (
        JobState.CANCELLED,
        job_record.name,
        {"label": name},
    )
    assert broker_rows(job_id) == 0


def test_a_cancel_keeps_a_success(jm: JobManager, worker: CeleryWorker) -> None:
    """A task that sent itself again for later, then returned: cancelling what waits
    leaves its success as it is (Celery's own store never overwrites one)."""
    job_id = jm.send(job_resend_and_return, {"label": label()}, queue=WORKED)
    stored = f"SELECT status FROM {jm.link.result_table} WHERE task_id = %s"
    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        succeeded = lambda: c.execute(stored, (job_id,)).fetchone() == ("SUCCESS",)  # noqa: E731
        assert wait_until(succeeded), worker.log()[-3000:]
    assert wait_until(lambda: broker_rows(job_id) == 1)  # acked: what it sent for later is left
    jm.cancel_job(job_id)
    assert broker_rows(job_id) == 0
    job = jm.get_job(job_id)
    assert (job.state, job.result) == (JobState.COMPLETED, 42)


def test_cancel_running_job_with_terminate(jm: JobManager, worker: CeleryWorker) -> None:
    name = label()
    job_id = jm.send(job_hold, {"label": name}, queue=WORKED)
    assert state_of(jm, job_id, JobState.ACTIVE), worker.log()[-2000:]
    pid = wait_until(lambda: running_pid(worker, job_id), timeout=90, every=0.5)
    assert pid, worker.log()[-2000:]
    jm.cancel_job(job_id, terminate=True)
    assert state_of(jm, job_id, JobState.CANCELLED), worker.log()[-3000:]
    # The process running it was killed (the manager records CANCELLED itself, so the
    # state alone would pass even if nothing was killed).
    assert wait_until(lambda: gone(pid), timeout=60), worker.log()[-3000:]
    assert f"Terminating {job_id}" in worker.log()
    # Released now, it cannot return "released": the process is dead, and the message is
    # settled (no row left: any later run would have been recorded before its ack).
    record_run(None, f"release:{name}")
    assert wait_until(lambda: broker_rows(job_id) == 0, timeout=60), worker.log()[-3000:]
    assert runs(name) == 1
    job = jm.get_job(job_id)
    assert job.state is JobState.CANCELLED and job.result != "released"


def test_cancel_finished_job_is_refused(jm: JobManager, worker: CeleryWorker) -> None:
    job_id = jm.send(job_record, {"label": label()}, queue=WORKED)
    assert state_of(jm, job_id, JobState.COMPLETED)
    with pytest.raises(InvalidTransition, match=r"cannot cancel .* it is completed"):
        jm.cancel_job(job_id)
    with pytest.raises(InvalidTransition, match="cannot retry"):
        jm.retry_job(job_id)


# -- retry -----------------------------------------------------------------------------


def test_retry_failed_job_reruns_it_under_its_id(jm: JobManager, worker: CeleryWorker) -> None:
    name = label()
    # Fails its first 4 runs: the original and its 3 retries, then succeeds when retried.
    job_id = jm.send(job_flaky, {"label": name, "fails": 4}, queue=WORKED, priority=6)
    assert state_of(jm, job_id, JobState.FAILED), worker.log()[-3000:]
    assert runs(name) == 4
    assert jm.retry_job(job_id) == job_id
    assert state_of(jm, job_id, JobState.COMPLETED), worker.log()[-3000:]
    assert jm.get_job(job_id).result == "ok" and runs(name) == 5


def test_retries_of_one_failed_job_at_once_rerun_it_once(
    jm: JobManager, worker: CeleryWorker
) -> None:
    """Six operators press retry at the same moment: one resend, five refusals."""
    from concurrent.futures import ThreadPoolExecutor

    name = label()
    job_id = jm.send(job_flaky, {"label": name, "fails": 4}, queue=WORKED)
    assert state_of(jm, job_id, JobState.FAILED), worker.log()[-3000:]

    def retry(_: int) -> str:
        try:
            return str(jm.retry_job(job_id))
        except InvalidTransition:
            return "refused"

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(retry, range(6)))
    assert (outcomes.count(job_id), outcomes.count("refused")) == (1, 5), outcomes
    assert state_of(jm, job_id, JobState.COMPLETED), worker.log()[-3000:]
    assert runs(name) == 5  # the four first runs and one rerun


def test_retry_cancelled_job_runs_under_a_new_id(jm: JobManager, worker: CeleryWorker) -> None:
    name = label()
    job_id = jm.send(job_record, {"label": name}, queue=WORKED, countdown=300)
    jm.cancel_job(job_id)
    new_id = jm.retry_job(job_id)
    assert new_id != job_id
    assert state_of(jm, new_id, JobState.COMPLETED)
    assert jm.get_job(job_id).state is JobState.CANCELLED
    assert runs(name) == 1


def test_a_retry_and_the_end_of_its_delivery_commit_together(jm: JobManager) -> None:
    """A RoastTask fails while its worker's main process is stopped (so it cannot ack):
    the retry is committed and the failed delivery is gone with it. Killed there, the
    worker leaves one message, the retry, not a second delivery to run beside it."""
    name, queue = label(), new_queue("jm-stalled")
    stalled = start_worker("jm-stalled", queue, concurrency=1)
    try:
        job_id = jm.send(job_fail_first_on_release, {"label": name}, queue=queue)
        assert wait_until(lambda: runs(name) == 1, timeout=60), stalled.log()[-3000:]
        assert stalled.proc is not None
        os.kill(stalled.proc.pid, signal.SIGSTOP)  # the main process: no ack, no renewal
        record_run(None, f"release:{name}")  # the child's run fails now and retries
        assert state_of(jm, job_id, JobState.RETRY), stalled.log()[-3000:]
        assert broker_rows(job_id) == 1, "the failed delivery is still there beside its retry"
    finally:
        stalled.kill()
    after = start_worker("jm-after", queue, concurrency=1)
    try:
        assert state_of(jm, job_id, JobState.COMPLETED), after.log()[-3000:]
        assert wait_until(lambda: broker_rows(job_id) == 0, timeout=60)
    finally:
        after.stop()
    assert runs(name) == 2  # the failed run and its one retry


def test_a_retry_raised_inside_the_tasks_own_transaction_is_kept(
    jm: JobManager, worker: CeleryWorker
) -> None:
    """raise self.retry() inside the task's enqueue_in block rolls that block back; the
    retry goes in a transaction of its own, so the job runs again (not RETRY forever)."""
    name = label()
    job_id = jm.send(job_retry_inside_its_transaction, {"label": name}, queue=WORKED)
    assert state_of(jm, job_id, JobState.COMPLETED), worker.log()[-3000:]
    assert runs(name) == 2
    assert runs(f"{name}:rolled-back") == 0


def test_a_task_out_of_retries_fails_with_its_own_database_error(
    jm: JobManager, worker: CeleryWorker
) -> None:
    """Celery re-raises the task's exc once retries run out: a psycopg error there is
    the task's failure, not a retry that could not be written (no dead letter)."""
    name = label()
    job_id = jm.send(job_retry_with_a_database_error, {"label": name}, queue=WORKED)
    assert state_of(jm, job_id, JobState.FAILED), (jm.get_job(job_id), worker.log()[-3000:])
    assert "taken" in (jm.get_job(job_id).error or "")
    assert runs(name) == 2  # the run and its one retry (max_retries=1)


def test_a_retry_after_ack_in_in_the_same_block_does_not_wait_for_it(
    jm: JobManager, worker: CeleryWorker
) -> None:
    """The block's ack_in holds the delivery's row; the raised retry's own transaction
    must not wait for it (same thread: it never would be released)."""
    name = label()
    job_id = jm.send(job_ack_in_then_retry, {"label": name}, queue=WORKED)
    assert state_of(jm, job_id, JobState.COMPLETED), worker.log()[-3000:]
    assert runs(name) == 2


def test_retry_running_job_is_refused(jm: JobManager, worker: CeleryWorker) -> None:
    name = label()
    job_id = jm.send(job_hold, {"label": name}, queue=WORKED)
    assert state_of(jm, job_id, JobState.ACTIVE)
    with pytest.raises(InvalidTransition, match=r"cannot retry .* it is active"):
        jm.retry_job(job_id)
    record_run(None, f"release:{name}")
    assert state_of(jm, job_id, JobState.COMPLETED)


# -- unknown ids, bad input, queue status ----------------------------------------------


@pytest.mark.parametrize("bad", ["no-such-job", "", "x" * 300])
def test_unknown_ids_are_not_found(jm: JobManager, bad: str) -> None:
    for call in (jm.get_job, jm.cancel_job, jm.retry_job):
        with pytest.raises(JobNotFound):
            call(bad)


def test_bad_send_arguments_are_refused(jm: JobManager) -> None:
    with pytest.raises(TypeError, match="payload"):
        jm.send(job_record, ["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RoastTask"):
        jm.send(job_record, {"label": "x"}, queue=IDLE, retry_limit=2)
    with pytest.raises(ValueError, match="retry limit"):
        jm.send(job_fail, {"label": "x"}, queue=IDLE, retry_limit=-1)
    with pytest.raises(ValueError, match="singleton_key"):
        jm.send(job_record, {"label": "x"}, queue=IDLE, singleton_key="k" * 600)


def test_queue_status_counts_each_state(jm: JobManager, worker: CeleryWorker) -> None:
    queue = new_queue("jm-status")
    waiting = [jm.send(job_record, {"label": "q"}, queue=queue) for _ in range(3)]
    jm.send(job_record, {"label": "q"}, queue=queue, countdown=300)
    oldest = jm.get_job(waiting[0]).created_at
    assert oldest is not None
    before = datetime.now(UTC)
    status = jm.get_queue_status(queue)[queue]
    after = datetime.now(UTC)
    assert (status.waiting, status.scheduled, status.active, status.dead_letter) == (3, 1, 0, 0)
    # The age of the first job sent, as of the moment the status was read (between
    # ``before`` and ``after``; 1 ms for PostgreSQL's rounding): not just "some number".
    age = status.oldest_waiting_seconds
    assert age is not None
    assert (
        (before - oldest).total_seconds() - 0.001 <= age <= (after - oldest).total_seconds() + 0.001
    )
    done = [jm.send(job_record, {"label": "q"}, queue=WORKED) for _ in range(2)]
    failed = jm.send(job_fail, {"label": label()}, queue=WORKED)
    for job_id in done:
        assert state_of(jm, job_id, JobState.COMPLETED)
    assert state_of(jm, failed, JobState.FAILED)
    worked = jm.get_queue_status(WORKED)[WORKED]
    assert worked.completed >= 2 and worked.failed >= 1
    everything = jm.get_queue_status()
    assert queue in everything and WORKED in everything
