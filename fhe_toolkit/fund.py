"""The fund's side: register models, open encrypted rounds, take submissions, score and pay.

A fund directory::

    fund/
      fund.db                       the records (SQLite by default; any SQLAlchemy URL):
                                    participants and their public keys, models and spec
                                    versions, stakes and their history, rounds, bundles,
                                    submissions, per-era scores, payouts, reputation
      rounds/<round>/live_ids.parquet
      rounds/<round>/bundles/<model>/        published to that model's participant
      rounds/<round>/submissions/<model>/    received, kept as sent
      rounds/<round>/predictions/<model>.parquet   decrypted predictions (private)
      rounds/<round>/results/       per-era scores, scores and payouts (rounded aggregates)

Secret keys live in the key store (``keys/`` by default), never in the fund directory's bundles;
so does the fund's signing key (``fund_signing_key.pem``; its ``.pub`` goes to participants).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhe_toolkit.bundle import open_submission, write_bundle
from fhe_toolkit.data import load_tournament
from fhe_toolkit.data.schema import ERA, feature_columns
from fhe_toolkit.errors import FundError
from fhe_toolkit.identity import (
    IdentityError,
    create_identity,
    load_private_key,
    load_public_key,
    public_bytes,
    sign_directory,
    signed_by,
    verify_directory,
)
from fhe_toolkit.jobs import DecryptJob
from fhe_toolkit.keystore import SPECS, TRAINING_KEYS, KeyStore
from fhe_toolkit.leaderboard import leaderboard
from fhe_toolkit.manifest import ROUND_PATTERN
from fhe_toolkit.modelspec import (
    NAME_PATTERN,
    ModelSpec,
    PublicSpec,
    SpecCodec,
    load_spec,
    validate_spec,
)
from fhe_toolkit.participant import package_versions
from fhe_toolkit.pool import RowsCrashedError, run_rows
from fhe_toolkit.registry import Registry
from fhe_toolkit.scoring import (
    by_model,
    payout,
    payout_score,
    score_eras,
    stake_weighted_meta_model,
    summarize,
)

PUBLISHED_DECIMALS = 4
"""Published scores are rounded: exact values would leak more about the decryptions."""
DATABASE = "fund.db"
FUND_IDENTITY = "fund_signing_key.pem"
REPUTATION_ROUNDS = 4
"""Reputation: the mean payout score over a model's last this many resolved rounds."""


@dataclass(frozen=True)
class RoundResults:
    per_era: pd.DataFrame
    scores: pd.DataFrame
    directory: Path


class Fund:
    """The fund's records (a SQL database), rounds on disk, and keys in the key store.

    ``database``: an SQLAlchemy URL; by default a SQLite file ``fund.db`` in ``root``.
    """

    def __init__(
        self,
        root: str | Path = "fund",
        key_store: str | Path = "keys",
        *,
        database: str | None = None,
        reputation_rounds: int = REPUTATION_ROUNDS,
    ) -> None:
        self.root = Path(root)
        self.keys = KeyStore(key_store)
        if database is None:
            self.root.mkdir(parents=True, exist_ok=True)
            database = f"sqlite:///{self.root / DATABASE}"
        self.db = Registry(database)
        self.reputation_rounds = reputation_rounds

    # --- identities and models ------------------------------------------------------------
    @property
    def identity_path(self) -> Path:
        """The fund's private signing key (in the key store); ``.pub`` beside it is public."""
        return self.keys.root / FUND_IDENTITY

    def public_key(self) -> bytes:
        """The fund's public signing key, made on first use: give it to every participant."""
        if not self.identity_path.exists():
            return create_identity(self.identity_path)
        return public_bytes(load_private_key(self.identity_path))

    def add_participant(self, name: str, public_key: str | Path | bytes) -> None:
        """Record a participant and the Ed25519 public key its submissions are signed with."""
        if not re.fullmatch(NAME_PATTERN, name):
            raise FundError(f"participant name {name!r} must be a-z, 0-9, '_' or '-'.")
        key = public_key if isinstance(public_key, bytes) else load_public_key(public_key)
        self.db.add_participant(name, key)

    def models(self) -> pd.DataFrame:
        """Registered models: owner, family, target, stake, version."""
        return self.db.models()

    def spec(self, model: str) -> ModelSpec:
        text = self.db.spec_json(model)
        return validate_spec(json.loads(text), ModelSpec, f"the registered spec of {model!r}")

    def register(self, spec_path: str | Path, *, participant: str, stake: float) -> ModelSpec:
        """Validate a participant's model spec and register it, owned by ``participant``, with a
        stake. A changed spec under a known name becomes the model's next version.

        Refused: anything but a valid plain-JSON spec; a spec compiled with another Concrete
        version than the fund runs; a name owned by another participant or registered for
        another target; a negative stake; an unknown participant.
        """
        spec = load_spec(spec_path)
        check_versions(spec)
        self.db.register_model(
            spec.name, participant, spec.family, spec.target, spec.to_json(), spec.sha256(),
            float(stake),
        )  # fmt: skip
        return spec

    def set_stake(self, model: str, stake: float) -> None:
        """Raise or lower a model's stake: rounds opened from now on pay on it."""
        self.db.set_stake(model, float(stake))

    # --- rounds ---------------------------------------------------------------------------
    def round_dir(self, round_id: str) -> Path:
        return self.root / "rounds" / round_id

    def round_info(self, round_id: str) -> dict[str, Any]:
        return self.db.round_info(round_id)

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
                key_set.client, spec, frame, partial(_call, on_progress, name)
            )
            bundle_dir = staging / "bundles" / name
            bundle_sha = write_bundle(
                bundle_dir,
                round_id=round_id,
                spec=spec,
                key_set_id=key_set.key_set_id,
                evaluation_keys=key_set.evaluation_keys,
                ids=ids,
                ciphertexts=ciphertexts,
                versions=package_versions(),
            )
            sign_directory(bundle_dir, signing_key)
            bundles.append(
                {"model": name, "key_set_id": key_set.key_set_id, "bundle_sha256": bundle_sha,
                 "batch_ids": ids}
            )  # fmt: skip
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
        manifest or file that does not check out, another round, model, key set or bundle,
        missing or repeated batches, a signature that is not the model owner's, a model already
        received, a round closed or past its deadline. After decryption the keys are retired
        whatever happens. Returns the predictions by id.
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
        ciphertexts = submission.ciphertexts()["ciphertext"].tolist()
        signer = self._check_signature(submission.directory, model)
        self.db.accept_submission(round_id, model, submission.sha256, signer)
        target = self.round_dir(round_id) / "submissions" / model
        # A copy left by an attempt that was cut off before decryption is replaced.
        shutil.rmtree(target, ignore_errors=True)
        staging = target.with_name(f".{model}.receiving")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(submission.directory, staging)
        staging.rename(target)

        # The version the round was opened with: the model may have a newer one by now.
        spec = validate_spec(
            json.loads(entry["spec_json"]), ModelSpec, f"{model!r} in {round_id!r}"
        )
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
            self.db.set_status(round_id, model, "refused: outputs could not be decrypted")
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
            self.db.set_status(round_id, model, "refused: non-finite predictions")
            raise FundError(f"{model!r}'s decrypted predictions contain NaN or infinity.")
        out = self.round_dir(round_id) / "predictions"
        out.mkdir(exist_ok=True)
        predictions.to_frame().to_parquet(out / f"{model}.parquet")
        status = "received" if predictions.nunique() > 1 else "received: constant predictions"
        self.db.set_status(round_id, model, status)
        return predictions

    def _check_signature(self, directory: Path, model: str) -> str:
        """The model's owner, if the owner signed ``directory``; otherwise a refusal that names
        who did sign, when it is another known participant."""
        owner = self.db.owner(model)
        keys = self.db.participant_keys()
        try:
            verify_directory(directory, keys[owner], owner)
        except IdentityError as exc:
            for other, key in keys.items():
                if other != owner and signed_by(directory, key):
                    raise FundError(
                        f"this submission for model {model!r} is signed by {other!r}, who does "
                        f"not own the model ({owner!r} does); it is refused."
                    ) from None
            raise FundError(f"refused: {exc}") from None
        return owner

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
        """Resolve the round once its targets are known: score every received model, pay, and
        record it all in one transaction (a crash leaves nothing half-written; run it again).

        ``targets``: the live rows' resolved targets (by id). ``live``: the live features (for
        exposure and FNC). ``benchmark``: the fund's own model's predictions, for BMC. Each
        model is scored on its registered target against that target's stake-weighted meta
        model; payouts use the stakes the round opened with and the mean CORR and MMC over the
        round's eras; gains add to stakes, losses burn them. Writes rounded aggregates to
        ``rounds/<round>/results``. A round resolved already is not paid twice: its results
        are exported again from the database.
        """
        info = self.round_info(round_id)
        if info["status"] == "resolved":
            return self.export_results(round_id)
        predictions = self.predictions(round_id)
        targets_frame = targets if isinstance(targets, pd.DataFrame) else pd.read_parquet(targets)
        live_frame = live if isinstance(live, pd.DataFrame) else load_tournament(live)
        specs = {name: self.spec(name) for name in predictions.columns}
        data = live_frame.drop(columns=[c for c in live_frame if c in targets_frame]).join(
            targets_frame, how="inner"
        )
        stakes = pd.Series(
            {m: info["models"][m]["stake"] for m in predictions.columns}, dtype=float
        )
        features = feature_columns(list(data.columns))
        per_target, metas = [], {}
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
            if meta is not None:
                metas[f"meta_model:{target}"] = meta
            per_target.append(
                score_eras(
                    chosen, data, target=target, meta_model=meta, benchmark=benchmark,
                    exposure_features=features, fnc_features=features,
                ).assign(target=target)
            )  # fmt: skip
        per_era = pd.concat(per_target, ignore_index=True)
        scores = by_model(summarize(per_era.drop(columns="target"))).join(stakes.rename("stake"))
        mmc = scores["mmc"] if "mmc" in scores else pd.Series(np.nan, index=scores.index)
        settings = payout_settings or {}
        weights = {k: v for k, v in settings.items() if k in ("corr_weight", "mmc_weight")}
        scores["score"] = payout_score(scores["corr"], mmc, **weights)
        scores["payout"] = payout(scores["stake"], scores["corr"], mmc, **settings)
        together = predictions.join(pd.DataFrame(metas), how="left")
        correlations = together.corr(method="spearman")
        long = per_era.melt(id_vars=["era", "model", "target"], var_name="metric")
        paid = self.db.record_results(
            round_id, long, scores.assign(mmc=mmc)[["corr", "mmc", "score", "payout"]],
            correlations, self.reputation_rounds,
        )  # fmt: skip
        return self._write_results(round_id, per_era, scores.join(paid))

    def export_results(self, round_id: str) -> RoundResults:
        """Write a resolved round's results files again, from the database."""
        rows = self.db.scores().query("round == @round_id")
        if rows.empty:
            raise FundError(f"round {round_id!r} has no recorded scores.")
        per_era = rows.pivot_table(
            index=["era", "model", "target"], columns="metric", values="value", dropna=False
        ).reset_index()
        paid = self.db.payouts().query("round == @round_id").set_index("model")
        summary = by_model(summarize(per_era.drop(columns="target")))
        scores = summary.join(paid[["stake", "score", "payout", "reputation"]])
        return self._write_results(round_id, per_era, scores)

    def _write_results(
        self, round_id: str, per_era: pd.DataFrame, scores: pd.DataFrame
    ) -> RoundResults:
        results = self.round_dir(round_id) / "results"
        results.mkdir(parents=True, exist_ok=True)
        per_era.round(PUBLISHED_DECIMALS).to_csv(results / "per_era.csv", index=False)
        scores.round(PUBLISHED_DECIMALS).to_csv(results / "scores.csv")
        return RoundResults(per_era, scores, results)

    def leaderboard(self, sort_by: str = "reputation") -> pd.DataFrame:
        """One row per model: its stake, latest round's CORR, MMC and payout, mean CORR and MMC
        over its resolved rounds, reputation, rounds scored; sorted by ``sort_by``."""
        return leaderboard(self.db.models(), self.db.payouts(), sort_by)


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
