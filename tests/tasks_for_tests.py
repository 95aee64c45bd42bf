"""Row tasks for the engine tests. They live in a module of their own so that worker processes
(spawned locally, or `dask worker` processes started with this repository on PYTHONPATH) can
import them."""

from __future__ import annotations

import ctypes
import hashlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fhe_toolkit.fhe.engine import Blob, local_path, read_bytes


@dataclass(frozen=True)
class EchoTask:
    """Upper-cases rows; segfaults on rows named in ``crash``; raises on rows in ``fail``."""

    crash: frozenset[bytes] = frozenset()
    fail: frozenset[bytes] = frozenset()

    def setup(self) -> Callable[[bytes], bytes]:
        def run(item: bytes) -> bytes:
            if item in self.crash:
                ctypes.string_at(0)  # a real segfault, as a broken FHE runtime would give
            if item in self.fail:
                raise ValueError(f"bad row {item!r}")
            return item.upper() + f":{os.getpid()}".encode()

        return run


@dataclass(frozen=True)
class BrokenSetupTask:
    def setup(self) -> Callable[[bytes], bytes]:
        raise FileNotFoundError("server.zip is missing")


@dataclass(frozen=True)
class SleepTask:
    """Returns each row after ``seconds``: work slow enough to interrupt or kill mid-run."""

    seconds: float

    def setup(self) -> Callable[[bytes], bytes]:
        def run(item: bytes) -> bytes:
            time.sleep(self.seconds)
            return item + f":{os.getpid()}".encode()

        return run


@dataclass(frozen=True)
class LoadCountTask:
    """Returns (worker pid, a token made once per ``setup``): shows how often a worker loads."""

    def setup(self) -> Callable[[bytes], tuple[int, str]]:
        token = uuid.uuid4().hex

        def run(item: bytes) -> tuple[int, str]:
            return os.getpid(), token

        return run


@dataclass(frozen=True)
class FileTask:
    """Digests each row with a file and a directory's contents, given by path or carried as
    blobs (``portable``), like the real tasks' keys and compiled library."""

    data: str | Path | Blob
    folder: str | Path | Blob

    def portable(self) -> FileTask:
        return FileTask(Blob.of(self.data), Blob.of(self.folder))

    def setup(self) -> Callable[[bytes], str]:
        data = read_bytes(self.data)
        folder = local_path(self.folder)
        listing = b"".join(
            p.relative_to(folder).as_posix().encode() + p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        )

        def run(item: bytes) -> str:
            return hashlib.sha256(data + listing + item).hexdigest()

        return run


@dataclass(frozen=True)
class PathTask:
    """Reads a file by its path in ``setup``, with no ``portable()``: only where the path is."""

    path: str

    def setup(self) -> Callable[[bytes], bytes]:
        data = Path(self.path).read_bytes()
        return lambda item: item + data[:4]


def loaded_tasks() -> int:
    """Run on a worker: how many tasks it holds loaded (0 once every call has ended)."""
    from fhe_toolkit.fhe import engine

    return len(engine._LOADED)


@dataclass(frozen=True)
class TinyCircuit:
    """A compiled real circuit with fresh keys, stored as the toolkit stores them: the server's
    compiled library, evaluation keys, client specs and the secret key set (all in one folder)."""

    library: Path
    evaluation_keys: Path
    client_specs: Path
    keyset: Path
    circuit: Any

    def encrypt(self, row: np.ndarray) -> bytes:
        return bytes(self.circuit.encrypt(row).serialize())

    def decrypt(self, ciphertext: bytes) -> int:
        from concrete import fhe

        return int(self.circuit.decrypt(fhe.Value.deserialize(ciphertext)))


def tiny_circuit(directory: Path, kind: str = "linear", n_features: int = 5) -> TinyCircuit:
    """``linear``: a dot product with small integer weights (no programmable bootstrap, like a
    linear model); ``tree``: two comparisons (two bootstraps, like a depth-2 tree). Features take
    the 5 Numerai values 0..4."""
    from concrete import fhe

    from fhe_toolkit.fhe.server_library import SERVER_ZIP, ensure_server_library

    weights = np.array([3, -2, 1, 0, 2, -1, 1, -3][:n_features])

    def linear(x: Any) -> Any:
        return np.sum(x * weights)

    def tree(x: Any) -> Any:
        return (x[0] > 2) * 2 + (x[1] > 1)

    rng = np.random.default_rng(0)
    inputset = [rng.integers(0, 5, size=n_features) for _ in range(30)]
    inputset += [np.zeros(n_features, dtype=np.int64), np.full(n_features, 4)]
    inputset += [np.where(weights > 0, 4, 0), np.where(weights < 0, 4, 0)]
    function = {"linear": linear, "tree": tree}[kind]
    circuit = fhe.Compiler(function, {"x": "encrypted"}).compile(inputset)
    circuit.keygen()
    deployment = directory / "deployment"
    deployment.mkdir(parents=True)
    circuit.server.save(deployment / SERVER_ZIP)
    files = {
        "evaluation_keys.bin": circuit.client.evaluation_keys.serialize(),
        "client_specs.json": circuit.client.specs.serialize(),
        "keyset.bin": circuit.client.keys.serialize(),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return TinyCircuit(
        ensure_server_library(deployment, server=circuit.server),
        *(directory / name for name in files),
        circuit=circuit,
    )
