"""The command line's errors, and the demo at a small size (real FHE: three rounds of five
models on 24 live rows). A whole round by hand through the command line is the README's
walk-through, which tests/test_readme.py runs."""

from __future__ import annotations

import json

import pytest

from tests.cli_runner import cli, ok

pytestmark = pytest.mark.fhe


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
