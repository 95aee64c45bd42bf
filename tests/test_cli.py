"""The command line, run as a user would: as a subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.data import load_tournament
from fhe_toolkit.fund import Fund


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhe_toolkit.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    "command", [[], ["data"], ["data", "synth"], ["data", "validate"], ["data", "split"], ["score"]]
)
def test_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_synth_validate_score(tmp_path):
    out = tmp_path / "synth"
    result = run("data", "synth", str(out), "--train-eras", "6", "--validation-eras", "3",
                 "--rows-per-era", "80", "--features", "12", "--groups", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "validation.parquet" in result.stdout
    result = run("data", "validate", str(out / "validation.parquet"), "--feature-set", "small")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "240 rows, 3 eras" in result.stdout
    result = run("data", "split", str(out / "validation.parquet"), "--out", str(tmp_path / "eras"),
                 "--eras", "0013,0011", "--format", "csv")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        f"{era},80,{tmp_path / 'eras' / f'era_{era}.parquet'}" for era in ("0011", "0013")
    ]

    data = load_tournament(out / "validation.parquet")
    rng = np.random.default_rng(0)
    preds = pd.DataFrame(rng.normal(size=(len(data), 3)), index=data.index)
    preds.columns = ["m1", "m2", "bench"]
    preds.to_parquet(tmp_path / "preds.parquet")
    result = run(
        "score", str(tmp_path / "preds.parquet"), "--data", str(out / "validation.parquet"),
        "--benchmark", "bench", "--fnc-feature-set", "small", "--out", str(tmp_path / "scores"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "m1" in result.stdout and "bmc" in result.stdout and "mmc" in result.stdout
    per_era = pd.read_csv(tmp_path / "scores" / "per_era.csv")
    assert set(per_era["model"]) == {"m1", "m2"} and per_era["era"].nunique() == 3


def test_errors_are_one_clear_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"id": ["a", "a"], "era": ["0001", "0001"], "feature_x": [1, 9]}).set_index(
        "id"
    ).to_parquet(bad)
    result = run("data", "validate", str(bad))
    assert result.returncode == 2
    assert "duplicate id" in result.stderr and "outside 0..4" in result.stderr
    assert "Traceback" not in result.stderr

    result = run("data", "synth", str(tmp_path / "x"), "--rows-per-era", "1")
    assert result.returncode == 2 and "rows_per_era" in result.stderr


def test_receive_takes_several_submissions_and_refuses_each_on_its_own(tmp_path):
    Fund(tmp_path / "fund", tmp_path / "keys")
    store = ["--fund-dir", str(tmp_path / "fund"), "--keys", str(tmp_path / "keys")]
    first, second = (str(tmp_path / name) for name in ("alice-sub", "bob-sub"))
    result = run("fund", "receive", "R1", first, second, *store)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"refused {first}:" in result.stderr and f"refused {second}:" in result.stderr
    assert result.stderr.count("round 'R1' was never opened") == 2, result.stderr
    assert "2 of 2 submissions refused" in result.stderr
    alone = run("fund", "receive", "R1", first, *store)
    assert alone.returncode == 2 and "refused" not in alone.stderr and "R1" in alone.stderr
