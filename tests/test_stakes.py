"""Stakes within limits wherever they enter: the command line (a negative amount gets a message
about stakes, not "No such option"), the fund's Python API, and payouts when a round is scored
(a gain stops at the cap, a payout rule that overflows pays nothing). No FHE: the round scored
here is recorded with made-up decrypted predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.data.schema import TARGET_VALUES
from fhe_toolkit.errors import FundError, RegistryError
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.fund import Fund
from fhe_toolkit.protocol.modelspec import ModelSpec, validate_spec
from fhe_toolkit.registry import NewBundle
from tests.cli_runner import cli
from tests.identities import enroll
from tests.test_protocol import model_spec_raw

ROWS, ERAS = 60, 3


def model_spec(name: str) -> ModelSpec:
    """A valid spec (not compiled here) made with the fund's own package versions."""
    return validate_spec(model_spec_raw(name) | {"versions": package_versions()}, ModelSpec, name)


def test_the_command_line_refuses_stakes_outside_the_limits_with_a_message_about_stakes(tmp_path):
    def fails(*args: str) -> str:
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        return result.stderr

    shown = cli("fund", "config", "--max-stake", "500", cwd=tmp_path)  # makes the fund
    assert shown.returncode == 0 and "max stake: 500.00" in shown.stdout
    assert "a stake must be ≥ 0, got -5" in fails("fund", "stake", "m", "-5")
    assert "a stake must be a finite number, got nan" in fails("fund", "register", "x.json",
                                                               "--participant", "a", "--stake",
                                                               "nan")  # fmt: skip
    assert "cap of 500, got 501" in fails("fund", "stake", "m", "501")
    assert "at most 1,000,000,000,000,000" in fails("fund", "config", "--max-stake", "1e16")
    assert "1,000,000,000" in cli("fund", "register", "--help", cwd=tmp_path).stdout


def test_the_python_api_refuses_stakes_outside_the_limits(tmp_path):
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    enroll(fund, tmp_path, "alice")
    spec = tmp_path / "spec.json"
    spec.write_text(model_spec("m").to_json())
    for stake, message in ((-1, "≥ 0"), (float("inf"), "finite"), ("10", "a number"),
                           (2e9, "cap of 1,000,000,000")):  # fmt: skip
        with pytest.raises(RegistryError, match=message):
            fund.register(spec, participant="alice", stake=stake)
    fund.register(spec, participant="alice", stake=np.float32(10))
    with pytest.raises(RegistryError, match="finite"):
        fund.set_stake("m", float("nan"))
    fund.set_max_stake(20)
    assert fund.max_stake() == 20
    with pytest.raises(RegistryError, match="cap of 20, got 21"):
        fund.set_stake("m", 21)
    assert fund.models().loc["m", "stake"] == 10


def recorded_round(tmp_path, stakes: dict[str, float]) -> tuple[Fund, pd.DataFrame, pd.DataFrame]:
    """A fund with one round whose models' predictions are decrypted and kept (made up, no FHE):
    the fund, the live rows and their targets."""
    rng = np.random.default_rng(0)
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    enroll(fund, tmp_path, "alice")
    ids = pd.Index([f"id{i}" for i in range(ROWS)], name="id")
    live = pd.DataFrame(
        {
            "era": np.repeat([f"{e:04d}" for e in range(ERAS)], ROWS // ERAS),
            "feature_a": rng.integers(0, 5, ROWS).astype(np.int8),
            "feature_b": rng.integers(0, 5, ROWS).astype(np.int8),
        },
        index=ids,
    )
    targets = pd.DataFrame({"target": rng.choice(TARGET_VALUES, ROWS)}, index=ids)
    for name, stake in stakes.items():
        spec = model_spec(name)
        fund.db.register_model(name, "alice", spec.family, spec.target, spec.to_json(),
                               spec.sha256(), stake)  # fmt: skip
    bundles = [NewBundle(m, "0" * 32, "1" * 64, [list(ids)]) for m in stakes]
    fund.db.create_round("r1", ROWS, None, bundles)
    folder = fund.round_dir("r1") / "predictions"
    folder.mkdir(parents=True)
    live[["era"]].to_parquet(fund.round_dir("r1") / "live_ids.parquet")
    signal = targets["target"] + rng.normal(0, 0.1, ROWS)
    for name in stakes:
        signal.rename(name).to_frame().to_parquet(folder / f"{name}.parquet")
    return fund, live, targets


def test_a_gain_stops_at_the_cap_and_the_rest_is_noted(tmp_path):
    fund, live, targets = recorded_round(tmp_path, {"m": 100.0, "n": 10.0})
    fund.set_max_stake(101)
    results = fund.score("r1", targets, live=live, close_now=True)
    scores = results.scores
    assert scores.loc["m", "payout"] == pytest.approx(5.0)  # clipped at 5 % of 100
    assert scores.loc["m", "stake_after"] == 101.0
    assert scores.loc["n", "stake_after"] == pytest.approx(10.5)
    assert any("m's stake reached the fund's cap of 101: 4.00 of its payout" in n
               for n in results.notes)  # fmt: skip
    assert "beyond_cap" not in scores.columns
    assert fund.export_results("r1").scores.equals(scores)  # the same files again, from the records


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"payout_factor": float("inf")}, "finite numbers"),
        ({"payout_factor": 1e307, "clip": 1e307}, "give no finite payout for"),
        ({"bonus": 1.0}, "unknown payout settings"),
    ],
)
def test_a_payout_rule_that_gives_no_finite_payout_pays_nothing(tmp_path, settings, message):
    fund, live, targets = recorded_round(tmp_path, {"m": 1e9})
    with pytest.raises(FundError, match=message):
        fund.score("r1", targets, live=live, close_now=True, payout_settings=settings)
    assert fund.db.payouts().empty and fund.models().loc["m", "stake"] == 1e9
