"""FHE work that runs inside worker processes (see :mod:`fhe_toolkit.fhe.engine`).

Each task is a small picklable description; ``setup`` loads what it needs once per worker and
returns the function applied to each item (a serialized ciphertext, or one model's rows for
:class:`KeygenEncryptTask`). Tasks are made with paths; the engine ships their :meth:`portable`
copy, which carries the files' contents instead, so that workers on other machines need no
access to the caller's files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fhe_toolkit.fhe.engine import Blob, local_path, read_bytes
from fhe_toolkit.fhe.keystore import generate_keys

TFHERS_SPECS = "tfhers_specs"
"""The key under which concrete.fhe's client specs carry TFHE-rs interoperability specs."""


@dataclass(frozen=True)
class ServerTask:
    """Run a compiled circuit (see :mod:`fhe_toolkit.fhe.server_library`) with evaluation keys.

    ``library``: the compiled library's directory; ``evaluation_keys``: the serialized evaluation
    keys (paths, or their contents as :class:`~fhe_toolkit.fhe.engine.Blob`). An item is one
    serialized input ciphertext (the output is one too), or a tuple of them for a circuit of
    several inputs (the outputs come back as a tuple).
    """

    library: str | Path | Blob
    evaluation_keys: str | Path | Blob

    def portable(self) -> ServerTask:
        return ServerTask(_blob(self.library), _blob(self.evaluation_keys))

    def setup(self) -> Callable[[Any], Any]:
        from concrete.compiler import Library, ServerKeyset, ServerProgram, TransportValue

        library = Library(str(local_path(self.library)))
        (info,) = library.get_program_info().get_circuits()
        circuit = ServerProgram(library, False).get_server_circuit(info.get_name())
        keys = ServerKeyset.deserialize(read_bytes(self.evaluation_keys))

        def run(item: bytes | tuple[bytes, ...]) -> bytes | tuple[bytes, ...]:
            single = isinstance(item, bytes)
            inputs = [TransportValue.deserialize(b) for b in ((item,) if single else item)]
            outputs = tuple(value.serialize() for value in circuit.call(inputs, keys))
            return outputs[0] if single else outputs

        return run


@dataclass(frozen=True)
class DecryptTask:
    """Decrypt output ciphertexts with a stored secret key set: one per item, or a tuple of a
    circuit's several outputs.

    It carries the secret keys to the workers, so the engine refuses to send it over a plain
    ``tcp://`` connection to another host; the workers keep the keys in memory only.
    """

    holds_secrets: ClassVar[bool] = True

    client_specs: str | Path | Blob
    keyset: str | Path | Blob

    def portable(self) -> DecryptTask:
        return DecryptTask(_blob(self.client_specs), _blob(self.keyset))

    def setup(self) -> Callable[[Any], Any]:
        # concrete.compiler's client alone: what fhe.Client.decrypt calls, without importing
        # concrete.fhe (and torch), seconds of start-up in every worker of every receive.
        from concrete.compiler import ClientProgram, Keyset, ProgramInfo, TransportValue

        specs = json.loads(read_bytes(self.client_specs))
        specs.pop(TFHERS_SPECS, None)  # fhe.ClientSpecs keeps these aside; decryption needs none
        info = ProgramInfo.deserialize(json.dumps(specs).encode())
        (function,) = info.function_list()
        keys = Keyset.deserialize(read_bytes(self.keyset))
        circuit = ClientProgram.create_encrypted(info, keys).get_client_circuit(function)

        def output(data: bytes, position: int) -> np.ndarray:
            value = circuit.process_output(TransportValue.deserialize(data), position)
            return np.asarray(value.to_py_val()).astype(np.int64)

        def decrypt(item: bytes | tuple[bytes, ...]) -> np.ndarray | tuple[np.ndarray, ...]:
            if isinstance(item, bytes):
                return output(item, 0)
            return tuple(output(data, position) for position, data in enumerate(item))

        return decrypt


@dataclass(frozen=True, repr=False)
class ModelRows:
    """One circuit model's share of a round for :class:`KeygenEncryptTask`: its client specs
    and its quantized rows cut into the blocks its ciphertexts hold (blocks × rows × features;
    any integer dtype: it travels in the narrowest one that holds its values)."""

    model: str
    client_specs: bytes
    blocks: np.ndarray

    def __repr__(self) -> str:
        return f"ModelRows({self.model!r}, {self.blocks.shape[0]} blocks)"


@dataclass(frozen=True, repr=False)
class EncryptedModel:
    """A model's fresh key set (``keyset``: secret and evaluation keys, serialized), its
    evaluation keys alone (for the bundle), and one ciphertext per block of rows."""

    keyset: bytes
    evaluation_keys: bytes
    ciphertexts: list[bytes]

    def __repr__(self) -> str:  # never the keys, in a log or a traceback
        return f"EncryptedModel({len(self.ciphertexts)} ciphertexts)"


@dataclass(frozen=True)
class KeygenEncryptTask:
    """Generate a circuit model's fresh keys and encrypt its rows under them: an item is a
    :class:`ModelRows`, the output an :class:`EncryptedModel`.

    The secret keys come back over the wire to the caller (the fund's key store), so the engine
    refuses to run it over a plain ``tcp://`` connection to another host. A worker holds them in
    memory only while it encrypts, and until the caller has taken the result.
    """

    holds_secrets: ClassVar[bool] = True

    def setup(self) -> Callable[[ModelRows], EncryptedModel]:
        return keygen_and_encrypt


def keygen_and_encrypt(item: ModelRows) -> EncryptedModel:
    """:class:`KeygenEncryptTask`'s work for one model."""
    client = generate_keys(item.client_specs)
    # Concrete reads the array's buffer as C-ordered int64: a strided view would encrypt garbage.
    ciphertexts = [
        client.encrypt(np.ascontiguousarray(block, dtype=np.int64)).serialize()
        for block in item.blocks
    ]
    return EncryptedModel(client.keys.serialize(), client.evaluation_keys.serialize(), ciphertexts)


def _blob(source: str | Path | Blob) -> Blob:
    return source if isinstance(source, Blob) else Blob.of(source)
