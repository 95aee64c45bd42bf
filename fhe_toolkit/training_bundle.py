"""Training bundles (fund → participant) and training results (participant → fund) on disk.

A training bundle directory::

    batches.parquet        batch (the iteration, int), x and y (encrypted features and labels)
    initial_weights.bin    the encrypted starting weights
    initial_bias.bin       the encrypted starting bias
    evaluation_keys.bin    public evaluation keys of this job's key set
    training_spec.json     the registered training spec the bundle was encrypted for
    manifest.json          job, name, key-set id, spec hash, counts, SHA-256 of every file

A training result directory::

    weights.bin, bias.bin  the encrypted weights and bias after the last iteration
    manifest.json          the same binding, plus the SHA-256 of the bundle's manifest
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fhe_toolkit.bundle import EVALUATION_KEYS, read_batches
from fhe_toolkit.manifest import (
    Manifest,
    ManifestError,
    read_manifest,
    write_atomic,
    write_manifest,
)
from fhe_toolkit.modelspec import SpecError, read_spec
from fhe_toolkit.training_spec import TrainingSpec

BATCHES = "batches.parquet"
INITIAL_WEIGHTS = "initial_weights.bin"
INITIAL_BIAS = "initial_bias.bin"
TRAINING_SPEC = "training_spec.json"
WEIGHTS = "weights.bin"
BIAS = "bias.bin"

BATCHES_SCHEMA = pa.schema(
    [("batch", pa.int32()), ("x", pa.large_binary()), ("y", pa.large_binary())]
)


@dataclass(frozen=True)
class TrainingBundle:
    directory: Path
    manifest: Manifest
    sha256: str
    spec: TrainingSpec

    def batches(self) -> pd.DataFrame:
        return read_batches(self.directory / BATCHES, BATCHES_SCHEMA, self.manifest.n_batches)

    def initial_parameters(self) -> tuple[bytes, bytes]:
        return (self.directory / INITIAL_WEIGHTS).read_bytes(), (
            self.directory / INITIAL_BIAS
        ).read_bytes()

    @property
    def evaluation_keys_path(self) -> Path:
        return self.directory / EVALUATION_KEYS


@dataclass(frozen=True)
class TrainingResult:
    directory: Path
    manifest: Manifest
    sha256: str

    def parameters(self) -> tuple[bytes, bytes]:
        return (self.directory / WEIGHTS).read_bytes(), (self.directory / BIAS).read_bytes()


def write_training_bundle(
    directory: Path,
    *,
    job_id: str,
    spec: TrainingSpec,
    key_set_id: str,
    evaluation_keys: bytes,
    batches: Sequence[tuple[bytes, bytes]],
    initial: tuple[bytes, bytes],
    versions: dict[str, str],
) -> str:
    """Write a training bundle directory (which must not exist yet); return its manifest's
    SHA-256."""
    directory.mkdir(parents=True)
    table = pa.table(
        {
            "batch": pa.array(range(len(batches)), pa.int32()),
            "x": pa.array([x for x, _ in batches], pa.large_binary()),
            "y": pa.array([y for _, y in batches], pa.large_binary()),
        },
        schema=BATCHES_SCHEMA,
    )
    pq.write_table(table, directory / BATCHES)
    write_atomic(directory / INITIAL_WEIGHTS, initial[0])
    write_atomic(directory / INITIAL_BIAS, initial[1])
    write_atomic(directory / EVALUATION_KEYS, evaluation_keys)
    write_atomic(directory / TRAINING_SPEC, spec.to_json().encode())
    return write_manifest(
        directory,
        [BATCHES, INITIAL_WEIGHTS, INITIAL_BIAS, EVALUATION_KEYS, TRAINING_SPEC],
        kind="training-bundle",
        round_id=job_id,
        model=spec.name,
        key_set_id=key_set_id,
        spec_sha256=spec.sha256(),
        n_rows=len(batches) * spec.batch_size,
        n_batches=len(batches),
        batch_size=spec.batch_size,
        versions=versions,
    )


def open_training_bundle(directory: str | Path) -> TrainingBundle:
    """Check a training bundle directory (manifest, hashes, spec) and open it."""
    directory = Path(directory)
    manifest, digest = read_manifest(directory, "training-bundle")
    listed = (BATCHES, INITIAL_WEIGHTS, INITIAL_BIAS, EVALUATION_KEYS, TRAINING_SPEC)
    absent = [name for name in listed if name not in manifest.files]
    if absent:
        raise ManifestError(f"{directory}'s manifest does not list {absent}.")
    try:
        spec = read_spec(directory / TRAINING_SPEC, TrainingSpec)
    except SpecError as exc:
        raise ManifestError(f"the bundle's training spec is unusable: {exc}") from None
    if spec.sha256() != manifest.spec_sha256 or spec.name != manifest.model:
        raise ManifestError(f"{directory}: the training spec does not match the manifest.")
    return TrainingBundle(directory, manifest, digest, spec)


def write_training_result(
    directory: Path,
    bundle: TrainingBundle,
    parameters: tuple[bytes, bytes],
    versions: dict[str, str],
) -> str:
    """Write the encrypted trained parameters for ``bundle``; return the manifest's SHA-256."""
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / WEIGHTS, parameters[0])
    write_atomic(directory / BIAS, parameters[1])
    fields = bundle.manifest.model_dump(
        include={
            "round_id",
            "model",
            "key_set_id",
            "spec_sha256",
            "n_rows",
            "n_batches",
            "batch_size",
        }
    )
    return write_manifest(
        directory,
        [WEIGHTS, BIAS],
        kind="training-result",
        bundle_sha256=bundle.sha256,
        versions=versions,
        **fields,
    )


def open_training_result(directory: str | Path) -> TrainingResult:
    manifest, digest = read_manifest(directory, "training-result")
    absent = [name for name in (WEIGHTS, BIAS) if name not in manifest.files]
    if absent:
        raise ManifestError(f"{directory}'s manifest does not list {absent}.")
    return TrainingResult(Path(directory), manifest, digest)
