"""Round bundles (fund → participant) and submissions (participant → fund) on disk.

A round bundle directory::

    ciphertexts.parquet    batch (int), ids (list of live ids), ciphertext (encrypted rows)
    evaluation_keys.bin    public evaluation keys of this (model, round) key set
    model_spec.json        the registered spec the bundle was encrypted for
    manifest.json          round, model, key-set id, spec hash, counts, SHA-256 of every file

A submission directory::

    predictions.parquet    batch (int), ciphertext (encrypted model outputs)
    manifest.json          the same binding, plus the SHA-256 of the bundle's manifest
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fhe_toolkit.manifest import (
    Manifest,
    ManifestError,
    read_manifest,
    write_atomic,
    write_manifest,
)
from fhe_toolkit.modelspec import ModelSpec, SpecError, load_spec

CIPHERTEXTS = "ciphertexts.parquet"
EVALUATION_KEYS = "evaluation_keys.bin"
BUNDLE_SPEC = "model_spec.json"
PREDICTIONS = "predictions.parquet"

BUNDLE_SCHEMA = pa.schema(
    [("batch", pa.int32()), ("ids", pa.list_(pa.string())), ("ciphertext", pa.large_binary())]
)
SUBMISSION_SCHEMA = pa.schema([("batch", pa.int32()), ("ciphertext", pa.large_binary())])


@dataclass(frozen=True)
class Bundle:
    directory: Path
    manifest: Manifest
    sha256: str
    spec: ModelSpec

    def ciphertexts(self) -> pd.DataFrame:
        return read_batches(self.directory / CIPHERTEXTS, BUNDLE_SCHEMA, self.manifest.n_batches)

    @property
    def evaluation_keys_path(self) -> Path:
        return self.directory / EVALUATION_KEYS


@dataclass(frozen=True)
class Submission:
    directory: Path
    manifest: Manifest
    sha256: str

    def ciphertexts(self) -> pd.DataFrame:
        return read_batches(
            self.directory / PREDICTIONS, SUBMISSION_SCHEMA, self.manifest.n_batches
        )


def write_bundle(
    directory: Path,
    *,
    round_id: str,
    spec: ModelSpec,
    key_set_id: str,
    evaluation_keys: bytes,
    ids: Sequence[Sequence[str]],
    ciphertexts: Sequence[bytes],
    versions: dict[str, str],
) -> str:
    """Write a bundle directory (which must not exist yet); return its manifest's SHA-256."""
    directory.mkdir(parents=True)
    table = pa.table(
        {
            "batch": pa.array(range(len(ciphertexts)), pa.int32()),
            "ids": pa.array([list(batch) for batch in ids], pa.list_(pa.string())),
            "ciphertext": pa.array(ciphertexts, pa.large_binary()),
        },
        schema=BUNDLE_SCHEMA,
    )
    pq.write_table(table, directory / CIPHERTEXTS)
    write_atomic(directory / EVALUATION_KEYS, evaluation_keys)
    write_atomic(directory / BUNDLE_SPEC, spec.to_json().encode())
    return write_manifest(
        directory,
        [CIPHERTEXTS, EVALUATION_KEYS, BUNDLE_SPEC],
        kind="round-bundle",
        round_id=round_id,
        model=spec.name,
        key_set_id=key_set_id,
        spec_sha256=spec.sha256(),
        n_rows=sum(len(batch) for batch in ids),
        n_batches=len(ciphertexts),
        batch_size=spec.batch_size,
        versions=versions,
    )


def open_bundle(directory: str | Path) -> Bundle:
    """Check a bundle directory (manifest, hashes, spec) and open it."""
    directory = Path(directory)
    manifest, digest = read_manifest(directory, "round-bundle")
    for name in (CIPHERTEXTS, EVALUATION_KEYS, BUNDLE_SPEC):
        if name not in manifest.files:
            raise ManifestError(f"{directory}'s manifest does not list {name}.")
    try:
        spec = load_spec(directory / BUNDLE_SPEC)
    except SpecError as exc:
        raise ManifestError(f"the bundle's model spec is unusable: {exc}") from None
    if spec.sha256() != manifest.spec_sha256 or spec.name != manifest.model:
        raise ManifestError(f"{directory}: the model spec does not match the manifest.")
    return Bundle(directory, manifest, digest, spec)


def write_submission(
    directory: Path, bundle: Bundle, ciphertexts: Sequence[bytes], versions: dict[str, str]
) -> str:
    """Write the submission for ``bundle`` (outputs in batch order); return its manifest SHA-256."""
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "batch": pa.array(range(len(ciphertexts)), pa.int32()),
            "ciphertext": pa.array(ciphertexts, pa.large_binary()),
        },
        schema=SUBMISSION_SCHEMA,
    )
    temporary = directory / f".{PREDICTIONS}.tmp"
    # Output ciphertexts are large uncompressed LWE vectors, random bytes: compressing them only
    # costs time. (Input ciphertexts are seeded, mostly headers and seeds: those do compress.)
    pq.write_table(table, temporary, compression="none")
    temporary.replace(directory / PREDICTIONS)
    fields = bundle.manifest.model_dump(include={"round_id", "model", "key_set_id", "spec_sha256"})
    return write_manifest(
        directory,
        [PREDICTIONS],
        kind="submission",
        bundle_sha256=bundle.sha256,
        n_rows=bundle.manifest.n_rows,
        n_batches=bundle.manifest.n_batches,
        batch_size=bundle.manifest.batch_size,
        versions=versions,
        **fields,
    )


def open_submission(directory: str | Path) -> Submission:
    manifest, digest = read_manifest(directory, "submission")
    if PREDICTIONS not in manifest.files:
        raise ManifestError(f"{directory}'s manifest does not list {PREDICTIONS}.")
    return Submission(Path(directory), manifest, digest)


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
