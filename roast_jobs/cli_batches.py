"""``roast-jobs batch create|show`` and ``roast-jobs import URL``: batches of evaluations
and article imports, on the backend the flags pick for each job."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from roast_jobs.cli_jobs import _echo_json, _json_option
from roast_jobs.cli_service import database_url, job_service


def _target_count(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    # Parsed here, not by click.INT: a bad count is a one-line error with exit 1.
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise click.ClickException(f"--target-count takes a number 1-100, not {value!r}") from None


def _ids_from(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _ids_from_file(path: str) -> list[str]:
    """One id per line; blank lines and # comments ignored."""
    try:
        text = Path(path).read_text() if path != "-" else sys.stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise click.ClickException(f"{path} holds no document ids")
    return ids


def _documents(documents: tuple[str, ...], documents_file: str | None) -> list[str] | None:
    if documents and documents_file is not None:
        raise click.ClickException("give --documents or --documents-file, not both")
    if documents_file is not None:
        return _ids_from_file(documents_file)
    if documents:
        ids = _ids_from(documents)
        if not ids:
            raise click.ClickException("--documents names no document ids")
        return ids
    return None


_FAN_OUT = {
    "inline": "created with the batch, in one transaction",
    "task": "the batch task creates them (task {task_id})",
    "chunks": "created here, chunk by chunk (Celery is off)",
}


@click.group()
def batch() -> None:
    """Batches: one agent evaluating many documents."""


@batch.command("create")
@click.option("--agent", "agent_id", required=True, help="The agent's id.")
@click.option(
    "--target-count",
    callback=_target_count,
    metavar="N",
    help="N (1-100) jobs over documents the agent already evaluated (sampled, repeated).",
)
@click.option(
    "--documents",
    multiple=True,
    metavar="ID[,ID...]",
    help="The documents to evaluate; repeat the option or separate with commas.",
)
@click.option(
    "--documents-file",
    metavar="FILE",
    help="Document ids, one a line (# comments and blank lines ignored; - for stdin).",
)
@click.option("--name", default=None, help="The batch's name.")
@_json_option
def batch_create(
    agent_id: str,
    target_count: int | None,
    documents: tuple[str, ...],
    documents_file: str | None,
    name: str | None,
    as_json: bool,
) -> None:
    """Create a batch and its jobs, on the backend the flags pick for each job."""
    document_ids = _documents(documents, documents_file)
    if (target_count is None) == (document_ids is None):
        raise click.ClickException(
            "give either --target-count or the documents (--documents or --documents-file)"
        )
    url = database_url()
    with job_service(url) as service:
        created = service.create_batch_jobs(
            agent_id, target_count=target_count, document_ids=document_ids, name=name
        )
    if as_json:
        _echo_json(created.as_dict())
        return
    click.echo(f"batch {created.id}: {created.job_count} jobs for agent {created.agent_id}")
    click.echo(f"fan-out: {created.fan_out}, {_FAN_OUT[created.fan_out].format(**vars(created))}")
    if created.jobs:
        backends = [j.backend for j in created.jobs]
        click.echo(
            f"backends: legacy {backends.count('legacy')}, celery {backends.count('celery')}"
        )


@batch.command("show")
@click.argument("batch_id")
@_json_option
def batch_show(batch_id: str, as_json: bool) -> None:
    """A batch's progress: its jobs by status and backend, and when it completed."""
    url = database_url()
    with job_service(url) as service:
        p = service.batch_progress(batch_id)
    if as_json:
        _echo_json(p.as_dict())
        return
    rows = [
        ("batch", p.id),
        ("name", p.name or "-"),
        ("agent", p.agent_id),
        ("created", f"{p.created_at:%Y-%m-%d %H:%M:%S}"),
        ("jobs", f"{p.created} of {p.expected} created, {p.total - p.created} retries"),
        (
            "status",
            f"pending {p.pending}, running {p.running}, completed {p.completed}, "
            f"failed {p.failed}, cancelled {p.cancelled}",
        ),
        ("backends", f"legacy {p.legacy}, celery {p.celery}"),
        ("progress", f"{p.progress:.1f}%"),
        ("completedAt", f"{p.completed_at:%Y-%m-%d %H:%M:%S}" if p.completed_at else "-"),
    ]
    for key, value in rows:
        click.echo(f"{key:>11}: {value}")


# -- import --------------------------------------------------------------------------


@click.command("import")
@click.argument("url")
@click.option(
    "--agent",
    "agents",
    multiple=True,
    metavar="ID[,ID...]",
    help="Agents to evaluate the document with; repeat or separate with commas.",
)
@_json_option
def import_article(url: str, agents: tuple[str, ...], as_json: bool) -> None:
    """Import the article at URL as a document and queue its evaluations.

    On Celery the import task does it (one per URL at a time); with Celery off it runs
    here, now."""
    database = database_url()
    with job_service(database) as service:
        created = service.create_import_job(url, _ids_from(agents))
    if as_json:
        _echo_json(created.as_dict())
        return
    if created.task_id is not None and created.created:
        click.echo(f"queued import task {created.task_id}")
        return
    if created.task_id is not None:
        # The task in flight evaluates with its own request's agents, not these.
        note = " (--agent not added to it)" if agents else ""
        click.echo(f"already queued for this URL: import task {created.task_id}{note}")
        return
    result = created.result or {}
    click.echo(f"imported document {result['documentId']}: {result['document']['title']!r}")
    for job in result.get("jobs", []):
        click.echo(f"job {job['id']} ({job['backend']}) for agent {job['agent_id']}")
