"""Shared scoring: what a participant measures locally is exactly what the fund pays on.

Pure pandas / NumPy / SciPy; nothing here imports FHE code. Function names and values follow
numerai-tools (``numerai_tools.scoring``) where the concept is the same.
"""

from fhe_toolkit.scoring._checks import DEFAULT_MAX_FILTERED_INDEX_RATIO
from fhe_toolkit.scoring.combine import (
    COMBINE_METHODS,
    DEFAULT_CLUSTER_CAP,
    Combined,
    CombineOptions,
    cluster_capped,
    combine,
    prediction_clusters,
    reputation_filtered,
)
from fhe_toolkit.scoring.meta_model import (
    payout,
    payout_per_stake,
    payout_score,
    stake_weighted_meta_model,
)
from fhe_toolkit.scoring.metrics import (
    benchmark_contribution,
    correlation_contribution,
    exposure_summary,
    feature_exposures,
    feature_neutral_corr,
    max_feature_correlation,
    neutral_contribution,
    neutral_correlation,
    numerai_corr,
)
from fhe_toolkit.scoring.mmc_forms import (
    mmc_closed_form,
    mmc_finite_difference,
    mmc_pseudo_inverse,
)
from fhe_toolkit.scoring.neutralization import Neutralizer, neutralize, neutralize_for_scoring
from fhe_toolkit.scoring.per_era import by_model, score_eras, summarize, summarize_series
from fhe_toolkit.scoring.transforms import (
    center,
    gaussian,
    orthogonalize,
    power,
    tie_kept_rank,
    variance_normalize,
)

__all__ = [
    "COMBINE_METHODS",
    "DEFAULT_CLUSTER_CAP",
    "DEFAULT_MAX_FILTERED_INDEX_RATIO",
    "CombineOptions",
    "Combined",
    "Neutralizer",
    "benchmark_contribution",
    "by_model",
    "center",
    "cluster_capped",
    "combine",
    "correlation_contribution",
    "exposure_summary",
    "feature_exposures",
    "feature_neutral_corr",
    "gaussian",
    "max_feature_correlation",
    "mmc_closed_form",
    "mmc_finite_difference",
    "mmc_pseudo_inverse",
    "neutral_contribution",
    "neutral_correlation",
    "neutralize",
    "neutralize_for_scoring",
    "numerai_corr",
    "orthogonalize",
    "payout",
    "payout_per_stake",
    "payout_score",
    "power",
    "prediction_clusters",
    "reputation_filtered",
    "score_eras",
    "stake_weighted_meta_model",
    "summarize",
    "summarize_series",
    "tie_kept_rank",
    "variance_normalize",
]
