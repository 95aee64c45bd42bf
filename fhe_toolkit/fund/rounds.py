"""Rounds: encrypt the live rows for each registered model and publish the signed bundles."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhe_toolkit.data import load_tournament
from fhe_toolkit.data.schema import ERA
from fhe_toolkit.errors import FundError
from fhe_toolkit.fhe.codecs import SpecCodec
from fhe_toolkit.fhe.keystore import TRAINING_KEYS
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.fund.base import FundBase, report_progress
from fhe_toolkit.protocol.artifacts import (
    BUNDLE_SPEC,
    EVALUATION_KEYS,
    ROUND_BUNDLE,
    write_artifact,
)
from fhe_toolkit.protocol.manifest import ROUND_PATTERN
from fhe_toolkit.protocol.modelspec import ModelSpec
from fhe_toolkit.protocol.signing import load_private_key, sign_directory
from fhe_toolkit.registry import NewBundle


class Rounds(FundBase):
    def open_round(
        self,
        round_id: str,
        live: pd.DataFrame | str | Path,
        *,
        models: Sequence[str] | None = None,
        deadline: datetime | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, Path]:
        """Encrypt the live rows for each registered model under fresh keys; write the bundles,
        each signed by the fund.

        ``deadline``: submissions after it are refused (none: until the round is closed).
        ``on_progress(model, rows_done, rows)`` reports encryption progress. Returns each
        model's bundle directory, to be handed to its participant.
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
        frame = live if isinstance(live, pd.DataFrame) else load_tournament(live)
        chosen = list(models) if models is not None else list(self.models().index)
        if not chosen:
            raise FundError("no model is registered; register participants' specs first.")
        specs = {name: self.spec(name) for name in chosen}
        for spec in specs.values():
            absent = [f for f in spec.features if f not in frame.columns]
            if absent:
                raise FundError(
                    f"model {spec.name!r} uses features the live data lacks: {absent[:5]}."
                )
        self.public_key()
        signing_key = load_private_key(self.identity_path)
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bundles").mkdir(parents=True)
        frame[[ERA]].to_parquet(staging / "live_ids.parquet")
        bundles = []
        for name, spec in specs.items():
            key_set = self.keys.create(round_id, name, spec, replace_unpublished=True)
            ids, ciphertexts = _encrypt_rows(
                key_set.client, spec, frame, partial(report_progress, on_progress, name)
            )
            bundle_dir = staging / "bundles" / name
            bundle_sha = write_artifact(
                bundle_dir,
                ROUND_BUNDLE,
                batches={"ids": ids, "ciphertext": ciphertexts},
                blobs={
                    EVALUATION_KEYS: key_set.evaluation_keys,
                    BUNDLE_SPEC: spec.to_json().encode(),
                },
                round_id=round_id,
                model=spec.name,
                key_set_id=key_set.key_set_id,
                spec_sha256=spec.sha256(),
                n_rows=len(frame),
                n_batches=len(ciphertexts),
                batch_size=spec.batch_size,
                versions=package_versions(),
            )
            sign_directory(bundle_dir, signing_key)
            bundles.append(NewBundle(name, key_set.key_set_id, bundle_sha, ids))
        self.db.create_round(round_id, len(frame), deadline, bundles)
        return self._publish(round_id, staging)

    def _publish(self, round_id: str, staging: Path) -> dict[str, Path]:
        directory = self.round_dir(round_id)
        staging.rename(directory)
        names = sorted(p.name for p in (directory / "bundles").iterdir())
        for name in names:
            self.keys.mark_published(round_id, name)
        return {name: directory / "bundles" / name for name in names}

    def close_round(self, round_id: str) -> None:
        """Stop taking submissions for the round (it is resolved once its targets are known)."""
        self.db.close_round(round_id)


def _encrypt_rows(
    client: Any, spec: ModelSpec, frame: pd.DataFrame, on_progress: Callable[[int, int], None]
) -> tuple[list[list[str]], list[bytes]]:
    """Quantize and encrypt live rows, ``batch_size`` rows per ciphertext (last one padded)."""
    codec = SpecCodec(spec)
    quantized = codec.quantize(frame[spec.features].to_numpy(np.float32))
    size = spec.batch_size
    ids: list[list[str]] = []
    ciphertexts: list[bytes] = []
    for start in range(0, len(frame), size):
        block = quantized[start : start + size]
        if len(block) < size:
            block = np.concatenate([block, np.repeat(block[-1:], size - len(block), axis=0)])
        # Concrete reads the array's buffer as C-ordered: a strided view would encrypt garbage.
        ciphertexts.append(client.encrypt(np.ascontiguousarray(block)).serialize())
        ids.append([str(i) for i in frame.index[start : start + size]])
        on_progress(min(start + size, len(frame)), len(frame))
    return ids, ciphertexts
