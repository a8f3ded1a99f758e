"""Small tasks for ``roast-jobs demo`` and ``roast-jobs worker``.

``celery -A roast_jobs.tasks.demo worker`` runs them; configuration comes from Settings
(DATABASE_URL and the ROAST_JOBS_* variables) like every roast-jobs process.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

from roast_jobs.tasks import worker_logs
from roast_jobs.tasks.app import make_celery

worker_logs.install()  # JSON logs, job fields, masked secrets (ROAST_JOBS_LOG_FORMAT)

#: Own queue, so demo tasks never reach workers of a real app on the same database.
QUEUE = "roast_jobs_demo"

app = make_celery(
    main="roast_jobs.demo",
    task_default_queue=QUEUE,
    # One message per child at a time: a backlog is then served in priority order.
    worker_prefetch_multiplier=1,
)


@app.task(name="demo.evaluate_document")
def evaluate_document(document_id: str, agent: str = "demo-agent") -> dict[str, Any]:
    """A stand-in for an AI evaluation: a few milliseconds of "work" and a score."""
    started_at = time.time()
    time.sleep(random.uniform(0.002, 0.01))
    digest = hashlib.sha256(f"{agent}:{document_id}".encode()).digest()
    return {
        "document_id": document_id,
        "score": round(digest[0] / 255, 2),
        "started_at": started_at,
        "finished_at": time.time(),
    }


@app.task(name="demo.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="demo.ping")
def ping() -> str:
    return "pong"
