"""What a participant might send instead of a valid answer (a round's submission, a training
job's result): one table of tampered and strange folders, each with the refusal it must get.
Used by the hostile-input suite for submissions and by the training tests for results."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fhe_toolkit.fund.base import FundBase
from fhe_toolkit.protocol.manifest import MANIFEST, SIGNATURE
from fhe_toolkit.protocol.signing import load_private_key, sign_directory

TWO_GB = 2 * 1024**3


@dataclass
class Sender:
    """A valid answer to tamper with, the fund it goes to, and another participant's key."""

    fund: FundBase
    answer: Path
    stranger: Path

    def copy(self, tmp: Path) -> Path:
        """A fresh copy of the answer (files only: a valid answer holds nothing else)."""
        copy = tmp / f"copy-{self.answer.name}"
        shutil.copytree(self.answer, copy)
        return copy


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def sparse(path: Path, size: int = TWO_GB) -> Path:
    """A file as large as ``size`` that takes no disk space."""
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def edit_manifest(directory: Path, **changes: object) -> Path:
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest.update(changes)
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def add(directory: Path, name: str, make: Callable[[Path], object]) -> Path:
    make(directory / name)
    return directory


def flip_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def rehash(directory: Path) -> Path:
    """The manifest's hashes and sizes recomputed over the tampered files (not re-signed)."""
    manifest = json.loads((directory / MANIFEST).read_text())
    for name in manifest["files"]:
        data = (directory / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def first_listed(directory: Path) -> Path:
    """The first file the manifest lists (a submission's predictions, a result's weights)."""
    return directory / next(iter(json.loads((directory / MANIFEST).read_text())["files"]))


ANSWER_CASES: dict[str, tuple[Callable[[Sender, Path], Path], str]] = {
    # Extra entries: nothing but what the manifest lists is read or kept.
    "an unlisted link to the key store": (
        lambda s, t: add(s.copy(t), "keys", lambda p: p.symlink_to(s.fund.keys.root)),
        r"'keys'.*manifest",
    ),
    "an unlisted link to the fund's signing key": (
        lambda s, t: add(s.copy(t), "k.pem", lambda p: p.symlink_to(s.fund.identity_path)),
        r"k\.pem",
    ),
    "an unlisted link to /etc/passwd": (
        lambda s, t: add(s.copy(t), "passwd", lambda p: p.symlink_to("/etc/passwd")),
        r"passwd",
    ),
    "an unlisted FIFO": (lambda s, t: add(s.copy(t), "pipe", fifo), r"pipe"),
    "an unlisted 2 GB file": (lambda s, t: add(s.copy(t), "big.bin", sparse), r"big\.bin"),
    "an unlisted folder": (lambda s, t: add(s.copy(t), "extra", Path.mkdir), r"extra"),
    # The listed files.
    "a listed file as a link": (
        lambda s, t: _linked_first_listed(s.copy(t)),
        r"symbolic link",
    ),
    "a listed file truncated": (
        lambda s, t: _truncate(first_listed(s.copy(t))),
        r"size|truncated|sha256|hash|changed",
    ),
    "a byte flipped": (
        lambda s, t: _flipped(s.copy(t)),
        r"SHA-256",
    ),
    "a byte flipped, hashes recomputed": (
        lambda s, t: rehash(_flipped(s.copy(t))),
        r"signature|signed",
    ),
    "a listed file missing": (
        lambda s, t: _without(s.copy(t), first_listed),
        r"lacks|missing|predictions",
    ),
    "a listed file of 2 GB": (
        lambda s, t: _sparse_first_listed(s.copy(t)),
        r"2,147,483,648 bytes but the manifest says",
    ),
    # The manifest.
    "no manifest": (lambda s, t: _without(s.copy(t), lambda d: d / MANIFEST), r"manifest"),
    "a manifest that is not JSON": (
        lambda s, t: _write(s.copy(t), MANIFEST, b"{not json"),
        r"manifest",
    ),
    "a 2 GB manifest": (
        lambda s, t: add(_without(s.copy(t), lambda d: d / MANIFEST), MANIFEST, sparse),
        r"manifest.*(larger than|too large|bytes)",
    ),
    "a manifest with an extra field": (
        lambda s, t: edit_manifest(s.copy(t), payload={"x": 1}),
        r"payload",
    ),
    "a manifest of another kind": (
        lambda s, t: edit_manifest(s.copy(t), kind="submission"),
        r"submission|kind",
    ),
    "a manifest of a future format": (
        lambda s, t: edit_manifest(s.copy(t), format_version=99),
        r"format|version",
    ),
    "a manifest naming another model": (
        lambda s, t: edit_manifest(s.copy(t), model="someone-else"),
        r"someone-else|signature|signed",
    ),
    "a manifest naming another key set": (
        lambda s, t: edit_manifest(s.copy(t), key_set_id="0" * 32),
        r"key set|key_set",
    ),
    "a manifest naming another bundle": (
        lambda s, t: edit_manifest(s.copy(t), bundle_sha256="0" * 64),
        r"bundle",
    ),
    "a manifest with 10**18 batches": (
        lambda s, t: edit_manifest(s.copy(t), n_batches=10**18),
        r"batch",
    ),
    "a manifest with 1e308 rows": (
        lambda s, t: edit_manifest(s.copy(t), n_rows=1e308),
        r"n_rows|rows",
    ),
    "a manifest listing a path outside the folder": (
        lambda s, t: _list_outside(s.copy(t), "../../keys/fund_signing_key.pem"),
        r"fund_signing_key|file name|path",
    ),
    "a manifest listing an absolute path": (
        lambda s, t: _list_outside(s.copy(t), "/etc/passwd"),
        r"/etc/passwd|file name|path",
    ),
    # The signature.
    "no signature": (lambda s, t: _without(s.copy(t), lambda d: d / SIGNATURE), r"signature|sig"),
    "a signature of zeros": (
        lambda s, t: _write(s.copy(t), SIGNATURE, bytes(64)),
        r"signature|signed",
    ),
    "a 2 GB signature": (
        lambda s, t: add(_without(s.copy(t), lambda d: d / SIGNATURE), SIGNATURE, sparse),
        r"larger than|too large|signature|bytes",
    ),
    "a manifest for another round": (
        lambda s, t: edit_manifest(s.copy(t), round_id="elsewhere"),
        r"elsewhere",
    ),
    "signed by another participant": (
        lambda s, t: _signed_by(s.copy(t), s.stranger),
        r"signed by 'bob'",
    ),
    # The folder itself.
    "a file, not a folder": (lambda s, t: first_listed(s.copy(t)), r"is not a folder"),
    "a link to the folder": (
        lambda s, t: (t / "link").symlink_to(s.copy(t)) or t / "link",
        r"is a symbolic link; give a .* folder itself",
    ),
    "a FIFO, not a folder": (lambda s, t: fifo(t / "pipe"), r"is not a folder"),
    "missing": (lambda s, t: t / "nothing-here", r"does not exist \(a .* folder expected"),
}


def _linked_first_listed(directory: Path) -> Path:
    listed = first_listed(directory)
    moved = listed.with_name("elsewhere.bin")
    listed.rename(moved)
    listed.symlink_to(moved)
    moved.rename(directory.parent / "elsewhere.bin")
    listed.unlink()
    listed.symlink_to(directory.parent / "elsewhere.bin")
    return directory


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:-1000])
    return path.parent


def _flipped(directory: Path) -> Path:
    flip_byte(first_listed(directory))
    return directory


def _without(directory: Path, which: Callable[[Path], Path]) -> Path:
    which(directory).unlink()
    return directory


def _sparse_first_listed(directory: Path) -> Path:
    path = first_listed(directory)
    path.unlink()
    sparse(path)
    return directory


def _write(directory: Path, name: str, data: bytes) -> Path:
    (directory / name).write_bytes(data)
    return directory


def _list_outside(directory: Path, name: str) -> Path:
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": "0" * 64, "size": 10}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def _signed_by(directory: Path, key: Path) -> Path:
    (directory / SIGNATURE).unlink()
    sign_directory(directory, load_private_key(key))
    return directory
