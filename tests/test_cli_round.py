"""A whole round through the command line, as subprocesses (real FHE, tiny: 40 live rows of 5
features, a linear model), and the demo at a small size."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.cli_runner import cli, ok

pytestmark = pytest.mark.fhe


def test_round_through_the_cli(tmp_path):
    ok(cli("data", "synth", "data", "--train-eras", "10", "--validation-eras", "2",
           "--rows-per-era", "40", "--features", "12", "--groups", "3", cwd=tmp_path))  # fmt: skip
    validation = pd.read_parquet(tmp_path / "data" / "validation.parquet")
    validation[["feature_intelligence_0000"]].rename(columns=lambda _: "bench").to_parquet(
        tmp_path / "bench.parquet"
    )
    out = ok(cli("participant", "train", "--train", "data/train.parquet", "--family", "linear",
                 "--name", "alice", "--out", "alice", "--validation", "data/validation.parquet",
                 "--benchmark", "bench.parquet", cwd=tmp_path))  # fmt: skip
    assert "quantized" in out and "simulated" in out and "bmc" in out
    assert "model_spec.json" in out
    out = ok(cli("identity", "new", "alice.pem", cwd=tmp_path))
    assert "alice.pem.pub" in out
    ok(cli("fund", "add-participant", "alice", "--public-key", "alice.pem.pub", cwd=tmp_path))
    ok(cli("fund", "register", "alice/model_spec.json", "--participant", "alice",
           "--stake", "25", cwd=tmp_path))  # fmt: skip
    fund_key = ok(cli("fund", "public-key", cwd=tmp_path)).split()[0]
    out = ok(cli("fund", "open-round", "R1", "--live", "data/live.parquet", cwd=tmp_path))
    # A linear model runs packed by default: on the round's shared encrypted dataset.
    bundle = tmp_path / "fund" / "rounds" / "R1" / "packed"
    assert str(Path("fund/rounds/R1/packed")) in out and bundle.is_dir()
    result = cli("participant", "run", bundle, "--model", "alice", "--out", "sub",
                 "--identity", "alice.pem", "--fund-key", fund_key, cwd=tmp_path)  # fmt: skip
    assert "rows" in ok(result) + result.stderr
    ok(cli("fund", "receive", "R1", "sub", cwd=tmp_path))
    again = cli("fund", "receive", "R1", "sub", cwd=tmp_path)
    assert again.returncode == 2 and "received already" in again.stderr
    assert "Traceback" not in again.stderr
    assert "received" in ok(cli("fund", "status", "R1", cwd=tmp_path))
    result = cli("fund", "score", "R1", "--live", "data/live.parquet", "--targets",
                 "data/live_targets.parquet", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "--close-now" in result.stderr
    out = ok(cli("fund", "score", "R1", "--live", "data/live.parquet", "--targets",
                 "data/live_targets.parquet", "--benchmark-train", "data/train.parquet",
                 "--close-now", "--format", "csv", cwd=tmp_path))  # fmt: skip
    assert out.splitlines()[0].startswith("model,") and "payout" in out.splitlines()[0]
    assert out.splitlines()[1].startswith("alice,")
    scores = pd.read_csv(tmp_path / "fund" / "rounds" / "R1" / "results" / "scores.csv")
    assert list(scores["model"]) == ["alice"]
    board = ok(cli("fund", "leaderboard", "--sort", "stake", cwd=tmp_path))
    assert "alice" in board and "reputation" in board
    ok(cli("fund", "report", "--out", "report.html", cwd=tmp_path))
    assert (tmp_path / "report.html").stat().st_size > 1_000_000  # plotly.js is inlined
    assert (tmp_path / "keys" / "R1" / "_packed" / "retired.json").is_file()


def test_cli_errors_name_the_problem(tmp_path):
    result = cli("fund", "register", "nope.json", "--participant", "x", "--stake", "1",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "nope.json does not exist" in result.stderr
    result = cli("participant", "run", "nowhere", "--model", "nothing", "--out", "x",
                 "--identity", "none.pem", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_demo_at_a_small_size(tmp_path):
    out = ok(cli("demo", "--out", "demo", "--live-rows", "24", cwd=tmp_path))
    assert "scores and payouts" in out
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == ["round-1", "round-2", "round-3"]
    everyone = {"alice", "bob", "carol", "dave", "erin"}
    assert all(set(r["scores"]) == everyone for r in summary["rounds"])
    assert summary["live_rows_per_round"] == 24
    assert set(summary["leaderboard"]) == everyone
    # The three linear models share one packed dataset per round; the trees have their own.
    assert set(summary["sizes"]) == {"alice, dave, erin", "bob", "carol"}
    assert (tmp_path / summary["report"]).is_file()
