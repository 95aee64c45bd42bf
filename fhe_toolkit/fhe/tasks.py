"""Per-row FHE work that runs inside worker processes (see :mod:`fhe_toolkit.fhe.engine`).

Each task is a small picklable description; ``setup`` loads what it needs once per worker and
returns the function applied to each serialized ciphertext.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ServerTask:
    """Run a compiled circuit (see :mod:`fhe_toolkit.fhe.server_library`) with evaluation keys.

    An item is one serialized input ciphertext (the output is one too), or a tuple of them for
    a circuit of several inputs (the outputs come back as a tuple).
    """

    library: str
    evaluation_keys: str

    def setup(self) -> Callable[[Any], Any]:
        from concrete.compiler import Library, ServerKeyset, ServerProgram, TransportValue

        library = Library(self.library)
        (info,) = library.get_program_info().get_circuits()
        circuit = ServerProgram(library, False).get_server_circuit(info.get_name())
        keys = ServerKeyset.deserialize(Path(self.evaluation_keys).read_bytes())

        def run(item: bytes | tuple[bytes, ...]) -> bytes | tuple[bytes, ...]:
            single = isinstance(item, bytes)
            inputs = [TransportValue.deserialize(b) for b in ((item,) if single else item)]
            outputs = tuple(value.serialize() for value in circuit.call(inputs, keys))
            return outputs[0] if single else outputs

        return run


@dataclass(frozen=True)
class DecryptTask:
    """Decrypt output ciphertexts with a stored secret key set: one per item, or a tuple of a
    circuit's several outputs."""

    client_specs: str
    keyset: str

    def setup(self) -> Callable[[Any], Any]:
        from concrete import fhe

        client = fhe.Client(fhe.ClientSpecs.deserialize(Path(self.client_specs).read_bytes()))
        client.keys = fhe.Keys.deserialize(Path(self.keyset).read_bytes())

        def decrypt(item: bytes | tuple[bytes, ...]) -> np.ndarray | tuple[np.ndarray, ...]:
            if isinstance(item, bytes):
                return np.asarray(client.decrypt(fhe.Value.deserialize(item)))
            values = client.decrypt(*(fhe.Value.deserialize(b) for b in item))
            return tuple(np.asarray(v) for v in values)

        return decrypt
