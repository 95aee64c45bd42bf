"""Ed25519 identities: the fund signs its bundles, each participant signs its submissions.

A signature covers a directory's ``manifest.json`` byte for byte, and the manifest holds the
SHA-256 of every file and what the directory answers (round, model, key set, bundle): so a
signed manifest vouches for the whole directory. It is kept beside it as ``manifest.sig``.

Key files: the private key as unencrypted PKCS#8 PEM (mode 0600), the public key as 64 hex
characters (the raw 32-byte Ed25519 key), which is what a participant gives the fund.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fhe_toolkit.errors import IdentityError
from fhe_toolkit.protocol.files import make_private_dirs, read_regular, write_atomic
from fhe_toolkit.protocol.manifest import MANIFEST, MAX_MANIFEST_BYTES, SIGNATURE

PUBLIC_SUFFIX = ".pub"
MAX_PUBLIC_KEY_FILE = 4096
"""A public key file holds 64 hex characters; a PEM private key given by mistake is < 1 KB."""
MAX_PRIVATE_KEY_FILE = 16_384
MAX_SIGNATURE_FILE = 1024
"""An Ed25519 signature is 64 bytes."""


def create_identity(path: str | Path) -> bytes:
    """Write a new private key to ``path`` (0600; folders it makes, 0700) and its public key to
    ``path.pub``; return the public key. Refuses to overwrite an existing key."""
    path = Path(path)
    refuse_existing_identity(path)
    pem, public = new_identity()
    make_private_dirs(path.parent)
    write_atomic(path, pem, mode=0o600)
    write_public_key(path, public)
    return public


def refuse_existing_identity(path: Path) -> None:
    if path.exists() or path.is_symlink():
        raise IdentityError(f"{path} exists already; an identity is never overwritten.")


def new_identity() -> tuple[bytes, bytes]:
    """A new Ed25519 key: its private key as unencrypted PKCS#8 PEM, and its raw public key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    return pem, public_bytes(key)


def write_public_key(private_key: Path, public: bytes) -> None:
    """The public key beside its private key, as 64 hex characters (``.pub``)."""
    write_atomic(public_key_path(private_key), (public.hex() + "\n").encode())


def public_key_path(private_key: str | Path) -> Path:
    path = Path(private_key)
    return path.with_name(path.name + PUBLIC_SUFFIX)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise IdentityError(
            f"{path} does not exist; create an identity with `fhe-toolkit identity new {path}`."
        )
    data = read_regular(path, MAX_PRIVATE_KEY_FILE, "a private key file", IdentityError)
    key = private_key_from_pem(data, path)
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise IdentityError(f"{path} is readable by others; make it private: chmod 600 {path}")
    return key


def private_key_from_pem(data: bytes, path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``data``, PEM read from ``path`` (which names it in errors)."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{path} is not an unencrypted PEM private key ({exc}).") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} holds a {type(key).__name__}, not an Ed25519 key.")
    return key


def load_public_key(path_or_hex: str | Path) -> bytes:
    """A public key from a ``.pub`` file or its 64 hex characters."""
    text = str(path_or_hex)
    if "PRIVATE KEY" in text or "\n" in text:
        # Key material pasted where a file name goes: never echo it into a message or a log.
        raise IdentityError(
            "that is key text, not a public key file or 64 hex characters; give the path of "
            "the .pub file (and never pass a private key around)."
        )
    if not _is_hex_key(text):
        path = Path(path_or_hex)
        if len(path.name) > 255 or (not path.exists() and not path.is_symlink()):
            raise IdentityError(
                f"{str(path)[:80]!r} is neither 64 hex characters nor an existing file: give the "
                "participant's .pub file or the 64 hex characters in it."
            )
        data = read_regular(path, MAX_PUBLIC_KEY_FILE, "a public key file", IdentityError)
        try:
            text = data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise IdentityError(f"{path} is not a public key file (64 hex characters).") from None
        if "PRIVATE KEY" in text:
            raise IdentityError(
                f"{path} is a private key: give the public key, {public_key_path(path)}, and keep "
                f"{path} to yourself."
            )
        if not _is_hex_key(text):
            raise IdentityError(f"{path} does not hold a public key (64 hex characters).")
    return bytes.fromhex(text)


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_directory(directory: str | Path, key: Ed25519PrivateKey) -> None:
    """Sign ``directory/manifest.json``; the signature goes to ``directory/manifest.sig``."""
    directory = Path(directory)
    write_atomic(directory / SIGNATURE, key.sign((directory / MANIFEST).read_bytes()))


def verify_directory(directory: str | Path, public_key: bytes, signer: str) -> None:
    """Check that ``signer`` (holder of ``public_key``) signed ``directory``'s manifest."""
    directory = Path(directory)
    signature_path = directory / SIGNATURE
    if not signature_path.exists() and not signature_path.is_symlink():
        raise IdentityError(f"{directory} is not signed (no {SIGNATURE}); {signer} must sign it.")
    signature = read_regular(signature_path, MAX_SIGNATURE_FILE, "a signature", IdentityError)
    manifest = read_regular(directory / MANIFEST, MAX_MANIFEST_BYTES, "a manifest", IdentityError)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, manifest)
    except InvalidSignature:
        raise IdentityError(
            f"{directory}'s signature is not {signer}'s: it was signed by someone else, or the "
            "manifest changed after signing."
        ) from None


def signed_by(directory: str | Path, public_key: bytes) -> bool:
    """Whether the holder of ``public_key`` signed ``directory``'s manifest."""
    try:
        verify_directory(directory, public_key, "")
    except IdentityError:
        return False
    return True


def _is_hex_key(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)
