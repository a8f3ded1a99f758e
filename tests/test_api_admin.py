"""The admin and monitor routes of the HTTP API, against `roast-jobs api` in a subprocess:
job lists and figures checked against the database, cancel and rerun, the pause (and two
admins pausing at once), and the Celery broker's dead letters."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest

from roast_jobs.db.session import transaction
from roast_jobs.domain import sample_data
from roast_jobs.jobs import DeadLetters
from roast_jobs.service.job_service import JobService, SystemPaused
from tests.api_support import auth
from tests.domain_support import fetch, rollout
from tests.workers import wait_until

ROUTES = [
    ("GET", "/api/monitor/jobs", None),
    ("GET", "/api/monitor/stats", None),
    ("POST", "/api/monitor/jobs/some-job/cancel", {}),
    ("POST", "/api/monitor/jobs/some-job/rerun", None),
    ("GET", "/api/admin/pause", None),
    ("POST", "/api/admin/pause", {"reason": "not yours to pause"}),
    ("DELETE", "/api/admin/pause", None),
    ("GET", "/api/admin/dead-letters", None),
    ("GET", "/api/admin/dead-letters/1", None),
    ("POST", "/api/admin/dead-letters/redrive", {"all": True}),
    ("POST", "/api/admin/dead-letters/purge", {"all": True}),
]


def call(api: str, method: str, path: str, who: dict[str, Any] | None, body: Any = None) -> Any:
    headers = auth(who) if who else {}
    return httpx.request(method, f"{api}{path}", json=body, headers=headers, timeout=60)


def new_jobs(service: JobService, people: dict[str, Any], percent: int, n: int) -> list[str]:
    """``n`` jobs, each of a document of its own (so each has its own evaluation), all on
    legacy (``percent`` 0) or Celery (100)."""
    rollout(service, percent)
    with transaction(service.url) as s:
        docs = sample_data.create_documents(s, people["admin"]["id"], n)
    return [service.create_evaluation_job(d, people["agent"]).id for d in docs]


def job_count(url: str) -> int:
    return int(fetch(url, 'SELECT count(*) FROM "Job"')[0][0])


def test_every_route_needs_an_admin_key(api: str, app_db: str, people: dict[str, Any]) -> None:
    for method, path, body in ROUTES:
        anonymous = call(api, method, path, None, body)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        user = call(api, method, path, people["bob"], body)
        assert user.status_code == 403, (method, path, user.text)
        assert user.json() == {"error": "admins only"}
    assert fetch(app_db, 'SELECT count(*) FROM "SystemPause"')[0][0] == 0


def test_monitor_jobs_lists_the_latest_of_both_backends(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    legacy = new_jobs(service, people, 0, 3)
    celery = new_jobs(service, people, 100, 3)
    with psycopg.connect(app_db) as conn:
        conn.execute(
            "UPDATE \"Job\" SET status = 'FAILED', error = 'boom: first line\nTraceback...', "
            '"completedAt" = CURRENT_TIMESTAMP WHERE id = %s',
            (celery[0],),
        )
        conn.execute(
            'UPDATE "Job" SET status = \'RUNNING\', "startedAt" = CURRENT_TIMESTAMP, '
            "attempts = 1 WHERE id = %s",
            (legacy[0],),
        )
    admin = people["admin"]

    got = call(api, "GET", "/api/monitor/jobs", admin)
    assert got.status_code == 200, got.text
    body = got.json()
    latest = fetch(
        app_db,
        'SELECT j.id, j.status::text, j.backend, j."brokerJobId", j."evaluationId", '
        'e."documentId", e."agentId", j.attempts FROM "Job" j '
        'JOIN "Evaluation" e ON e.id = j."evaluationId" '
        'ORDER BY j."createdAt" DESC, j.id DESC LIMIT 20',
    )
    fields = (
        "id",
        "status",
        "backend",
        "brokerJobId",
        "evaluationId",
        "documentId",
        "agentId",
        "attempts",
    )
    assert [tuple(j[f] for f in fields) for j in body["jobs"]] == latest
    by_status = dict(fetch(app_db, 'SELECT status::text, count(*) FROM "Job" GROUP BY 1'))
    assert body["statusCounts"] == {
        s: by_status.get(s, 0) for s in ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")
    }
    assert {j["backend"] for j in body["jobs"]} == {"legacy", "celery"}
    [failed] = [j for j in body["jobs"] if j["id"] == celery[0]]
    assert failed["error"] == "boom: first line" and failed["completedAt"]
    [running] = [j for j in body["jobs"] if j["id"] == legacy[0]]
    assert running["startedAt"] and running["status"] == "RUNNING"

    only = call(api, "GET", "/api/monitor/jobs?backend=celery&status=PENDING&limit=2", admin)
    assert only.status_code == 200, only.text
    expected = fetch(
        app_db,
        "SELECT id FROM \"Job\" WHERE backend = 'celery' AND status = 'PENDING' "
        'ORDER BY "createdAt" DESC, id DESC LIMIT 2',
    )
    assert [j["id"] for j in only.json()["jobs"]] == [r[0] for r in expected]
    celery_counts = dict(
        fetch(
            app_db, "SELECT status::text, count(*) FROM \"Job\" WHERE backend = 'celery' GROUP BY 1"
        )
    )
    assert only.json()["statusCounts"]["PENDING"] == celery_counts["PENDING"]
    assert only.json()["statusCounts"]["FAILED"] == celery_counts["FAILED"] == 1

    for bad in ("status=DONE", "status=pending", "backend=rabbit", "limit=0", "limit=101"):
        refused = call(api, "GET", f"/api/monitor/jobs?{bad}", admin)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["error"]


def expected_figures(rows: list[tuple[Any, ...]], now: datetime) -> dict[str, Any]:
    """The stats definitions, applied in Python to the ``"Job"`` rows."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    day_ago = now - timedelta(hours=24)
    c: Counter[str] = Counter()
    durations: list[int] = []
    cost = Decimal(0)
    for status, completed_at, updated_at, duration, price in rows:
        ended = completed_at or updated_at
        c["total"] += 1
        c[status.lower()] += 1
        if status in ("COMPLETED", "FAILED"):
            c[f"{status}-today"] += ended >= today
            c[f"{status}-24h"] += ended >= day_ago
        if status == "COMPLETED":
            if duration is not None:
                durations.append(duration)
            if ended >= today:
                cost += price or 0
    done = c["COMPLETED-24h"] + c["FAILED-24h"]
    return {
        "total": c["total"],
        "pending": c["pending"],
        "running": c["running"],
        "completed": c["completed"],
        "failed": c["failed"],
        "cancelled": c["cancelled"],
        "completedToday": c["COMPLETED-today"],
        "failedToday": c["FAILED-today"],
        "successRate24h": round(c["COMPLETED-24h"] / done, 4) if done else None,
        "avgDurationMinutes": round(sum(durations) / len(durations) / 60, 2) if durations else None,
        "totalCostToday": float(cost),
    }


def test_stats_match_the_database(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    legacy = new_jobs(service, people, 0, 5)
    celery = new_jobs(service, people, 100, 5)
    # (status, ended this long ago, duration s, price): today, within 24 h, or older.
    plan = [
        ("COMPLETED", timedelta(0), 60, "0.120000"),
        ("COMPLETED", timedelta(hours=25), 300, "1.000000"),
        ("FAILED", timedelta(0), None, None),
        ("FAILED", timedelta(hours=30), None, None),
        ("CANCELLED", timedelta(0), None, None),
    ]
    with psycopg.connect(app_db) as conn:
        for ids, factor in ((legacy, 1), (celery, 2)):
            for job_id, (status, ago, duration, price) in zip(ids, plan, strict=True):
                conn.execute(
                    'UPDATE "Job" SET status = %s, "completedAt" = (now() AT TIME ZONE \'UTC\') '
                    '- %s, "durationInSeconds" = %s, "priceInDollars" = %s WHERE id = %s',
                    (
                        status,
                        ago,
                        duration and duration * factor,
                        price and Decimal(price) * factor,
                        job_id,
                    ),
                )
    got = call(api, "GET", "/api/monitor/stats", people["admin"])
    assert got.status_code == 200, got.text
    body = got.json()

    now = fetch(app_db, "SELECT now() AT TIME ZONE 'UTC'")[0][0]
    rows = fetch(
        app_db,
        'SELECT backend, status::text, "completedAt", "updatedAt", '
        '"durationInSeconds", "priceInDollars" FROM "Job"',
    )
    assert body["jobs"] == expected_figures([r[1:] for r in rows], now)
    for backend in ("legacy", "celery"):
        mine = [r[1:] for r in rows if r[0] == backend]
        assert body["byBackend"][backend] == expected_figures(mine, now), backend
    # The plan is seen: each backend completed and failed something today, and its cost
    # today is that one job's (the older ones are not today's).
    assert body["byBackend"]["celery"]["totalCostToday"] == 0.24
    assert body["byBackend"]["legacy"]["completedToday"] >= 1
    assert body["byBackend"]["celery"]["failedToday"] >= 1
    assert body["jobs"]["successRate24h"] is not None
    tables = fetch(
        app_db,
        'SELECT (SELECT count(*) FROM "Evaluation"), '
        '(SELECT count(*) FROM "Document"), (SELECT count(*) FROM "Agent")',
    )
    assert (body["evaluations"], body["documents"], body["agents"]) == tables[0]


def has_message(service: JobService, task_id: str) -> bool:
    schema = service.manager.link.schema
    found = fetch(service.url, f'SELECT 1 FROM "{schema}".message WHERE task_id = %s', task_id)
    return bool(found)


def test_cancel_and_its_refusals(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    admin = people["admin"]
    [legacy] = new_jobs(service, people, 0, 1)
    [celery] = new_jobs(service, people, 100, 1)
    [broker_id] = fetch(app_db, 'SELECT "brokerJobId" FROM "Job" WHERE id = %s', celery)[0]
    assert has_message(service, broker_id)

    too_long = call(
        api, "POST", f"/api/monitor/jobs/{legacy}/cancel", admin, {"reason": "x" * 1001}
    )
    assert too_long.status_code == 422, too_long.text
    assert service.get_job_status(legacy)["status"] == "PENDING"

    done = call(api, "POST", f"/api/monitor/jobs/{legacy}/cancel", admin, {"reason": "stuck"})
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["cancellationReason"]) == ("CANCELLED", "stuck")
    stored = fetch(
        app_db,
        'SELECT status::text, "cancelledById", "cancellationReason", '
        '"cancelledAt" FROM "Job" WHERE id = %s',
        legacy,
    )
    assert stored[0][:3] == ("CANCELLED", admin["id"], "stuck")

    no_body = call(api, "POST", f"/api/monitor/jobs/{celery}/cancel", admin)
    assert no_body.status_code == 200, no_body.text
    assert no_body.json()["status"] == "CANCELLED" and no_body.json()["backend"] == "celery"
    assert not has_message(service, broker_id)  # it will not run

    again = call(api, "POST", f"/api/monitor/jobs/{legacy}/cancel", admin, {"reason": "again"})
    assert again.status_code == 400 and "CANCELLED" in again.json()["error"], again.text
    after = fetch(
        app_db,
        'SELECT status::text, "cancelledById", "cancellationReason", '
        '"cancelledAt" FROM "Job" WHERE id = %s',
        legacy,
    )
    assert after == stored
    unknown = call(api, "POST", "/api/monitor/jobs/no-such-job/cancel", admin, {})
    assert unknown.status_code == 404, unknown.text


def test_rerun_and_its_refusals(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    admin = people["admin"]
    [first, pending] = new_jobs(service, people, 0, 2)
    assert call(api, "POST", f"/api/monitor/jobs/{first}/cancel", admin).status_code == 200
    rollout(service, 100)  # the rerun goes where the flags say now

    rerun = call(api, "POST", f"/api/monitor/jobs/{first}/rerun", admin)
    assert rerun.status_code == 201, rerun.text
    body = rerun.json()
    assert body["originalJobId"] == first and body["job"]["backend"] == "celery"
    row = fetch(
        app_db,
        'SELECT status::text, "originalJobId", "evaluationId", backend FROM "Job" WHERE id = %s',
        body["job"]["id"],
    )
    assert row == [("PENDING", first, body["job"]["evaluation_id"], "celery")]
    [old_ev] = fetch(app_db, 'SELECT "evaluationId" FROM "Job" WHERE id = %s', first)[0]
    assert old_ev == body["job"]["evaluation_id"]

    before = job_count(app_db)
    busy = call(api, "POST", f"/api/monitor/jobs/{first}/rerun", admin)  # the rerun waits
    assert busy.status_code == 400 and "waiting or running" in busy.json()["error"], busy.text
    active = call(api, "POST", f"/api/monitor/jobs/{pending}/rerun", admin)
    assert active.status_code == 400 and "PENDING" in active.json()["error"], active.text
    unknown = call(api, "POST", "/api/monitor/jobs/no-such-job/rerun", admin)
    assert unknown.status_code == 404, unknown.text
    assert job_count(app_db) == before


def test_a_pause_refuses_job_creation_until_it_ends(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    admin = people["admin"]
    [cancelled] = new_jobs(service, people, 0, 1)
    assert call(api, "POST", f"/api/monitor/jobs/{cancelled}/cancel", admin).status_code == 200
    assert call(api, "GET", "/api/admin/pause", admin).json() == {
        "paused": False,
        "reason": None,
        "startedAt": None,
        "id": None,
    }
    for bad in ({}, {"reason": ""}, {"reason": "x" * 1001}, {"reason": 5}):
        refused = call(api, "POST", "/api/admin/pause", admin, bad)
        assert refused.status_code == 422, (bad, refused.text)
    # Blank by Python's rule (a space, a record separator): schema-valid, refused by 400.
    for blank in ("   ", "\u001e"):
        refused = call(api, "POST", "/api/admin/pause", admin, {"reason": blank})
        assert refused.status_code == 400 and "blank" in refused.json()["error"], refused.text
    assert fetch(app_db, 'SELECT count(*) FROM "SystemPause"')[0][0] == 0

    opened = call(api, "POST", "/api/admin/pause", admin, {"reason": "provider outage"})
    assert opened.status_code == 201, opened.text
    pause = opened.json()
    assert (pause["paused"], pause["reason"]) == (True, "provider outage")
    assert call(api, "GET", "/api/admin/pause", admin).json() == pause
    twice = call(api, "POST", "/api/admin/pause", admin, {"reason": "again"})
    assert twice.status_code == 409, twice.text
    assert "provider outage" in twice.json()["error"]
    assert pause["startedAt"][:19] in twice.json()["error"]

    before = job_count(app_db)
    with pytest.raises(SystemPaused, match="provider outage"):
        service.create_evaluation_job(people["alices_doc"], people["agent"])
    rerun = call(api, "POST", f"/api/monitor/jobs/{cancelled}/rerun", admin)
    assert rerun.status_code == 503 and "paused" in rerun.json()["error"], rerun.text
    assert job_count(app_db) == before

    ended = call(api, "DELETE", "/api/admin/pause", admin)
    assert ended.status_code == 200, ended.text
    assert ended.json() == {"paused": False, "ended": pause["id"]}
    assert fetch(
        app_db, 'SELECT "endedAt" IS NOT NULL FROM "SystemPause" WHERE id = %s', pause["id"]
    ) == [(True,)]
    gone = call(api, "DELETE", "/api/admin/pause", admin)
    assert gone.status_code == 404 and "not paused" in gone.json()["error"], gone.text
    assert service.create_evaluation_job(people["alices_doc"], people["agent"]).backend == "legacy"
    assert call(api, "GET", "/api/admin/pause", admin).json()["paused"] is False


def test_two_admins_pausing_at_once_leave_one_open_pause(
    api: str, app_db: str, people: dict[str, Any]
) -> None:
    """Every request gets past its check for an open pause before any of them can insert
    (their inserts wait on a lock the test holds), then they are let go together. With the
    guard, the first holds it while it waits and the others wait behind it."""
    racers = 4
    results: list[httpx.Response] = []

    def pause(i: int) -> None:
        results.append(call(api, "POST", "/api/admin/pause", people["admin"], {"reason": f"r{i}"}))

    with psycopg.connect(app_db) as gate, psycopg.connect(app_db, autocommit=True) as watch:
        gate.execute('LOCK TABLE "SystemPause" IN SHARE MODE')  # reads pass, inserts wait
        threads = [threading.Thread(target=pause, args=(i,)) for i in range(racers)]
        for t in threads:
            t.start()
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND cardinality(pg_blocking_pids(pid)) > 0"
        )
        assert wait_until(lambda: watch.execute(waiting).fetchone()[0] >= racers)
        gate.commit()
    for t in threads:
        t.join(60)
    assert sorted(r.status_code for r in results) == [201] + [409] * (racers - 1), [
        r.text for r in results
    ]
    assert fetch(app_db, 'SELECT count(*) FROM "SystemPause" WHERE "endedAt" IS NULL') == [(1,)]
    assert call(api, "DELETE", "/api/admin/pause", people["admin"]).status_code == 200


# -- dead letters ------------------------------------------------------------------------

TASK = "tests.api_admin.refused"


def bury(service: JobService, queue: str, key: str | None = None) -> tuple[str, int]:
    """A message that its consumer rejects, so the broker keeps it as a dead letter: (task
    id, dead letter id)."""
    task_id = str(service.manager.send(TASK, {"n": 1}, queue=queue, singleton_key=key))
    with service.app.connection_for_write() as conn:
        message = conn.default_channel.basic_get(queue)
        assert message is not None and message.headers["id"] == task_id
        message.reject()
    letters = DeadLetters(service.manager.link).list(queue=queue)
    [dead_id] = [d.id for d in letters if d.task_id == task_id]
    return task_id, dead_id


def broker_rows(service: JobService) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(dead letters, waiting messages) of the test's queues, as the tables hold them."""
    schema = service.manager.link.schema
    dead = fetch(
        service.url,
        f'SELECT id, queue, task_id FROM "{schema}".dead_letter '
        "WHERE queue LIKE 'api-admin-%%' ORDER BY id",
    )
    waiting = fetch(
        service.url,
        f'SELECT queue, task_id FROM "{schema}".message '
        "WHERE queue LIKE 'api-admin-%%' ORDER BY id",
    )
    return dead, waiting


def take(service: JobService, queue: str) -> str | None:
    """The task id of the next message of ``queue`` (acked), or None."""
    with service.app.connection_for_write() as conn:
        message = conn.default_channel.basic_get(queue)
        if message is None:
            return None
        message.ack()
        return str(message.headers["id"])


def test_dead_letters_list_show_redrive_and_purge(
    api: str, service: JobService, people: dict[str, Any]
) -> None:
    admin = people["admin"]
    one, two = f"api-admin-{uuid.uuid4().hex[:6]}", f"api-admin-{uuid.uuid4().hex[:6]}"
    key = uuid.uuid4().hex
    a_task, a = bury(service, one, key)
    b_task, b = bury(service, one, key)  # same singleton key: one of a and b may go
    c_task, c = bury(service, one)
    d_task, d = bury(service, two)

    listed = call(api, "GET", "/api/admin/dead-letters", admin)
    assert listed.status_code == 200, listed.text
    dead, _ = broker_rows(service)
    assert listed.json()["count"] == len(dead) == 4
    assert sorted((x["id"], x["queue"], x["task_id"]) for x in listed.json()["deadLetters"]) == dead
    assert all(
        x["reason"] == "rejected" and x["task"] == TASK and "payload" not in x
        for x in listed.json()["deadLetters"]
    )
    of_one = call(api, "GET", f"/api/admin/dead-letters?queue={one}&limit=2", admin).json()
    assert [x["id"] for x in of_one["deadLetters"]] == [c, b] and of_one["count"] == 2
    shown = call(api, "GET", f"/api/admin/dead-letters/{a}", admin)
    assert shown.status_code == 200 and shown.json()["task_id"] == a_task, shown.text
    assert shown.json()["singleton_key"] == key and a_task in shown.json()["payload"]
    assert call(api, "GET", "/api/admin/dead-letters/999999", admin).status_code == 404
    assert call(api, "GET", "/api/admin/dead-letters/abc", admin).status_code == 404
    assert call(api, "GET", "/api/admin/dead-letters?limit=0", admin).status_code == 422
    assert call(api, "GET", "/api/admin/dead-letters?queue=%00", admin).status_code == 422

    before = broker_rows(service)
    for path in ("redrive", "purge"):
        for bad, status in (
            ({}, 400),
            ({"all": False}, 400),
            ({"ids": []}, 400),
            ({"ids": [a], "all": True}, 400),
            ({"ids": [a, 999999]}, 404),
            ({"ids": [d], "queue": one}, 400),
            ({"ids": ["x"]}, 422),
            ({"ids": [True]}, 422),  # not dead letter 1
            ({"ids": [str(a)]}, 422),  # a number, not a string of one
            ({"all": True, "queue": "\u0000\u00c9"}, 422),  # no queue has a NUL byte
            ({"all": True, "queue": ""}, 422),
        ):
            refused = call(api, "POST", f"/api/admin/dead-letters/{path}", admin, bad)
            assert refused.status_code == status, (path, bad, refused.text)
            assert refused.json()["error"]
    assert broker_rows(service) == before  # nothing moved, nothing deleted

    redriven = call(
        api, "POST", "/api/admin/dead-letters/redrive", admin, {"all": True, "queue": one}
    )
    assert redriven.status_code == 200, redriven.text
    moved = redriven.json()["redriven"]
    assert sorted(m["task_id"] for m in moved) == sorted([a_task, c_task])
    assert {m["queue"] for m in moved} == {one}
    [held] = redriven.json()["heldBack"]
    assert (held["dead_id"], held["task_id"], held["singleton_key"]) == (b, b_task, key)
    assert "same singleton key" in held["reason"]
    dead, waiting = broker_rows(service)
    assert [r[0] for r in dead] == [b, d]
    assert sorted(waiting) == sorted([(one, a_task), (one, c_task)])
    assert sorted([take(service, one), take(service, one)]) == sorted([a_task, c_task])

    by_id = call(api, "POST", "/api/admin/dead-letters/redrive", admin, {"ids": [d]})
    assert [m["task_id"] for m in by_id.json()["redriven"]] == [d_task], by_id.text
    assert take(service, two) == d_task

    purged = call(api, "POST", "/api/admin/dead-letters/purge", admin, {"ids": [b]})
    assert purged.status_code == 200 and purged.json() == {"purged": 1}, purged.text
    _, e = bury(service, two)
    _, f = bury(service, one)
    all_of_two = call(
        api, "POST", "/api/admin/dead-letters/purge", admin, {"all": True, "queue": two}
    )
    assert all_of_two.json() == {"purged": 1}, all_of_two.text
    assert [r[0] for r in broker_rows(service)[0]] == [f]
    assert e not in [r[0] for r in broker_rows(service)[0]]
