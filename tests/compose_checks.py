"""Checks of compose/ against the code it runs, for tests/test_compose.py.

Each ``*_problems`` function takes the loaded files and returns what is wrong, one line
per problem (empty when all is well), so the tests can run them on the real files and on
broken copies alike.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch
from urllib.parse import urlsplit

import click
import yaml
from pydantic import ValidationError

REPO = Path(__file__).resolve().parent.parent
COMPOSE_DIR = REPO / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus" / "prometheus.yml"
GRAFANA_DIR = COMPOSE_DIR / "grafana"

# $$ is a literal $; ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err}.
_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?)([-?])([^}]*))?\}")
_REQUIRED = re.compile(r"^\$\{\w+:\?[^}]*\}$")
_SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|BASIC_AUTH")
# user:password@ of a URL, either part possibly ${...} (which holds ":" itself).
_URL_PASSWORD = re.compile(r"://(?:\$\{[^}]*\}|[^:/@$]+):(\$\{[^}]*\}|[^@]+)@")
_HTTP_URL = re.compile(r"https?://([\w.-]+):(\d+)(/[^'\"\s]*)")
_METRIC = re.compile(r"\broast_jobs_\w+")
_SELECTOR = re.compile(r"(roast_jobs_\w+)\{([^}]*)\}")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


# -- loading -------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """``node`` with compose's variable interpolation done from ``env``; a required
    variable that is unset raises KeyError, as `docker compose` stops on it."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, colon, kind, arg = m.groups()
        value = env.get(name)
        unset = value is None or (colon and value == "")
        if kind == "?" and unset:
            raise KeyError(f"{name} is required: {arg}")
        if kind == "-" and unset:
            return arg
        return value or ""

    return _VAR.sub(one, node)


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            for pair in rest.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


# -- commands ------------------------------------------------------------------------


@dataclass
class Parsed:
    """A service's command line as the real CLI parses it (without running it)."""

    program: str  # roast-jobs | celery
    path: tuple[str, ...]  # the subcommand, e.g. ("db", "upgrade")
    params: dict[str, Any]


def parse_command(argv: list[str]) -> Parsed:
    """Resolve ``argv`` through the click command tree of roast-jobs (or celery) and
    parse its options, which checks names, types and ranges; raises click's errors."""
    from celery.bin.celery import celery as celery_group

    from roast_jobs.cli import cli

    if not argv or argv[0] not in ("roast-jobs", "celery"):
        raise click.UsageError(f"not a roast-jobs or celery command: {argv!r}")
    group: click.Command = cli if argv[0] == "roast-jobs" else celery_group
    ctx = click.Context(group, info_name=argv[0])
    rest = list(argv[1:])
    params: dict[str, Any] = {}
    if argv[0] == "celery":
        # celery's own -A APP goes before the subcommand; this file uses no other option.
        if len(rest) < 2 or rest[0] not in ("-A", "--app"):
            raise click.UsageError(f"{' '.join(argv)}: write celery -A APP SUBCOMMAND ...")
        params["app_name"], rest = rest[1], rest[2:]
    path: list[str] = []
    cmd = group
    while isinstance(cmd, click.Group):
        if not rest:
            raise click.UsageError(f"{' '.join(argv)}: no subcommand")
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert name is not None and sub is not None
        path.append(name)
        if isinstance(sub, click.Group):
            ctx = click.Context(sub, info_name=name, parent=ctx)
        cmd = sub
    leaf = cmd.make_context(path[-1], rest, parent=ctx, resilient_parsing=False)
    return Parsed(argv[0], tuple(path), {**params, **leaf.params})


def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the roast-jobs image (built from compose/Dockerfile)."""
    return {n: s for n, s in compose["services"].items() if "build" in s}


def service_with(compose: dict[str, Any], *path: str) -> tuple[str, dict[str, Any]]:
    """The one app service whose command resolves to PATH (e.g. "api")."""
    found = [
        (n, s)
        for n, s in app_services(compose).items()
        if (p := parsed_or_none(s.get("command"))) and p.path == path
    ]
    assert len(found) == 1, f"want one service running {' '.join(path)}: {[n for n, _ in found]}"
    return found[0]


def parsed_or_none(argv: Any) -> Parsed | None:
    try:
        return parse_command(list(argv)) if isinstance(argv, list) else None
    except (click.ClickException, click.exceptions.Exit):
        return None


def command_problems(compose: dict[str, Any]) -> list[str]:
    """Every app service runs a real subcommand with valid options; workers consume real
    queues of the domain app, and every queue has a worker."""
    from roast_jobs.cli_domain import WORKER_APP
    from roast_jobs.service.job_service import QUEUES

    problems: list[str] = []
    consumed: set[str] = set()
    for name, svc in app_services(compose).items():
        argv = svc.get("command")
        if not isinstance(argv, list):
            problems.append(f"{name}: command must be a list (exec form), not {argv!r}")
            continue
        try:
            parsed = parse_command(argv)
        except (click.ClickException, click.exceptions.Exit) as exc:
            problems.append(f"{name}: {' '.join(argv)}: {exc}")
            continue
        app = parsed.params.get("app_name")
        if parsed.path in (("worker",), ("beat",), ("flower",)) and app != WORKER_APP:
            problems.append(f"{name}: app {app!r} is not {WORKER_APP}")
        if parsed.path == ("worker",):
            queues = parsed.params.get("queues") or ",".join(QUEUES.values())
            for queue in queues.split(","):
                if queue.strip() not in QUEUES.values():
                    problems.append(f"{name}: queue {queue!r} is not one of {set(QUEUES.values())}")
                consumed.add(queue.strip())
    for queue in sorted(set(QUEUES.values()) - consumed):
        problems.append(f"queue {queue!r} has no worker")
    return problems


# -- settings ------------------------------------------------------------------------


def settings_problems(
    env: Mapping[str, str], where: str, others: tuple[str, ...] = ()
) -> list[str]:
    """Every variable is DATABASE_URL or a ROAST_JOBS_* Settings field (or starts with
    one of ``others``: another program's own), and Settings accepts the values."""
    from roast_jobs.config import Settings

    fields = {n for n, f in Settings.model_fields.items() if f.validation_alias is None}
    problems = []
    for key in env:
        if key == "DATABASE_URL" or key.startswith(others):
            continue
        if not key.startswith("ROAST_JOBS_"):
            problems.append(f"{where}: {key} is neither DATABASE_URL nor ROAST_JOBS_*")
        elif key.removeprefix("ROAST_JOBS_").lower() not in fields:
            problems.append(f"{where}: {key} is not a Settings field")
    values = {k: str(v) for k, v in env.items() if k == "DATABASE_URL" or k.startswith("ROAST_")}
    with patch.dict(os.environ, values):
        try:
            Settings()
        except ValidationError as exc:
            problems.append(f"{where}: Settings refuses the values: {exc}")
    return problems


def environment_problems(compose: dict[str, Any], dockerfile_env_: dict[str, str]) -> list[str]:
    """Settings of every app service and of the image; DATABASE_URL points at the
    postgres service with its credentials."""
    from flower.options import default_options

    problems = settings_problems(dockerfile_env_, "Dockerfile ENV", ("PYTHON", "PIP_"))
    image_settings = {k: v for k, v in dockerfile_env_.items() if k.startswith("ROAST_JOBS_")}
    postgres = compose["services"]["postgres"]["environment"]
    for name, svc in app_services(compose).items():
        env = svc.get("environment") or {}
        problems += settings_problems({**image_settings, **env}, name, ("FLOWER_",))
        for key in env:
            if key.startswith("FLOWER_") and key[7:].lower() not in default_options:
                problems.append(f"{name}: {key} is not an option of Flower")
        url = urlsplit(env.get("DATABASE_URL", ""))
        want = ("postgres", 5432, postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
        if (url.hostname, url.port, url.username, url.password) != want:
            problems.append(f"{name}: DATABASE_URL is not the postgres service's: {url}")
        if url.path.lstrip("/") != postgres["POSTGRES_DB"]:
            problems.append(f"{name}: DATABASE_URL names another database: {url.path}")
    return problems


def secret_problems(raw: dict[str, Any]) -> list[str]:
    """Passwords come from the environment as required values, never literals."""
    problems = []

    def walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{where}[{i}]")
        elif isinstance(node, str):
            yield where, node

    for where, value in walk(raw, ""):
        key = where.rsplit(".", 1)[-1]
        if _SECRET_KEY.search(key) and not _REQUIRED.match(value):
            problems.append(f"{where} must be ${{VAR:?...}}, not {value!r}")
        if (m := _URL_PASSWORD.search(value)) and not _REQUIRED.match(m.group(1)):
            problems.append(f"{where}: the password in the URL must be ${{VAR:?...}}")
    return problems


# -- order, health, Flower -----------------------------------------------------------


def order_problems(compose: dict[str, Any]) -> list[str]:
    """postgres (healthy) -> the migration (completed) -> everything of the app."""
    services = compose["services"]
    problems = []
    test = " ".join(services["postgres"].get("healthcheck", {}).get("test", []))
    if "pg_isready" not in test:
        problems.append("postgres: no pg_isready healthcheck")
    migrate, _ = service_with(compose, "db", "upgrade")
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep in deps:
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep!r}")
        if name not in app_services(compose):
            continue
        if deps.get("postgres", {}).get("condition") != "service_healthy":
            problems.append(f"{name}: does not wait for postgres to be healthy")
        completed = deps.get(migrate, {}).get("condition") == "service_completed_successfully"
        if name != migrate and not completed:
            problems.append(f"{name}: does not wait for {migrate} to complete")
    # A cycle would leave compose nothing to start.
    done: set[str] = set()
    while len(done) < len(services):
        ready = {
            n
            for n, s in services.items()
            if n not in done and set(s.get("depends_on") or {}) <= done
        }
        if not ready:
            problems.append(f"depends_on has a cycle among {set(services) - done}")
            break
        done |= ready
    return problems


def health_urls(instructions: list[tuple[str, str]], compose: dict[str, Any]) -> list[str]:
    """The URLs the image's HEALTHCHECK and the api service's healthcheck probe."""
    urls = [
        m.group(0) for w, r in instructions if w == "HEALTHCHECK" for m in _HTTP_URL.finditer(r)
    ]
    _, api = service_with(compose, "api")
    test = api.get("healthcheck", {}).get("test") or []
    urls += [m.group(0) for m in _HTTP_URL.finditer(" ".join(test))]
    return urls


def health_problems(
    compose: dict[str, Any], instructions: list[tuple[str, str]], routes: set[str]
) -> list[str]:
    problems = []
    api_name, api = service_with(compose, "api")
    port = parse_command(api["command"]).params["port"]
    if not any(w == "HEALTHCHECK" for w, _ in instructions):
        problems.append("Dockerfile: no HEALTHCHECK")
    if api.get("healthcheck", {}).get("disable"):
        problems.append(f"{api_name}: healthcheck disabled")
    urls = health_urls(instructions, compose)
    if not urls:
        problems.append("no healthcheck probes an HTTP URL")
    for url in urls:
        m = _HTTP_URL.match(url)
        assert m
        host, probe_port, path = m.groups()
        if host not in ("127.0.0.1", "localhost") or int(probe_port) != port:
            problems.append(f"{url}: not the API in its container (port {port})")
        if path != "/api/health/jobs" or path not in routes:
            problems.append(f"{url}: not the API's health route /api/health/jobs")
    # Other services inherit the image's probe of port 8000, where they serve nothing.
    for name, svc in app_services(compose).items():
        if name != api_name and not svc.get("healthcheck", {}).get("disable"):
            problems.append(f"{name}: inherits the API's healthcheck; disable it")
    return problems


def flower_problems(compose: dict[str, Any], env_file: dict[str, str]) -> list[str]:
    flowers = [
        (n, s)
        for n, s in app_services(compose).items()
        if (p := parsed_or_none(s.get("command"))) and p.path == ("flower",)
    ]
    if len(flowers) != 1:
        return [f"want one flower service, found {[n for n, _ in flowers]}"]
    name, svc = flowers[0]
    auth = (svc.get("environment") or {}).get("FLOWER_BASIC_AUTH", "")
    if not re.fullmatch(r"[^:,]+:[^,]+(,[^:,]+:[^,]+)*", auth):
        return [f"{name}: FLOWER_BASIC_AUTH must be user:password, not {auth!r}"]
    if "FLOWER_BASIC_AUTH" not in env_file:
        return [".env.example: no FLOWER_BASIC_AUTH"]
    return []


# -- Prometheus and Grafana ----------------------------------------------------------


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> source, of a service's short-form volumes."""
    out = {}
    for volume in svc.get("volumes") or []:
        source, target, *_ = volume.split(":")
        out[target] = source
    return out


def prometheus_problems(
    compose: dict[str, Any], config: dict[str, Any], routes: set[str]
) -> list[str]:
    problems = []
    api_name, api = service_with(compose, "api")
    port = parse_command(api["command"]).params["port"]
    mounts = _mounts(compose["services"]["prometheus"])
    if mounts.get("/etc/prometheus/prometheus.yml") != "./prometheus/prometheus.yml":
        problems.append("prometheus: compose/prometheus/prometheus.yml is not mounted")
    jobs = config.get("scrape_configs") or []
    targets = [
        (job.get("metrics_path", "/metrics"), t)
        for job in jobs
        for static in job.get("static_configs") or []
        for t in static.get("targets") or []
    ]
    if not targets:
        problems.append("prometheus.yml: no scrape target")
    for path, target in targets:
        if target != f"{api_name}:{port}":
            problems.append(f"prometheus.yml: target {target} is not the API ({api_name}:{port})")
        if path not in routes:
            problems.append(f"prometheus.yml: {path} is not a route of the API")
    return problems


@dataclass
class Exposition:
    """What /metrics serves: series names, and the label names seen on each."""

    series: set[str]
    labels: dict[str, set[str]]

    @classmethod
    def parse(cls, text: str) -> Exposition:
        from prometheus_client.parser import text_string_to_metric_families

        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        series: set[str] = set()
        labels: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(text):
            names = [family.name + s for s in suffixes.get(family.type, ("",))]
            series.update(names)
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
        return cls(series, labels)


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, in rows too."""
    out = []
    for panel in dashboard.get("panels", []):
        for p in [panel, *panel.get("panels", [])]:
            out += [(p["title"], t["expr"]) for t in p.get("targets", []) if "expr" in t]
    return out


def dashboard_problems(dashboard: dict[str, Any], exposition: Exposition) -> list[str]:
    """Every metric the dashboard queries is served, with the labels it selects and
    groups by."""
    problems = []
    exprs = dashboard_exprs(dashboard)
    if not exprs:
        problems.append("dashboard: no queries")
    for title, expr in exprs:
        metrics = set(_METRIC.findall(expr))
        if not metrics:
            problems.append(f"{title}: {expr} queries no roast_jobs metric")
        for metric in metrics - exposition.series:
            problems.append(f"{title}: {metric} is not served by /metrics")
        known = {"le"}.union(*(exposition.labels.get(m, set()) for m in metrics))
        used = {n for _, sel in _SELECTOR.findall(expr) for n in _MATCHER.findall(sel)}
        used |= {n.strip() for g in _GROUPING.findall(expr) for n in g.split(",") if n.strip()}
        for label in sorted(used - known):
            problems.append(f"{title}: label {label!r} is not on {sorted(metrics)}")
    return problems


def grafana_problems(
    compose: dict[str, Any],
    datasources: dict[str, Any],
    providers: dict[str, Any],
    dashboards: dict[Path, dict[str, Any]],
) -> list[str]:
    """The datasource reaches the prometheus service; the provider's folder is where
    compose mounts the dashboards; the panels use the provisioned datasource."""
    problems = []
    prometheus = compose["services"]["prometheus"]
    grafana = compose["services"]["grafana"]
    mounts = _mounts(grafana)
    if mounts.get("/etc/grafana/provisioning") != "./grafana/provisioning":
        problems.append("grafana: compose/grafana/provisioning is not mounted")
    uids = set()
    for ds in datasources.get("datasources") or []:
        url = urlsplit(ds.get("url", ""))
        ports = {p.rsplit(":", 1)[-1] for p in prometheus.get("ports") or []}
        if ds.get("type") == "prometheus" and (
            url.hostname != "prometheus" or str(url.port) not in ports
        ):
            problems.append(
                f"datasource {ds.get('name')}: {ds.get('url')} is not the prometheus service"
            )
        uids.add(ds.get("uid"))
    for provider in providers.get("providers") or []:
        path = provider.get("options", {}).get("path")
        source = mounts.get(path, "")
        if not source or not any(
            (COMPOSE_DIR / source).resolve() == p.parent.resolve() for p in dashboards
        ):
            problems.append(
                f"provider {provider.get('name')}: {path} is not where the dashboards are mounted"
            )
    for path, dashboard in dashboards.items():
        for panel in dashboard.get("panels", []):
            for thing in [panel, *panel.get("targets", [])]:
                uid = (thing.get("datasource") or {}).get("uid")
                if uid is not None and uid not in uids:
                    problems.append(
                        f"{path.name}: {panel['title']}: datasource {uid!r} is not provisioned"
                    )
    return problems


def load_dashboards() -> dict[Path, dict[str, Any]]:
    return {
        p: json.loads(p.read_text()) for p in sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
    }
