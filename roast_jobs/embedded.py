"""A throwaway PostgreSQL for the demo and for development, when no DATABASE_URL is given.

Binaries are looked for, in order, in the ``pgserver`` package (``pip install
roast-jobs[embedded]`` ships PostgreSQL as a wheel), on PATH, from ``pg_config --bindir``
and in the usual install folders. We run ``initdb`` and ``pg_ctl`` ourselves rather than
``pgserver.get_server()``: as root, pgserver creates a system user (``useradd pgserver``)
and opens every parent folder of the data dir to all users; we instead run the
binaries as an existing unprivileged user (``postgres`` or ``nobody``), since PostgreSQL
refuses to run as root.

The server listens on 127.0.0.1 on a free port (no Unix socket, whose path length is
limited), trusts local connections, and is stopped by :meth:`EmbeddedPostgres.stop`.

``python -m roast_jobs.embedded start|stop --data-dir DIR`` runs one in the background.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import glob
import importlib.util
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg

USER = "postgres"  # the database superuser initdb creates
UNPRIVILEGED_USERS = ("postgres", "nobody")
OWNER_FILE = "roast-jobs.owner"  # pid of the process that started the server
CONF = """
# Written by roast-jobs: a local throwaway server.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 100
"""


class EmbeddedPostgresError(RuntimeError):
    """No embedded PostgreSQL could be started; the message says why and what to do."""


@dataclass(frozen=True)
class RunAs:
    """Who runs the PostgreSQL binaries: this process's user, or (as root) another one."""

    name: str
    uid: int | None = None
    gid: int | None = None

    def run(self, cmd: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self.uid is not None:
            # cwd "/": the caller's folder may be closed to the other user.
            kwargs = {"user": self.uid, "group": self.gid, "extra_groups": [], "cwd": "/"}
        # Files, not pipes: a postmaster that inherited a pipe would keep it open forever.
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.run(
                list(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                timeout=timeout,
                check=False,
                **kwargs,  # type: ignore[arg-type]
            )
            out.seek(0)
            proc.stdout = out.read()
        return proc

    def can_reach(self, path: Path) -> bool:
        """Whether this user can enter every folder above ``path`` (and ``path`` itself)."""
        if self.uid is None:
            return True
        for folder in [path, *path.parents]:
            if not folder.exists():
                continue
            st = folder.stat()
            if st.st_uid == self.uid:
                bit = stat.S_IXUSR
            elif st.st_gid == self.gid:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not st.st_mode & bit:
                return False
        return True


def current_runner() -> RunAs:
    """This user, or an existing unprivileged one when running as root."""
    if os.geteuid() != 0:
        return RunAs(pwd.getpwuid(os.geteuid()).pw_name)
    for name in UNPRIVILEGED_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(name, entry.pw_uid, entry.pw_gid)
    raise EmbeddedPostgresError(
        "running as root, and PostgreSQL refuses to run as root: no unprivileged user "
        f"({' or '.join(UNPRIVILEGED_USERS)}) exists to run it. Set DATABASE_URL to a "
        "running PostgreSQL instead."
    )


def candidate_bindirs() -> list[Path]:
    """Folders that may hold initdb, pg_ctl and postgres, best first, without duplicates."""
    found: list[Path] = []
    spec = importlib.util.find_spec("pgserver")  # finds the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            found.append(Path(location) / "pginstall" / "bin")
    for tool in ("pg_ctl", "initdb"):
        path = shutil.which(tool)
        if path:
            # Resolved: pg_ctl looks for postgres next to its real file, not its symlink.
            found.append(Path(path).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            found.append(Path(out.stdout.strip()))
    patterns = (
        "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
        "/usr/pgsql-*/bin",  # RHEL, Fedora (PGDG)
        "/usr/local/pgsql/bin",  # built from source
        "/opt/homebrew/opt/postgresql@*/bin",  # macOS, Homebrew
        "/usr/local/opt/postgresql@*/bin",
    )
    for pattern in patterns:
        found.extend(sorted((Path(p) for p in glob.glob(pattern)), key=_version_key, reverse=True))
    unique: list[Path] = []
    for path in found:
        path = path.resolve()
        if path not in unique:
            unique.append(path)
    return unique


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(path))) or (0,)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedPostgres:
    """One PostgreSQL server in ``data_dir``/postgres, started and stopped by this process.

    ``with EmbeddedPostgres(".roast-jobs") as url: ...`` yields a DATABASE_URL.
    """

    def __init__(self, data_dir: str | Path, database: str = "postgres") -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.database = database
        self.pgdata = self.data_dir / "postgres"
        self.bindir: Path | None = None
        self.port: int | None = None
        self.url: str | None = None
        self.runner: RunAs | None = None
        self._temporary = False  # pgdata is a temp dir we delete on stop
        self._started = False  # this object started the server (and so stops it)

    # -- public ------------------------------------------------------------------------

    def start(self) -> str:
        """Start the server (initialising its data dir on first use); return its URL."""
        try:
            return self._start()
        except BaseException:
            self.stop()  # a half-made temporary data dir, or a server whose set-up failed
            raise

    def stop(self) -> None:
        """Stop the server this object started (fast shutdown: sessions are cut).

        A temporary data dir is deleted; a data dir under ``data_dir`` is kept for next time.
        """
        atexit.unregister(self.stop)
        if self._started:
            proc = self._pg_ctl("-w", "-t", "30", "-m", "fast", "stop")
            if proc.returncode != 0:
                self._pg_ctl("-w", "-t", "10", "-m", "immediate", "stop")
            with contextlib.suppress(FileNotFoundError):
                (self.pgdata / OWNER_FILE).unlink()
            self._started = False
        if self._temporary:
            shutil.rmtree(self.pgdata.parent, ignore_errors=True)
            self._temporary = False
        self.url = None

    def _start(self) -> str:
        self.runner = current_runner()
        self._choose_pgdata()
        self.bindir = self._choose_binaries()
        self._stop_leftover()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        last = ""
        for _ in range(3):  # another process may grab the free port before the server does
            self.port = free_port()
            proc = self._pg_ctl(
                "-w",
                "-t",
                "60",
                "-l",
                str(self.pgdata / "server.log"),
                "-o",
                f"-p {self.port}",
                "start",
            )
            if proc.returncode == 0:
                break
            last = proc.stdout + self._log_tail()
        else:
            raise EmbeddedPostgresError(
                f"PostgreSQL in {self.pgdata} did not start:\n{last.strip()}\n"
                "Set DATABASE_URL to a running PostgreSQL instead."
            )
        self._started = True
        (self.pgdata / OWNER_FILE).write_text(str(os.getpid()))
        atexit.register(self.stop)  # a caller that forgets stop() does not leave it running
        self.url = f"postgresql://{USER}@127.0.0.1:{self.port}/{self.database}"
        if self.database != "postgres":
            self._create_database()
        return self.url

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- steps -------------------------------------------------------------------------

    def _choose_pgdata(self) -> None:
        assert self.runner is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.runner.can_reach(self.data_dir):
            # e.g. a project under /root: the postgres user cannot enter it.
            tmp = Path(tempfile.mkdtemp(prefix="roast-jobs-pg-"))
            tmp.chmod(0o755)
            self.pgdata = tmp / "postgres"
            self._temporary = True
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if self.runner.uid is not None and self.runner.gid is not None:
            os.chown(self.pgdata, self.runner.uid, self.runner.gid)
        self.pgdata.chmod(0o700)  # postgres refuses a data dir others can read

    def _choose_binaries(self) -> Path:
        assert self.runner is not None
        wanted = None
        if (self.pgdata / "PG_VERSION").exists():
            wanted = (self.pgdata / "PG_VERSION").read_text().strip()
        tried: list[str] = []
        for bindir in candidate_bindirs():
            if not all((bindir / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
                continue
            try:
                proc = self.runner.run([str(bindir / "postgres"), "--version"], timeout=30)
            except OSError as exc:
                tried.append(f"{bindir}: {exc}")
                continue
            match = re.search(r"(\d+)(?:\.\d+)?", proc.stdout)
            if proc.returncode != 0 or not match:
                tried.append(f"{bindir}: {proc.stdout.strip() or 'postgres --version failed'}")
                continue
            if wanted is not None and match.group(1) != wanted:
                tried.append(f"{bindir}: PostgreSQL {match.group(1)}, data dir needs {wanted}")
                continue
            return bindir
        detail = "\n  ".join(tried) if tried else "no initdb/pg_ctl/postgres found"
        hint = (
            f"delete {self.pgdata} to start afresh, or "
            if wanted is not None
            else "install PostgreSQL's server binaries (pip install 'roast-jobs[embedded]' "
            "or your system's postgresql package), or "
        )
        raise EmbeddedPostgresError(
            f"cannot start an embedded PostgreSQL (as user {self.runner.name}):\n  {detail}\n"
            f"To fix: {hint}set DATABASE_URL to a running PostgreSQL, "
            "e.g. postgresql://user:pass@localhost:5432/app"
        )

    def _initdb(self) -> None:
        assert self.runner is not None and self.bindir is not None
        proc = self.runner.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ]
        )
        if proc.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb failed for {self.pgdata}:\n{proc.stdout.strip()}\n"
                f"Delete {self.pgdata} and try again, or set DATABASE_URL to a running "
                "PostgreSQL."
            )
        # Appended by this process: the file keeps the owner initdb gave it.
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(CONF)

    def _stop_leftover(self) -> None:
        """Stop a server left by a process that died; refuse one that a live process uses."""
        if not self._running():
            return
        owner = self.pgdata / OWNER_FILE
        pid = int(owner.read_text()) if owner.exists() and owner.read_text().isdigit() else None
        if pid is not None and _pid_alive(pid):
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL in {self.pgdata} is in use by process {pid}. "
                f"Wait for it, use another ROAST_JOBS_DATA_DIR, or set DATABASE_URL."
            )
        self._pg_ctl("-w", "-t", "30", "-m", "fast", "stop")

    def _create_database(self) -> None:
        admin = f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def _running(self) -> bool:
        if self.bindir is None or not (self.pgdata / "postmaster.pid").exists():
            return False
        return self._pg_ctl("status").returncode == 0

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.runner is not None and self.bindir is not None
        return self.runner.run([str(self.bindir / "pg_ctl"), "-D", str(self.pgdata), *args])

    def _log_tail(self, lines: int = 20) -> str:
        log = self.pgdata / "server.log"
        if not log.exists():
            return ""
        return "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def main(argv: Sequence[str] | None = None) -> int:
    """``start`` leaves a server running and prints its URL; ``stop`` stops it."""
    parser = argparse.ArgumentParser(prog="python -m roast_jobs.embedded", description=__doc__)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--database", default="postgres")
    args = parser.parse_args(argv)
    server = EmbeddedPostgres(args.data_dir, database=args.database)
    try:
        if args.action == "start":
            url = server.start()
            if server._temporary:  # it would be deleted with no process left to delete it
                name = server.runner.name if server.runner else "postgres"
                server.stop()
                raise EmbeddedPostgresError(
                    f"user {name} cannot enter {server.data_dir}: "
                    "choose a --data-dir it can reach (e.g. under /tmp)"
                )
            # The server outlives this process: no stop at exit, and no owner, so that a
            # later start or stop is not refused.
            atexit.unregister(server.stop)
            (server.pgdata / OWNER_FILE).unlink()
            print(url)
        else:
            server.runner = current_runner()
            server.bindir = server._choose_binaries()
            server._started = server._running()
            server.stop()
    except EmbeddedPostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
