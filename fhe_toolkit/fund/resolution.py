"""Resolution: score a round's decrypted predictions once its targets are known, and pay."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from fhe_toolkit.data import load_tournament
from fhe_toolkit.data.schema import ERA, TARGET_VALUES, feature_columns
from fhe_toolkit.errors import FundError, SpecError
from fhe_toolkit.fund.base import FundBase
from fhe_toolkit.fund.leaderboard import leaderboard
from fhe_toolkit.protocol.files import read_regular
from fhe_toolkit.protocol.modelspec import AnyModelSpec, model_spec_from
from fhe_toolkit.registry import RoundRecord, RoundStatus
from fhe_toolkit.scoring import (
    by_model,
    combine,
    neutralize_for_scoring,
    payout,
    payout_score,
    score_eras,
    summarize,
)

PUBLISHED_DECIMALS = 4
"""Published scores are rounded: exact values would leak more about the decryptions."""
MAX_TARGETS_BYTES = 2 * 2**30
MAX_UNRESOLVED_SHARE = 0.5
"""A target a model is scored on may be NaN (unresolved) for at most this share of live rows."""
NEUTRALIZED = "neutralized"
"""The ``scores.csv`` column holding the share of its fit on the declared features that was
removed from each model's predictions before scoring (0: its spec declares no neutralization)."""
PAYMENT_COLUMNS = ["stake", "score", "payout", "stake_after", "reputation"]
"""The last columns of ``scores.csv``, after the metrics (in alphabetical order) and
:data:`NEUTRALIZED`."""


@dataclass(frozen=True)
class RoundResults:
    per_era: pd.DataFrame
    scores: pd.DataFrame
    directory: Path
    notes: tuple[str, ...] = ()
    """What the caller should know: inputs not used, models with no score and why."""


class Resolution(FundBase):
    def score(
        self,
        round_id: str,
        targets: pd.DataFrame | str | Path,
        *,
        live: pd.DataFrame | str | Path,
        benchmark: pd.Series | None = None,
        payout_settings: dict[str, float] | None = None,
        close_now: bool = False,
        meta_model: str = "stake_weighted",
    ) -> RoundResults:
        """Resolve the round once its targets are known: score every received model, pay, and
        record it all in one transaction (a crash leaves nothing half-written; run it again).

        ``targets``: the live rows' resolved targets (by id). ``live``: the live features (for
        exposure and FNC). ``benchmark``: the fund's own model's predictions, for BMC. Each
        model is scored on its registered target against that target's meta model, built by
        ``meta_model`` (:data:`fhe_toolkit.scoring.COMBINE_METHODS`: ``stake_weighted``,
        ``reputation_filtered`` on the models' current reputations, ``cluster_capped``);
        payouts use the stakes the round opened with and the mean CORR and MMC over the round's
        eras; gains add to stakes, losses burn them. A model whose spec (the version the round
        was opened with) declares a neutralization is scored, combined and paid on its decrypted
        predictions neutralized so, era by era on the live features; the ``neutralized`` column
        and a note say so. Writes rounded aggregates to ``rounds/<round>/results``. A round
        resolved already is not paid twice: its results are exported again from the database
        (and the inputs given are not used: a note says so). An open round is refused before
        its deadline unless ``close_now`` closes it.

        Refused before anything is written: targets whose ids do not cover the round's live
        rows, values outside the buckets, a target a model uses missing or unresolved for more
        than ``MAX_UNRESOLVED_SHARE`` of the rows.
        """
        record = self.round_record(round_id)
        if record.status == RoundStatus.RESOLVED:
            results = self.export_results(round_id)
            note = (
                f"round {round_id!r} was resolved already: its recorded scores are written again "
                "and the targets and live data given now are not used."
            )
            return replace(results, notes=(note,))
        is_open = record.status == RoundStatus.OPEN
        if is_open:
            _refuse_open_round(round_id, record.deadline, close_now)
        predictions = self.predictions(round_id)
        targets_frame = _targets(targets)
        live_frame = live if isinstance(live, pd.DataFrame) else load_tournament(live)
        specs = round_specs(record, predictions.columns)
        live_ids = pd.read_parquet(self.round_dir(round_id) / "live_ids.parquet").index
        _check_targets(targets_frame, live_ids, sorted({s.target for s in specs.values()}))
        if is_open:  # only once every input has checked out: a refusal leaves the round open
            self.db.close_round(round_id)
            # A submission received while the inputs were checked is scored too.
            predictions = self.predictions(round_id)
            specs = round_specs(record, predictions.columns)
            _check_targets(targets_frame, live_ids, sorted({s.target for s in specs.values()}))
        notes = [
            f"{model} has no score: its submission is {bundle.status}"
            + (f" ({bundle.detail})" if bundle.detail else "")
            for model, bundle in sorted(record.bundles.items())
            if model not in predictions.columns
        ]
        data = live_frame.drop(columns=[c for c in live_frame if c in targets_frame]).join(
            targets_frame, how="inner"
        )
        stakes = pd.Series({m: record.bundles[m].stake for m in predictions.columns}, dtype=float)
        features = feature_columns(list(data.columns))
        predictions = _neutralized(predictions, specs, data, notes)
        reputation = leaderboard(self.db.models(), self.db.payouts())["reputation"].dropna()
        per_target, metas = [], {}
        for target in sorted({spec.target for spec in specs.values()}):
            models = [m for m, spec in specs.items() if spec.target == target]
            if target not in data.columns:
                raise FundError(f"the targets file has no {target!r} column, which {models} use.")
            chosen = predictions[models]
            if len(models) == 1:
                notes.append(
                    f"{models[0]} is the only model on {target!r}: the meta model is its own "
                    "predictions, so its MMC is 0."
                )
            meta = None
            if stakes[models].sum() > 0:
                meta = combine(
                    chosen, stakes[models], eras=data[ERA], method=meta_model,
                    reputation=reputation if meta_model == "reputation_filtered" else None,
                ).meta_model  # fmt: skip
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
        settings = _payout_settings(payout_settings)
        weights = {k: v for k, v in settings.items() if k in ("corr_weight", "mmc_weight")}
        scores["score"] = payout_score(corr=scores["corr"], mmc=mmc, **weights)
        scores["payout"] = payout(scores["stake"], corr=scores["corr"], mmc=mmc, **settings)
        overflowing = scores.index[~np.isfinite(scores["payout"].to_numpy(np.float64))]
        if len(overflowing):
            raise FundError(
                f"the payout settings {settings} give no finite payout for {list(overflowing)}; "
                "nothing was scored or paid: use payout settings of a sensible size."
            )
        together = predictions.join(pd.DataFrame(metas), how="left")
        correlations = together.corr(method="spearman")
        long = per_era.melt(id_vars=["era", "model", "target"], var_name="metric")
        paid = self.db.record_results(
            round_id, long, scores.assign(mmc=mmc)[["corr", "mmc", "score", "payout"]],
            correlations, self.reputation_rounds,
        )  # fmt: skip
        # Resolved: a packed model that never sent its submission has no decryption coming.
        self.retire_packed_key(round_id, "the round was resolved")
        cap = self.db.max_stake()
        notes.extend(
            f"{model}'s stake reached the fund's cap of {cap:,.0f}: {kept_out:,.2f} of its payout "
            "was not added to it (`fhe-toolkit fund config --max-stake` sets the cap)."
            for model, kept_out in paid["beyond_cap"].items()
            if kept_out > 0
        )
        results = self._write_results(
            round_id, per_era, scores.join(paid.drop(columns="beyond_cap"))
        )
        return replace(results, notes=tuple(notes))

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
        # What the round's payout left each stake at, as recorded (within 0 and the cap then).
        paid_events = self.db.stake_history().query("round == @round_id")
        scores["stake_after"] = paid_events.groupby("model")["balance"].last()
        return self._write_results(round_id, per_era, scores)

    def _write_results(
        self, round_id: str, per_era: pd.DataFrame, scores: pd.DataFrame
    ) -> RoundResults:
        """Write the results files, their columns always in the same order (so scoring a round
        and exporting it again give the same files)."""
        results = self.round_dir(round_id) / "results"
        results.mkdir(parents=True, exist_ok=True)
        keys = ["era", "model", "target"]
        per_era = per_era[keys + sorted(c for c in per_era.columns if c not in keys)]
        per_era = per_era.sort_values(keys, ignore_index=True)
        specs = round_specs(self.round_record(round_id), scores.index)
        scores = scores.assign(
            **{NEUTRALIZED: [_declared_proportion(specs[m]) for m in scores.index]}
        )
        metrics = sorted(c for c in scores.columns if c not in [NEUTRALIZED, *PAYMENT_COLUMNS])
        scores = scores.reindex(columns=[*metrics, NEUTRALIZED, *PAYMENT_COLUMNS]).sort_index()
        scores.index.name = "model"
        per_era.round(PUBLISHED_DECIMALS).to_csv(results / "per_era.csv", index=False)
        scores.round(PUBLISHED_DECIMALS).to_csv(results / "scores.csv")
        return RoundResults(per_era, scores, results)


def round_specs(record: RoundRecord, models: pd.Index) -> dict[str, AnyModelSpec]:
    """Each model's spec as the round was opened with it (the version its bundle and submission
    were made for, whatever the model registered since)."""
    return {
        m: model_spec_from(
            json.loads(record.bundles[m].spec_json), f"the spec of {m!r} in round {record.name!r}"
        )
        for m in models
    }


def _neutralized(
    predictions: pd.DataFrame, specs: dict[str, AnyModelSpec], data: pd.DataFrame, notes: list[str]
) -> pd.DataFrame:
    """The predictions to score: each model's as decrypted, or neutralized as its spec declares
    (era by era, against the declared features of the live data); a note for each neutralized."""
    scored = predictions.copy()
    for model, spec in specs.items():
        declared = spec.neutralization
        if declared is None:
            continue
        try:
            against = declared.neutralizers(spec.features, list(data.columns))
        except SpecError as exc:
            raise FundError(
                f"{model!r} declares a neutralization the live data given cannot serve: {exc} "
                "Nothing was scored or paid; give the round's live data (the file it was opened "
                "with)."
            ) from None
        scored[model] = neutralize_for_scoring(
            predictions[[model]], data[against], declared.proportion, eras=data[ERA]
        )[model]
        notes.append(
            f"{model}'s predictions were neutralized before scoring, as its spec declares: "
            f"{declared.describe()} removed ({len(against)} features, era by era)."
        )
    return scored


def _declared_proportion(spec: AnyModelSpec) -> float:
    return 0.0 if spec.neutralization is None else spec.neutralization.proportion


def _payout_settings(given: dict[str, float] | None) -> dict[str, float]:
    """The payout rule's settings, each one :func:`fhe_toolkit.scoring.payout` takes and a
    finite number."""
    settings = dict(given or {})
    known = ("payout_factor", "corr_weight", "mmc_weight", "clip")
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise FundError(f"unknown payout settings {unknown}; the payout rule takes {list(known)}.")
    bad = {
        k: v for k, v in settings.items() if not isinstance(v, int | float) or not np.isfinite(v)
    }
    if bad:
        raise FundError(f"payout settings must be finite numbers, got {bad}.")
    return settings


def _targets(targets: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(targets, pd.DataFrame):
        return targets
    data = read_regular(targets, MAX_TARGETS_BYTES, "a targets file", FundError)
    try:
        return pd.read_parquet(io.BytesIO(data))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise FundError(
            f"{targets} is not a parquet file of targets ({exc}); the fund resolves rounds from "
            "a parquet file indexed by id with the target columns (e.g. live_targets.parquet)."
        ) from None


def _check_targets(targets: pd.DataFrame, live_ids: pd.Index, used: list[str]) -> None:
    """Refuse targets that cannot resolve the round, naming every problem at once."""
    problems = []
    if targets.index.has_duplicates:
        repeated = targets.index[targets.index.duplicated()].unique()[:3].tolist()
        problems.append(f"ids appear more than once (e.g. {repeated})")
        targets = targets[~targets.index.duplicated()]
    missing_ids = live_ids.difference(targets.index)
    if len(missing_ids):
        problems.append(
            f"{len(missing_ids)} of the round's {len(live_ids)} live ids have no row "
            f"(e.g. {missing_ids[:3].tolist()})"
        )
    absent = [t for t in used if t not in targets.columns]
    if absent:
        problems.append(f"no column {absent} (the models are scored on {used})")
    for target in [t for t in used if t in targets.columns]:
        values = pd.to_numeric(targets[target].reindex(live_ids), errors="coerce")
        unresolved = float(values.isna().mean())
        if unresolved > MAX_UNRESOLVED_SHARE:
            problems.append(
                f"{target!r} is unresolved (NaN) for {unresolved:.0%} of the live rows (at most "
                f"{MAX_UNRESOLVED_SHARE:.0%} may be)"
            )
        known = values.dropna().to_numpy(np.float64)
        off = ~np.isclose(known[:, None], TARGET_VALUES, atol=1e-6).any(axis=1)
        if off.any():
            problems.append(
                f"{target!r} has {int(off.sum())} value(s) outside the buckets "
                f"{list(TARGET_VALUES)} (e.g. {known[off][:3].tolist()})"
            )
    if problems:
        raise FundError(
            "these targets cannot resolve the round: " + "; ".join(problems) + ". Nothing was "
            "scored or paid; give the round's resolved targets (Numerai format)."
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


def _refuse_open_round(round_id: str, deadline: datetime | None, close_now: bool) -> None:
    """An open round is scored (and closed) only after its deadline, or when asked to close
    it now."""
    if not close_now and (deadline is None or datetime.now(UTC) < deadline):
        until = f" until {deadline:%Y-%m-%d %H:%M} UTC" if deadline else ""
        raise FundError(
            f"round {round_id!r} is open{until}: participants may still submit. Close it "
            f"first (`fhe-toolkit fund close-round {round_id}`), or score with --close-now "
            "(close_now=True) to close it now."
        )
