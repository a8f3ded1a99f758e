"""compose/: the Docker Compose deployment, checked against the code it runs.

Every command resolves through the real CLI and answers --help; every queue, setting,
health probe, scrape target and dashboard query names something that exists (the metrics
from a real scrape of a seeded database). Each check also runs on broken copies, which it
must reject. `docker compose config` runs only where the compose plugin is installed.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import compose_checks as cc

ENV = cc.load_env_file()
RAW = cc.load_yaml(cc.COMPOSE_FILE)
COMPOSE = cc.interpolate(RAW, ENV)
DOCKERFILE = cc.dockerfile_instructions()


@pytest.fixture(scope="module")
def routes(app_db: str) -> Iterator[set[str]]:
    """The GET routes of the real app, from its OpenAPI schema (FastAPI keeps included
    routers apart from app.routes)."""
    from roast_jobs.api import create_app

    app = create_app(app_db)
    yield {path for path, ops in app.openapi()["paths"].items() if "get" in ops}
    app.state.ctx.service.close()


@pytest.fixture(scope="module")
def exposition(service: Any) -> cc.Exposition:
    """/metrics' registry scraped for real, on a database with jobs on both backends, a
    message on the broker and a migration in the ledger, so every family has samples."""
    from prometheus_client import generate_latest

    from roast_jobs.db.session import transaction
    from roast_jobs.domain import sample_data
    from roast_jobs.metrics import registry
    from roast_jobs.migrator import Direction, migrate
    from tests.domain_support import rollout

    with transaction(service.url) as s:
        user = sample_data.create_user(s)
        agents = [sample_data.create_agent(s, user, name=f"a{i}") for i in range(2)]
        [doc] = sample_data.create_documents(s, user, 1)
    rollout(service, 0)
    service.create_evaluation_jobs(doc, agents)
    migrate(Direction.LEGACY_TO_CELERY, service.url, limit=1, service=service)
    return cc.Exposition.parse(generate_latest(registry(service.url)).decode())


def grafana_files() -> tuple[dict[str, Any], dict[str, Any]]:
    provisioning = cc.GRAFANA_DIR / "provisioning"
    [datasources] = provisioning.glob("datasources/*.yml")
    [providers] = provisioning.glob("dashboards/*.yml")
    return cc.load_yaml(datasources), cc.load_yaml(providers)


# -- the real files ------------------------------------------------------------------


def test_secrets_are_required_from_the_env_file() -> None:
    assert cc.secret_problems(RAW) == []
    for name in ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH", "GF_SECURITY_ADMIN_PASSWORD"):
        without = {k: v for k, v in ENV.items() if k != name}
        with pytest.raises(KeyError, match=name):
            cc.interpolate(RAW, without)


def test_every_command_resolves_through_the_cli_to_real_queues() -> None:
    assert cc.command_problems(COMPOSE) == []
    cmd = next(r for w, r in DOCKERFILE if w == "CMD")
    parsed = cc.parse_command(json.loads(cmd))  # the exec form is a JSON list
    assert parsed.path == ("api",) and parsed.params["host"] == "0.0.0.0"


def test_every_command_answers_help_from_the_installed_cli(app_db: str) -> None:
    bindir = Path(sys.executable).parent
    commands = {n: s["command"] for n, s in cc.app_services(COMPOSE).items()}
    for name, argv in commands.items():
        done = subprocess.run(
            [str(bindir / argv[0]), *argv[1:], "--help"],
            env={**os.environ, "DATABASE_URL": app_db},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{name}: {' '.join(argv)} --help\n{done.stderr}"
        assert "Usage:" in done.stdout, done.stdout


def test_every_setting_is_a_settings_field_with_a_valid_value() -> None:
    assert cc.environment_problems(COMPOSE, cc.dockerfile_env(DOCKERFILE)) == []
    settings = {k: v for k, v in ENV.items() if k.startswith("ROAST_JOBS_")}
    assert cc.settings_problems(settings, ".env.example") == []


def test_postgres_then_the_migration_then_the_app() -> None:
    assert cc.order_problems(COMPOSE) == []


def test_the_health_probes_hit_the_apis_health_route(routes: set[str]) -> None:
    assert "/api/health/jobs" in routes
    assert cc.health_problems(COMPOSE, DOCKERFILE, routes) == []


def test_flower_has_basic_auth() -> None:
    assert cc.flower_problems(COMPOSE, ENV) == []


def test_prometheus_scrapes_the_api(routes: set[str]) -> None:
    assert cc.prometheus_problems(COMPOSE, cc.load_yaml(cc.PROMETHEUS_FILE), routes) == []


def test_the_dashboard_queries_served_metrics(exposition: cc.Exposition) -> None:
    dashboards = cc.load_dashboards()
    assert dashboards, "no dashboard JSON in compose/grafana/dashboards"
    for dashboard in dashboards.values():
        assert cc.dashboard_problems(dashboard, exposition) == []
    assert cc.grafana_problems(COMPOSE, *grafana_files(), dashboards) == []


def test_the_image_runs_as_a_user_from_python_3_11_slim() -> None:
    words = [w for w, _ in DOCKERFILE]
    assert ("FROM", "python:3.11-slim") in DOCKERFILE
    [user] = [r for w, r in DOCKERFILE if w == "USER"]
    assert user not in ("root", "0")
    assert words.index("USER") > words.index("RUN")  # installs as root, then drops it


def compose_command() -> list[str] | None:
    """``docker compose`` (the v2 plugin) or, failing that, Debian's ``docker-compose``
    (v1.29, which validates against its own schema; CI installs it)."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    return [v1] if v1 else None


def test_docker_compose_config_accepts_the_file() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither docker compose nor docker-compose is installed here")
    done = subprocess.run(
        [*command, "-f", str(cc.COMPOSE_FILE), "config", "-q"],
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


# -- broken copies: each check must say what is wrong ----------------------------------


def _svc(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


Mutation = Callable[[dict[str, Any]], None]
Check = Callable[[dict[str, Any]], list[str]]


def _env_check(compose: dict[str, Any]) -> list[str]:
    return cc.environment_problems(compose, cc.dockerfile_env(DOCKERFILE))


def _replace_url_host(c: dict[str, Any]) -> None:
    env = _svc(c, "beat")["environment"]
    env["DATABASE_URL"] = env["DATABASE_URL"].replace("@postgres:", "@db:")


# name: (how to break a copy, the check, what it must say)
MUTATIONS: dict[str, tuple[Mutation, Check, str]] = {
    "misspelled subcommand": (
        lambda c: _svc(c, "beat")["command"].__setitem__(1, "beet"),
        cc.command_problems,
        "No such command 'beet'",
    ),
    "misspelled nested subcommand": (
        lambda c: _svc(c, "migrate")["command"].__setitem__(2, "upgrad"),
        cc.command_problems,
        "No such command 'upgrad'",
    ),
    "option value out of range": (
        lambda c: _svc(c, "worker-evaluation")["command"].__setitem__(5, "0"),
        cc.command_problems,
        "is not in the range x>=1",
    ),
    "wrong queue": (
        lambda c: _svc(c, "worker-import")["command"].__setitem__(3, "imports"),
        cc.command_problems,
        "queue 'imports' is not one of",
    ),
    "queue nobody consumes": (
        lambda c: _svc(c, "worker-batch")["command"].__setitem__(3, "batch"),
        cc.command_problems,
        "queue 'maintenance' has no worker",
    ),
    "flower on another app": (
        lambda c: _svc(c, "flower")["command"].__setitem__(2, "roast_jobs.tasks.demo"),
        cc.command_problems,
        "app 'roast_jobs.tasks.demo' is not roast_jobs.tasks.worker",
    ),
    "bogus ROAST_JOBS_ variable": (
        lambda c: _svc(c, "legacy-worker")["environment"].update(ROAST_JOBS_LEGACY_MAX_WORKRS="5"),
        _env_check,
        "ROAST_JOBS_LEGACY_MAX_WORKRS is not a Settings field",
    ),
    "value Settings refuses": (
        lambda c: _svc(c, "legacy-worker")["environment"].update(ROAST_JOBS_LEGACY_MAX_WORKERS="0"),
        _env_check,
        "Settings refuses the values",
    ),
    "made-up variable": (
        lambda c: _svc(c, "api")["environment"].update(JOBS_EVALUATOR="x:Y"),
        _env_check,
        "JOBS_EVALUATOR is neither DATABASE_URL nor ROAST_JOBS_*",
    ),
    "unknown Flower option": (
        lambda c: _svc(c, "flower")["environment"].update(FLOWER_BASIC_AUTHS="a:b"),
        _env_check,
        "FLOWER_BASIC_AUTHS is not an option of Flower",
    ),
    "DATABASE_URL on another host": (
        _replace_url_host,
        _env_check,
        "beat: DATABASE_URL is not the postgres service's",
    ),
    "api before the migration": (
        lambda c: _svc(c, "api")["depends_on"].pop("migrate"),
        cc.order_problems,
        "api: does not wait for migrate to complete",
    ),
    "started, not healthy": (
        lambda c: _svc(c, "migrate")["depends_on"]["postgres"].update(condition="service_started"),
        cc.order_problems,
        "migrate: does not wait for postgres to be healthy",
    ),
    "a cycle": (
        lambda c: _svc(c, "postgres").update(depends_on={"beat": {"condition": "service_started"}}),
        cc.order_problems,
        "depends_on has a cycle",
    ),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_a_broken_compose_file_is_caught(name: str) -> None:
    mutate, check, expected = MUTATIONS[name]
    assert check(COMPOSE) == []
    broken = copy.deepcopy(COMPOSE)
    mutate(broken)
    problems = check(broken)
    assert any(expected in p for p in problems), problems


def test_broken_probes_scrapes_and_auth_are_caught(routes: set[str]) -> None:
    broken = copy.deepcopy(COMPOSE)
    _svc(broken, "api")["command"][-1] = "8080"
    assert any(
        "not the API in its container" in p for p in cc.health_problems(broken, DOCKERFILE, routes)
    )
    prometheus = cc.load_yaml(cc.PROMETHEUS_FILE)
    assert any(
        "is not the API (api:8080)" in p for p in cc.prometheus_problems(broken, prometheus, routes)
    )
    _svc(broken, "worker-batch")["healthcheck"] = {}
    assert any(
        "worker-batch: inherits" in p for p in cc.health_problems(broken, DOCKERFILE, routes)
    )
    wrong_path = [(w, r.replace("/health/jobs", "/health")) for w, r in DOCKERFILE]
    assert any(
        "not the API's health route" in p for p in cc.health_problems(COMPOSE, wrong_path, routes)
    )
    _svc(broken, "flower")["environment"].pop("FLOWER_BASIC_AUTH")
    assert cc.flower_problems(broken, ENV)
    literal = copy.deepcopy(RAW)
    _svc(literal, "postgres")["environment"]["POSTGRES_PASSWORD"] = "hunter2"
    assert any("POSTGRES_PASSWORD must be" in p for p in cc.secret_problems(literal))


def test_broken_dashboards_are_caught(exposition: cc.Exposition) -> None:
    [dashboard] = cc.load_dashboards().values()
    panel = next(p for p in dashboard["panels"] if p.get("targets"))
    for wrong, expected in (
        (
            "rate(roast_jobs_jobs_complete_total[5m])",
            "roast_jobs_jobs_complete_total is not served",
        ),
        ("roast_jobs_job_duration_seconds", "roast_jobs_job_duration_seconds is not served"),
        ('sum by (status) (roast_jobs_jobs{backend="celery"})', "label 'status' is not on"),
        ('roast_jobs_queue_messages{queues="evaluation"}', "label 'queues' is not on"),
    ):
        broken = copy.deepcopy(dashboard)
        next(p for p in broken["panels"] if p["id"] == panel["id"])["targets"][0]["expr"] = wrong
        problems = cc.dashboard_problems(broken, exposition)
        assert any(expected in p for p in problems), (wrong, problems)
    datasources, providers = grafana_files()
    dashboards = cc.load_dashboards()
    providers = copy.deepcopy(providers)
    providers["providers"][0]["options"]["path"] = "/var/lib/grafana/dashboards"
    assert any(
        "is not where the dashboards are mounted" in p
        for p in cc.grafana_problems(COMPOSE, datasources, providers, dashboards)
    )
