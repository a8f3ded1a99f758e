"""``roast-jobs mcp``: RoastMyPost's MCP job tools over stdio (the official ``mcp`` SDK),
on DATABASE_URL's database through ``JobService``.

It acts as the operator who starts it: stdio reaches only the local process that spawned
it (an assistant on the operator's machine), so there is no per-user key here. A refused
request (bad input, unknown id, a pause) is a tool error with the service's one-line
message; nothing is written.
"""

from __future__ import annotations

from typing import Any

import click

from roast_jobs.cli_service import database_url


def build_server(url: str) -> Any:
    from mcp.server.fastmcp import FastMCP

    from roast_jobs import mcp_tools as tools
    from roast_jobs.service.job_service import JobService

    service = JobService(url)
    server = FastMCP("roast-jobs", instructions="RoastMyPost's job queue, on both backends.")

    @server.tool()
    def get_job_queue_status(includeDetails: bool = False) -> dict[str, Any]:
        """Jobs pending, running, completed and failed in the last 24 h (both backends,
        and per backend), the queue's health; with includeDetails the 10 latest
        completed and failed jobs."""
        return tools.queue_status(service, includeDetails)

    @server.tool()
    def get_failed_jobs(limit: int = 20) -> dict[str, Any]:
        """The latest failed jobs (1-100) with the first line of their error."""
        return tools.failed_jobs(service, limit)

    @server.tool()
    def get_batch_results(batchId: str) -> dict[str, Any]:
        """A batch's progress: jobs by state and by backend, percent done."""
        return tools.batch_results(service, batchId)

    @server.tool()
    def spawn_batch_jobs(
        agentId: str,
        targetCount: int | None = None,
        documentIds: list[str] | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """A batch of evaluations by one agent: targetCount (1-100) over documents it
        evaluated before, or one per given document."""
        return tools.spawn_batch(service, agentId, targetCount, documentIds, name)

    @server.tool()
    def import_article(url: str, agentIds: list[str] | None = None) -> dict[str, Any]:
        """Import the article at url and queue its evaluations by agentIds."""
        return tools.import_article(service, url, agentIds or [])

    @server.tool()
    def rerun_evaluation(documentId: str, agentId: str) -> dict[str, Any]:
        """Evaluate the document with the agent again (refused while a job of that
        evaluation waits or runs)."""
        return tools.rerun_evaluation(service, documentId, agentId)

    return server


@click.command("mcp")
def mcp_command() -> None:
    """Serve RoastMyPost's MCP job tools over stdio (for an assistant's MCP client).

    \b
    {"command": "roast-jobs", "args": ["mcp"], "env": {"DATABASE_URL": "..."}}
    """
    build_server(database_url()).run("stdio")
