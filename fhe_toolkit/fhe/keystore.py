"""The fund's key store: one fresh key set per (model, round), used for one decryption.

Layout: ``<root>/<round>/<model>/`` holding ``keyset.bin`` (secret and evaluation keys),
``client_specs.json`` and ``keyset.json`` (ids and dates), and ``published.json`` once a bundle
encrypted under it is out. Retiring a key set deletes ``keyset.bin`` and leaves
``retired.json``, so a second decryption is refused by name. Encrypted training jobs keep theirs
in ``<root>/training/<job>/<name>/`` (:meth:`KeyStore.nested`). The fund's signing key is
``<root>/fund_signing_key.pem`` (its public key, ``.pem.pub``, beside it). Nothing here is ever
copied into a bundle: bundles carry evaluation keys only.

Private on disk: every folder is 0700 and every file 0600 (public keys excepted). Opening a
store tightens whatever an older version (or a hand) left open to other users, and lists it in
:attr:`KeyStore.tightened` so the caller can say so.

Encrypted at rest once the operator opts in (:meth:`KeyStore.encrypt_at_rest`, which
``fhe-toolkit fund config --keystore-key FILE`` calls): ``encryption.json`` records that, and
where the key file is, so every later opening uses it. From then on every secret (each
``keyset.bin``, the signing key) is written sealed with AES-256-GCM (:mod:`fhe_toolkit.fhe.at_rest`)
and decrypted in memory only: decryption workers get the key set's bytes, never a plaintext file.
The other files (specs, ids, dates) are not secret and stay readable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhe_toolkit.errors import KeyStoreError
from fhe_toolkit.fhe.at_rest import AtRest, is_sealed, load_key_file, new_key_file
from fhe_toolkit.fhe.engine import Blob
from fhe_toolkit.protocol.files import make_private_dirs, read_regular, write_atomic
from fhe_toolkit.protocol.manifest import utc_now
from fhe_toolkit.protocol.modelspec import CircuitSpec
from fhe_toolkit.protocol.signing import PUBLIC_SUFFIX

KEYSET = "keyset.bin"
SPECS = "client_specs.json"
INFO = "keyset.json"
RETIRED = "retired.json"
PUBLISHED = "published.json"
SIGNING_KEY = "fund_signing_key.pem"
"""The fund's Ed25519 signing key, at the store's root."""
ENCRYPTION = "encryption.json"
"""At the store's root once it is encrypted at rest: the cipher, the key file, a check value."""
TRAINING_KEYS = "training"
"""The key store's folder for encrypted training jobs' keys (``training/<job>/<name>``)."""
MAX_SECRET_FILE = 64 * 2**30
CHECK = b"fhe-toolkit key store"
"""Sealed into ``encryption.json``: a key that opens it is this store's key."""


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
    def __init__(self, root: str | Path = "keys", *, within: KeyStore | None = None) -> None:
        """The key store at ``root``, its modes tightened if an older version left them open.
        ``within``: the store this one is a folder of (see :meth:`nested`)."""
        self.root = Path(root)
        self._top: KeyStore = self if within is None else within._top
        self._cipher: AtRest | None = None
        self.tightened: list[Path] = [] if within is not None else tighten(self.root)
        """The folders and files whose modes opening the store tightened."""

    def nested(self, name: str) -> KeyStore:
        """The store in this one's folder ``name``, private and encrypted as this one is."""
        return KeyStore(self.root / name, within=self)

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
        make_private_dirs(folder)
        key_set_id = uuid.uuid4().hex
        self.write_secret(folder / KEYSET, secret)
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

    def secret(self, round_id: str, model: str) -> bytes:
        """The key set's secret keys (decrypted, when the store is encrypted at rest), refusing
        retired or missing key sets with the reason."""
        return self.read_secret(self.keyset_path(round_id, model))

    def secret_source(self, round_id: str, model: str) -> Path | Blob:
        """The key set's secret keys for decryption workers: the file itself, or, when the store
        is encrypted at rest, its decrypted bytes (held in memory, never written out)."""
        path = self.keyset_path(round_id, model)
        if self._top.encryption_record() is None:
            return path
        data = self.read_secret(path)
        return Blob(data, False, KEYSET, hashlib.sha256(data).hexdigest())

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

    # --- secrets on disk -------------------------------------------------------------------
    def write_secret(self, path: Path, data: bytes) -> None:
        """Write a secret file in the store (mode 0600), sealed when the store is encrypted."""
        top = self._top
        cipher = top._at_rest()
        write_atomic(path, data if cipher is None else cipher.seal(data, top._place(path)), 0o600)

    def read_secret(self, path: Path) -> bytes:
        """A secret file of the store, decrypted when the store is encrypted."""
        top = self._top
        data = read_regular(path, MAX_SECRET_FILE, "a secret key file", KeyStoreError)
        cipher = top._at_rest()
        if cipher is not None:
            if not is_sealed(data):
                raise KeyStoreError(
                    f"{path} is not encrypted, though the key store {top.root} is: encrypting it "
                    "was cut off. Finish it: fhe-toolkit fund config --keystore-key FILE"
                )
            return cipher.open(data, top._place(path))
        if is_sealed(data):
            raise KeyStoreError(
                f"{path} is encrypted, but the key store {top.root} has no {ENCRYPTION} saying "
                "with which key: record it with fhe-toolkit fund config --keystore-key FILE"
            )
        return data

    # --- encryption at rest ----------------------------------------------------------------
    def encryption_record(self) -> dict[str, Any] | None:
        """What ``encryption.json`` records (cipher, key file), or ``None`` if not encrypted."""
        path = self._top.root / ENCRYPTION
        if not path.exists() and not path.is_symlink():
            return None
        data = read_regular(path, 4096, "the key store's encryption record", KeyStoreError)
        try:
            record: dict[str, Any] = json.loads(data)
            return {"key_file": str(record["key_file"]), "check": str(record["check"])}
        except (ValueError, TypeError, KeyError):
            raise KeyStoreError(
                f"{path} is damaged: it should record the key store's key file and check value. "
                "Restore it from a backup."
            ) from None

    def check_key(self) -> dict[str, Any] | None:
        """Read an encrypted store's key now, refusing a key file that is missing or not this
        store's; return what ``encryption.json`` records (``None`` for a plaintext store)."""
        self._top._at_rest()
        return self.encryption_record()

    def encrypt_at_rest(self, key_file: str | Path) -> tuple[bool, list[Path]]:
        """Encrypt the store at rest under the key in ``key_file`` (a new random key is written
        there first if it does not exist) and record where that file is: every later opening
        uses it. A store encrypted already takes only its own key (to record where the file
        went). Every secret still in plaintext is sealed now (the keys made before, or those an
        earlier call that was cut off left). Returns whether the key file was made, and the files
        sealed now."""
        top = self._top
        key_file = Path(key_file).absolute()
        made = not key_file.exists() and not key_file.is_symlink()
        if made:
            new_key_file(key_file)
        key = load_key_file(key_file, top.root)
        record = top.encryption_record()
        cipher = AtRest(key) if record is None else top._checked(key, record, key_file)
        check = cipher.seal(CHECK, ENCRYPTION).hex() if record is None else record["check"]
        make_private_dirs(top.root)
        # Recorded first: from now on no secret is written in plaintext, and a call cut off
        # below is finished by calling again.
        entry = {"cipher": "AES-256-GCM", "key_file": str(key_file), "check": check}
        write_atomic(top.root / ENCRYPTION, json.dumps(entry, indent=1).encode(), mode=0o600)
        top._cipher = cipher
        sealed = []
        for path in top._secret_files():
            data = read_regular(path, MAX_SECRET_FILE, "a secret key file", KeyStoreError)
            if not is_sealed(data):
                write_atomic(path, cipher.seal(data, top._place(path)), mode=0o600)
                sealed.append(path)
        return made, sealed

    def _at_rest(self) -> AtRest | None:
        """The store's cipher (its key read once, on first use), or ``None`` if not encrypted."""
        if self._cipher is None:
            record = self.encryption_record()
            if record is None:
                return None
            key_file = Path(record["key_file"])
            self._cipher = self._checked(load_key_file(key_file, self.root), record, key_file)
        return self._cipher

    def _checked(self, key: bytes, record: dict[str, Any], key_file: Path) -> AtRest:
        cipher = AtRest(key)
        try:
            opened = cipher.open(bytes.fromhex(record["check"]), ENCRYPTION)
        except KeyStoreError:
            opened = b""
        if opened != CHECK:
            raise KeyStoreError(
                f"{key_file} is not the key of the key store {self.root}: the store was encrypted "
                "under another key. Give the key file it was encrypted with."
            )
        return cipher

    def _place(self, path: Path) -> str:
        """A secret file's place in the store, which its sealing is bound to."""
        return path.relative_to(self.root).as_posix()

    def _secret_files(self) -> list[Path]:
        found = sorted(self.root.rglob(KEYSET))
        if (self.root / SIGNING_KEY).is_file():
            found.append(self.root / SIGNING_KEY)
        return found


def tighten(root: Path) -> list[Path]:
    """Take every permission for other users off the store's folders and files (public keys
    excepted; symbolic links are not followed); return the paths changed."""
    if not root.is_dir():
        return []
    changed = []
    for folder, _, files in os.walk(root):
        for path in [Path(folder), *(Path(folder) / f for f in files)]:
            status = os.lstat(path)
            if stat.S_ISLNK(status.st_mode) or path.name.endswith(PUBLIC_SUFFIX):
                continue
            if stat.S_IMODE(status.st_mode) & 0o077:
                os.chmod(path, stat.S_IMODE(status.st_mode) & 0o700)
                changed.append(path)
    return changed
