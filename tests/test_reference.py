"""Known answers: numerai-tools 0.7.2 outputs on the shared reference case, to 1e-9.

``scoring_case_expected.json`` is the shared reference (``../shared/reference/``);
``numerai_tools_0_7_2_extra.json`` adds neutral correlation / contribution and the ``top_bottom``
option, written by ``tests/data/make_known_answers.py`` in a numerai-tools 0.7.2 environment.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.scoring import (
    correlation_contribution,
    feature_neutral_corr,
    max_feature_correlation,
    neutral_contribution,
    neutral_correlation,
    neutralize,
    numerai_corr,
)

TOL = 1e-9
ERAS = ("0001", "0002")
EXTRA = json.loads((Path(__file__).parent / "data" / "numerai_tools_0_7_2_extra.json").read_text())
K = EXTRA["top_bottom"]

# Known-answer key → our call on (frame, predictions, features) of one era, with
# numerai-tools' argument names and order.
EXTRA_CALLS: dict[str, Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame], pd.Series]] = {
    "neutral_contribution": lambda frame, preds, features: neutral_contribution(
        preds, frame["meta_model"], neutralizers=features, live_targets=frame["target"]
    ),
    "neutral_correlation": lambda frame, preds, features: neutral_correlation(
        preds, features, frame["target"]
    ),
    "numerai_corr_top_bottom": lambda frame, preds, _: numerai_corr(
        preds, frame["target"], top_bottom=K
    ),
    "correlation_contribution_top_bottom": lambda frame, preds, _: correlation_contribution(
        preds, frame["meta_model"], frame["target"], top_bottom=K
    ),
    "neutral_contribution_top_bottom": lambda frame, preds, features: neutral_contribution(
        preds, frame["meta_model"], features, frame["target"], K
    ),
    "neutral_correlation_top_bottom": lambda frame, preds, features: neutral_correlation(
        preds, features, frame["target"], top_bottom=K
    ),
    "feature_neutral_corr_top_bottom": lambda frame, preds, features: feature_neutral_corr(
        preds, features, frame["target"], top_bottom=K
    ),
}


def era_inputs(case: pd.DataFrame, era: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    frame = case[case["era"] == era].sort_index()
    preds = frame[[c for c in frame if c.startswith("pred_")]]
    preds = preds.rename(columns=lambda c: c.removeprefix("pred_"))
    features = frame[[c for c in frame if c.startswith("feature_")]]
    return frame, preds, features


@pytest.mark.parametrize("era", ERAS)
def test_numerai_corr(reference_case, reference_expected, era):
    frame, preds, _ = era_inputs(reference_case, era)
    got = numerai_corr(preds, frame["target"])
    expected = pd.Series(reference_expected["eras"][era]["numerai_corr"])
    np.testing.assert_allclose(got[expected.index], expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("era", ERAS)
def test_correlation_contribution(reference_case, reference_expected, era):
    frame, preds, _ = era_inputs(reference_case, era)
    got = correlation_contribution(preds, frame["meta_model"], frame["target"])
    expected = pd.Series(reference_expected["eras"][era]["correlation_contribution"])
    np.testing.assert_allclose(got[expected.index], expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("era", ERAS)
def test_feature_neutral_corr(reference_case, reference_expected, era):
    frame, preds, features = era_inputs(reference_case, era)
    got = feature_neutral_corr(preds, features, frame["target"])
    expected = pd.Series(reference_expected["eras"][era]["feature_neutral_corr"])
    np.testing.assert_allclose(got[expected.index], expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("era", ERAS)
def test_max_feature_correlation(reference_case, reference_expected, era):
    _, preds, features = era_inputs(reference_case, era)
    for model, (feature, value) in reference_expected["eras"][era][
        "max_feature_correlation_pearson"
    ].items():
        got_feature, got_value = max_feature_correlation(preds[model], features)
        assert got_feature == feature
        assert abs(got_value - value) < TOL


@pytest.mark.parametrize("era", ERAS)
def test_neutralize_half(reference_case, reference_expected, era):
    _, preds, features = era_inputs(reference_case, era)
    expected = reference_expected["eras"][era]
    got = neutralize(preds, features, proportion=0.5)
    assert list(got.index[:5]) == expected["neutralize_half_index_first5"]
    for model, values in expected["neutralize_half_first5"].items():
        np.testing.assert_allclose(got[model].to_numpy()[:5], values, rtol=0, atol=TOL)


def test_row_order_does_not_matter(reference_case, reference_expected):
    frame, preds, _ = era_inputs(reference_case, "0001")
    shuffled = np.random.default_rng(0).permutation(len(frame))
    got = numerai_corr(preds.iloc[shuffled], frame["target"].iloc[shuffled[::-1]])
    expected = pd.Series(reference_expected["eras"]["0001"]["numerai_corr"])
    np.testing.assert_allclose(got[expected.index], expected, rtol=0, atol=TOL)


def test_extra_answers_cover_every_call():
    assert K == 50
    for era in ERAS:
        assert set(EXTRA["eras"][era]) == set(EXTRA_CALLS)


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("key", sorted(EXTRA_CALLS))
def test_extra_known_answers(reference_case, key, era):
    frame, preds, features = era_inputs(reference_case, era)
    got = EXTRA_CALLS[key](frame, preds, features)
    expected = pd.Series(EXTRA["eras"][era][key])
    assert list(got.index) == list(expected.index)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("key", sorted(EXTRA_CALLS))
def test_extra_answers_do_not_depend_on_row_order(reference_case, key):
    """model_b's many ties sit on the top / bottom boundary: they are taken in id order."""
    frame, preds, features = era_inputs(reference_case, "0002")
    order = np.random.default_rng(1).permutation(len(frame))
    got = EXTRA_CALLS[key](frame.iloc[order[::-1]], preds.iloc[order], features.iloc[order])
    expected = pd.Series(EXTRA["eras"]["0002"][key])
    np.testing.assert_allclose(got[expected.index], expected, rtol=0, atol=TOL)
