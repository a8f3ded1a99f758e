"""The migration dashboard in a real headless Chromium against ``roast-jobs api``: its
figures agree with the database, clicks change the rollout in the database, refused keys
and refused actions show the API's message; and ``/api/admin/jobs/metrics`` checked
bucket by bucket against the rows, exact at a bucket's bound.

Chromium is Debian's (``chromium``), not a Playwright download: without it these tests
skip, unless ``ROAST_JOBS_REQUIRE_BROWSER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from roast_jobs.db.session import transaction
from roast_jobs.domain import job_records, sample_data
from roast_jobs.domain.offline_evaluator import OfflineEvaluator
from roast_jobs.domain.runner import run_evaluation
from roast_jobs.migrator import Direction, migrate
from roast_jobs.service import flags
from roast_jobs.service.job_service import JobService
from tests.api_support import auth
from tests.domain_support import fetch, rollout
from tests.workers import REPO, run_cli

STATES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")
SCREENSHOT = REPO / "docs" / "dashboard.png"


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        reason = "no Debian chromium (apt-get install chromium) for the dashboard tests"
        if os.environ.get("ROAST_JOBS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and ROAST_JOBS_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, headless=True)
        try:
            yield b
        finally:
            b.close()


def execute(url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def seeded(app_db: str, service: JobService, people: dict[str, Any]) -> dict[str, list[str]]:
    """Jobs on both backends, made by ``JobService``; some run by the real evaluation
    code in this process (real timestamps), some failed, cancelled or left RUNNING."""
    user = people["alice"]["id"]
    with transaction(app_db) as s:
        agent = sample_data.create_agent(s, user, name="dashboard")
        docs = sample_data.create_documents(s, user, 12, seed=7)
    rollout(service, 0)
    legacy = [service.create_evaluation_job(d, agent) for d in docs[:7]]
    rollout(service, 100)
    celery = [service.create_evaluation_job(d, agent) for d in docs[7:]]
    assert {j.backend for j in legacy} == {"legacy"} and {j.backend for j in celery} == {"celery"}

    def tx() -> Any:
        return transaction(app_db)

    for job in (*legacy[:3], *celery[:2]):
        owner = job.broker_job_id
        result = run_evaluation(job.id, OfflineEvaluator(), tx, mark_running=True, owner=owner)
        assert result.evaluation_version_id is not None
    with transaction(app_db) as s:
        for job in (legacy[3], celery[2]):
            job_records.mark_running(s, job.id)
            job_records.fail(s, job.id, "503 service unavailable")
        job_records.mark_running(s, legacy[4].id)  # RUNNING
        job_records.cancel(s, celery[3].id, reason="dashboard test")
    add_history(app_db, legacy[0].evaluation_id)
    # The migrator moves the oldest waiting legacy job (legacy[5]) to Celery.
    assert migrate(Direction.LEGACY_TO_CELERY, app_db, limit=1, service=service).moved == 1
    return {"legacy": [j.id for j in legacy], "celery": [j.id for j in celery]}


def add_history(url: str, evaluation: str) -> None:
    """Jobs that finished over the last 28 minutes, as a rollout looks: legacy work
    dwindles as Celery takes over, and Celery picks jobs up sooner. (The first two
    10-minute buckets of the last hour stay empty: the metrics test puts rows there.)"""
    rows = []
    for minute in range(1, 29):
        celery_share = min(1.0, (28 - minute) / 22)
        for backend, n, pickup in (
            ("legacy", round(4 * (1 - celery_share)), 1.5 + minute % 4),
            ("celery", round(5 * celery_share), 0.2 + (minute % 3) / 5),
        ):
            for i in range(n):
                run = 20 + 7 * i
                rows.append((backend, minute * 60 - i * 9, run, pickup + i / 2))
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            """
            INSERT INTO "Job" (id, status, backend, "evaluationId", "createdAt", "startedAt",
                               "completedAt")
            SELECT gen_random_uuid()::text, 'COMPLETED', %s, %s, t - make_interval(secs => %s + %s),
                   t - make_interval(secs => %s), t
            FROM (SELECT now() AT TIME ZONE 'UTC' - make_interval(secs => %s) AS t) AS at
            """,
            [(b, evaluation, run, pickup, run, ago) for b, ago, run, pickup in rows],
        )


def counts(url: str) -> dict[tuple[str, str], int]:
    rows = fetch(url, 'SELECT backend, status::text, count(*) FROM "Job" GROUP BY 1, 2')
    return {(b, s): n for b, s, n in rows}


def stored_percent(url: str) -> Any:
    return flags.read_table(url).get(flags.ROLLOUT_PERCENT)


def open_dashboard(browser: Any, api: str, key: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{api}/dashboard")
    page.fill("#api-key", key)
    page.click("#key-save")
    return page


def refreshed_after(page: Any, count: int) -> None:
    """Wait for a refresh that started after ``count`` refreshes had ended."""
    page.wait_for_function(
        "n => Number(document.getElementById('last-refresh').dataset.count) > n",
        arg=count + 1,
        timeout=20_000,
    )


def refresh_count(page: Any) -> int:
    return int(page.get_attribute("#last-refresh", "data-count"))


# -- the page --------------------------------------------------------------------------


def test_the_dashboard_shows_the_database_and_sets_the_rollout(
    browser: Any,
    api: str,
    app_db: str,
    people: dict[str, Any],
    seeded: dict[str, list[str]],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    flags.rollout(25, "tests", app_db)
    page = open_dashboard(browser, api, people["admin"]["key"])
    by_id = page.get_by_test_id

    # Jobs by backend and state, as the database has them.
    in_db = counts(app_db)
    assert in_db[("legacy", "FAILED")] == 1 and in_db[("celery", "CANCELLED")] == 1
    for backend in ("legacy", "celery"):
        for state in STATES:
            expect(by_id(f"jobs-{backend}-{state}")).to_have_text(
                str(in_db.get((backend, state), 0))
            )
    expect(by_id("rollout-percent")).to_have_text("25")
    expect(by_id("flag-use-celery")).to_have_text("on")
    expect(by_id("migration-remaining")).to_have_text(str(in_db[("legacy", "PENDING")]))
    [(moved,)] = fetch(
        app_db, 'SELECT count(*) FROM "JobMigrationStatus" WHERE status = %s', "moved"
    )
    assert moved == 1
    moves = page.locator('#migration-table tr[data-route="legacy-celery-moved"] td')
    expect(moves).to_have_text(["legacy", "celery", "moved", "1"])
    # The last hour's totals: every finished job finished within it.
    for backend in ("legacy", "celery"):
        for state in ("COMPLETED", "FAILED"):
            expect(by_id(f"totals-{backend}-{state.lower()}")).to_have_text(
                str(in_db[(backend, state)])
            )
        started = fetch(
            app_db, 'SELECT count(*) FROM "Job" WHERE backend = %s AND "startedAt" IS NOT NULL',
            backend,
        )[0][0]  # fmt: skip
        expect(by_id(f"totals-{backend}-started")).to_have_text(str(started))
    assert page.locator("#chart-throughput path.line.legacy").count() == 1
    assert page.locator("#chart-pickup path.line.celery").count() == 2  # p50, p95
    # The verdict and triggers are `roast-jobs rollout check`'s.
    proc = run_cli(app_db, "rollout", "check", "--json")
    assert proc.returncode in (0, 3), proc.stderr
    verdict = json.loads(proc.stdout)
    expected = "healthy" if verdict["healthy"] else "unhealthy"
    expect(by_id("verdict")).to_have_attribute("data-verdict", expected)
    for t in verdict["triggers"]:
        row = page.locator(f'#triggers tr[data-trigger="{t["name"]}"]')
        expect(row).to_have_attribute("data-fired", str(t["fired"]).lower())
    # Celery jobs wait in the broker and no worker consumes them.
    assert not verdict["healthy"]
    expect(by_id("verdict")).to_contain_text("celery_workers")
    failed = page.locator("#failures tbody tr[data-job-id]")
    expect(failed).to_have_count(2)

    # Set the rollout with clicks: stored, recorded with who, and shown.
    before = refresh_count(page)
    page.fill("#percent-input", "37")
    page.click("#percent-set")
    expect(by_id("action-result")).to_have_text("rollout set to 37% (mode canary 37%)")
    assert stored_percent(app_db) == 37
    [change] = fetch(
        app_db,
        'SELECT "newValue", "changedBy" FROM "FeatureFlagChange" '
        'WHERE "flagName" = %s ORDER BY "changedAt" DESC, id DESC LIMIT 1',
        flags.ROLLOUT_PERCENT,
    )
    assert change == (37, f"api:{people['admin']['id']}")
    refreshed_after(page, before)
    expect(by_id("rollout-percent")).to_have_text("37")
    expect(by_id("rollout-mode")).to_have_text("canary 37%")

    # A bad value: the API's message on the page, nothing stored.
    page.fill("#percent-input", "150")
    page.click("#percent-set")
    expect(by_id("action-result")).to_contain_text("422")
    expect(by_id("action-result")).to_contain_text("less than or equal to 100")
    expect(by_id("action-result")).to_have_attribute("data-ok", "false")
    assert stored_percent(app_db) == 37

    # A change made elsewhere shows up by itself (the page refreshes every 5 s).
    flags.rollout(64, "tests", app_db)
    refreshed_after(page, refresh_count(page))
    expect(by_id("rollout-percent")).to_have_text("64")
    stamp = page.get_attribute("#last-refresh", "datetime")
    assert stamp and abs(datetime.fromisoformat(stamp) - datetime.now(UTC)) < timedelta(minutes=5)

    # A preset button.
    page.click('button[data-percent="0"]')
    expect(by_id("rollout-percent")).to_have_text("0")
    assert stored_percent(app_db) == 0 and flags.read_table(app_db)[flags.USE_CELERY] is False
    page.click('button[data-percent="50"]')
    expect(by_id("rollout-mode")).to_have_text("canary 50%")
    assert stored_percent(app_db) == 50

    # The job actions answer with the route's error for an unknown job.
    page.fill("#job-id", "no-such-job")
    page.fill("#job-reason", "checking the error message")
    page.click("#job-cancel")
    expect(by_id("action-result")).to_contain_text("404")
    expect(by_id("action-result")).to_have_attribute("data-ok", "false")
    expect(by_id("error")).to_be_hidden()

    shot = tmp_path / "dashboard.png"
    for field in ("#percent-input", "#job-id", "#job-reason"):
        page.fill(field, "")
    page.evaluate("document.getElementById('action-result').hidden = true")
    page.evaluate("document.activeElement.blur()")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
    page.close()


def test_the_admin_actions_change_the_database_and_refusals_show_why(
    browser: Any, api: str, app_db: str, people: dict[str, Any], seeded: dict[str, list[str]]
) -> None:
    from playwright.sync_api import expect

    page = open_dashboard(browser, api, people["admin"]["key"])
    by_id = page.get_by_test_id
    result = by_id("action-result")
    expect(by_id("pause-state")).to_have_text("open (not paused)")
    open_pauses = 'SELECT reason FROM "SystemPause" WHERE "endedAt" IS NULL'

    # Pause and resume job creation; the refusals say why.
    page.click("#pause-btn")
    expect(result).to_contain_text("422")
    assert fetch(app_db, open_pauses) == []
    page.fill("#pause-reason", "dashboard maintenance")
    page.click("#pause-btn")
    expect(by_id("pause-state")).to_contain_text("PAUSED since")
    expect(by_id("pause-state")).to_contain_text("dashboard maintenance")
    assert fetch(app_db, open_pauses) == [("dashboard maintenance",)]
    page.click("#pause-btn")
    expect(result).to_contain_text("409 job creation is already paused")
    page.click("#resume-btn")
    expect(result).to_have_text("job creation resumed")
    expect(by_id("pause-state")).to_have_text("open (not paused)")
    assert fetch(app_db, open_pauses) == []
    page.click("#resume-btn")
    expect(result).to_contain_text("404 job creation is not paused")

    # Cancel a waiting job by id, with a reason.
    pending = seeded["legacy"][6]
    page.fill("#job-id", pending)
    page.fill("#job-reason", "not needed")
    page.click("#job-cancel")
    expect(result).to_contain_text(f"job {pending} cancelled")
    row = fetch(
        app_db,
        'SELECT status::text, "cancellationReason", "cancelledById" FROM "Job" WHERE id = %s',
        pending,
    )
    assert row == [("CANCELLED", "not needed", people["admin"]["id"])]
    page.click("#job-cancel")  # again: it has ended
    expect(result).to_contain_text("400")
    expect(result).to_contain_text("CANCELLED")

    # Retry a failed job from the list of failures.
    failed = seeded["legacy"][3]
    page.click(f'#failures tr[data-job-id="{failed}"] button[data-action="rerun"]')
    expect(result).to_contain_text(f"job {failed} retried as job ")
    [(new_id, status)] = fetch(
        app_db, 'SELECT id, status::text FROM "Job" WHERE "originalJobId" = %s', failed
    )
    assert status == "PENDING" and new_id in result.inner_text()

    # Redrive a dead letter: a Celery job's message that went dead.
    schema = os.environ["ROAST_JOBS_BROKER_SCHEMA"]
    [(task_id,)] = fetch(
        app_db, 'SELECT "brokerJobId" FROM "Job" WHERE id = %s', seeded["celery"][0]
    )
    [(dead_id,)] = execute(
        app_db,
        f"""
        WITH gone AS (DELETE FROM "{schema}".message WHERE task_id = %(task)s RETURNING *)
        INSERT INTO "{schema}".dead_letter
            (id, queue, priority, created_at, reason, delivery_count, task_id, payload)
        SELECT id, queue, priority, created_at, 'rejected', 1, task_id, payload FROM gone
        RETURNING id
        """,
        {"task": task_id},
    )
    refreshed_after(page, refresh_count(page))
    expect(by_id("dead-count")).to_have_text("1")
    dead_row = page.locator(f'#dead-letters tr[data-dead-id="{dead_id}"]')
    expect(dead_row).to_contain_text("roast_jobs.evaluation")
    page.click("#redrive-selected")
    expect(result).to_have_text("select the dead letters to redrive first")
    dead_row.locator("input[type=checkbox]").check()
    page.click("#redrive-selected")
    expect(result).to_have_text("1 dead letter(s) redriven, 0 held back")
    assert fetch(app_db, f'SELECT count(*) FROM "{schema}".dead_letter') == [(0,)]
    assert fetch(
        app_db, f'SELECT count(*) FROM "{schema}".message WHERE task_id = %s', task_id
    ) == [(1,)]
    expect(by_id("dead-count")).to_have_text("0")
    page.click("#redrive-all")
    expect(result).to_contain_text("0 dead letter(s) redriven")
    page.close()


def test_a_key_that_is_not_an_admins_gets_the_error_on_the_page(
    browser: Any, api: str, people: dict[str, Any], seeded: dict[str, list[str]]
) -> None:
    from playwright.sync_api import expect

    page = open_dashboard(browser, api, people["alice"]["key"])
    expect(page.get_by_test_id("error")).to_contain_text("403 admins only")
    expect(page.get_by_test_id("rollout-percent")).to_have_text("-")
    expect(page.get_by_test_id("jobs-legacy-PENDING")).to_have_count(0)

    page.fill("#api-key", "rmp_not-a-key")
    page.click("#key-save")
    expect(page.get_by_test_id("error")).to_contain_text("401 a valid API key is needed")
    # The page needs no key; the key stays in this tab's sessionStorage only.
    assert httpx.get(f"{api}/dashboard").status_code == 200
    assert page.evaluate("sessionStorage.getItem('roastJobsAdminKey')") == "rmp_not-a-key"
    page.close()


# -- /api/admin/rollout ----------------------------------------------------------------


def test_the_rollout_route_agrees_with_the_database_and_rollout_check(
    api: str, app_db: str, people: dict[str, Any], seeded: dict[str, list[str]]
) -> None:
    answer = httpx.get(f"{api}/api/admin/rollout", headers=auth(people["admin"]), timeout=30)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    in_db = counts(app_db)
    for backend in ("legacy", "celery"):
        jobs = data["backends"][backend]["jobs"]
        assert jobs == {s: in_db.get((backend, s), 0) for s in STATES}
    assert data["migration"]["remaining"] == in_db.get(("legacy", "PENDING"), 0)
    assert data["flags"][flags.ROLLOUT_PERCENT] == stored_percent(app_db)
    newest_failed = fetch(
        app_db,
        "SELECT id FROM \"Job\" WHERE status = 'FAILED' "
        'ORDER BY "completedAt" DESC NULLS LAST, id LIMIT 10',
    )
    assert [f["id"] for f in data["latestFailures"]] == [r[0] for r in newest_failed]
    assert {seeded["legacy"][3], seeded["celery"][2]} <= {r[0] for r in newest_failed}
    verdict = json.loads(run_cli(app_db, "rollout", "check", "--json").stdout)
    assert data["check"]["verdict"] == ("healthy" if verdict["healthy"] else "unhealthy")
    assert [(t["name"], t["fired"]) for t in data["check"]["triggers"]] == [
        (t["name"], t["fired"]) for t in verdict["triggers"]
    ]
    assert data["check"]["fired"] == [t["name"] for t in verdict["triggers"] if t["fired"]]
    for who, status in ((people["alice"], 403), (None, 401)):
        headers = auth(who) if who else {}
        refused = httpx.get(f"{api}/api/admin/rollout", headers=headers, timeout=30)
        assert refused.status_code == status and refused.json()["error"], refused.text


# -- /api/admin/jobs/metrics -----------------------------------------------------------


def metrics(api: str, who: dict[str, Any] | None, **params: Any) -> httpx.Response:
    headers = auth(who) if who else {}
    return httpx.get(f"{api}/api/admin/jobs/metrics", params=params, headers=headers, timeout=30)


def percentile(values: list[float], q: float) -> float | None:
    """percentile_cont: linear interpolation between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    low, high = math.floor(at), math.ceil(at)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def naive(iso: str) -> datetime:
    """The API's aware UTC time as "Job" stores it (naive UTC)."""
    return datetime.fromisoformat(iso).astimezone(UTC).replace(tzinfo=None)


def add_job(url: str, evaluation: str, backend: str, status: str, **times: datetime) -> str:
    [(job_id,)] = execute(
        url,
        """
        INSERT INTO "Job" (id, status, backend, "evaluationId", "createdAt", "startedAt",
                           "completedAt")
        VALUES (gen_random_uuid()::text, %(status)s::"JobStatus", %(backend)s, %(evaluation)s,
                %(created)s, %(started)s, %(completed)s)
        RETURNING id
        """,
        {"status": status, "backend": backend, "evaluation": evaluation, **times},
    )
    return str(job_id)


def expected_series(url: str, data: dict[str, Any]) -> dict[str, Any]:
    """The response recomputed in Python from every "Job" row: a job counts in the bucket
    with start <= its time < start + bucket."""
    step = timedelta(seconds=data["bucket"])
    rows = fetch(
        url, 'SELECT backend, status::text, "createdAt", "startedAt", "completedAt" FROM "Job"'
    )
    out: dict[str, Any] = {}
    for backend, figures in data["backends"].items():
        starts = [naive(p["start"]) for p in figures["series"]]
        mine = [r for r in rows if r[0] == backend]

        def point(lo: datetime, hi: datetime, rows: list[Any] = mine) -> dict[str, Any]:
            done = [r for r in rows if r[1] in ("COMPLETED", "FAILED") and lo <= r[4] < hi]
            waits = [(r[3] - r[2]).total_seconds() for r in rows if r[3] and lo <= r[3] < hi]
            completed = sum(1 for r in done if r[1] == "COMPLETED")
            return {
                "completed": completed,
                "failed": len(done) - completed,
                "finished": len(done),
                "started": len(waits),
                "pickupP50": percentile(waits, 0.5),
                "pickupP95": percentile(waits, 0.95),
                "pickupAvg": sum(waits) / len(waits) if waits else None,
            }

        out[backend] = {
            "series": [{"start": s, **point(s, s + step)} for s in starts],
            "totals": point(starts[0], starts[-1] + step),
        }
    return out


def same(actual: dict[str, Any], expected: dict[str, Any]) -> bool:
    for key, want in expected.items():
        got = actual[key]
        if key == "start":
            got = naive(got)
        if isinstance(want, float):
            if got is None or not math.isclose(got, want, abs_tol=1e-6):
                return False
        elif got != want:
            return False
    return True


def test_job_metrics_agree_with_the_rows_bucket_by_bucket_exact_at_the_bounds(
    api: str, app_db: str, people: dict[str, Any], seeded: dict[str, list[str]]
) -> None:
    admin = people["admin"]
    [(evaluation,)] = fetch(app_db, 'SELECT "evaluationId" FROM "Job" LIMIT 1')
    # 10-minute buckets: "now" rarely crosses a bound between the two reads below, and
    # when it does the first bucket moved and the round is made again.
    for _attempt in range(3):
        first = metrics(api, admin, window=3600, bucket=600).json()
        start = naive(first["from"])
        inner = start + timedelta(seconds=600)  # the start of the 2nd bucket
        ms = timedelta(milliseconds=1)
        crafted = [
            # On the window's first bound: in; a millisecond before it: out.
            add_job(app_db, evaluation, "legacy", "COMPLETED",
                    created=start - timedelta(seconds=30), started=start, completed=start),
            add_job(app_db, evaluation, "legacy", "FAILED",
                    created=start - timedelta(seconds=90), started=start - ms,
                    completed=start - ms),
            # On an inner bound: the later bucket; a millisecond before: the earlier one.
            add_job(app_db, evaluation, "celery", "COMPLETED",
                    created=inner - timedelta(seconds=4), started=inner, completed=inner),
            add_job(app_db, evaluation, "celery", "FAILED",
                    created=inner - timedelta(seconds=12), started=inner - ms,
                    completed=inner - ms),
            # Cancelled jobs are no throughput, but they were picked up.
            add_job(app_db, evaluation, "celery", "CANCELLED",
                    created=inner - timedelta(seconds=8), started=inner + ms,
                    completed=inner + ms),
        ]  # fmt: skip
        answer = metrics(api, admin, window=3600, bucket=600)
        data = answer.json()
        if data["from"] == first["from"]:
            break
        execute(app_db, 'DELETE FROM "Job" WHERE id = ANY(%(ids)s)', {"ids": crafted})
    assert answer.status_code == 200, answer.text
    assert (data["window"], data["bucket"]) == (3600, 600)
    for backend in ("legacy", "celery"):
        assert len(data["backends"][backend]["series"]) == 6

    # The crafted rows, bucket by bucket.
    legacy = data["backends"]["legacy"]
    celery = data["backends"]["celery"]
    assert naive(legacy["series"][0]["start"]) == start
    assert legacy["series"][0]["completed"] == 1 and legacy["series"][0]["failed"] == 0
    assert legacy["series"][0]["pickupP50"] == pytest.approx(30)
    assert naive(celery["series"][1]["start"]) == inner
    assert (celery["series"][1]["completed"], celery["series"][1]["failed"]) == (1, 0)
    assert (celery["series"][0]["completed"], celery["series"][0]["failed"]) == (0, 1)
    assert celery["series"][0]["pickupP50"] == pytest.approx(11.999)
    assert celery["series"][1]["started"] == 2  # the completed and the cancelled one
    assert celery["series"][1]["pickupP95"] == pytest.approx(4 + (8.001 - 4) * 0.95)
    # Every bucket and total against the rows (the seeded jobs: the last 28 minutes).
    expected = expected_series(app_db, data)
    for backend in ("legacy", "celery"):
        got = data["backends"][backend]
        for have, want in zip(got["series"], expected[backend]["series"], strict=True):
            assert same(have, want), (backend, have, want)
        assert same(got["totals"], expected[backend]["totals"]), (backend, got["totals"])
    assert data["backends"]["legacy"]["totals"]["completed"] >= 4


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"window": 59}, "window"),
        ({"window": 86401}, "window"),
        ({"bucket": 9}, "bucket"),
        ({"bucket": 3601}, "bucket"),
        ({"window": 86400, "bucket": 10}, "fewer than 500"),
        ({"window": 4991, "bucket": 10}, "fewer than 500"),
        ({"window": 600, "bucket": 900}, "must not exceed window"),
        ({"window": "an hour"}, "window"),
    ],
)
def test_job_metrics_refuse_bad_sizes_with_a_message(
    api: str, people: dict[str, Any], params: dict[str, Any], message: str
) -> None:
    answer = metrics(api, people["admin"], **params)
    # Each value out of its own range is 422; a window/bucket mismatch is 400.
    assert answer.status_code == (400 if len(params) == 2 else 422), answer.text
    assert message in answer.json()["error"]


def test_job_metrics_limits_and_who_may_read_them(api: str, people: dict[str, Any]) -> None:
    # 499 buckets is the most; the default is the last hour by minute.
    most = metrics(api, people["admin"], window=4990, bucket=10).json()
    assert len(most["backends"]["legacy"]["series"]) == 499
    default = metrics(api, people["admin"]).json()
    assert (default["window"], default["bucket"]) == (3600, 60)
    assert len(default["backends"]["celery"]["series"]) == 60
    assert metrics(api, people["bob"]).status_code == 403
    refused = metrics(api, None)
    assert refused.status_code == 401 and "API key" in refused.json()["error"]
