"""The fund's key store: one fresh key set per (model, round), used for one decryption.

Layout: ``<root>/<round>/<model>/`` holding ``keyset.bin`` (secret and evaluation keys; mode
0600, folder 0700), ``client_specs.json`` and ``keyset.json`` (ids and dates), and
``published.json`` once a bundle encrypted under it is out. Retiring a key set deletes
``keyset.bin`` and leaves ``retired.json``, so a second decryption is refused by name. Encrypted
training jobs keep theirs in ``<root>/training/<job>/<name>/``. Nothing here is ever copied into
a bundle: bundles carry evaluation keys only.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhe_toolkit.errors import KeyStoreError
from fhe_toolkit.protocol.files import write_atomic
from fhe_toolkit.protocol.manifest import utc_now
from fhe_toolkit.protocol.modelspec import CircuitSpec

KEYSET = "keyset.bin"
SPECS = "client_specs.json"
INFO = "keyset.json"
RETIRED = "retired.json"
PUBLISHED = "published.json"
TRAINING_KEYS = "training"
"""The key store's folder for encrypted training jobs' keys (``training/<job>/<name>``)."""


@dataclass(frozen=True)
class KeySet:
    """A key set in the store. ``client`` (secret keys in memory) exists only when just created."""

    key_set_id: str
    directory: Path
    evaluation_keys: bytes
    client: object


def generate_keys(client_specs: bytes) -> Any:
    """A Concrete client holding fresh keys (secret and evaluation) for these client specs.

    Concrete's key generation crashes its whole process on some malformed specs (a key id that
    does not exist, a polynomial size that is not a power of two): a round's models, whose
    specs participants write, have theirs made in the engine's worker processes (see
    :mod:`fhe_toolkit.fund.rounds`)."""
    from concrete import fhe

    client = fhe.Client(fhe.ClientSpecs.deserialize(client_specs))
    client.keygen()
    return client


class KeyStore:
    def __init__(self, root: str | Path = "keys") -> None:
        self.root = Path(root)

    def directory(self, round_id: str, model: str) -> Path:
        return self.root / round_id / model

    def create(
        self, round_id: str, model: str, spec: CircuitSpec, *, replace_unpublished: bool = False
    ) -> KeySet:
        """Generate fresh keys for (model, round) and store them; refuse if any exist already.

        ``replace_unpublished``: keys left by an attempt that failed before its bundle was
        published (see :meth:`mark_published`) encrypt nothing anyone holds, and are replaced.
        """
        self._claim(round_id, model, replace_unpublished)
        client = generate_keys(spec.client_specs_bytes())
        key_set = self.add(
            round_id, model, spec, client.keys.serialize(), client.evaluation_keys.serialize()
        )
        return KeySet(key_set.key_set_id, key_set.directory, key_set.evaluation_keys, client)

    def add(
        self,
        round_id: str,
        model: str,
        spec: CircuitSpec,
        secret: bytes,
        evaluation_keys: bytes,
        *,
        replace_unpublished: bool = False,
    ) -> KeySet:
        """Store keys generated for (model, round) elsewhere, e.g. by a worker of the engine
        (:class:`~fhe_toolkit.fhe.tasks.KeygenEncryptTask`); refuse as :meth:`create` does.
        ``secret``: the serialized key set (secret and evaluation keys)."""
        key_set_id, folder = self.store(
            round_id, model, secret, {SPECS: spec.client_specs_bytes()},
            replace_unpublished=replace_unpublished, spec_sha256=spec.sha256(),
        )  # fmt: skip
        return KeySet(key_set_id, folder, evaluation_keys, None)

    def store(
        self,
        round_id: str,
        name: str,
        secret: bytes,
        files: dict[str, bytes],
        *,
        replace_unpublished: bool = False,
        **info: str,
    ) -> tuple[str, Path]:
        """Store a new key set's secret key and its public ``files`` under (``name``, round);
        refuse if one exists. Returns the new key set's id and folder."""
        folder = self._claim(round_id, name, replace_unpublished)
        folder.mkdir(parents=True, mode=0o700)
        os.chmod(folder, 0o700)
        key_set_id = uuid.uuid4().hex
        write_atomic(folder / KEYSET, secret, mode=0o600)
        for file_name, data in files.items():
            write_atomic(folder / file_name, data, mode=0o600)
        record = {
            "key_set_id": key_set_id,
            "round_id": round_id,
            "model": name,
            **info,
            "created_at": utc_now(),
        }
        write_atomic(folder / INFO, json.dumps(record, indent=1).encode(), mode=0o600)
        return key_set_id, folder

    def _claim(self, round_id: str, name: str, replace_unpublished: bool) -> Path:
        folder = self.directory(round_id, name)
        if replace_unpublished and folder.is_dir():
            if not any((folder / marker).exists() for marker in (PUBLISHED, RETIRED)):
                shutil.rmtree(folder)
        if folder.exists():
            raise KeyStoreError(
                f"keys for model {name!r} in round {round_id!r} exist already ({folder}); "
                "each (model, round) gets one key set."
            )
        return folder

    def mark_published(self, round_id: str, model: str) -> None:
        """Record that a bundle encrypted under this key set was published: from now on the
        keys are never replaced, only retired."""
        record = json.dumps({"published_at": utc_now()}).encode()
        write_atomic(self._existing(round_id, model) / PUBLISHED, record, mode=0o600)

    def info(self, round_id: str, model: str) -> dict[str, str]:
        path = self.directory(round_id, model) / INFO
        if not path.is_file():
            raise KeyStoreError(f"no keys were made for model {model!r} in round {round_id!r}.")
        info: dict[str, str] = json.loads(path.read_text())
        return info

    def keyset_path(self, round_id: str, model: str) -> Path:
        """The secret key file, refusing retired or missing key sets with the reason."""
        folder = self.directory(round_id, model)
        retired = folder / RETIRED
        if retired.is_file():
            when = json.loads(retired.read_text()).get("retired_at", "?")
            raise KeyStoreError(
                f"the keys of model {model!r} for round {round_id!r} were retired at {when} "
                "after their one decryption; a key set decrypts once."
            )
        path = folder / KEYSET
        if not path.is_file():
            raise KeyStoreError(f"no secret keys for model {model!r} in round {round_id!r}.")
        return path

    def is_retired(self, round_id: str, model: str) -> bool:
        return (self.directory(round_id, model) / RETIRED).is_file()

    def retire(self, round_id: str, model: str, reason: str) -> None:
        folder = self._existing(round_id, model)
        record = {"retired_at": utc_now(), "reason": reason}
        write_atomic(folder / RETIRED, json.dumps(record, indent=1).encode(), mode=0o600)
        (folder / KEYSET).unlink(missing_ok=True)

    def _existing(self, round_id: str, model: str) -> Path:
        folder = self.directory(round_id, model)
        if not folder.is_dir():
            raise KeyStoreError(f"no keys were made for model {model!r} in round {round_id!r}.")
        return folder
