"""The directories that cross between fund and participant, as one table of kinds.

=================  =========================  ==========================================
kind               direction                  files (besides ``manifest.json``)
=================  =========================  ==========================================
round-bundle       fund → participant         ``ciphertexts.parquet`` (batch, ids,
                                              ciphertext), ``evaluation_keys.bin``,
                                              ``model_spec.json``
submission         participant → fund         ``predictions.parquet`` (batch, ciphertext)
training-bundle    fund → participant         ``batches.parquet`` (batch, x, y),
                                              ``initial_weights.bin``, ``initial_bias.bin``,
                                              ``evaluation_keys.bin``, ``training_spec.json``
training-result    participant → fund         ``weights.bin``, ``bias.bin``
packed-round       fund → every linear model  ``packed_features.parquet`` (batch, ids,
                                              ciphertext), ``compression_key.bin``,
                                              ``packed_params.json``, ``columns.json``
packed-submission  participant → fund         ``predictions.parquet`` (batch, ciphertext)
=================  =========================  ==========================================

A packed round is one directory per round that every linear model's participant multiplies by
its own weights; its manifest names no model (see :mod:`fhe_toolkit.fhe.packed`).

Every directory has a manifest (:mod:`fhe_toolkit.protocol.manifest`) binding it to its round
(or training job), model, key set and spec; an answer (submission, training result) also
carries the SHA-256 of the manifest it answers. Opening one checks the manifest, every file's
size and hash, and the spec, before anything is decoded.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fhe_toolkit.errors import ManifestError, SpecError
from fhe_toolkit.protocol.files import open_regular, write_atomic
from fhe_toolkit.protocol.manifest import (
    MANIFEST,
    SIGNATURE,
    Manifest,
    peek_kind,
    read_manifest,
    write_manifest,
)
from fhe_toolkit.protocol.modelspec import ModelSpec, PublicSpec, read_spec
from fhe_toolkit.protocol.training_spec import TrainingSpec

CIPHERTEXTS = "ciphertexts.parquet"
EVALUATION_KEYS = "evaluation_keys.bin"
BUNDLE_SPEC = "model_spec.json"
PREDICTIONS = "predictions.parquet"
BATCHES = "batches.parquet"
INITIAL_WEIGHTS = "initial_weights.bin"
INITIAL_BIAS = "initial_bias.bin"
TRAINING_SPEC = "training_spec.json"
WEIGHTS = "weights.bin"
BIAS = "bias.bin"
PACKED_FEATURES = "packed_features.parquet"
COMPRESSION_KEY = "compression_key.bin"
PACKED_PARAMS = "packed_params.json"
COLUMNS = "columns.json"

BINDING = ("round_id", "model", "key_set_id", "spec_sha256", "n_rows", "n_batches", "batch_size")
"""The manifest fields an answer copies from the bundle it answers."""


@dataclass(frozen=True)
class Kind:
    """One kind of directory: its manifest kind, the files it must list, its batch table (one
    row per batch, in order) and its spec file, if any."""

    name: str
    files: tuple[str, ...]
    table: tuple[str, pa.Schema] | None = None
    spec: tuple[str, type[PublicSpec]] | None = None


ENCRYPTED_ROWS = pa.schema(
    [("batch", pa.int32()), ("ids", pa.list_(pa.string())), ("ciphertext", pa.large_binary())]
)
"""A table of encrypted live rows: each batch's ids and ciphertext."""
OUTPUTS = pa.schema([("batch", pa.int32()), ("ciphertext", pa.large_binary())])
"""A table of encrypted outputs, one ciphertext per batch of the bundle answered."""

ROUND_BUNDLE = Kind(
    "round-bundle",
    (CIPHERTEXTS, EVALUATION_KEYS, BUNDLE_SPEC),
    table=(CIPHERTEXTS, ENCRYPTED_ROWS),
    spec=(BUNDLE_SPEC, ModelSpec),
)
SUBMISSION = Kind("submission", (PREDICTIONS,), table=(PREDICTIONS, OUTPUTS))
TRAINING_BUNDLE = Kind(
    "training-bundle",
    (BATCHES, INITIAL_WEIGHTS, INITIAL_BIAS, EVALUATION_KEYS, TRAINING_SPEC),
    table=(
        BATCHES,
        pa.schema([("batch", pa.int32()), ("x", pa.large_binary()), ("y", pa.large_binary())]),
    ),
    spec=(TRAINING_SPEC, TrainingSpec),
)
TRAINING_RESULT = Kind("training-result", (WEIGHTS, BIAS))
PACKED_ROUND = Kind(
    "packed-round",
    (PACKED_FEATURES, COMPRESSION_KEY, PACKED_PARAMS, COLUMNS),
    table=(PACKED_FEATURES, ENCRYPTED_ROWS),
)
PACKED_SUBMISSION = Kind("packed-submission", (PREDICTIONS,), table=(PREDICTIONS, OUTPUTS))
ANSWERS = {kind.name: kind for kind in (SUBMISSION, PACKED_SUBMISSION)}
"""What a participant may send back for a round."""


@dataclass(frozen=True)
class Artifact:
    """An opened, checked directory of one :class:`Kind`."""

    kind: Kind
    directory: Path
    manifest: Manifest
    sha256: str
    """SHA-256 of the manifest file: the directory's identity, which an answer is bound to."""
    spec: Any = None
    """The validated spec (a :class:`ModelSpec` or :class:`TrainingSpec`) for kinds with one."""

    @property
    def model(self) -> str:
        """The model this directory belongs to (refused for a packed round, which has none)."""
        if self.manifest.model is None:
            raise ManifestError(f"{self.directory} is a {self.kind.name}: it names no model.")
        return self.manifest.model

    def path(self, name: str) -> Path:
        return self.directory / name

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def batches(self) -> pd.DataFrame:
        """The kind's batch table: one row per batch, checked to hold batches 0..n-1 in order."""
        if self.kind.table is None:
            raise ManifestError(f"a {self.kind.name} has no batch table.")
        name, schema = self.kind.table
        return read_batches(self.path(name), schema, self.manifest.n_batches)


def open_artifact(directory: str | Path, kind: Kind, *, exact: bool = False) -> Artifact:
    """Check a directory of ``kind`` (manifest, listed files, sizes, hashes, spec) and open it.

    ``exact``: the directory must hold nothing but its manifest, its signature and the files
    the manifest lists (what a fund takes from a participant: anything else, a link to the key
    store or a 2 GB file, is refused by name and never read).
    """
    directory = Path(directory)
    manifest, digest = read_manifest(directory, kind.name)
    if exact:
        expected = {MANIFEST, SIGNATURE, *manifest.files}
        extra = sorted(p.name for p in directory.iterdir() if p.name not in expected)
        if extra:
            raise ManifestError(
                f"{directory} holds {extra[:5]}, which its manifest does not list: send the "
                f"directory with only {sorted(expected)}."
            )
    absent = [name for name in kind.files if name not in manifest.files]
    if absent:
        raise ManifestError(f"{directory}'s manifest does not list {absent}.")
    spec = None
    if kind.spec is not None:
        name, spec_type = kind.spec
        try:
            spec = read_spec(directory / name, spec_type)
        except SpecError as exc:
            raise ManifestError(f"the {kind.name}'s {spec_type.KIND} is unusable: {exc}") from None
        if spec.sha256() != manifest.spec_sha256 or spec.name != manifest.model:
            raise ManifestError(f"{directory}: the {spec_type.KIND} does not match the manifest.")
    return Artifact(kind, directory, manifest, digest, spec)


def open_answer(directory: str | Path) -> Artifact:
    """Open what a participant sent back for a round: a submission of either path, by the kind
    its manifest names."""
    kind = peek_kind(directory)
    if kind not in ANSWERS:
        raise ManifestError(
            f"{directory} holds a {kind}; a round takes a submission or a packed-submission."
        )
    return open_artifact(directory, ANSWERS[kind], exact=True)


def write_artifact(
    directory: Path,
    kind: Kind,
    *,
    batches: Mapping[str, Sequence[Any]] | None = None,
    blobs: Mapping[str, bytes] | None = None,
    compress: bool = True,
    **fields: object,
) -> str:
    """Write a directory of ``kind``: its batch table (``batches``: column name → values,
    without the ``batch`` column), its other files (``blobs``), then the manifest with
    ``fields``. Returns the manifest's SHA-256.

    ``compress``: output ciphertexts are large uncompressed LWE vectors, random bytes, so
    compressing them only costs time; input ciphertexts are seeded (mostly headers and seeds)
    and do compress.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if kind.table is not None:
        if batches is None:
            raise ValueError(f"a {kind.name} needs its batch table")
        name, schema = kind.table
        count = len(next(iter(batches.values())))
        table = pa.table({"batch": range(count), **batches}, schema=schema)
        temporary = directory / f".{name}.tmp"
        pq.write_table(table, temporary, compression="snappy" if compress else "none")
        temporary.replace(directory / name)
    for name, data in (blobs or {}).items():
        write_atomic(directory / name, data)
    return write_manifest(directory, list(kind.files), kind=kind.name, **fields)


def copy_artifact(artifact: Artifact, target: Path) -> None:
    """Copy what ``artifact`` consists of (manifest, signature, listed files; nothing else,
    and no link followed) into ``target``, which must not exist."""
    target.mkdir(parents=True)
    names = [MANIFEST, *artifact.manifest.files]
    if (artifact.directory / SIGNATURE).is_file():
        names.append(SIGNATURE)
    for name in names:
        with open_regular(artifact.directory / name, name, ManifestError) as (source, _):
            with (target / name).open("xb") as copy:
                shutil.copyfileobj(source, copy, 4 * 2**20)


def answer_fields(bundle: Artifact) -> dict[str, Any]:
    """The manifest fields of an answer to ``bundle``: its binding, and the bundle's hash."""
    return {
        **bundle.manifest.model_dump(include=set(BINDING)),
        "bundle_sha256": bundle.sha256,
    }


def read_batches(path: Path, schema: pa.Schema, n_batches: int) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(f"{path} is not a readable parquet file: {exc}") from None
    if not table.schema.equals(schema):
        raise ManifestError(f"{path} has columns {table.schema.names}, expected {schema.names}.")
    frame = table.to_pandas()
    batches = frame["batch"].tolist()
    if batches != list(range(n_batches)):
        duplicated = sorted({b for b in batches if batches.count(b) > 1})[:5]
        missing = sorted(set(range(n_batches)) - set(batches))[:5]
        raise ManifestError(
            f"{path} must hold batches 0..{n_batches - 1} once each, in order; "
            f"missing {missing}, repeated {duplicated}."
        )
    return frame
