"""Ed25519 identities: key files, signatures over a directory's manifest, and the messages a
user gets when something is off."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fhe_toolkit.errors import IdentityError
from fhe_toolkit.protocol.manifest import MANIFEST
from fhe_toolkit.protocol.signing import (
    SIGNATURE,
    create_identity,
    load_private_key,
    load_public_key,
    public_key_path,
    sign_directory,
    signed_by,
    verify_directory,
)


@pytest.fixture
def signed(tmp_path):
    key_path = tmp_path / "alice.pem"
    public = create_identity(key_path)
    directory = tmp_path / "submission"
    directory.mkdir()
    (directory / MANIFEST).write_text('{"round_id": "r1"}')
    sign_directory(directory, load_private_key(key_path))
    return directory, key_path, public


def test_keys_are_private_and_never_overwritten(signed):
    _, key_path, public = signed
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    assert load_public_key(public_key_path(key_path)) == public == load_public_key(public.hex())
    with pytest.raises(IdentityError, match="never overwritten"):
        create_identity(key_path)
    os.chmod(key_path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_private_key(key_path)


def test_a_signature_covers_the_manifest_and_names_its_signer(signed, tmp_path):
    directory, key_path, public = signed
    verify_directory(directory, public, "alice")
    other = create_identity(tmp_path / "bob.pem")
    assert signed_by(directory, public) and not signed_by(directory, other)
    with pytest.raises(IdentityError, match="not bob's"):
        verify_directory(directory, other, "bob")
    # Someone else re-signs: alice's key no longer verifies.
    sign_directory(directory, load_private_key(tmp_path / "bob.pem"))
    assert signed_by(directory, other) and not signed_by(directory, public)
    with pytest.raises(IdentityError, match="not alice's"):
        verify_directory(directory, public, "alice")
    sign_directory(directory, load_private_key(key_path))
    (directory / MANIFEST).write_text('{"round_id": "r2"}')  # a replay to another round
    with pytest.raises(IdentityError, match="manifest changed after signing"):
        verify_directory(directory, public, "alice")
    (directory / SIGNATURE).write_bytes(b"short")
    with pytest.raises(IdentityError, match="not alice's"):
        verify_directory(directory, public, "alice")
    (directory / SIGNATURE).unlink()
    with pytest.raises(IdentityError, match="is not signed"):
        verify_directory(directory, public, "alice")


def test_key_files_mixed_up_get_a_clear_error(signed, tmp_path):
    _, key_path, _ = signed
    with pytest.raises(IdentityError, match="is a private key: give the public key") as caught:
        load_public_key(key_path)
    message = str(caught.value)
    assert f"{key_path} is a private key" in message
    assert f"give the public key, {public_key_path(key_path)}" in message
    assert "BEGIN" not in message
    with pytest.raises(IdentityError, match="not an unencrypted PEM private key"):
        load_private_key(public_key_path(key_path))
    with pytest.raises(IdentityError, match="identity new"):
        load_private_key(tmp_path / "missing.pem")


def test_a_pasted_private_key_is_named_and_never_echoed(signed):
    _, key_path, _ = signed
    pem = key_path.read_text()
    secret_line = pem.splitlines()[1]
    with pytest.raises(IdentityError) as caught:
        load_public_key(pem)
    assert "private key" in str(caught.value)
    assert secret_line not in str(caught.value)


@pytest.mark.parametrize("kind", ["directory", "long name"])
def test_an_unreadable_public_key_path_is_an_identity_error(tmp_path, kind):
    argument = str(tmp_path) if kind == "directory" else "k" * 300
    with pytest.raises(IdentityError):
        load_public_key(argument)


def test_a_key_that_is_not_ed25519_is_named(tmp_path):
    path = tmp_path / "ec.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match=r"ec\.pem holds a \w+, not an Ed25519 key"):
        load_private_key(path)
    (tmp_path / "bad.pub").write_text("z" * 64)
    with pytest.raises(IdentityError, match="does not hold a public key"):
        load_public_key(tmp_path / "bad.pub")
