"""Flag values: parsing, the stable bucket, environment overrides, bad table rows."""

from __future__ import annotations

import threading

import psycopg
import pytest

from roast_jobs.config import get_settings
from roast_jobs.db.models import Backend
from roast_jobs.service.flags import (
    FlagCache,
    FlagError,
    Flags,
    bucket,
    from_values,
    parse_value,
)
from tests.domain_support import lock_waiters
from tests.workers import wait_until


def test_values_parse_or_fail_clearly() -> None:
    assert parse_value("use_celery", "on") is True
    assert parse_value("use_celery", "0") is False
    assert parse_value("celery_rollout_percent", "10%") == 10
    with pytest.raises(FlagError, match="on/off"):
        parse_value("use_celery", "maybe")
    with pytest.raises(FlagError, match="0-100"):
        parse_value("celery_rollout_percent", 101)
    with pytest.raises(FlagError, match="unknown flag"):
        parse_value("use_kafka", "on")


def test_the_bucket_is_stable_and_spread() -> None:
    assert bucket("evaluation-1") == bucket("evaluation-1")
    counts = [0] * 10
    for i in range(5000):
        counts[bucket(f"ev-{i}") // 10] += 1
    assert min(counts) > 400 and max(counts) < 600
    flags = Flags(use_celery=True, rollout_percent=30)
    assert flags.mode == "canary 30%"
    assert flags.backend_for("x") is (Backend.CELERY if bucket("x") < 30 else Backend.LEGACY)
    assert Flags(use_celery=False, rollout_percent=100).backend_for("x") is Backend.LEGACY


def test_bad_table_values_count_as_unset_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A jsonb string "false" edited in by hand is off, not truthy; nonsense is ignored.
    assert from_values({"use_celery": "false", "celery_rollout_percent": 50}).use_celery is False
    assert (
        from_values({"use_celery": True, "celery_rollout_percent": "lots"}).rollout_percent == 100
    )
    monkeypatch.setattr(get_settings(), "use_celery", True)
    monkeypatch.setattr(get_settings(), "celery_rollout_percent", 5)
    flags = from_values({"use_celery": False, "celery_rollout_percent": 50})
    assert (flags.use_celery, flags.rollout_percent) == (True, 5)
    assert flags.overridden == ("use_celery", "celery_rollout_percent")


def test_a_stale_cache_answers_while_another_thread_rereads(app_db: str) -> None:
    """A request holding a pooled connection must not wait behind a re-read that waits
    itself (for the table, or for a connection): the flags of a moment ago serve."""
    cache = FlagCache(app_db, refresh=0.01)
    before = cache.current()
    cache.invalidate()
    answers: list[Flags] = []
    with psycopg.connect(app_db) as locker:
        locker.execute('LOCK TABLE "FeatureFlag" IN ACCESS EXCLUSIVE MODE')
        rereader = threading.Thread(target=lambda: answers.append(cache.current()))
        rereader.start()  # takes the cache's lock, then waits for the table
        assert wait_until(lambda: lock_waiters(locker, "FeatureFlag") == 1, 30)
        other = threading.Thread(target=lambda: answers.append(cache.current()))
        other.start()
        other.join(30)
        assert not other.is_alive(), "a second caller waited behind the re-read"
        assert answers == [before]
        locker.commit()
    rereader.join(30)
    assert answers == [before, before]
