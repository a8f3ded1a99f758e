"""The article ``roast-jobs demo`` serves to itself and then imports: a blog post of a few
paragraphs on 127.0.0.1 (a free port), so the import runs the real fetch-and-extract path
without the internet. The importer refuses loopback addresses unless
``ROAST_JOBS_IMPORT_ALLOW_NETWORKS`` includes 127.0.0.1/32, which the demo sets for itself
and its workers."""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ARTICLE_PATH = "/posts/canary-rollouts"
ARTICLE_TITLE = "What a Canary Rollout Teaches About Job Queues"
ARTICLE_AUTHOR = "Dana Example"

ARTICLE_HTML = f"""<!doctype html>
<html lang="en"><head>
<meta charset="utf-8">
<title>{ARTICLE_TITLE} | The Demo Blog</title>
<meta name="author" content="{ARTICLE_AUTHOR}">
<meta property="article:published_time" content="2025-05-20T09:00:00Z">
</head><body>
<nav><a href="/">Home</a> <a href="/about">About</a></nav>
<article>
<h1>{ARTICLE_TITLE}</h1>
<p>Moving a job system from one backend to another is rarely a single switch. We sent
ten percent of new jobs to the new queue first, watched how long they waited and how
long they ran, and only then raised the share. This post explains what we measured and
why the numbers persuaded us.</p>
<h2>The old poller</h2>
<p>The legacy worker polled a table every second and started one process per job.
Clearly, this is the simplest design that could possibly work, and it served us for
years. It might perhaps be the case that its pickup latency was arguably acceptable for
evaluations that run for minutes, but it had no priorities and no delays.</p>
<h2>What changed</h2>
<p>The new workers take jobs from a broker that lives in the same PostgreSQL database.
A job's row and its message are written in one transaction, so a worker never sees a
message whose row is missing. See the <a href="https://example.org/design">design
notes</a> for the details.</p>
<ul><li>pickup time fell from about half a second to a few milliseconds;</li>
<li>failed jobs are retried with a backoff instead of by hand.</li></ul>
<h2>Lessons</h2>
<p>Everyone knows that migrations fail at the edges. Studies show that most rollbacks
happen in the first hour, although our evidence is mixed. Keep a flag that every process
re-reads within seconds, and you can move the traffic back without a deploy.</p>
</article>
<footer>Copyright The Demo Blog</footer>
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server: ArticleServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # no access log in the demo's output

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != ARTICLE_PATH:
            self._send(404, b"not here", "text/plain")
            return
        with self.server.lock:
            self.server.served += 1
        self._send(200, ARTICLE_HTML.encode(), "text/html; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ArticleServer(ThreadingHTTPServer):
    """``http.server`` on 127.0.0.1, serving the article at ``url`` from a daemon thread."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up
            super().handle_error(request, client_address)

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.served = 0  # article requests answered
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{ARTICLE_PATH}"

    def start(self) -> str:
        self._thread = threading.Thread(
            target=self.serve_forever, name="demo-article-server", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()
