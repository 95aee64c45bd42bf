"""The README runs as written, in an empty folder: its Python snippet (real FHE on a tiny packed
round: 100 live rows of the 'small' features), and its walk-through, the shell blocks marked
``<!-- walkthrough -->`` run in order as a user would type them (real FHE: two rounds of a
decision tree on 50 live rows each, and an encrypted training job of two steps, which
spends about a minute generating its keys; about 8 minutes in all on 2 cores)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
MARK = "<!-- walkthrough -->"
BASH_BLOCK = re.compile(r"(<!-- walkthrough -->\n)?```bash\n(.*?)```", re.DOTALL)

NOT_RUN = {
    "python3.11 -m venv": "installs the package into a new virtual environment, then runs the "
    "demo at its full size (about 8 minutes) or the whole test suite: CI's .ci/run does the "
    "install and the suite; tests/test_cli_round.py runs the demo at a small size",
    "participant download R1 --server": "needs a second actor, the fund's service "
    "(`fund serve`) running; tests/test_service.py runs these commands against it",
    "dask scheduler": "needs a Dask scheduler and its workers running (on other machines); "
    "tests/test_cluster.py runs the engine on a scheduler it starts",
    "--neutralize-features small": "an alternative to the walk-through's `train` (a model "
    "named carol too); tests/test_declared_neutralization.py trains, runs and scores a model "
    "that declares a neutralization",
    "data synth big/": "reference at real scale (500 eras of 5,000 rows and 780 features: "
    "minutes and gigabytes); tests/test_cli.py runs synth, validate and split on small data",
}
"""Shell blocks of the README that this test does not run, found by a phrase in them, and why."""

WRITES = {
    "data synth data/": [
        "data/train.parquet",
        "data/validation.parquet",
        "data/live.parquet",
        "data/features.json",
        "data/live/era_0033.parquet",
        "data/live/era_0034.parquet",
        "data/live_targets/era_0033.parquet",
        "data/live_targets/era_0034.parquet",
    ],
    "fund public-key > fund.pub": ["fund.pub"],
    "participant train ": ["carol/model_spec.json", "carol/deployment", "carol/training.json"],
    "identity new carol.pem": ["carol.pem", "carol.pem.pub"],
    "fund open-round R1": [
        "fund/rounds/R1/bundles/carol/ciphertexts.parquet",
        "fund/rounds/R1/bundles/carol/evaluation_keys.bin",
        "fund/rounds/R1/bundles/carol/manifest.sig",
    ],
    "participant run fund/rounds/R1/": ["carol-sub-R1/manifest.json", "carol-sub-R1/manifest.sig"],
    "fund score R1": ["fund/rounds/R1/results/scores.csv", "fund/rounds/R1/results/per_era.csv"],
    "fund open-round R2": ["fund/rounds/R2/bundles/carol/manifest.sig"],
    "participant run fund/rounds/R2/": ["carol-sub-R2/manifest.json"],
    "fund score R2": ["fund/rounds/R2/results/scores.csv", "fund/rounds/R2/results/per_era.csv"],
    "fund report --out report.html": ["report.html"],
    "participant training-job": ["carol-job/training_spec.json"],
    "fund open-training J1": ["fund/training/J1/bundle/manifest.json"],
    "participant train-encrypted": ["carol-result/manifest.json"],
    "fund receive-training J1": ["fund/training/J1/weights.json"],
    "participant from-weights": ["carol-sgd-model/model_spec.json"],
}
"""What each walk-through command writes, as the README says (a phrase of the command: files)."""

SAYS = {
    "participant families": ["xgboost"],
    "participant train ": ["quantized", "simulated", "model_spec.json"],
    "fund models": ["carol"],
    "fund status R1": ["received"],
    "fund leaderboard": ["carol"],
    "participant train-encrypted": ["encrypted weights written"],
    "fund receive-training J1": ["(intercept)", "weights.json"],
    "register carol-sgd-model": ["carol-sgd-model"],
}
"""What each walk-through command prints (a phrase of the command: phrases of its output)."""


def walkthrough_commands() -> list[str]:
    """The marked blocks' commands, in order; each unmarked block must be in NOT_RUN."""
    commands: list[str] = []
    skipped = set()
    for mark, block in BASH_BLOCK.findall(README.read_text()):
        if not mark:
            reasons = [phrase for phrase in NOT_RUN if phrase in block]
            assert len(reasons) == 1, f"a README shell block is neither run nor excused:\n{block}"
            skipped.update(reasons)
            continue
        joined = block.replace("\\\n", " ")
        commands += [line.strip() for line in joined.splitlines() if line.strip()]
    assert skipped == set(NOT_RUN), f"NOT_RUN names blocks the README no longer has: {skipped}"
    return commands


@pytest.mark.fhe
def test_the_python_api_snippet_runs_as_written(tmp_path):
    section = README.read_text().split("### Python API", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert snippet is not None, "the README's Python API section has no python block"
    (tmp_path / "round.py").write_text(snippet.group(1))
    result = subprocess.run(
        [sys.executable, "round.py"], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "alice" in result.stdout and "corr" in result.stdout
    assert (tmp_path / "fund" / "rounds" / "R1" / "results" / "scores.csv").is_file()


@pytest.mark.fhe
def test_the_walkthrough_runs_as_written(tmp_path):
    """Every command of the walk-through exits 0 and writes and prints what the README says;
    `fhe-toolkit` is this checkout's command line (a shim on PATH)."""
    commands = walkthrough_commands()
    shims = tmp_path / "bin"
    shims.mkdir()
    shim = shims / "fhe-toolkit"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m fhe_toolkit.cli "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    home = tmp_path / "walk"
    home.mkdir()
    seen = set()
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {command}"],
            cwd=home, env=env, capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr[-3000:]}"
        for phrase, files in WRITES.items():
            if phrase in command:
                seen.add(phrase)
                missing = [f for f in files if not (home / f).exists()]
                assert not missing, f"{command} did not write {missing}"
        for phrase, texts in SAYS.items():
            if phrase in command:
                seen.add(phrase)
                absent = [t for t in texts if t not in result.stdout]
                assert not absent, f"{command} did not print {absent}:\n{result.stdout}"
    assert seen == set(WRITES) | set(SAYS), "README commands the test expects are gone"

    assert re.fullmatch(r"[0-9a-f]{64}\n", (home / "fund.pub").read_text())
    results = home / "fund" / "rounds"
    r1 = pd.read_csv(results / "R1" / "results" / "scores.csv", index_col="model")
    r2 = pd.read_csv(results / "R2" / "results" / "scores.csv", index_col="model")
    assert list(r1.index) == list(r2.index) == ["carol"]
    assert r1.loc["carol", "stake"] == 80 and r2.loc["carol", "stake"] == 120
    assert pd.notna(r1.loc["carol", "bmc"])  # R1 was scored with --benchmark-train
    assert {"corr", "mmc", "score", "payout", "stake_after", "reputation"} <= set(r2.columns)
