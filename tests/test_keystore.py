"""The fund's key store: one key set per (model, round), private on disk, decrypting once.

Importing Concrete takes about four seconds here, so the store's own logic (layout, modes,
refusals, publication and retirement) runs against a stand-in ``concrete.fhe`` that records
what it is given; one test marked ``fhe`` makes real keys from a tiny real circuit's specs.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography.hazmat.primitives import serialization

from fhe_toolkit.errors import KeyStoreError
from fhe_toolkit.fhe import at_rest
from fhe_toolkit.fhe.engine import Blob
from fhe_toolkit.fhe.keystore import (
    ENCRYPTION,
    INFO,
    KEYSET,
    PUBLISHED,
    RETIRED,
    SPECS,
    TRAINING_KEYS,
    KeyStore,
)
from fhe_toolkit.fund import Fund
from fhe_toolkit.protocol.signing import create_identity, public_key_path
from tests.cli_runner import cli
from tests.test_protocol import model_spec

ROUND, MODEL = "2026-11-27", "alice"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away, so the modes seen are the ones the store asked for."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


class FakeKeys:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data


class FakeClient:
    """Stands in for ``concrete.fhe.Client``: fresh random "keys" on every keygen."""

    made: ClassVar[list[FakeClient]] = []

    def __init__(self, specs: object) -> None:
        self.specs = specs
        self.keys = FakeKeys(b"")
        self.evaluation_keys = FakeKeys(b"")
        FakeClient.made.append(self)

    def keygen(self) -> None:
        self.keys = FakeKeys(b"secret " + os.urandom(16))
        self.evaluation_keys = FakeKeys(b"evaluation " + os.urandom(16))


@pytest.fixture
def fake_concrete(monkeypatch: pytest.MonkeyPatch) -> list[FakeClient]:
    fhe = types.ModuleType("concrete.fhe")
    fhe.Client = FakeClient
    fhe.ClientSpecs = types.SimpleNamespace(deserialize=lambda data: ("specs", data))
    concrete = types.ModuleType("concrete")
    concrete.fhe = fhe
    monkeypatch.setitem(sys.modules, "concrete", concrete)
    monkeypatch.setitem(sys.modules, "concrete.fhe", fhe)
    monkeypatch.setattr(FakeClient, "made", [])
    return FakeClient.made


def lay_out(store: KeyStore, *, round_id: str = ROUND, model: str = MODEL) -> Path:
    """A key set as the store leaves it after ``create``, laid out by hand."""
    folder = store.directory(round_id, model)
    folder.mkdir(parents=True, mode=0o700)
    (folder / KEYSET).write_bytes(b"secret keys")
    (folder / SPECS).write_text("{}")
    info = {"key_set_id": uuid.uuid4().hex, "round_id": round_id, "model": model}
    (folder / INFO).write_text(json.dumps(info))
    return folder


# --- without Concrete --------------------------------------------------------------------------
def test_a_live_key_set_gives_its_secret_key_file(tmp_path):
    store = KeyStore(tmp_path / "keys")
    folder = lay_out(store)
    assert store.directory(ROUND, MODEL) == tmp_path / "keys" / ROUND / MODEL
    assert store.keyset_path(ROUND, MODEL) == folder / KEYSET
    assert store.info(ROUND, MODEL)["model"] == MODEL


def test_missing_keys_are_refused_by_name(tmp_path):
    store = KeyStore(tmp_path / "keys")
    lay_out(store, model="bob")
    with pytest.raises(
        KeyStoreError, match="no secret keys for model 'alice' in round '2026-11-27'"
    ):
        store.keyset_path(ROUND, MODEL)
    with pytest.raises(KeyStoreError, match="no keys were made for model 'alice'"):
        store.info(ROUND, MODEL)
    (store.directory(ROUND, "bob") / KEYSET).unlink()  # folder and records, but no secret key
    with pytest.raises(KeyStoreError, match="no secret keys for model 'bob'"):
        store.keyset_path(ROUND, "bob")


def test_a_retired_key_set_is_gone_and_refused_with_when(tmp_path, open_umask):
    store = KeyStore(tmp_path / "keys")
    folder = lay_out(store)
    lay_out(store, model="bob")
    store.retire(ROUND, MODEL, "decrypted")
    assert not (folder / KEYSET).exists()
    record = json.loads((folder / RETIRED).read_text())
    assert record["reason"] == "decrypted"
    assert mode(folder / RETIRED) == 0o600
    with pytest.raises(KeyStoreError, match=f"retired at {record['retired_at']} after their one"):
        store.keyset_path(ROUND, MODEL)
    # Even if the secret key came back (a restored backup), a retired set stays retired.
    (folder / KEYSET).write_bytes(b"secret keys")
    with pytest.raises(KeyStoreError, match="a key set decrypts once"):
        store.keyset_path(ROUND, MODEL)
    assert store.keyset_path(ROUND, "bob").read_bytes() == b"secret keys"  # others untouched


def test_publication_is_recorded_privately(tmp_path, open_umask):
    store = KeyStore(tmp_path / "keys")
    folder = lay_out(store)
    store.mark_published(ROUND, MODEL)
    assert set(json.loads((folder / PUBLISHED).read_text())) == {"published_at"}
    assert mode(folder / PUBLISHED) == 0o600
    assert store.keyset_path(ROUND, MODEL) == folder / KEYSET  # still usable once


# --- create, with a stand-in for Concrete ------------------------------------------------------
def test_create_stores_private_keys_and_their_records(tmp_path, fake_concrete, open_umask):
    store = KeyStore(tmp_path / "keys")
    spec = model_spec(MODEL)
    keys = store.create(ROUND, MODEL, spec)
    folder = store.directory(ROUND, MODEL)
    assert keys.directory == folder
    assert mode(folder) == 0o700
    for name in (KEYSET, SPECS, INFO):
        assert mode(folder / name) == 0o600, name
    (client,) = fake_concrete
    assert client.specs == ("specs", spec.client_specs_bytes())
    assert keys.client is client
    assert (folder / KEYSET).read_bytes() == client.keys.serialize()
    assert keys.evaluation_keys == client.evaluation_keys.serialize()
    assert (folder / SPECS).read_bytes() == spec.client_specs_bytes()
    info = store.info(ROUND, MODEL)
    assert info["key_set_id"] == keys.key_set_id and len(keys.key_set_id) == 32
    assert (info["round_id"], info["model"]) == (ROUND, MODEL)
    assert info["spec_sha256"] == spec.sha256()
    assert store.keyset_path(ROUND, MODEL) == folder / KEYSET
    other = store.create(ROUND, "bob", model_spec("bob"))
    assert other.key_set_id != keys.key_set_id


def test_a_second_key_set_for_the_same_model_and_round_is_refused(tmp_path, fake_concrete):
    store = KeyStore(tmp_path / "keys")
    store.create(ROUND, MODEL, model_spec(MODEL))
    before = (store.directory(ROUND, MODEL) / KEYSET).read_bytes()
    with pytest.raises(KeyStoreError, match="exist already"):
        store.create(ROUND, MODEL, model_spec(MODEL))
    assert (store.directory(ROUND, MODEL) / KEYSET).read_bytes() == before


def test_unpublished_keys_are_replaced_only_when_asked(tmp_path, fake_concrete):
    store = KeyStore(tmp_path / "keys")
    first = store.create(ROUND, MODEL, model_spec(MODEL))
    secret = store.directory(ROUND, MODEL) / KEYSET
    first_secret = secret.read_bytes()
    second = store.create(ROUND, MODEL, model_spec(MODEL), replace_unpublished=True)
    assert second.key_set_id != first.key_set_id
    assert store.info(ROUND, MODEL)["key_set_id"] == second.key_set_id
    assert secret.read_bytes() == second.client.keys.serialize() != first_secret


@pytest.mark.parametrize("marker", ["published", "retired"])
def test_published_or_retired_keys_are_never_replaced(tmp_path, fake_concrete, marker):
    store = KeyStore(tmp_path / "keys")
    store.create(ROUND, MODEL, model_spec(MODEL))
    folder = store.directory(ROUND, MODEL)
    if marker == "published":
        store.mark_published(ROUND, MODEL)
    else:
        store.retire(ROUND, MODEL, "decrypted")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    with pytest.raises(KeyStoreError, match="exist already"):
        store.create(ROUND, MODEL, model_spec(MODEL), replace_unpublished=True)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


# --- private on disk ---------------------------------------------------------------------------
def test_every_folder_the_store_makes_is_private(tmp_path, fake_concrete, open_umask):
    store = KeyStore(tmp_path / "keys")
    store.create(ROUND, MODEL, model_spec(MODEL))
    store.store(ROUND, "_packed", b"round key", {"packed_params.json": b"{}"})
    store.nested(TRAINING_KEYS).create("job-1", "sgd", model_spec("sgd"))
    fund = Fund(tmp_path / "fund", store.root)
    fund.public_key()
    folders = [p for p in store.root.rglob("*") if p.is_dir()] + [store.root]
    assert {p.relative_to(tmp_path).as_posix() for p in folders} >= {
        "keys", f"keys/{ROUND}", f"keys/{ROUND}/{MODEL}", f"keys/{ROUND}/_packed",
        "keys/training", "keys/training/job-1", "keys/training/job-1/sgd",
    }  # fmt: skip
    assert {mode(p) for p in folders} == {0o700}
    files = [p for p in store.root.rglob("*") if p.is_file()]
    public = public_key_path(fund.identity_path)
    assert {mode(p) for p in files if p != public} == {0o600}
    assert mode(public) == 0o644  # the fund's public key is public


def test_an_identity_in_a_new_folder_gets_a_private_folder(tmp_path, open_umask):
    create_identity(tmp_path / "home" / "me" / "id.pem")
    assert mode(tmp_path / "home") == mode(tmp_path / "home" / "me") == 0o700
    assert mode(tmp_path / "home" / "me" / "id.pem") == 0o600


def test_opening_a_store_an_older_version_left_open_makes_it_private_and_says_so(
    tmp_path, open_umask
):
    root = tmp_path / "keys"
    folder = lay_out(KeyStore(root))
    for path in (root, root / ROUND, folder):
        path.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    (root / "fund_signing_key.pem.pub").write_text("ab" * 32)
    (root / "fund_signing_key.pem.pub").chmod(0o644)
    outside = tmp_path / "outside.txt"
    outside.write_text("not the store's")
    outside.chmod(0o644)
    (folder / "link").symlink_to(outside)
    store = KeyStore(root)
    assert sorted(store.tightened) == sorted(
        [root, root / ROUND, folder, folder / KEYSET, folder / SPECS, folder / INFO]
    )
    assert {mode(p) for p in (root, root / ROUND, folder)} == {0o700}
    assert {mode(folder / n) for n in (KEYSET, SPECS, INFO)} == {0o600}
    assert mode(root / "fund_signing_key.pem.pub") == 0o644 and mode(outside) == 0o644
    assert KeyStore(root).tightened == []  # said once


# --- encrypted at rest --------------------------------------------------------------------------
@pytest.fixture
def encrypted(tmp_path: Path, fake_concrete: list[FakeClient]) -> KeyStore:
    store = KeyStore(tmp_path / "keys")
    made, sealed = store.encrypt_at_rest(tmp_path / "secrets" / "keystore.key")
    assert made and sealed == []
    return store


def test_an_encrypted_store_never_writes_a_secret_in_plaintext(tmp_path, encrypted, open_umask):
    key_file = tmp_path / "secrets" / "keystore.key"
    assert mode(key_file) == 0o600 and mode(key_file.parent) == 0o700
    assert len(key_file.read_text().strip()) == 64
    keys = encrypted.create(ROUND, MODEL, model_spec(MODEL))
    secret = keys.client.keys.serialize()
    fund = Fund(tmp_path / "fund", encrypted.root)
    fund.public_key()
    pem = fund.signing_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert secret not in on_disk and pem not in on_disk and pem.split(b"\n")[1] not in on_disk
    # Every later opening reads the key file the store recorded; decrypted in memory only.
    later = KeyStore(encrypted.root)
    assert later.secret(ROUND, MODEL) == secret
    source = later.secret_source(ROUND, MODEL)
    assert isinstance(source, Blob) and source.data == secret
    assert json.loads((encrypted.root / ENCRYPTION).read_text())["key_file"] == str(key_file)


def test_opting_in_encrypts_the_secrets_already_there(tmp_path, fake_concrete):
    store = KeyStore(tmp_path / "keys")
    secret = store.create(ROUND, MODEL, model_spec(MODEL)).client.keys.serialize()
    fund = Fund(tmp_path / "fund", store.root)
    public = fund.public_key()
    pem = fund.identity_path.read_bytes()
    made, sealed = store.encrypt_at_rest(tmp_path / "keystore.key")
    assert made and sorted(sealed) == sorted(
        [store.directory(ROUND, MODEL) / KEYSET, fund.identity_path]
    )
    assert secret not in (store.directory(ROUND, MODEL) / KEYSET).read_bytes()
    assert fund.identity_path.read_bytes() != pem
    again = Fund(tmp_path / "fund", store.root)
    assert again.public_key() == public and again.keys.secret(ROUND, MODEL) == secret
    assert store.encrypt_at_rest(tmp_path / "keystore.key") == (False, [])  # nothing left to do


def test_a_missing_or_wrong_key_file_is_refused_by_name(tmp_path, encrypted):
    encrypted.create(ROUND, MODEL, model_spec(MODEL))
    key_file = tmp_path / "secrets" / "keystore.key"
    moved = tmp_path / "elsewhere.key"
    key_file.rename(moved)
    with pytest.raises(KeyStoreError, match=r"keystore\.key does not exist.*--keystore-key FILE"):
        KeyStore(encrypted.root).secret(ROUND, MODEL)
    with pytest.raises(KeyStoreError, match=r"keystore\.key does not exist"):
        KeyStore(encrypted.root).check_key()
    other = tmp_path / "other.key"
    with pytest.raises(KeyStoreError, match=r"other\.key is not the key of the key store"):
        KeyStore(encrypted.root).encrypt_at_rest(other)
    assert KeyStore(encrypted.root).encrypt_at_rest(moved) == (False, [])  # where it went
    assert KeyStore(encrypted.root).check_key()["key_file"] == str(moved)
    moved.chmod(0o644)
    with pytest.raises(KeyStoreError, match="readable by others; make it private: chmod 600"):
        KeyStore(encrypted.root).secret(ROUND, MODEL)
    moved.chmod(0o600)
    moved.write_text("not a key\n")
    with pytest.raises(KeyStoreError, match="is not a key store key file"):
        KeyStore(encrypted.root).secret(ROUND, MODEL)


def test_a_sealed_secret_altered_cut_or_moved_does_not_decrypt(tmp_path, encrypted, monkeypatch):
    monkeypatch.setattr(at_rest, "CHUNK", 8)  # several chunks from a short secret
    secret = encrypted.create(ROUND, MODEL, model_spec(MODEL)).client.keys.serialize()
    encrypted.create(ROUND, "bob", model_spec("bob"))
    mine, bobs = (encrypted.directory(ROUND, m) / KEYSET for m in (MODEL, "bob"))
    sealed = mine.read_bytes()
    last_chunk = len(secret) % at_rest.CHUNK or at_rest.CHUNK
    for damaged in (
        sealed[:-3] + bytes([sealed[-3] ^ 1]) + sealed[-2:],  # a byte flipped
        sealed[: -(last_chunk + at_rest.TAG_BYTES)],  # the last chunk cut off
        bobs.read_bytes(),  # bob's key set, moved here
    ):
        mine.write_bytes(damaged)
        with pytest.raises(KeyStoreError, match="does not decrypt with the key store's key"):
            encrypted.secret(ROUND, MODEL)
    mine.write_bytes(b"secret in plaintext")
    with pytest.raises(KeyStoreError, match="is not encrypted, though the key store"):
        encrypted.secret(ROUND, MODEL)
    assert encrypted.encrypt_at_rest(tmp_path / "secrets" / "keystore.key") == (False, [mine])
    assert encrypted.secret(ROUND, MODEL) == b"secret in plaintext"


def test_config_encrypts_the_key_store_from_the_command_line(tmp_path):
    (tmp_path / "keys").mkdir(mode=0o755)  # as an older version left it
    (tmp_path / "keys").chmod(0o755)
    result = cli("fund", "config", "--keystore-key", "ks.key", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "of the key store keys were open to other users" in result.stderr
    assert mode(tmp_path / "keys") == 0o700
    assert "a new key store key was written to ks.key" in result.stdout
    assert (
        f"encrypted at rest (AES-256-GCM) under the key in {tmp_path / 'ks.key'}" in result.stdout
    )
    (tmp_path / "ks.key").unlink()
    result = cli("fund", "config", cwd=tmp_path)
    assert result.returncode == 2 and "ks.key does not exist" in result.stderr


def test_keys_made_elsewhere_are_stored_as_created_ones(tmp_path, open_umask):
    """A round's key sets are made in the engine's workers and stored here (no Concrete)."""
    store = KeyStore(tmp_path / "keys")
    spec = model_spec(MODEL)
    keys = store.add(ROUND, MODEL, spec, b"secret and evaluation", b"evaluation")
    folder = store.directory(ROUND, MODEL)
    assert (keys.directory, keys.evaluation_keys, keys.client) == (folder, b"evaluation", None)
    assert mode(folder) == 0o700 and mode(folder / KEYSET) == 0o600
    assert (folder / KEYSET).read_bytes() == b"secret and evaluation"
    assert (folder / SPECS).read_bytes() == spec.client_specs_bytes()
    assert store.info(ROUND, MODEL)["key_set_id"] == keys.key_set_id
    assert store.info(ROUND, MODEL)["spec_sha256"] == spec.sha256()
    with pytest.raises(KeyStoreError, match="exist already"):
        store.add(ROUND, MODEL, spec, b"other", b"other")
    again = store.add(ROUND, MODEL, spec, b"other", b"other", replace_unpublished=True)
    assert (folder / KEYSET).read_bytes() == b"other" and again.key_set_id != keys.key_set_id
    store.mark_published(ROUND, MODEL)
    with pytest.raises(KeyStoreError, match="exist already"):
        store.add(ROUND, MODEL, spec, b"third", b"third", replace_unpublished=True)


# --- create, with Concrete ---------------------------------------------------------------------
@pytest.mark.fhe
def test_create_makes_real_keys_for_a_real_circuit(tmp_path, open_umask):
    """Concrete's own key generation from the real client specs of a tiny circuit (no
    bootstrapping keys, so it takes milliseconds once Concrete is imported)."""
    from concrete import fhe

    store = KeyStore(tmp_path / "keys")
    keys = store.create(ROUND, MODEL, model_spec(MODEL))
    folder = store.directory(ROUND, MODEL)
    assert mode(folder) == 0o700 and mode(folder / KEYSET) == 0o600
    assert isinstance(keys.client, fhe.Client)
    secret = (folder / KEYSET).read_bytes()
    assert fhe.Keys.deserialize(secret).serialize() == secret
    assert keys.evaluation_keys == keys.client.evaluation_keys.serialize()
