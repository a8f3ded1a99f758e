"""``roast-jobs metrics``: the Prometheus metrics of both backends (``roast_jobs.metrics``),
printed once in the text format, or served at ``/metrics`` with ``--port``."""

from __future__ import annotations

import click

from roast_jobs.cli_service import database_url, one_line_errors


@click.command("metrics")
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve /metrics on this port (until stopped) instead of printing once.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
def metrics_command(port: int | None, host: str) -> None:
    """Jobs by backend and state, runs and retries, run-time and pickup histograms, queue
    depths, live consumers, migration progress and the rollout percentage, read from the
    database at each scrape.

    \b
    roast-jobs metrics                 (print them once)
    roast-jobs metrics --port 9808     (an exporter for Prometheus to scrape)
    """
    from prometheus_client import generate_latest, start_http_server

    from roast_jobs.metrics import registry

    url = database_url()
    reg = registry(url)
    if port is None:
        with one_line_errors():
            click.echo(generate_latest(reg).decode(), nl=False)
        return
    server, thread = start_http_server(port, addr=host, registry=reg)
    click.echo(f"serving metrics on http://{host}:{server.server_port}/metrics", err=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()
