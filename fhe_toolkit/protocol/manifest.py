"""Manifests: what a bundle or submission directory holds, bound to its round, model and keys.

A manifest lists every file with its size and SHA-256. Reading one checks all of them, refuses
file names that could point outside the directory, and refuses files over the size limit, so a
truncated, swapped or tampered file is caught before anything is decoded.

The same manifest serves encrypted training (:mod:`fhe_toolkit.protocol.artifacts`): there
``round_id`` is the training job's id, ``model`` the job's name, and a batch is one iteration.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import time
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fhe_toolkit.errors import ManifestError
from fhe_toolkit.protocol.files import open_regular, read_regular, sha256_file, write_atomic
from fhe_toolkit.protocol.modelspec import NAME_PATTERN

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
"""The signer's Ed25519 signature of ``manifest.json``, beside it."""
MAX_MANIFEST_BYTES = 1_000_000
MAX_FILE_BYTES = 64 * 2**30
ROUND_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
FILE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
HEX64 = r"^[0-9a-f]{64}$"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sha256: str = Field(pattern=HEX64)
    size: int = Field(ge=0, le=MAX_FILE_BYTES)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["fhe-toolkit/manifest"] = "fhe-toolkit/manifest"
    format_version: Literal[1] = 1
    kind: Literal[
        "round-bundle",
        "submission",
        "training-bundle",
        "training-result",
        "packed-round",
        "packed-submission",
    ]
    round_id: str = Field(pattern=ROUND_PATTERN)
    """The round; for training kinds, the training job (see :attr:`job_id`)."""
    model: str | None = Field(default=None, pattern=NAME_PATTERN)
    """The model (the job's name for training kinds); none for a packed round, which serves
    every linear model of the round."""
    key_set_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    spec_sha256: str | None = Field(default=None, pattern=HEX64)
    bundle_sha256: str | None = Field(default=None, pattern=HEX64)
    n_rows: int = Field(ge=1)
    n_batches: int = Field(ge=1)
    batch_size: int = Field(ge=1, le=1024)
    files: dict[str, FileEntry]
    versions: dict[str, str]
    created_at: str

    @model_validator(mode="after")
    def _bound_to_a_model(self) -> Manifest:
        shared = self.kind == "packed-round"
        if shared != (self.model is None) or shared != (self.spec_sha256 is None):
            raise ValueError(
                "a packed round names no model and no spec; every other kind names both"
            )
        return self

    @property
    def job_id(self) -> str:
        """The training job a training bundle or result belongs to (stored as ``round_id``)."""
        return self.round_id

    @field_validator("files")
    @classmethod
    def _safe_names(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        bad = [name for name in files if not _is_plain_name(name)]
        if bad:
            raise ValueError(f"file names must be plain names inside the directory: {bad[:3]}")
        return files


def write_manifest(directory: Path, files: list[str], **fields: object) -> str:
    """Hash ``files`` (names inside ``directory``) and write the manifest; return its SHA-256."""
    unsafe = [name for name in files if not _is_plain_name(name)]
    if unsafe:
        raise ManifestError(f"file names must be plain names inside the directory: {unsafe[:3]}")
    entries = {
        name: {"sha256": sha256_file(directory / name), "size": (directory / name).stat().st_size}
        for name in files
    }
    manifest = Manifest.model_validate(
        {
            **fields,
            "files": entries,
            "created_at": utc_now(),
        }
    )
    text = json.dumps(manifest.model_dump(mode="json"), indent=1, sort_keys=True)
    write_atomic(directory / MANIFEST, text.encode())
    return hashlib.sha256(text.encode()).hexdigest()


def peek_kind(directory: str | Path) -> str:
    """The kind a directory's manifest declares, read before the directory is checked (so the
    right checks can be chosen); anything unreadable is refused as :func:`read_manifest` would."""
    path = Path(directory) / MANIFEST
    _check_directory(Path(directory), "a bundle or submission")
    if not path.exists() and not path.is_symlink():
        raise ManifestError(f"{directory} has no {MANIFEST}: it is not a bundle or submission.")
    raw = read_regular(path, MAX_MANIFEST_BYTES, "a manifest", ManifestError)
    try:
        kind = json.loads(raw).get("kind")
    except (ValueError, AttributeError, RecursionError):
        kind = None
    if not isinstance(kind, str):
        raise ManifestError(f"{path} is not a valid manifest: it declares no kind.")
    return kind


def _check_directory(directory: Path, what: str) -> None:
    """``directory`` is a real folder: a link is refused like a linked file, so what is read is
    what was named."""
    try:
        status = directory.lstat()
    except FileNotFoundError:
        raise ManifestError(f"{directory} does not exist ({what} folder expected).") from None
    if stat.S_ISLNK(status.st_mode):
        raise ManifestError(
            f"{directory} is a symbolic link; give {what} folder itself (the link's target)."
        )
    if not stat.S_ISDIR(status.st_mode):
        raise ManifestError(f"{directory} is not a folder; give {what} folder, as sent.")


def read_manifest(directory: str | Path, kind: str) -> tuple[Manifest, str]:
    """Read and check the manifest of ``directory`` and every file it lists.

    Returns the manifest and the SHA-256 of the manifest file (the directory's identity).
    """
    directory = Path(directory)
    path = directory / MANIFEST
    _check_directory(directory, f"a {kind}")
    if not path.exists() and not path.is_symlink():
        raise ManifestError(f"{directory} has no {MANIFEST}: it is not a {kind} directory.")
    raw = read_regular(path, MAX_MANIFEST_BYTES, "a manifest", ManifestError)
    try:
        manifest = Manifest.model_validate(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not JSON ({exc}).") from None
    except RecursionError:
        raise ManifestError(f"{path} nests too deeply to be a manifest.") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors()[:6]
        )
        raise ManifestError(f"{path} is not a valid manifest: {problems}") from None
    if manifest.kind != kind:
        raise ManifestError(f"{directory} holds a {manifest.kind}, not a {kind}.")
    for name, entry in manifest.files.items():
        file = directory / name
        if not file.exists() and not file.is_symlink():
            raise ManifestError(f"{directory} lacks {name}, which its manifest lists.")
        with open_regular(file, f"the listed file {name}", ManifestError) as (handle, size):
            if size != entry.size:
                raise ManifestError(
                    f"{file} is {size:,} bytes but the manifest says {entry.size:,}: the file is "
                    "truncated or was changed after the manifest was written."
                )
            digest = hashlib.sha256()
            for block in iter(lambda: handle.read(4 * 2**20), b""):
                digest.update(block)
        if digest.hexdigest() != entry.sha256:
            raise ManifestError(
                f"{file} does not match its SHA-256 in the manifest: it was changed or corrupted."
            )
    return manifest, hashlib.sha256(raw).hexdigest()


def utc_now() -> str:
    """The time in UTC, as the toolkit's records and manifests write it: 2026-11-27T09:16:09Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _is_plain_name(name: str) -> bool:
    return bool(re.fullmatch(FILE_PATTERN, name)) and ".." not in name and name != MANIFEST
