"""What crosses the wire between the fund's service and a participant's client.

Both sides import this module; it imports neither role (only :mod:`fhe_toolkit.protocol`).

**Signed requests.** Every request a participant makes is signed with its registered Ed25519
key over one canonical text (:func:`canonical_request`)::

    fhe-toolkit-request/1
    METHOD
    /path?query              (as sent, percent-encoded)
    SHA-256 of the body      (hex; of no bytes for a GET)
    timestamp                (Unix seconds)
    nonce                    (32 hex characters, random, never reused)
    participant's key        (64 hex characters)
    fund's key               (64 hex characters: a request is for one fund only)

and carries the signature and the fields in ``X-FHE-*`` headers. The service refuses a
request whose timestamp is further than its clock skew allowance from its own clock, whose
nonce it has seen (it keeps nonces until their timestamp is too old anyway), whose key is not a
registered participant's, or whose signature does not verify; a body is refused if its hash is
not the signed one. No password is involved, and a request captured on the way cannot be sent
again, nor to another fund, nor with another body.

**Directories.** A bundle travels file by file: the client fetches the signed
``manifest.json`` and ``manifest.sig`` first, checks the fund's signature, then fetches each file
the manifest lists (with HTTP ``Range`` to resume), and checks its size and SHA-256 against the
manifest. A submission travels as one uncompressed tar archive (:func:`pack_directory`) of
regular files with plain names; :func:`unpack_archive` refuses anything else (links, devices,
directories, absolute or ``..`` paths, repeated names, too many members, more bytes than
allowed) before extracting anything.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fhe_toolkit.errors import ArchiveError, ServiceError
from fhe_toolkit.protocol.manifest import FILE_PATTERN, MANIFEST
from fhe_toolkit.protocol.signing import SIGNATURE, public_bytes

API = "/v1"
SCHEME = "fhe-toolkit-request/1"
HEADER_KEY = "X-FHE-Key"
HEADER_TIMESTAMP = "X-FHE-Timestamp"
HEADER_NONCE = "X-FHE-Nonce"
HEADER_CONTENT_SHA256 = "X-FHE-Content-SHA256"
HEADER_SIGNATURE = "X-FHE-Signature"
SIGNED_HEADERS = (
    HEADER_KEY,
    HEADER_TIMESTAMP,
    HEADER_NONCE,
    HEADER_CONTENT_SHA256,
    HEADER_SIGNATURE,
)
HEADER_SUBMISSION = "X-FHE-Submission-SHA256"
"""On an upload: the submission's manifest hash, so that the same submission sent again (a
retry whose first answer was lost) is answered with its upload before its body is read."""
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ARCHIVE_TYPE = "application/x-tar"
MAX_ARCHIVE_MEMBERS = 16
"""A submission is a manifest, its signature and one table; a few more files are tolerated."""
CHUNK = 1 << 20

_HEX64 = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"[0-9a-f]{32}")
_SIGNATURE = re.compile(r"[0-9a-f]{128}")


# --- signed requests ---------------------------------------------------------------------------
def canonical_request(
    method: str,
    target: str,
    body_sha256: str,
    timestamp: int,
    nonce: str,
    key_hex: str,
    audience_hex: str,
) -> bytes:
    """The text a request's signature covers (see the module's docstring)."""
    fields = [SCHEME, method.upper(), target, body_sha256, str(timestamp), nonce, key_hex]
    return "\n".join([*fields, audience_hex]).encode()


def sign_request(
    key: Ed25519PrivateKey,
    method: str,
    target: str,
    body_sha256: str,
    audience: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The ``X-FHE-*`` headers of a request signed by ``key`` for the fund whose public key is
    ``audience``. ``target``: the path and query as sent."""
    key_hex = public_bytes(key).hex()
    when = int(time.time()) if timestamp is None else timestamp
    once = secrets.token_hex(16) if nonce is None else nonce
    text = canonical_request(method, target, body_sha256, when, once, key_hex, audience.hex())
    return {
        HEADER_KEY: key_hex,
        HEADER_TIMESTAMP: str(when),
        HEADER_NONCE: once,
        HEADER_CONTENT_SHA256: body_sha256,
        HEADER_SIGNATURE: key.sign(text).hex(),
    }


class SignedFields:
    """The signed fields of a request, parsed and checked for form (not yet verified)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        absent = [name for name in SIGNED_HEADERS if not headers.get(name)]
        if absent:
            raise ServiceError(
                f"the request is not signed (no {', '.join(absent)}): sign every request with "
                "your registered key (the participant client does).",
                401,
            )
        self.key_hex = headers[HEADER_KEY].lower()
        self.nonce = headers[HEADER_NONCE].lower()
        self.body_sha256 = headers[HEADER_CONTENT_SHA256].lower()
        self.signature_hex = headers[HEADER_SIGNATURE].lower()
        malformed = [
            name
            for name, value, pattern in (
                (HEADER_KEY, self.key_hex, _HEX64),
                (HEADER_NONCE, self.nonce, _NONCE),
                (HEADER_CONTENT_SHA256, self.body_sha256, _HEX64),
                (HEADER_SIGNATURE, self.signature_hex, _SIGNATURE),
            )
            if not pattern.fullmatch(value)
        ]
        timestamp = headers[HEADER_TIMESTAMP]
        if not timestamp.isdigit() or len(timestamp) > 12:
            malformed.append(HEADER_TIMESTAMP)
        if malformed:
            raise ServiceError(f"malformed signature headers: {', '.join(malformed)}.", 401)
        self.timestamp = int(timestamp)

    def verify(self, method: str, target: str, audience: bytes) -> bool:
        """Whether the signature is the key's, over this request to the fund ``audience``."""
        text = canonical_request(
            method, target, self.body_sha256, self.timestamp, self.nonce, self.key_hex,
            audience.hex(),
        )  # fmt: skip
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.key_hex)).verify(
                bytes.fromhex(self.signature_hex), text
            )
        except (InvalidSignature, ValueError):
            return False
        return True


# --- submission archives -----------------------------------------------------------------------
def is_plain_name(name: str) -> bool:
    """A file name that stays inside its directory: no separator, no ``..``, not hidden."""
    return bool(re.fullmatch(FILE_PATTERN, name)) and ".." not in name


def pack_directory(directory: str | Path, out: BinaryIO) -> list[str]:
    """Write ``directory``'s files as an uncompressed tar archive to ``out``: regular files
    only, by plain name, sorted, with no owner and no time (the same directory always gives
    the same bytes). Refuses a directory holding anything else. Returns the names."""
    directory = Path(directory)
    names = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue  # a checkpoint or a half-written file of the participant's own
        if path.is_symlink() or not path.is_file():
            raise ArchiveError(
                f"{path} is not a regular file; a submission directory holds only its files."
            )
        if not is_plain_name(path.name):
            raise ArchiveError(f"{path.name!r} is not a plain file name; it cannot be sent.")
        names.append(path.name)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name in names:
            path = directory / name
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with path.open("rb") as handle:
                archive.addfile(info, handle)
    return names


def unpack_archive(archive: str | Path, into: str | Path, *, max_bytes: int) -> list[str]:
    """Extract an uploaded tar archive into ``into`` (an empty directory), after checking every
    member: only regular files with plain names, each once, at most
    :data:`MAX_ARCHIVE_MEMBERS`, at most ``max_bytes`` in all. Anything else is refused, naming
    the member and why, before a single file is written. Returns the names."""
    into = Path(into)
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = _checked_members(tar, max_bytes)
            for member in members:
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - a regular file always has contents
                    raise ArchiveError(f"the archive's {member.name!r} has no contents.")
                descriptor = os.open(
                    into / member.name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                    0o600,
                )
                with source, os.fdopen(descriptor, "wb") as target:
                    while block := source.read(CHUNK):
                        target.write(block)
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"the upload is not an uncompressed tar archive ({exc}).") from None
    return [member.name for member in members]


def _checked_members(tar: tarfile.TarFile, max_bytes: int) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    seen: set[str] = set()
    total = 0
    while (member := tar.next()) is not None:
        if len(members) == MAX_ARCHIVE_MEMBERS:
            raise ArchiveError(
                f"the archive holds more than {MAX_ARCHIVE_MEMBERS} files; a submission holds "
                f"{MANIFEST}, {SIGNATURE} and its table."
            )
        name = member.name
        why = _refusal(member)
        if why is not None:
            raise ArchiveError(f"the archive's member {name[:200]!r} is {why}; it is refused.")
        if name in seen:
            raise ArchiveError(f"the archive holds {name!r} twice; it is refused.")
        total += member.size
        if total > max_bytes:
            raise ArchiveError(f"the archive's files add up to more than {max_bytes:,} bytes.")
        seen.add(name)
        members.append(member)
    if MANIFEST not in seen:
        raise ArchiveError(f"the archive holds no {MANIFEST}: it is not a submission.")
    return members


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why a member cannot be extracted, or ``None``."""
    if member.issym():
        return f"a symbolic link (to {member.linkname[:200]!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname[:200]!r})"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        kinds = {tarfile.DIRTYPE: "a directory", tarfile.FIFOTYPE: "a FIFO"}
        device = member.ischr() or member.isblk()
        return "a device" if device else kinds.get(member.type, "not a regular file")
    name = member.name
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "an absolute path"
    if ".." in name.replace("\\", "/").split("/") or ".." in name:
        return "a path with '..'"
    if "/" in name or "\\" in name:
        return "in a subdirectory (a submission's files are at its top)"
    if not is_plain_name(name):
        return "not a plain file name"
    return None


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
