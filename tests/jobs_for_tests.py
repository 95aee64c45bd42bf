"""Row jobs for the pool tests. They live in a module of their own so that spawned worker
processes can import them."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class EchoJob:
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
class BrokenSetupJob:
    def setup(self) -> Callable[[bytes], bytes]:
        raise FileNotFoundError("server.zip is missing")
