"""The key store's secrets encrypted at rest: AES-256-GCM under a key the operator keeps in a file.

The key file holds 64 hex characters (32 random bytes), mode 0600, made by
:func:`new_key_file`. A sealed file is :data:`MAGIC`, its chunk size (4 bytes), a random
8-byte prefix, then the plaintext in chunks (:data:`CHUNK` bytes when sealed), each its own
AES-GCM message whose nonce is the prefix and the chunk's number, and whose associated data
binds it to the file's place in the store, its number and whether it is the last: a chunk
moved, dropped, reordered or altered, or a file moved to another key set's place, does not
decrypt. The magic tells a sealed file from a plaintext one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fhe_toolkit.errors import KeyStoreError
from fhe_toolkit.protocol.files import make_private_dirs, read_regular, write_atomic

MAGIC = b"FHETK-AES-GCM-1\n"
CHUNK = 16 * 2**20
"""Plaintext bytes per AES-GCM message (far below its limits; a key set is tens of MB)."""
PREFIX_BYTES = 8
TAG_BYTES = 16
MAX_KEY_FILE = 1024


class AtRest:
    """Seals and opens the secret files of one key store with its AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, data: bytes, place: str) -> bytes:
        """``data`` encrypted for the file at ``place`` (its path inside the store)."""
        prefix, chunk_size = secrets.token_bytes(PREFIX_BYTES), CHUNK
        count = max(1, -(-len(data) // chunk_size))
        parts = [MAGIC, chunk_size.to_bytes(4, "big"), prefix]
        for number in range(count):
            chunk = data[number * chunk_size : (number + 1) * chunk_size]
            nonce, bound = _nonce_and_binding(prefix, place, number, number == count - 1)
            parts.append(self._aead.encrypt(nonce, chunk, bound))
        return b"".join(parts)

    def open(self, sealed: bytes, place: str) -> bytes:
        """The plaintext of a file sealed for ``place``; :class:`KeyStoreError` if it was not
        sealed there with this key, or was altered."""
        if not is_sealed(sealed):
            raise KeyStoreError(f"{place} is not encrypted, though the key store is.")
        start = len(MAGIC) + 4 + PREFIX_BYTES
        chunk_size = int.from_bytes(sealed[len(MAGIC) : len(MAGIC) + 4], "big")
        prefix, body = sealed[len(MAGIC) + 4 : start], sealed[start:]
        size = chunk_size + TAG_BYTES
        count = max(1, -(-len(body) // size))
        plain = []
        try:
            for number in range(count):
                nonce, bound = _nonce_and_binding(prefix, place, number, number == count - 1)
                plain.append(
                    self._aead.decrypt(nonce, body[number * size : (number + 1) * size], bound)
                )
        except InvalidTag:
            raise KeyStoreError(
                f"{place} does not decrypt with the key store's key: it was altered, cut short, "
                "or moved from another place in the store."
            ) from None
        return b"".join(plain)


def is_sealed(data: bytes) -> bool:
    return data.startswith(MAGIC)


def _nonce_and_binding(prefix: bytes, place: str, number: int, last: bool) -> tuple[bytes, bytes]:
    nonce = prefix + number.to_bytes(4, "big")
    return nonce, f"{place}\0{number}\0{int(last)}".encode()


def new_key_file(path: str | Path) -> None:
    """Write a fresh random key to ``path`` (mode 0600, in folders made 0700); never overwrite."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise KeyStoreError(f"{path} exists already; a key file is never overwritten.")
    make_private_dirs(path.parent)
    write_atomic(path, (secrets.token_bytes(32).hex() + "\n").encode(), mode=0o600)


def load_key_file(path: str | Path, store: Path) -> bytes:
    """The 32-byte key in ``path`` (64 hex characters), refused by name if it is missing, not a
    key, or readable by others."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise KeyStoreError(
            f"the key store {store} is encrypted, and its key file {path} does not exist. Put the "
            "key file back, or record where it is now: fhe-toolkit fund config --keystore-key FILE"
        )
    data = read_regular(path, MAX_KEY_FILE, "the key store's key file", KeyStoreError)
    text = data.decode("ascii", errors="replace").strip()
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise KeyStoreError(
            f"{path} is not a key store key file (64 hex characters, as `fhe-toolkit fund config "
            "--keystore-key NEW_FILE` writes)."
        )
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise KeyStoreError(f"{path} is readable by others; make it private: chmod 600 {path}")
    return bytes.fromhex(text)
