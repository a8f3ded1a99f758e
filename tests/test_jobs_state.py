"""How one job's state is read from its message row and its stored result."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from celery import states

from roast_jobs.jobs.state import JobState, MessageRow, ResultRow, derive

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def leased_row(created: datetime) -> MessageRow:
    return MessageRow(
        id=1, queue="q", priority=0, created_at=created, visible_at=NOW + timedelta(seconds=30),
        expires_at=None, lease_owner="host/1/x", delivery_count=1, delivered_to=["host/1/x"],
        singleton_key=None, payload='{"headers": {"task": "t", "id": "j"}}', now=NOW,
    )  # fmt: skip


def result(status: str, done: datetime) -> ResultRow:
    return ResultRow(status, done, None, None, None, {"result": 7, "status": status})


def test_a_stored_result_of_this_run_wins_over_its_ack_in_flight() -> None:
    """Celery stores the result, then acks: between the two the row is still leased."""
    sent = NOW - timedelta(seconds=5)
    job = derive("j", leased_row(sent), None, result(states.SUCCESS, NOW - timedelta(seconds=1)))
    assert job is not None and (job.state, job.result) == (JobState.COMPLETED, 7)


def test_an_earlier_runs_result_does_not_hide_a_running_retry() -> None:
    """retry_job resends a failed job under its id: the old FAILURE is older than the row."""
    sent = NOW - timedelta(seconds=5)
    job = derive("j", leased_row(sent), None, result(states.FAILURE, NOW - timedelta(hours=1)))
    assert job is not None and job.state is JobState.ACTIVE
