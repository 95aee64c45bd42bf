"""Resolution: score a round's decrypted predictions once its targets are known, and pay."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fhe_toolkit.data import load_tournament
from fhe_toolkit.data.schema import ERA, feature_columns
from fhe_toolkit.errors import FundError
from fhe_toolkit.fund.base import FundBase
from fhe_toolkit.registry import RoundStatus
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


@dataclass(frozen=True)
class RoundResults:
    per_era: pd.DataFrame
    scores: pd.DataFrame
    directory: Path


class Resolution(FundBase):
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
        record = self.round_record(round_id)
        if record.status == RoundStatus.RESOLVED:
            return self.export_results(round_id)
        predictions = self.predictions(round_id)
        targets_frame = targets if isinstance(targets, pd.DataFrame) else pd.read_parquet(targets)
        live_frame = live if isinstance(live, pd.DataFrame) else load_tournament(live)
        specs = {name: self.spec(name) for name in predictions.columns}
        data = live_frame.drop(columns=[c for c in live_frame if c in targets_frame]).join(
            targets_frame, how="inner"
        )
        stakes = pd.Series({m: record.bundles[m].stake for m in predictions.columns}, dtype=float)
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
        scores["score"] = payout_score(corr=scores["corr"], mmc=mmc, **weights)
        scores["payout"] = payout(scores["stake"], corr=scores["corr"], mmc=mmc, **settings)
        together = predictions.join(pd.DataFrame(metas), how="left")
        correlations = together.corr(method="spearman")
        long = per_era.melt(id_vars=["era", "model", "target"], var_name="metric")
        paid = self.db.record_results(
            round_id, long, scores.assign(mmc=mmc)[["corr", "mmc", "score", "payout"]],
            correlations, self.reputation_rounds,
        )  # fmt: skip
        # Resolved: a packed model that never sent its submission has no decryption coming.
        self.retire_packed_key(round_id, "the round was resolved")
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


def fund_benchmark(train: pd.DataFrame, live: pd.DataFrame, target: str = "target") -> pd.Series:
    """The fund's own benchmark model: a ridge regression on every feature, in the clear."""
    from sklearn.linear_model import Ridge

    features = feature_columns(list(train.columns))
    rows = train[train[target].notna()]
    model = Ridge(alpha=10.0).fit(rows[features].to_numpy(np.float32), rows[target])
    return pd.Series(
        model.predict(live[features].to_numpy(np.float32)), index=live.index, name="benchmark"
    )
