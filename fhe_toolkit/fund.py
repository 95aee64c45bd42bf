"""The fund's side: register models, open encrypted rounds, take submissions, score and pay.

A fund directory::

    fund/
      registry.json                 registered models: spec hash, stake
      specs/<model>.json            the registered (validated) specs
      rounds/<round>/round.json     what the round holds, per model
      rounds/<round>/live_ids.parquet
      rounds/<round>/bundles/<model>/        published to that model's participant
      rounds/<round>/submissions/<model>/    received, kept as sent
      rounds/<round>/predictions/<model>.parquet   decrypted predictions (private)
      rounds/<round>/results/       per-era scores, scores and payouts (rounded aggregates)

Secret keys live in the key store (``keys/`` by default), never in the fund directory's bundles.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhe_toolkit.bundle import open_submission, write_bundle
from fhe_toolkit.data import load_tournament
from fhe_toolkit.data.schema import ERA, feature_columns
from fhe_toolkit.errors import FheToolkitError
from fhe_toolkit.jobs import DecryptJob
from fhe_toolkit.keystore import SPECS, TRAINING_KEYS, KeyStore
from fhe_toolkit.manifest import ROUND_PATTERN, write_atomic
from fhe_toolkit.modelspec import ModelSpec, PublicSpec, SpecCodec, load_spec
from fhe_toolkit.participant import package_versions
from fhe_toolkit.pool import RowsCrashedError, run_rows
from fhe_toolkit.scoring import by_model, payout, score_eras, stake_weighted_meta_model, summarize

PUBLISHED_DECIMALS = 4
"""Published scores are rounded: exact values would leak more about the decryptions."""


class FundError(FheToolkitError, ValueError):
    """A fund operation refused, with the reason."""


@dataclass(frozen=True)
class RoundResults:
    per_era: pd.DataFrame
    scores: pd.DataFrame
    directory: Path


class Fund:
    def __init__(self, root: str | Path = "fund", key_store: str | Path = "keys") -> None:
        self.root = Path(root)
        self.keys = KeyStore(key_store)

    # --- registry -------------------------------------------------------------------------
    def registry(self) -> dict[str, dict[str, Any]]:
        path = self.root / "registry.json"
        models: dict[str, dict[str, Any]] = (
            json.loads(path.read_text())["models"] if path.is_file() else {}
        )
        return models

    def spec(self, model: str) -> ModelSpec:
        path = self.root / "specs" / f"{model}.json"
        if not path.is_file():
            raise FundError(f"model {model!r} is not registered; see `fhe-toolkit fund register`.")
        return load_spec(path)

    def register(self, spec_path: str | Path, stake: float) -> ModelSpec:
        """Validate a participant's model spec and register it with a stake.

        Refused: anything but a valid plain-JSON spec; a spec compiled with another Concrete
        version than the fund runs; a name taken by a different spec; a negative stake.
        """
        spec = load_spec(spec_path)
        if not (np.isfinite(stake) and stake >= 0):
            raise FundError(f"stake must be a finite number ≥ 0, got {stake}.")
        check_versions(spec)
        models = self.registry()
        known = models.get(spec.name)
        if known is not None and known["spec_sha256"] != spec.sha256():
            raise FundError(
                f"the name {spec.name!r} is registered for another model (spec "
                f"{known['spec_sha256'][:12]}…); register this one under a new name."
            )
        (self.root / "specs").mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / "specs" / f"{spec.name}.json", spec.to_json().encode())
        models[spec.name] = {
            "spec_sha256": spec.sha256(),
            "family": spec.family,
            "target": spec.target,
            "stake": float(stake),
            "registered_at": (known or {}).get("registered_at", _now()),
        }
        self._save_registry(models)
        return spec

    def _save_registry(self, models: dict[str, dict[str, Any]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"models": models}, indent=1, sort_keys=True)
        write_atomic(self.root / "registry.json", text.encode())

    # --- rounds ---------------------------------------------------------------------------
    def round_dir(self, round_id: str) -> Path:
        return self.root / "rounds" / round_id

    def round_info(self, round_id: str) -> dict[str, Any]:
        path = self.round_dir(round_id) / "round.json"
        if not path.is_file():
            raise FundError(f"round {round_id!r} was never opened (no {path}).")
        info: dict[str, Any] = json.loads(path.read_text())
        return info

    def open_round(
        self,
        round_id: str,
        live: pd.DataFrame | str | Path,
        *,
        models: Sequence[str] | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, Path]:
        """Encrypt the live rows for each registered model under fresh keys; write the bundles.

        ``on_progress(model, rows_done, rows)`` reports encryption progress. Returns each
        model's bundle directory, to be handed to its participant.
        """
        if not re.fullmatch(ROUND_PATTERN, round_id) or round_id == TRAINING_KEYS:
            raise FundError(
                f"round id {round_id!r} must be letters, digits, '_', '-' or '.' (and not "
                f"{TRAINING_KEYS!r}, where the key store keeps training jobs' keys)."
            )
        directory = self.round_dir(round_id)
        if directory.exists():
            raise FundError(f"round {round_id!r} is open already ({directory}).")
        frame = live if isinstance(live, pd.DataFrame) else load_tournament(live)
        chosen = list(models) if models is not None else sorted(self.registry())
        if not chosen:
            raise FundError("no model is registered; register participants' specs first.")
        specs = {name: self.spec(name) for name in chosen}
        for spec in specs.values():
            absent = [f for f in spec.features if f not in frame.columns]
            if absent:
                raise FundError(
                    f"model {spec.name!r} uses features the live data lacks: {absent[:5]}."
                )
        staging = directory.with_name(f".{round_id}.opening")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bundles").mkdir(parents=True)
        frame[[ERA]].to_parquet(staging / "live_ids.parquet")
        info: dict[str, Any] = {
            "round_id": round_id,
            "opened_at": _now(),
            "status": "open",
            "n_rows": len(frame),
            "models": {},
        }
        for name, spec in specs.items():
            key_set = self.keys.create(round_id, name, spec, replace_unpublished=True)
            ids, ciphertexts = _encrypt_rows(
                key_set.client, spec, frame, partial(_call, on_progress, name)
            )
            bundle_sha = write_bundle(
                staging / "bundles" / name,
                round_id=round_id,
                spec=spec,
                key_set_id=key_set.key_set_id,
                evaluation_keys=key_set.evaluation_keys,
                ids=ids,
                ciphertexts=ciphertexts,
                versions=package_versions(),
            )
            info["models"][name] = {
                "key_set_id": key_set.key_set_id,
                "spec_sha256": spec.sha256(),
                "bundle_sha256": bundle_sha,
                "batch_ids": ids,
                "status": "awaiting submission",
            }
        write_atomic(staging / "round.json", json.dumps(info, indent=1).encode())
        staging.rename(directory)
        for name in specs:
            self.keys.mark_published(round_id, name)
        return {name: directory / "bundles" / name for name in specs}

    def receive(
        self,
        round_id: str,
        submission_dir: str | Path,
        *,
        workers: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> pd.Series:
        """Check a submission, decrypt it once, retire its keys, and keep the predictions.

        Refused before any decryption (keys kept, the participant can fix and resend): a
        manifest or file that does not check out, another round, model, key set or bundle, a
        model already received, missing or repeated batches. After decryption the keys are
        retired whatever happens. Returns the predictions by id.
        """
        info = self.round_info(round_id)
        submission = open_submission(submission_dir)
        manifest = submission.manifest
        model = manifest.model
        if manifest.round_id != round_id:
            raise FundError(
                f"this submission answers round {manifest.round_id!r}, not {round_id!r}."
            )
        entry = info["models"].get(model)
        if entry is None:
            raise FundError(f"model {model!r} has no bundle in round {round_id!r}.")
        expected = {
            "key_set_id": entry["key_set_id"],
            "spec_sha256": entry["spec_sha256"],
            "bundle_sha256": entry["bundle_sha256"],
            "n_batches": len(entry["batch_ids"]),
        }
        for field, value in expected.items():
            if getattr(manifest, field) != value:
                raise FundError(
                    f"the submission's {field} ({str(getattr(manifest, field))[:16]}) does not "
                    f"match the bundle sent for model {model!r} in round {round_id!r} "
                    f"({str(value)[:16]}): it was made from another bundle or was altered."
                )
        target = self.round_dir(round_id) / "submissions" / model
        if target.exists():
            raise FundError(
                f"a submission for model {model!r} in round {round_id!r} was received already; "
                "each model submits once per round."
            )
        ciphertexts = submission.ciphertexts()["ciphertext"].tolist()
        staging = target.with_name(f".{model}.receiving")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(submission.directory, staging)
        staging.rename(target)

        spec = self.spec(model)
        key_dir = self.keys.directory(round_id, model)
        job = DecryptJob(str(key_dir / SPECS), str(self.keys.keyset_path(round_id, model)))
        decrypted: dict[int, np.ndarray] = {}
        sizes = [len(batch) for batch in entry["batch_ids"]]
        done = 0

        def report(batch: int) -> None:
            nonlocal done
            done += sizes[batch]
            _call(on_progress, done, sum(sizes))

        try:
            failures = run_rows(
                job, ciphertexts, range(len(ciphertexts)), decrypted.__setitem__,
                workers=workers, chunk_size=32, on_done=report,
            )  # fmt: skip
        except RowsCrashedError as exc:
            failures = exc.failures
        finally:
            self.keys.retire(round_id, model, reason="decrypted the submission")
        if failures:
            self._set_status(round_id, model, "refused: outputs could not be decrypted")
            raise FundError(
                f"{len(failures)} batch(es) of {model!r}'s submission could not be decrypted "
                f"(first: batch {failures[0].position}: {failures[0].reason}); the outputs were "
                "not computed by this model's circuit with this round's keys. Its keys are "
                "retired: the model has no score this round."
            )
        codec = SpecCodec(spec)
        values = np.concatenate([codec.decode(decrypted[b])[: sizes[b]] for b in range(len(sizes))])
        ids = [i for batch in entry["batch_ids"] for i in batch]
        predictions = pd.Series(values, index=pd.Index(ids, name="id"), name=model)
        if not np.all(np.isfinite(values)):
            self._set_status(round_id, model, "refused: non-finite predictions")
            raise FundError(f"{model!r}'s decrypted predictions contain NaN or infinity.")
        out = self.round_dir(round_id) / "predictions"
        out.mkdir(exist_ok=True)
        predictions.to_frame().to_parquet(out / f"{model}.parquet")
        status = "received" if predictions.nunique() > 1 else "received: constant predictions"
        self._set_status(round_id, model, status)
        return predictions

    def _set_status(self, round_id: str, model: str, status: str) -> None:
        info = self.round_info(round_id)
        info["models"][model]["status"] = status
        write_atomic(self.round_dir(round_id) / "round.json", json.dumps(info, indent=1).encode())

    def predictions(self, round_id: str) -> pd.DataFrame:
        folder = self.round_dir(round_id) / "predictions"
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        if not files:
            raise FundError(f"no submission of round {round_id!r} was received yet.")
        return pd.concat([pd.read_parquet(f) for f in files], axis=1)

    def score(
        self,
        round_id: str,
        targets: pd.DataFrame | str | Path,
        *,
        live: pd.DataFrame | str | Path,
        benchmark: pd.Series | None = None,
        payout_settings: dict[str, float] | None = None,
    ) -> RoundResults:
        """Score every received model of the round once its targets are known, and pay.

        ``targets``: the live rows' resolved targets (by id). ``live``: the live features (for
        exposure and FNC). ``benchmark``: the fund's own model's predictions, for BMC. Payouts
        use each model's stake and mean CORR and MMC over the round's eras. Writes the results
        (rounded aggregates only) to ``rounds/<round>/results``.
        """
        predictions = self.predictions(round_id)
        targets_frame = targets if isinstance(targets, pd.DataFrame) else pd.read_parquet(targets)
        live_frame = live if isinstance(live, pd.DataFrame) else load_tournament(live)
        registry = self.registry()
        specs = {name: self.spec(name) for name in predictions.columns}
        data = live_frame.drop(columns=[c for c in live_frame if c in targets_frame]).join(
            targets_frame, how="inner"
        )
        stakes = pd.Series({m: registry[m]["stake"] for m in predictions.columns}, dtype=float)
        features = feature_columns(list(data.columns))
        per_target = []
        for target in sorted({spec.target for spec in specs.values()}):
            models = [m for m, spec in specs.items() if spec.target == target]
            if target not in data.columns:
                raise FundError(f"the targets file has no {target!r} column, which {models} use.")
            chosen = predictions[models]
            meta = (
                stake_weighted_meta_model(chosen, stakes[models], eras=data[ERA])
                if stakes[models].sum() > 0
                else None
            )
            per_target.append(
                score_eras(
                    chosen, data, target=target, meta_model=meta, benchmark=benchmark,
                    exposure_features=features, fnc_features=features,
                ).assign(target=target)
            )  # fmt: skip
        per_era = pd.concat(per_target, ignore_index=True)
        scores = by_model(summarize(per_era.drop(columns="target"))).join(stakes.rename("stake"))
        mmc = scores["mmc"] if "mmc" in scores else pd.Series(0.0, index=scores.index)
        scores["payout"] = payout(scores["stake"], scores["corr"], mmc, **(payout_settings or {}))
        results = self.round_dir(round_id) / "results"
        results.mkdir(exist_ok=True)
        per_era.round(PUBLISHED_DECIMALS).to_csv(results / "per_era.csv", index=False)
        scores.round(PUBLISHED_DECIMALS).to_csv(results / "scores.csv")
        return RoundResults(per_era, scores, results)


def check_versions(spec: PublicSpec) -> None:
    """Refuse a spec compiled with another Concrete than the fund runs: keys would not fit."""
    mine = package_versions()
    for package in ("concrete-python", "concrete-ml"):
        if spec.versions.get(package) != mine[package]:
            raise FundError(
                f"{spec.KIND} {spec.name!r} was compiled with {package} "
                f"{spec.versions.get(package)}, but the fund runs {mine[package]}: keys and "
                "ciphertexts would not fit. Re-export it with the fund's version."
            )


def fund_benchmark(train: pd.DataFrame, live: pd.DataFrame, target: str = "target") -> pd.Series:
    """The fund's own benchmark model: a ridge regression on every feature, in the clear."""
    from sklearn.linear_model import Ridge

    features = feature_columns(list(train.columns))
    rows = train[train[target].notna()]
    model = Ridge(alpha=10.0).fit(rows[features].to_numpy(np.float32), rows[target])
    return pd.Series(
        model.predict(live[features].to_numpy(np.float32)), index=live.index, name="benchmark"
    )


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


def _call(callback: Callable[..., None] | None, *args: Any) -> None:
    if callback is not None:
        callback(*args)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
