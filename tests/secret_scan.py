"""After the test suite: no secret-key bytes anywhere but where they belong.

The secrets: each Concrete key set's LWE secret keys, each packed round key, the fund's signing
key and participants' signing keys. They are collected two ways:

- as the tests make them, in this process (:func:`watch_key_stores` wraps the key store's
  ``create`` and ``write_secret``): this sees key sets that were retired (deleted) later, and
  secrets written sealed into an encrypted key store;
- on disk at the end, for what commands run as subprocesses made: plaintext ``keyset.bin``
  files still in key stores (Concrete's read in a subprocess, as a damaged file could abort the
  process reading it), and private key PEM files that have their ``.pub`` beside them.

Each secret's own file is where it belongs; every other file under the given folders is
searched for it. A key set's secret key is found by a window of :data:`WINDOW` bytes from its
middle (128 key bits: one per 8-byte coefficient, so never matched by chance), with a hash of
every :data:`STRIDE`-th slice of each file looked up in an index of all the windows' slices
(any copy of a window contains one). A signing key is found by the PKCS#8 header that precedes
it in DER and PEM form. Not found: a secret written in another encoding (e.g. raw 32-byte
Ed25519 keys, or key bits packed differently).
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WINDOW = 1024
SLICE = 256
STRIDE = WINDOW - SLICE + 1
"""A copy of a window always holds the slice at some multiple of STRIDE in its file."""
BLOCK = STRIDE * 8192
"""Bytes of a file hashed at once (~6 MB; its slices are STRIDE apart from the file's start)."""
DER_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
"""PKCS#8 DER of an Ed25519 private key up to its 32 key bytes."""
PEM_PREFIX = base64.b64encode(DER_PREFIX[:15])
PEM_MARK = b"-----BEGIN PRIVATE KEY-----"
MAX_PEM_FILE = 16_384
SEALED = b"FHETK-AES-GCM-1\n"
_WEIGHTS = np.random.default_rng(20261127).integers(1, 2**63, SLICE // 8, dtype=np.uint64) | 1
"""A slice's hash: its 8-byte words times these, summed (mod 2**64)."""


@dataclass
class Secrets:
    """What to look for, and the files where each belongs."""

    windows: dict[bytes, str] = field(default_factory=dict)
    """Key-set secret key windows (:data:`WINDOW` bytes) -> what they are."""
    signing: dict[bytes, str] = field(default_factory=dict)
    """Raw Ed25519 private keys (32 bytes) -> whose."""
    origins: set[Path] = field(default_factory=set)

    def add_window(self, data: bytes, what: str, origin: Path) -> None:
        if len(data) >= WINDOW:
            middle = (len(data) - WINDOW) // 2
            self.windows[data[middle : middle + WINDOW]] = what
            self.origins.add(origin.resolve())

    def add_pem(self, pem: bytes, what: str, origin: Path) -> None:
        raw = _raw_from_pem(pem)
        if raw is not None:
            self.signing[raw] = what
            self.origins.add(origin.resolve())

    def update(self, other: Secrets) -> None:
        self.windows |= other.windows
        self.signing |= other.signing
        self.origins |= other.origins


SEEN = Secrets()
"""The secrets the tests made in this process (see :func:`watch_key_stores`)."""


def watch_key_stores() -> None:
    """Record in :data:`SEEN` every secret the key store makes or writes in this process."""
    from fhe_toolkit.fhe.keystore import KEYSET, SIGNING_KEY, KeyStore
    from fhe_toolkit.fhe.packed import PACKED_KEYS

    create, add, write_secret = KeyStore.create, KeyStore.add, KeyStore.write_secret

    def record(keyset: Any, store: KeyStore, round_id: str, model: str, directory: Path) -> None:
        for number, key in enumerate(keyset.get_client_keys().get_secret_keys()):
            what = f"secret key {number} of {model!r} in {round_id!r} ({store.root})"
            SEEN.add_window(key.serialize(), what, directory / KEYSET)

    def recording_create(self: KeyStore, round_id: str, model: str, *args: Any, **kw: Any) -> Any:
        made = create(self, round_id, model, *args, **kw)
        keyset = getattr(getattr(made.client, "keys", None), "_keyset", None)
        if keyset is not None:  # real Concrete keys (not a test's stand-in)
            record(keyset, self, round_id, model, made.directory)
        return made

    def recording_add(
        self: KeyStore, round_id: str, model: str, spec: Any, secret: bytes, *args: Any, **kw: Any
    ) -> Any:
        """Keys a worker process made (the engine's key generation), stored here."""
        from concrete import fhe

        made = add(self, round_id, model, spec, secret, *args, **kw)
        keys_type = getattr(fhe, "Keys", None)  # absent from a test's stand-in concrete.fhe
        try:
            keys = keys_type.deserialize(secret) if keys_type is not None else None
        except RuntimeError:  # a test's stand-in bytes
            keys = None
        if keys is None:
            return made
        record(keys._keyset, self, round_id, model, made.directory)
        return made

    def recording_write_secret(self: KeyStore, path: Path, data: bytes) -> None:
        write_secret(self, path, data)
        if path.name == SIGNING_KEY:
            SEEN.add_pem(data, f"the fund's signing key ({path})", path)
        elif path.parent.name == PACKED_KEYS:
            SEEN.add_window(data, f"the packed round key {path}", path)

    KeyStore.create = recording_create  # type: ignore[method-assign]
    KeyStore.add = recording_add  # type: ignore[method-assign]
    KeyStore.write_secret = recording_write_secret  # type: ignore[method-assign]


def secrets_on_disk(roots: list[Path]) -> Secrets:
    """The secrets in plaintext key stores and identity files under ``roots``."""
    found = Secrets()
    keysets = []
    for path in _files(roots):
        if path.name == "keyset.bin" and not sealed(path):
            if path.parent.name == "_packed":
                found.add_window(path.read_bytes(), f"the packed round key {path}", path)
            else:
                keysets.append(path)
        elif path.suffix == ".pem" and path.with_name(path.name + ".pub").is_file():
            if path.stat().st_size <= MAX_PEM_FILE and PEM_MARK in (pem := path.read_bytes()):
                found.add_pem(pem, f"the signing key {path}", path)
    found.update(_concrete_secrets(keysets))
    return found


def find_leaks(secrets: Secrets, roots: list[Path]) -> list[str]:
    """Every file under ``roots`` (but the secrets' own) holding one of ``secrets``, as
    ``"<file>: <what>"``."""
    index = _index(list(secrets.windows))
    hashes = np.sort(np.fromiter(index, dtype=np.uint64, count=len(index)))
    windows = list(secrets.windows.items())
    leaks = []
    for path in _files(roots):
        if path.resolve() in secrets.origins:
            continue
        for what in _search(path, (index, hashes), windows, secrets.signing):
            leaks.append(f"{path}: {what}")
    return leaks


def sealed(path: Path) -> bool:
    """Whether ``path`` was sealed by an encrypted key store (see fhe_toolkit.fhe.at_rest)."""
    with path.open("rb") as handle:
        return handle.read(len(SEALED)) == SEALED


# --- searching --------------------------------------------------------------------------------
def _hashes(data: np.ndarray, count: int, step: int) -> np.ndarray:
    """Hashes of ``count`` slices of ``data`` starting ``step`` bytes apart."""
    view = np.lib.stride_tricks.as_strided(data, shape=(count, SLICE), strides=(step, 1))
    words = np.ascontiguousarray(view).view("<u8")
    out: np.ndarray = (words * _WEIGHTS).sum(axis=1, dtype=np.uint64)
    return out


def _index(windows: list[bytes]) -> dict[int, list[tuple[int, int]]]:
    """Each window's slices at offsets 0..STRIDE-1, by hash: (window, offset)."""
    index: dict[int, list[tuple[int, int]]] = {}
    for number, window in enumerate(windows):
        hashes = _hashes(np.frombuffer(window, dtype=np.uint8), STRIDE, 1)
        for offset, value in enumerate(hashes.tolist()):
            index.setdefault(value, []).append((number, offset))
    return index


def _search(
    path: Path,
    indexed: tuple[dict[int, list[tuple[int, int]]], np.ndarray],
    windows: list[tuple[bytes, str]],
    signing: dict[bytes, str],
) -> Iterator[str]:
    index, keys = indexed  # keys: the index's hashes, sorted
    found: set[str] = set()
    with path.open("rb") as handle:
        for begin, end in _data_extents(handle):
            start = begin
            while start < end:
                # From STRIDE before this block (a copy may begin there) to WINDOW past its end.
                lead = min(start - begin, STRIDE)
                handle.seek(start - lead)
                data = handle.read(lead + BLOCK + WINDOW)
                if len(data) <= lead:
                    break
                found |= _signing_keys_in(data, signing)
                count = (len(data) - lead - SLICE) // STRIDE + 1
                if index and count > 0:
                    array = np.frombuffer(data, dtype=np.uint8)[lead:]
                    hashes = _hashes(array, min(count, BLOCK // STRIDE), STRIDE)
                    nearest = keys[np.minimum(np.searchsorted(keys, hashes), len(keys) - 1)]
                    for slot in np.flatnonzero(nearest == hashes).tolist():
                        at = lead + slot * STRIDE
                        for number, offset in index[int(hashes[slot])]:
                            window, what = windows[number]
                            if at >= offset and data[at - offset : at - offset + WINDOW] == window:
                                found.add(what)
                start += BLOCK
    yield from sorted(found)


def _data_extents(handle: Any) -> Iterator[tuple[int, int]]:
    """The parts of a file that hold data, each widened by a window on both sides: a hole
    reads as zeros and holds no secret, and the 2 GB sparse files of the hostile-input tests
    would otherwise be read whole."""
    size = os.fstat(handle.fileno()).st_size
    position = 0
    while position < size:
        try:
            start = os.lseek(handle.fileno(), position, os.SEEK_DATA)
        except OSError as error:
            if error.errno != errno.ENXIO:  # the file system cannot tell: read it whole
                yield position, size
            return  # ENXIO: no data after position
        end = os.lseek(handle.fileno(), start, os.SEEK_HOLE)
        yield max(0, start - WINDOW), min(size, end + WINDOW)
        position = end


def _signing_keys_in(data: bytes, signing: dict[bytes, str]) -> set[str]:
    found = set()
    for prefix, decode in ((DER_PREFIX, None), (PEM_PREFIX, _raw_from_base64)):
        at = data.find(prefix)
        while at >= 0:
            raw = (
                data[at + len(DER_PREFIX) : at + len(DER_PREFIX) + 32]
                if decode is None
                else decode(data[at : at + 64])
            )
            if raw in signing:
                found.add(signing[raw])
            at = data.find(prefix, at + 1)
    return found


def _raw_from_base64(text: bytes) -> bytes | None:
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return der[len(DER_PREFIX) :] if der.startswith(DER_PREFIX) else None


def _raw_from_pem(pem: bytes) -> bytes | None:
    at = pem.find(PEM_PREFIX)
    return None if at < 0 else _raw_from_base64(pem[at : at + 64])


def _files(roots: list[Path]) -> Iterator[Path]:
    """Regular files under ``roots`` (symbolic links are not followed)."""
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder) / name
                try:
                    if stat.S_ISREG(os.lstat(path).st_mode):
                        yield path
                except FileNotFoundError:
                    continue


# --- Concrete key sets, read in a subprocess ----------------------------------------------------
def _concrete_secrets(keysets: list[Path]) -> Secrets:
    found = Secrets()
    if not keysets:
        return found
    result = subprocess.run(
        [sys.executable, "-m", "tests.secret_scan", *map(str, keysets)],
        capture_output=True, text=True, check=False, timeout=1800,
        cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    for line in result.stdout.splitlines():
        path, number, hex_data = line.split("\t")
        key = bytes.fromhex(hex_data)
        found.add_window(key, f"secret key {number} of the key set {path}", Path(path))
    return found


def _print_secret_keys(paths: list[str]) -> None:
    from concrete import fhe

    for path in paths:
        try:
            keys = fhe.Keys.deserialize(Path(path).read_bytes())
        except Exception:  # noqa: S112 (not a Concrete key set: nothing to look for)
            continue
        for number, key in enumerate(keys._keyset.get_client_keys().get_secret_keys()):
            print(f"{path}\t{number}\t{key.serialize().hex()}")


if __name__ == "__main__":
    _print_secret_keys(sys.argv[1:])
