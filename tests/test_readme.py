"""The README's Python snippet runs as written, in an empty folder (real FHE on a tiny packed
round: 100 live rows of the 'small' features)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


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
