"""Lint (ruff), formatting (ruff format) and type checks (mypy) run with the tests, so the
README's one test command covers them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["fhe_toolkit", "tests", "benchmarks", "examples"]


def test_ruff():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *SOURCES],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    """Every file is as `ruff format` writes it; run `ruff format <file>` on the ones named."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", *SOURCES],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy():
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
