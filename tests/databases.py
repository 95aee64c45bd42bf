"""Databases for the registry tests: a SQLite file, or a throwaway PostgreSQL server.

The PostgreSQL server is Debian's (``.ci/run`` installs the ``postgresql`` package): this module
starts a private cluster in a temporary directory on a Unix socket, as the ``postgres`` user
when run as root (PostgreSQL refuses to run as root), and removes it afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PORT = 54329


class NoServer(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a PostgreSQL cluster; yield a URL prefix (append a database name)."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not binaries:
        raise NoServer(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); .ci/run "
            "installs Debian's postgresql package"
        )
    bindir = binaries[-1].parent
    root = Path(tempfile.mkdtemp(prefix="fhe-toolkit-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise NoServer("running as root without runuser: cannot start PostgreSQL as postgres")
        try:
            shutil.chown(root, "postgres")
        except LookupError:
            raise NoServer("no postgres user to run the server as") from None
        as_user = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    try:
        _run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "fhe"])
        options = f"-p {PORT} -k {root} -c listen_addresses=''"
        # The server's output goes to a log file: were it to inherit our pipes, reading them
        # to the end would wait for the server to exit.
        log = str(root / "server.log")
        _run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", log, "-o", options, "-w",
              "start"])  # fmt: skip
    except NoServer:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield f"postgresql+psycopg://fhe@/{{database}}?host={root}&port={PORT}"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True, check=False,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def new_database(server_url: str) -> str:
    """Create an empty database on the server; return its URL."""
    import psycopg

    name = f"fund_{uuid.uuid4().hex[:12]}"
    host, port = server_url.split("host=")[1].split("&port=")
    with psycopg.connect(dbname="postgres", user="fhe", host=host, port=port,
                         autocommit=True) as connection:  # fmt: skip
        connection.execute(f'CREATE DATABASE "{name}"')
    return server_url.format(database=name)


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        program = next(Path(part).name for part in command if "/bin/" in part)
        raise NoServer(f"{program} failed: {(result.stderr or result.stdout)[-300:]}")
