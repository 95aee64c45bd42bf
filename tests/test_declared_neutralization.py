"""Neutralization a model spec declares and the fund applies after decryption (no FHE runs here:
the fund's round is recorded directly, with decrypted predictions as the fund keeps them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.errors import FundError, SpecError
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import compile_model, diagnose, export_model, train_model
from fhe_toolkit.participant.model import NEUTRALIZED_MODE
from fhe_toolkit.protocol.modelspec import (
    LinearSpec,
    ModelSpec,
    Neutralization,
    load_spec,
    model_spec_from,
)
from fhe_toolkit.registry import SubmissionStatus
from fhe_toolkit.scoring import (
    by_model,
    combine,
    neutralize,
    neutralize_for_scoring,
    score_eras,
    summarize,
)
from tests.cli_runner import cli, ok
from tests.identities import enroll
from tests.tournament_records import new_bundle

LEGACY = {
    "format": "fhe-toolkit/linear-spec", "format_version": 1, "name": "old-spec",
    "target": "target", "features": ["feature_a", "feature_b"], "family": "linear",
    "weight_bits": 8, "scale": 0.01, "intercept": 0.5, "versions": {"concrete-ml": "1.9.0"},
}  # fmt: skip
LEGACY_SHA256 = "b63a309c1963bfe05a749e2023cee042f1427c855efda44106744021a907ce64"
"""``LEGACY``'s digest as computed before specs could declare a neutralization."""


# --- the spec field ------------------------------------------------------------------------
def test_a_spec_without_the_field_loads_and_hashes_as_before():
    spec = model_spec_from(LEGACY, "legacy")
    assert spec.neutralization is None
    assert spec.sha256() == LEGACY_SHA256
    assert "neutralization" not in json.loads(spec.to_json())
    assert model_spec_from({**LEGACY, "neutralization": None}, "null").sha256() == LEGACY_SHA256


def test_a_declared_neutralization_is_part_of_the_signed_digest(tmp_path):
    declared = {"feature_set": "model", "proportion": 0.5}
    spec = model_spec_from({**LEGACY, "neutralization": declared}, "declared")
    assert spec.neutralization == Neutralization(feature_set="model", proportion=0.5)
    assert spec.sha256() != LEGACY_SHA256
    other = model_spec_from({**LEGACY, "neutralization": {**declared, "proportion": 0.6}}, "x")
    assert other.sha256() != spec.sha256()
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    again = load_spec(path)
    assert again == spec and again.sha256() == spec.sha256()
    assert ModelSpec.model_fields["neutralization"].default is None


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"feature_set": "model", "proportion": 1.5}, "less than or equal to 1"),
        ({"feature_set": "model", "proportion": -0.1}, "greater than or equal to 0"),
        ({"feature_set": "model", "proportion": math.nan}, "finite number"),
        ({"feature_set": "model", "proportion": math.inf}, "finite number"),
        ({"feature_set": "model", "proportion": "0.5"}, "valid number"),
        ({"feature_set": "model", "proportion": True}, "valid number"),
        ({"feature_set": "model"}, "proportion: Field required"),
        ({"feature_set": "medium", "proportion": 0.5}, "name the features"),
        ({"proportion": 0.5}, "name the features"),
        ({"feature_set": "all", "features": ["feature_a"], "proportion": 0.5}, "resolved by"),
        ({"features": ["feature_a", "feature_a"], "proportion": 0.5}, "more than once"),
        ({"features": ["target"], "proportion": 0.5}, "look like 'feature_"),
        ({"features": [], "proportion": 0.5}, "at least 1 item"),
        ({"feature_set": "Bad Name!", "features": ["feature_a"], "proportion": 0.5}, "pattern"),
        ({"feature_set": "model", "proportion": 0.5, "code": "import os"}, "not permitted"),
        ("model", "valid dictionary"),
    ],
)
def test_bad_declarations_are_refused_naming_the_field(tmp_path, declared, message):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**LEGACY, "neutralization": declared}))
    with pytest.raises(SpecError, match="neutralization") as caught:
        load_spec(path)
    assert message in str(caught.value)


def test_the_declared_features_are_resolved_against_the_data():
    model = ["feature_a", "feature_b"]
    columns = ["era", "feature_a", "feature_b", "feature_c", "target"]
    assert Neutralization(feature_set="model", proportion=1).neutralizers(model, columns) == model
    assert Neutralization(feature_set="all", proportion=1).neutralizers(model, columns) == [
        "feature_a", "feature_b", "feature_c",
    ]  # fmt: skip
    listed = Neutralization(feature_set="medium", features=["feature_c"], proportion=1)
    assert listed.neutralizers(model, columns) == ["feature_c"]
    assert "1 listed features (set 'medium')" in listed.describe()
    with pytest.raises(SpecError, match=r"lacks 1 of the 2 features.*feature_z"):
        Neutralization(features=["feature_c", "feature_z"], proportion=1).neutralizers(
            model, columns
        )


# --- the scoring function --------------------------------------------------------------------
def test_neutralize_for_scoring_is_neutralize_per_era_and_keeps_what_is_defined():
    rng = np.random.default_rng(0)
    ids = pd.Index([f"id{i:03d}" for i in range(200)], name="id")
    eras = pd.Series(np.repeat(["0001", "0002"], 100), index=ids)
    features = pd.DataFrame(rng.integers(0, 5, size=(200, 3)), index=ids).add_prefix("feature_")
    signal = features @ np.array([1.0, -2.0, 0.5])
    predictions = pd.DataFrame(
        {
            "mixed": signal + rng.normal(size=200),
            "linear": signal,  # fully explained by the features
            "flat": np.where(eras == "0001", 0.5, rng.normal(size=200)),  # constant in 0001
        },
        index=ids,
    )
    out = neutralize_for_scoring(predictions, features, 0.5, eras=eras)
    expected = neutralize(predictions[["mixed"]], features, 0.5, eras=eras)["mixed"]
    np.testing.assert_allclose(out["mixed"], expected, rtol=0, atol=1e-9)
    # Half of a fully explained forecast is the forecast halved: its ties stay ties.
    np.testing.assert_allclose(out["linear"], predictions["linear"] / 2, atol=1e-9)
    for era in ("0001", "0002"):
        rows = (eras == era).to_numpy()
        assert out["linear"][rows].nunique() == predictions["linear"][rows].nunique()
    full = neutralize_for_scoring(predictions, features, 1.0, eras=eras)
    assert (full["linear"] == full["linear"].iloc[0]).all(), "nothing left: a constant"
    first = (eras == "0001").to_numpy()
    assert (out["flat"][first] == 0.5).all() and not out.isna().any().any()


# --- the fund applies it ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def circuit_spec(tmp_path_factory, tournament) -> Path:
    """A real compiled circuit model's spec declaring half neutralization against its own
    features (compiled, no FHE execution)."""
    frame, metadata = tournament
    train = frame[frame["data_type"] == "train"]
    model = train_model(train, family="linear", features=metadata.features("small"), packed=False)
    compile_model(model, train)
    out = tmp_path_factory.mktemp("circuit") / "m"
    declared = Neutralization(feature_set="model", proportion=0.5)
    export_model(model, out, "circuit", neutralization=declared)
    return out / "model_spec.json"


def linear_spec(
    directory: Path, name: str, features: list[str], declared: Neutralization | None = None
) -> Path:
    spec = LinearSpec(
        name=name, family="linear", target="target", features=features, weight_bits=8,
        scale=0.01, intercept=0.0, versions=package_versions(),
        neutralization=declared,
    )  # fmt: skip
    path = directory / f"{name}.json"
    path.write_text(spec.to_json())
    return path


def receive(fund: Fund, round_id: str, predictions: pd.DataFrame) -> None:
    """What intake leaves behind for each model: a received submission and its predictions."""
    folder = fund.round_dir(round_id) / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    for model in predictions:
        fund.db.accept_submission(round_id, model, model.ljust(64, "0"), fund.db.owner(model))
        fund.db.set_submission_status(round_id, model, SubmissionStatus.RECEIVED)
        predictions[[model]].to_parquet(folder / f"{model}.parquet")


@pytest.fixture
def resolvable(tmp_path, tournament, circuit_spec):
    """A fund with a plain, a neutralized linear and a neutralized circuit model, a round over
    the 4 validation eras recorded as opened, and each model's decrypted predictions."""
    frame, metadata = tournament
    live = frame[frame["data_type"] == "validation"]
    small = metadata.features("small")
    others = [f for f in metadata.features("all") if f not in small]
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    for who in ("alice", "bob", "carol"):
        enroll(fund, tmp_path, who)
    fund.register(linear_spec(tmp_path, "plain", small), participant="alice", stake=10.0)
    fund.register(
        linear_spec(tmp_path, "exposed", small, Neutralization(features=others[:2], proportion=1)),
        participant="bob", stake=20.0,
    )  # fmt: skip
    fund.register(circuit_spec, participant="carol", stake=5.0)
    fund.db.create_round("r1", len(live), None, [new_bundle(m) for m in fund.models().index])
    fund.round_dir("r1").mkdir(parents=True)
    live[["era"]].to_parquet(fund.round_dir("r1") / "live_ids.parquet")
    rng = np.random.default_rng(3)
    predictions = pd.DataFrame(
        {
            "plain": live[small].to_numpy(float) @ rng.normal(size=len(small)),
            "exposed": live[others[0]] + 0.5 * live[others[1]] + 0.3 * rng.normal(size=len(live)),
            "circuit": live[small[0]] + rng.normal(size=len(live)),
        },
        index=live.index,
    )
    receive(fund, "r1", predictions)
    return fund, live, predictions, small, others


def test_the_fund_scores_combines_and_pays_on_the_declared_neutralization(resolvable):
    fund, live, predictions, small, others = resolvable
    # A version registered after the round opened does not change how the round is scored.
    fund.register(
        linear_spec(fund.root.parent, "exposed", small), participant="bob", stake=20.0
    )  # fmt: skip
    results = fund.score("r1", live[["target"]], live=live.drop(columns="target"), close_now=True)

    eras = live["era"]
    scored = predictions.assign(
        exposed=neutralize_for_scoring(predictions[["exposed"]], live[others[:2]], 1.0, eras=eras),
        circuit=neutralize_for_scoring(predictions[["circuit"]], live[small], 0.5, eras=eras),
    )
    stakes = pd.Series({"plain": 10.0, "exposed": 20.0, "circuit": 5.0})
    meta = combine(scored, stakes, eras=eras).meta_model
    expected = by_model(summarize(score_eras(scored, live, meta_model=meta)))
    for metric in ("corr", "mmc", "fnc", "max_exposure"):
        np.testing.assert_allclose(
            results.scores[metric], expected.loc[results.scores.index, metric], atol=1e-12
        )
    raw = by_model(summarize(score_eras(predictions, live, meta_model=meta)))
    assert raw.loc["exposed", "max_exposure"] > 0.5 > results.scores.loc["exposed", "max_exposure"]
    assert results.scores["neutralized"].to_dict() == {
        "circuit": 0.5, "exposed": 1.0, "plain": 0.0,
    }  # fmt: skip
    neutralized_notes = [n for n in results.notes if "neutralized before scoring" in n]
    assert len(neutralized_notes) == 2
    assert any(
        "exposed" in n and "100% of their fit on 2 listed features" in n for n in results.notes
    )
    assert any(
        "circuit" in n and "50% of their fit on the model's own features" in n
        for n in results.notes
    )
    published = pd.read_csv(results.directory / "scores.csv", index_col="model")
    assert list(published.columns[-6:]) == ["neutralized", "stake", "score", "payout",
                                            "stake_after", "reputation"]  # fmt: skip
    again = fund.export_results("r1")
    assert list(again.scores.columns) == list(results.scores.columns)
    assert again.scores["neutralized"].equals(results.scores["neutralized"])


def test_live_data_without_the_declared_features_is_refused_before_anything_is_paid(resolvable):
    fund, live, _, _, others = resolvable
    stakes = fund.models()["stake"].copy()
    with pytest.raises(FundError, match=r"'exposed' declares a neutralization.*lacks 1 of the 2"):
        fund.score(
            "r1", live[["target"]], live=live.drop(columns=["target", others[1]]), close_now=True
        )
    assert fund.models()["stake"].equals(stakes)
    assert not (fund.round_dir("r1") / "results").exists()
    assert fund.db.scores().empty


def test_a_round_leaves_out_a_model_whose_declared_features_the_live_data_lacks(
    tmp_path, tournament
):
    frame, metadata = tournament
    live = frame[frame["data_type"] == "live"]
    small = metadata.features("small")
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    enroll(fund, tmp_path, "alice")
    declared = Neutralization(features=["feature_absent_0001"], proportion=0.5)
    fund.register(linear_spec(tmp_path, "m", small, declared), participant="alice", stake=1.0)
    with pytest.raises(FundError, match="declared neutralization cannot be applied"):
        fund.open_round("r1", live)
    assert not fund.db.has_round("r1")


# --- the participant sees it locally -------------------------------------------------------------
def test_diagnose_shows_the_scores_after_the_declared_neutralization(tournament):
    """A ridge on the medium set, neutralized against the small set (which it contains)."""
    frame, metadata = tournament
    train = frame[frame["data_type"] == "train"]
    validation = frame[frame["data_type"] == "validation"]
    model = train_model(train, family="ridge", features=metadata.features("medium"))
    declared = Neutralization(
        feature_set="small", features=metadata.features("small"), proportion=1.0
    )
    summary = diagnose(
        model, validation, neutralization=declared, exposure_features=metadata.features("small")
    )
    modes = ["clear", "quantized", "simulated", NEUTRALIZED_MODE]
    assert list(summary.index.unique("mode")) == modes
    report = summary["mean"].unstack("metric")
    simulated, neutralized = report.loc["simulated"], report.loc[NEUTRALIZED_MODE]
    assert neutralized["max_exposure"] < 0.2 < simulated["max_exposure"]
    assert neutralized["corr"] != simulated["corr"]


def test_participant_train_declares_it_and_validation_shows_it(synth_dir, tmp_path):
    out = ok(cli("participant", "train", "--train", synth_dir / "train.parquet",
                 "--family", "ridge", "--name", "quant", "--out", "m", "--feature-set", "medium",
                 "--validation", synth_dir / "validation.parquet",
                 "--neutralize-features", "small", "--neutralize-proportion", "0.75",
                 cwd=tmp_path))  # fmt: skip
    assert "75% of their fit on 5 listed features (set 'small')" in out
    assert "neutralized (what the fund scores)" in " ".join(out.split())
    spec = json.loads((tmp_path / "m" / "model_spec.json").read_text())
    small = json.loads((synth_dir / "features.json").read_text())["feature_sets"]["small"]
    assert spec["neutralization"] == {"feature_set": "small", "features": small, "proportion": 0.75}
    report = pd.read_csv(tmp_path / "m" / "diagnostics.csv", index_col=["mode", "metric"])
    means = report["mean"].unstack("metric")
    assert set(means.index) == {"clear", "quantized", "simulated", NEUTRALIZED_MODE}
    assert means.loc[NEUTRALIZED_MODE, "corr"] != means.loc["simulated", "corr"]
    assert means.loc[NEUTRALIZED_MODE, "fnc"] != means.loc["simulated", "fnc"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--neutralize-proportion", "0.5"], "--neutralize-proportion needs --neutralize-features"),
        (["--neutralize-features", "model", "--neutralize-proportion", "1.5"],
         "--neutralize-proportion: Input should be less than or equal to 1"),
        (["--neutralize-features", "model", "--neutralize-proportion", "nan"],
         "--neutralize-proportion: Input should be a finite number"),
        (["--neutralize-features", "feature_nope_0001"],
         "does not have (e.g. ['feature_nope_0001'])"),
        (["--neutralize-features", "huge"], "feature set 'huge' is not in features.json"),
        (["--neutralize-features", "model"], "has nothing left to score"),
    ],
)  # fmt: skip
def test_participant_train_refuses_a_bad_declaration_before_training(
    synth_dir, tmp_path, options, message
):
    result = cli("participant", "train", "--train", synth_dir / "train.parquet", "--family",
                 "linear", "--name", "quant", "--out", "m", *options, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists(), "nothing was trained or written"
