"""Rounds: encrypt the live rows for each registered model and publish the signed bundles."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fhe_toolkit.data import load_tournament
from fhe_toolkit.data.schema import ERA, FEATURE_VALUES
from fhe_toolkit.errors import FundError, SpecError
from fhe_toolkit.fhe.codecs import SpecCodec
from fhe_toolkit.fhe.engine import run_rows
from fhe_toolkit.fhe.keystore import TRAINING_KEYS
from fhe_toolkit.fhe.packed import (
    CHUNK_ROWS,
    PACKED_KEYS,
    PADDING_PREFIX,
    create_round_key,
    encrypt_features,
    padded,
    round_params,
)
from fhe_toolkit.fhe.tasks import EncryptedModel, KeygenEncryptTask, ModelRows
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.fund.base import (
    MAX_PACKED_PER_PARTICIPANT,
    PACKED_DIR,
    PACKED_LIVE,
    FundBase,
    report_progress,
)
from fhe_toolkit.protocol.artifacts import (
    BUNDLE_SPEC,
    COLUMNS,
    COMPRESSION_KEY,
    EVALUATION_KEYS,
    PACKED_PARAMS,
    PACKED_ROUND,
    ROUND_BUNDLE,
    write_artifact,
)
from fhe_toolkit.protocol.manifest import ROUND_PATTERN
from fhe_toolkit.protocol.modelspec import LinearSpec, ModelSpec
from fhe_toolkit.protocol.signing import sign_directory
from fhe_toolkit.registry import NewBundle

CIRCUIT_MODELS = "circuit models"
"""What ``open_round`` reports the circuit models' progress as (the packed dataset: "packed")."""


@dataclass(frozen=True)
class OpenedRound(Mapping[str, Path]):
    """Each model's bundle directory (a packed model's is the round's shared packed dataset),
    and the models left out of the round with the reason."""

    bundles: dict[str, Path]
    left_out: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, model: str) -> Path:
        return self.bundles[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self.bundles)

    def __len__(self) -> int:
        return len(self.bundles)


class Rounds(FundBase):
    def open_round(
        self,
        round_id: str,
        live: pd.DataFrame | str | Path,
        *,
        models: Sequence[str] | None = None,
        deadline: datetime | None = None,
        max_packed_per_participant: int = MAX_PACKED_PER_PARTICIPANT,
        workers: int | None = None,
        scheduler: str | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> OpenedRound:
        """Encrypt the live rows for each registered model and publish the bundles, signed by
        the fund.

        Circuit models (trees, networks, linear models exported as circuits) get fresh keys
        each and a bundle of their own: one task per model (key generation and encryption of
        its rows) on the engine's worker processes, ``workers`` of them on this machine, or the
        workers of the Dask scheduler at ``scheduler`` (``tcp://`` only on this host: the
        secret keys come back to the key store over it; ``tls://`` elsewhere). Linear models
        share the round's packed dataset: the live features encrypted once, in this process,
        under a fresh round key (at most ``max_packed_per_participant`` packed models per
        participant: each one more decryption under the shared key; the rest are left out).
        A model whose keys or encryption fail, or crash their worker, or whose features (or
        declared neutralization features) the live data lacks, is left out, with the reason,
        and every other model's bundle is published. If the round cannot open at all,
        nothing of it is left behind but the unpublished keys, which the next attempt replaces.

        ``deadline``: submissions after it are refused (none: until the round is closed); it
        must be in the future. ``on_progress(what, rows_done, rows)`` reports encryption
        progress: ``what`` is ``"circuit models"`` (the rows of all of them; a model's count
        as its task finishes) or ``"packed"`` (the shared dataset).
        """
        if not re.fullmatch(ROUND_PATTERN, round_id) or round_id == TRAINING_KEYS:
            raise FundError(
                f"round id {round_id!r} must be letters, digits, '_', '-' or '.' (and not "
                f"{TRAINING_KEYS!r}, where the key store keeps training jobs' keys)."
            )
        directory = self.round_dir(round_id)
        staging = directory.with_name(f".{round_id}.opening")
        if self.db.has_round(round_id):
            if not directory.exists() and staging.is_dir():
                return self._publish(round_id, staging)  # recorded, then cut off: finish
            raise FundError(f"round {round_id!r} is open already ({directory}).")
        if directory.exists():
            raise FundError(f"{directory} exists but the database has no round {round_id!r}.")
        if deadline is not None and deadline <= datetime.now(UTC):
            raise FundError(
                f"the deadline {deadline:%Y-%m-%d %H:%M} UTC has passed: participants would "
                "run the whole round for nothing. Give a deadline in the future."
            )
        if max_packed_per_participant < 1:
            raise FundError(
                f"max_packed_per_participant must be at least 1, not {max_packed_per_participant}."
            )
        frame = live if isinstance(live, pd.DataFrame) else load_tournament(live)
        if frame.empty:
            raise FundError("the live data has no rows: there is nothing to encrypt.")
        chosen = list(models) if models is not None else list(self.models().index)
        if not chosen:
            raise FundError("no model is registered; register participants' specs first.")
        specs: dict[str, ModelSpec | LinearSpec] = {}
        left_out: dict[str, str] = {}
        for name in chosen:
            try:
                specs[name] = self.spec(name)
            except SpecError as exc:  # recorded by an earlier version, before a stricter check
                left_out[name] = f"its registered spec no longer passes the fund's checks ({exc})"
        for spec in specs.values():
            absent = [f for f in spec.features if f not in frame.columns]
            if absent:
                left_out[spec.name] = f"the live data lacks its features {absent[:5]}"
            elif spec.neutralization is not None:
                try:
                    spec.neutralization.neutralizers(spec.features, list(frame.columns))
                except SpecError as exc:
                    left_out[spec.name] = f"its declared neutralization cannot be applied: {exc}"
        linear = [s for s in specs.values() if isinstance(s, LinearSpec)]
        left_out |= self._over_the_cap(linear, max_packed_per_participant)
        signing_key = self.signing_key()
        circuits = [
            s for s in specs.values() if s.name not in left_out and not isinstance(s, LinearSpec)
        ]
        packed = [s for s in specs.values() if isinstance(s, LinearSpec) and s.name not in left_out]
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bundles").mkdir(parents=True)
        try:
            frame[[ERA]].to_parquet(staging / "live_ids.parquet")
            bundles = self._encrypt_circuits(
                round_id, circuits, frame, staging, signing_key, left_out,
                partial(report_progress, on_progress, CIRCUIT_MODELS),
                workers=workers, scheduler=scheduler,
            )  # fmt: skip
            if packed:
                try:
                    bundles.extend(
                        self._encrypt_packed(
                            round_id, packed, frame, staging,
                            partial(report_progress, on_progress, "packed"),
                        )
                    )  # fmt: skip
                except Exception as exc:
                    left_out |= {s.name: f"the packed encryption failed: {exc}" for s in packed}
                else:
                    sign_directory(staging / PACKED_DIR, signing_key)
            if not bundles:
                reasons = "; ".join(f"{m}: {why}" for m, why in left_out.items())
                raise FundError(f"no model could be encrypted for round {round_id!r} ({reasons}).")
        except BaseException:  # Ctrl-C or an engine error too: no half-opened round stays
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.db.create_round(round_id, len(frame), deadline, bundles)
        opened = self._publish(round_id, staging)
        return OpenedRound(opened.bundles, left_out)

    def _encrypt_circuits(
        self,
        round_id: str,
        specs: list[ModelSpec],
        frame: pd.DataFrame,
        staging: Path,
        signing_key: Ed25519PrivateKey,
        left_out: dict[str, str],
        on_progress: Callable[[int, int], None],
        *,
        workers: int | None,
        scheduler: str | None,
    ) -> list[NewBundle]:
        """Each circuit model's own keys (to the key store) and signed bundle (in
        ``staging/bundles/<model>``), made by one engine task per model; a model whose task
        fails, or whose bundle cannot be written, goes to ``left_out`` with the reason."""
        codecs: dict[str, SpecCodec] = {}
        for spec in specs:
            try:
                codecs[spec.name] = SpecCodec(spec)
            except Exception as exc:
                left_out[spec.name] = f"its quantizers cannot be built: {exc}"
        specs = [spec for spec in specs if spec.name in codecs]
        if not specs:
            return []
        made: dict[int, NewBundle] = {}
        rows = len(frame)

        def keep(position: int, encrypted: EncryptedModel) -> None:
            spec = specs[position]
            folder = staging / "bundles" / spec.name
            try:
                made[position] = self._write_bundle(round_id, spec, frame, encrypted, folder)
                sign_directory(folder, signing_key)
            except Exception as exc:
                shutil.rmtree(folder, ignore_errors=True)
                left_out[spec.name] = f"its bundle could not be written: {exc}"

        done = 0

        def count(_position: int) -> None:
            nonlocal done
            done += 1
            on_progress(rows * done, rows * len(specs))

        on_progress(0, rows * len(specs))
        failures = run_rows(
            KeygenEncryptTask(), ModelRowsOf(specs, codecs, frame), range(len(specs)), keep,
            workers=workers, chunk_size=1, on_done=count, scheduler=scheduler,
            # Models are independent: a hostile spec that crashes Concrete's key generation
            # says nothing about the next model's, so no run of crashes stops the round.
            max_consecutive_crashes=len(specs) + 1,
        )  # fmt: skip
        for failure in failures:
            left_out[specs[failure.position].name] = (
                f"its keys or encryption failed: {failure.reason}"
            )
        return [made[position] for position in sorted(made)]

    def _write_bundle(
        self,
        round_id: str,
        spec: ModelSpec,
        frame: pd.DataFrame,
        encrypted: EncryptedModel,
        folder: Path,
    ) -> NewBundle:
        """Store a model's keys in the key store and write its bundle in ``folder``."""
        key_set = self.keys.add(
            round_id, spec.name, spec, encrypted.keyset, encrypted.evaluation_keys,
            replace_unpublished=True,
        )  # fmt: skip
        size = spec.batch_size
        ids = [[str(i) for i in frame.index[s : s + size]] for s in range(0, len(frame), size)]
        bundle_sha = write_artifact(
            folder,
            ROUND_BUNDLE,
            batches={"ids": ids, "ciphertext": encrypted.ciphertexts},
            blobs={EVALUATION_KEYS: key_set.evaluation_keys, BUNDLE_SPEC: spec.to_json().encode()},
            round_id=round_id,
            model=spec.name,
            key_set_id=key_set.key_set_id,
            spec_sha256=spec.sha256(),
            n_rows=len(frame),
            n_batches=len(encrypted.ciphertexts),
            batch_size=size,
            versions=package_versions(),
        )
        return NewBundle(spec.name, key_set.key_set_id, bundle_sha, ids)

    def _encrypt_packed(
        self,
        round_id: str,
        specs: list[LinearSpec],
        frame: pd.DataFrame,
        staging: Path,
        on_progress: Callable[[int, int], None],
    ) -> list[NewBundle]:
        """The round's packed dataset, in ``staging/packed``: the features every packed model
        uses (in the live file's order), encrypted once under a fresh round key, padded with
        made-up rows when the round has too few (:func:`~fhe_toolkit.fhe.packed.padded`).
        The clear values stay in the round's private folder, to verify what is decrypted."""
        used = {f for spec in specs for f in spec.features}
        columns = [c for c in frame.columns if c in used]
        values = frame[columns].to_numpy()
        low, high = FEATURE_VALUES
        if not np.issubdtype(values.dtype, np.integer) or values.min() < low or values.max() > high:
            raise FundError(f"packed features must be integers {low}..{high} (Numerai's bins).")
        live_ids = [str(i) for i in frame.index]
        if any(i.startswith(PADDING_PREFIX) for i in live_ids):
            raise FundError(f"live ids must not start with {PADDING_PREFIX!r} (reserved).")
        values, row_ids = padded(values, live_ids)
        params = round_params(len(columns), specs)
        key_set_id, key, compression_key = create_round_key(self.keys, round_id, params)
        chunks = encrypt_features(key, values, on_progress)
        starts = range(0, len(values), CHUNK_ROWS)
        ids = [row_ids[start : start + CHUNK_ROWS] for start in starts]
        clear = pd.DataFrame(values.astype(np.int8), index=pd.Index(row_ids, name="id"))
        clear.set_axis(columns, axis=1).to_parquet(staging / PACKED_LIVE)
        dataset_sha = write_artifact(
            staging / PACKED_DIR,
            PACKED_ROUND,
            # Row positions, not ids: which rows are made up must not show.
            batches={
                "ids": [
                    [str(i) for i in range(s, s + len(b))] for s, b in zip(starts, ids, strict=True)
                ],
                "ciphertext": chunks,
            },
            blobs={
                COMPRESSION_KEY: compression_key.to_bytes(),
                PACKED_PARAMS: params.to_json().encode(),
                COLUMNS: json.dumps(columns).encode(),
            },
            round_id=round_id,
            key_set_id=key_set_id,
            n_rows=len(values),
            n_batches=len(chunks),
            batch_size=CHUNK_ROWS,
            versions=package_versions(),
        )
        return [NewBundle(spec.name, key_set_id, dataset_sha, ids) for spec in specs]

    def _over_the_cap(self, specs: list[LinearSpec], cap: int) -> dict[str, str]:
        """Packed models beyond ``cap`` for their owner (in the order given), each with the
        reason it is left out."""
        by_owner: dict[str, list[str]] = {}
        for spec in specs:
            by_owner.setdefault(self.db.owner(spec.name), []).append(spec.name)
        return {
            model: f"{owner} has more than {cap} packed models in this round (the cap)"
            for owner, names in by_owner.items()
            for model in names[cap:]
        }

    def _publish(self, round_id: str, staging: Path) -> OpenedRound:
        directory = self.round_dir(round_id)
        staging.rename(directory)
        bundles: dict[str, Path] = {}
        for model in self.round_record(round_id).bundles:
            own = directory / "bundles" / model
            bundles[model] = own if own.is_dir() else directory / PACKED_DIR
            if own.is_dir():
                self.keys.mark_published(round_id, model)
        if (directory / PACKED_DIR).is_dir():
            self.keys.mark_published(round_id, PACKED_KEYS)
        return OpenedRound(bundles)

    def close_round(self, round_id: str) -> None:
        """Stop taking submissions for the round (it is resolved once its targets are known)."""
        self.db.close_round(round_id)


class ModelRowsOf(Sequence[ModelRows]):
    """Each model's quantized live rows, made when the engine sends the model's task (so that
    hundreds of models' rows are never all in memory at once)."""

    def __init__(
        self, specs: list[ModelSpec], codecs: dict[str, SpecCodec], frame: pd.DataFrame
    ) -> None:
        self.specs, self.codecs, self.frame = specs, codecs, frame

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, position: int) -> ModelRows:  # type: ignore[override]
        spec = self.specs[position]
        quantized = self.codecs[spec.name].quantize(self.frame[spec.features].to_numpy(np.float32))
        size = spec.batch_size
        short = -len(quantized) % size  # the last block is padded with copies of its last row
        if short:
            quantized = np.concatenate([quantized, np.repeat(quantized[-1:], short, axis=0)])
        narrow = np.result_type(
            np.min_scalar_type(quantized.min()), np.min_scalar_type(quantized.max())
        )
        blocks = quantized.astype(narrow).reshape(-1, size, quantized.shape[1])
        return ModelRows(spec.name, spec.client_specs_bytes(), blocks)
