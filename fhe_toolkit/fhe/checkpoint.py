"""A crash-safe store of finished batch outputs, so an interrupted run resumes where it stopped.

Row-parallel work (inference) keeps every batch's output; sequential work (encrypted training)
keeps the latest state only.

SQLite commits are atomic: a batch is either recorded whole or not at all, whatever kills the
process. Commits are grouped (at most every ``COMMIT_SECONDS``) so the writes cost little.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from fhe_toolkit.errors import CheckpointError

COMMIT_SECONDS = 1.0


class Checkpoint:
    def __init__(self, path: Path, owner: str) -> None:
        """Open (or create) the checkpoint at ``path`` for the work identified by ``owner``."""
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (owner TEXT NOT NULL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outputs (batch INTEGER PRIMARY KEY, data BLOB NOT NULL)"
        )
        row = self._db.execute("SELECT owner FROM meta").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES (?)", (owner,))
            self._db.commit()
        elif row[0] != owner:
            self._db.close()
            raise CheckpointError(
                f"{path} holds a partial run of different work ({row[0][:12]}…); choose another "
                "output directory, or delete it to start over."
            )
        self._last_commit = time.monotonic()

    def done(self) -> set[int]:
        return {batch for (batch,) in self._db.execute("SELECT batch FROM outputs")}

    def add(self, batch: int, data: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO outputs VALUES (?, ?)", (batch, data))
        if time.monotonic() - self._last_commit >= COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        self._db.commit()
        self._last_commit = time.monotonic()

    def latest(self) -> tuple[int, bytes] | None:
        """The highest batch recorded and its data (for sequential work, the state to resume)."""
        row = self._db.execute("SELECT batch, data FROM outputs ORDER BY batch DESC LIMIT 1")
        found: tuple[int, bytes] | None = row.fetchone()
        return found

    def discard_before(self, batch: int) -> None:
        self._db.execute("DELETE FROM outputs WHERE batch < ?", (batch,))

    def outputs(self) -> Iterator[tuple[int, bytes]]:
        yield from self._db.execute("SELECT batch, data FROM outputs ORDER BY batch")

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, error: type[BaseException] | None, *_: object) -> None:
        """Finished work deletes the checkpoint; interrupted work keeps it, to resume."""
        self.close(delete=error is None)

    def close(self, delete: bool = False) -> None:
        self.commit()
        self._db.close()
        if delete:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
