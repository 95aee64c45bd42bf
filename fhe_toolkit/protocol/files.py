"""Reading and writing the files that cross between fund and participant, safely.

Whatever a participant (or a typo) hands the toolkit is read the same way: a regular file only
(a symlink, FIFO, device or directory is refused by name, and opening never blocks), at most a
stated number of bytes. Writes go through a temporary file and a rename, so a crash never
leaves half a file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from fhe_toolkit.errors import FheToolkitError

READ_BLOCK = 16 * 2**20


@contextmanager
def open_regular(
    path: str | Path, what: str, error: type[FheToolkitError] = FheToolkitError
) -> Iterator[tuple[BinaryIO, int]]:
    """``path`` opened for reading, with its size, if it is a regular file: a symbolic link,
    FIFO, device or directory is refused by name (``error``), and opening never blocks."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{path} does not exist ({what} expected).") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(
                f"{path} is a symbolic link; give {what} as a regular file (the link's target)."
            ) from None
        raise error(f"{path} cannot be read as {what}: {exc.strerror}.") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            kind = "a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file"
            raise error(f"{path} is {kind}; {what} must be a regular file.")
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            yield handle, status.st_size
    finally:
        os.close(descriptor)


def read_regular(
    path: str | Path, limit: int, what: str, error: type[FheToolkitError] = FheToolkitError
) -> bytes:
    """The bytes of ``path``, a regular file (see :func:`open_regular`) of at most ``limit``
    bytes; ``what`` names it in the error (``error``) that refuses anything else."""
    with open_regular(path, what, error) as (handle, size):
        if size > limit:
            raise error(f"{path} is {size:,} bytes; {what} is at most {limit:,}.")
        # In blocks: one read of ``limit`` bytes would reserve that much memory up front.
        blocks, total = [], 0
        while block := handle.read(min(READ_BLOCK, limit + 1 - total)):
            blocks.append(block)
            total += len(block)
            if total > limit:
                raise error(
                    f"{path} grew past {limit:,} bytes while being read; {what} is at most that."
                )
    return b"".join(blocks)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(4 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents with mode 0700 (whatever the umask); folders
    that exist already are left as they are."""
    missing = []
    for folder in [directory, *directory.parents]:
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
