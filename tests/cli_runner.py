"""Running the command line as a user would: a subprocess, its output and exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhe_toolkit.cli", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The command's standard output, after checking that it succeeded."""
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
