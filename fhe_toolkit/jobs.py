"""Per-row FHE work that runs inside worker processes (see :mod:`fhe_toolkit.pool`).

Each job is a small picklable description; ``setup`` loads what it needs once per worker and
returns the function applied to each serialized ciphertext.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ServerJob:
    """Run a compiled model (``server.zip``) on input ciphertexts, with the round's eval keys."""

    server_zip: str
    evaluation_keys: str

    def setup(self) -> Callable[[bytes], bytes]:
        from concrete import fhe

        server = fhe.Server.load(Path(self.server_zip))
        keys = fhe.EvaluationKeys.deserialize(Path(self.evaluation_keys).read_bytes())

        def run(ciphertext: bytes) -> bytes:
            output = server.run(fhe.Value.deserialize(ciphertext), evaluation_keys=keys)
            serialized: bytes = output.serialize()
            return serialized

        return run


@dataclass(frozen=True)
class DecryptJob:
    """Decrypt output ciphertexts with a stored secret key set."""

    client_specs: str
    keyset: str

    def setup(self) -> Callable[[bytes], np.ndarray]:
        from concrete import fhe

        client = fhe.Client(fhe.ClientSpecs.deserialize(Path(self.client_specs).read_bytes()))
        client.keys = fhe.Keys.deserialize(Path(self.keyset).read_bytes())

        def decrypt(ciphertext: bytes) -> np.ndarray:
            return np.asarray(client.decrypt(fhe.Value.deserialize(ciphertext)))

        return decrypt
