"""Write ``numerai_tools_0_7_2_extra.json``: numerai-tools 0.7.2's answers on the reference case.

numerai-tools 0.7.2 needs numpy >= 2 and pandas >= 2.2, which concrete-ml 1.9.0 (the project's
environment) cannot share, so this script runs only in a separate virtualenv:

    python3.11 -m venv /tmp/nt-venv
    /tmp/nt-venv/bin/pip install numerai-tools==0.7.2 pyarrow
    /tmp/nt-venv/bin/python tests/data/make_known_answers.py

It reads ``scoring_case.parquet`` and, per era (index sorted, ``pred_`` prefix dropped from the
model names; ``features`` = ``feature_a`` … ``feature_l``, ``k`` = ``TOP_BOTTOM``), stores:

- ``neutral_contribution``: ``neutral_contribution(preds, meta_model, neutralizers=features,
  live_targets=target)``
- ``neutral_correlation``: ``neutral_correlation(preds, features, target)``
- ``numerai_corr_top_bottom``: ``numerai_corr(preds, target, top_bottom=k)``
- ``correlation_contribution_top_bottom``: ``correlation_contribution(preds, meta_model,
  target, top_bottom=k)``
- ``neutral_contribution_top_bottom`` / ``neutral_correlation_top_bottom``: the first two
  with ``top_bottom=k``
- ``feature_neutral_corr_top_bottom``: ``feature_neutral_corr(preds, features, target,
  top_bottom=k)``
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pandas as pd
from numerai_tools import scoring

HERE = Path(__file__).parent
CASE = HERE / "scoring_case.parquet"
OUT = HERE / "numerai_tools_0_7_2_extra.json"
NUMERAI_TOOLS_VERSION = "0.7.2"
TOP_BOTTOM = 50


def era_answers(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Every extra known answer for one era's rows."""
    frame = frame.sort_index()
    preds = frame[[c for c in frame if c.startswith("pred_")]]
    preds = preds.rename(columns=lambda c: c.removeprefix("pred_"))
    features = frame[[c for c in frame if c.startswith("feature_")]]
    meta, target = frame["meta_model"], frame["target"]
    k = TOP_BOTTOM
    calls = {
        "neutral_contribution": lambda: scoring.neutral_contribution(
            preds, meta, neutralizers=features, live_targets=target
        ),
        "neutral_correlation": lambda: scoring.neutral_correlation(preds, features, target),
        "numerai_corr_top_bottom": lambda: scoring.numerai_corr(preds, target, top_bottom=k),
        "correlation_contribution_top_bottom": lambda: scoring.correlation_contribution(
            preds, meta, target, top_bottom=k
        ),
        "neutral_contribution_top_bottom": lambda: scoring.neutral_contribution(
            preds, meta, neutralizers=features, live_targets=target, top_bottom=k
        ),
        "neutral_correlation_top_bottom": lambda: scoring.neutral_correlation(
            preds, features, target, top_bottom=k
        ),
        "feature_neutral_corr_top_bottom": lambda: scoring.feature_neutral_corr(
            preds, features, target, top_bottom=k
        ),
    }
    return {key: {str(m): float(v) for m, v in call().items()} for key, call in calls.items()}


def main() -> None:
    found = version("numerai-tools")
    if found != NUMERAI_TOOLS_VERSION:
        raise SystemExit(
            f"numerai-tools {found} is installed, but these known answers are for "
            f"{NUMERAI_TOOLS_VERSION}; run this in the venv the docstring describes."
        )
    case = pd.read_parquet(CASE)
    answers = {
        "source": (
            f"numerai-tools {NUMERAI_TOOLS_VERSION} (numerai_tools.scoring), computed per era on "
            f"scoring_case.parquet by tests/data/make_known_answers.py"
        ),
        "top_bottom": TOP_BOTTOM,
        "eras": {str(era): era_answers(rows) for era, rows in case.groupby("era", sort=True)},
    }
    OUT.write_text(json.dumps(answers, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
