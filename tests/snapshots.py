"""What a fund holds, captured so a test can show that a refused input changed none of it: every
file and folder under the fund and the key store (kind, mode, contents' digest, a link's target)
and every row of every table of its database."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import Engine, MetaData, select

from fhe_toolkit.cli import main
from fhe_toolkit.fund.base import FundBase

# Lock files only serialize receives (an empty file, created on first use, never holding
# state); SQLite's own files are compared through their rows, not their bytes, since a read can
# rewrite the header without changing one row.
IGNORED_SUFFIXES = (".lock", ".db", ".db-journal", ".db-wal", ".db-shm")


def files(*roots: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``roots``, without following links: path -> (kind, mode, detail)."""
    entries: dict[str, tuple[Any, ...]] = {}
    for root in roots:
        for directory, folders, names in os.walk(root, followlinks=False):
            for name in folders + names:
                path = Path(directory) / name
                if name.endswith(IGNORED_SUFFIXES):
                    continue
                info = path.lstat()
                mode = stat.S_IMODE(info.st_mode)
                if stat.S_ISLNK(info.st_mode):
                    entry: tuple[Any, ...] = ("link", mode, os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    entry = ("dir", mode, None)
                elif stat.S_ISREG(info.st_mode):
                    entry = ("file", mode, _digest(path, info))
                else:
                    entry = ("special", mode, stat.S_IFMT(info.st_mode))
                entries[str(path)] = entry
    return entries


@functools.cache
def _cached_digest(path: str, identity: tuple[int, ...]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(path: Path, info: os.stat_result) -> str:
    """The contents' digest, computed again only when the file's inode, size or change time
    moved (no write leaves all three alone): a round's 134 MB compression key is read once."""
    return _cached_digest(
        str(path), (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    )


def rows(engine: Engine) -> dict[str, list[tuple[str, ...]]]:
    """Every table's rows, as sorted text tuples."""
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        return {
            name: sorted(tuple(map(str, row)) for row in connection.execute(select(table)).all())
            for name, table in metadata.tables.items()
        }


def snapshot(*roots: Path, database: Engine) -> dict[str, Any]:
    return {"files": files(*roots), "rows": rows(database)}


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed between two snapshots, one line per path or table; empty if nothing."""
    changes = []
    for path in sorted(before["files"].keys() | after["files"].keys()):
        old, new = before["files"].get(path), after["files"].get(path)
        if old != new:
            changes.append(f"{path}: {old} -> {new}")
    for table in sorted(before["rows"].keys() | after["rows"].keys()):
        old_rows, new_rows = before["rows"].get(table, []), after["rows"].get(table, [])
        if old_rows != new_rows:
            gone = [r for r in old_rows if r not in new_rows]
            added = [r for r in new_rows if r not in old_rows]
            changes.append(f"table {table}: removed {gone}, added {added}")
    return changes


def refused(fund: FundBase, args: list[str], refusal: str) -> str:
    """Run the command line with ``args``; check that it is refused (exit status 2, no
    traceback) with a message matching ``refusal``, and that ``fund`` is exactly as it was: its
    folder, its key store and its database. Returns the message."""
    before = snapshot(fund.root, fund.keys.root, database=fund.db.engine)
    result = CliRunner().invoke(main, args)
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args} raised {result.exception!r}:\n{output}"
    )
    assert result.exit_code == 2, f"{args} exited {result.exit_code}:\n{output}"
    assert "Traceback" not in output, output
    assert "━" not in output, f"a progress bar was drawn before the refusal:\n{output}"
    assert re.search(refusal, output, re.DOTALL), f"{refusal!r} not in:\n{output}"
    after = snapshot(fund.root, fund.keys.root, database=fund.db.engine)
    assert differences(before, after) == []
    print(f"\n@@ {args[:2]} :: {output.strip()}")
    return output
