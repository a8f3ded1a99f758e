"""The HTTP API for tests: ``roast-jobs api`` under uvicorn in a subprocess, and users
with API keys made by the CLI (alice and bob, plain users; admin, an admin)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from roast_jobs.db.session import transaction
from roast_jobs.domain import sample_data
from tests.workers import REPO, run_cli, stop_process, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_api(url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run the API on a free port; yields its base URL once it answers."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "roast_jobs.cli", "api", "--port", str(port)],
            cwd=REPO,
            env={**os.environ, "DATABASE_URL": url, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the API exited: {log.read_text()}")
        try:
            return httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_until(up, 60), log.read_text()
        yield base
    finally:
        stop_process(proc)


def make_people(url: str) -> dict[str, Any]:
    """alice (owns ``agent`` and ``alices_doc``), bob (``bobs_doc``) and an admin, each
    ``{"id", "key"}``."""
    with transaction(url) as s:
        alice = sample_data.create_user(s)
        bob = sample_data.create_user(s)
        admin = sample_data.create_user(s)
        agent = sample_data.create_agent(s, alice)
        [alices_doc] = sample_data.create_documents(s, alice, 1)
        [bobs_doc] = sample_data.create_documents(s, bob, 1)
    out: dict[str, Any] = {"agent": agent, "alices_doc": alices_doc, "bobs_doc": bobs_doc}
    for name, user in (("alice", alice), ("bob", bob), ("admin", admin)):
        made = run_cli(url, "keys", "create", user, "--name", f"{name}'s")
        assert made.returncode == 0, made.stderr
        out[name] = {"id": user, "key": made.stdout.strip()}
    assert run_cli(url, "users", "role", admin, "admin").returncode == 0
    return out


def auth(who: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {who['key']}"}


def mcp_calls(url: str, *calls: tuple[str, dict[str, Any]]) -> tuple[set[str], list[Any]]:
    """The server's tool names, and each call's (is_error, JSON answer or error text), from
    one `roast-jobs mcp` process driven by the SDK's stdio client."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "roast_jobs.cli", "mcp"],
        env={**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(REPO)},
        cwd=str(REPO),
    )

    async def run() -> tuple[set[str], list[Any]]:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            names = {t.name for t in (await s.list_tools()).tools}
            answers = []
            for tool, args in calls:
                result = await s.call_tool(tool, args)
                body = result.content[0].text if result.content else ""  # type: ignore[union-attr]
                answers.append((result.isError, body if result.isError else json.loads(body)))
            return names, answers

    return asyncio.run(asyncio.wait_for(run(), 120))
