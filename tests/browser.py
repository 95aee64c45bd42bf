"""Headless Debian Chromium for the tests that look at a page as a person would."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
"""Without the background-networking flags Chromium keeps dialling out of a closed network."""


def chromium() -> str:
    """Chromium's path, or skip the test saying how to get it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("Chromium is not installed (Debian's chromium package; .ci/run installs it)")
    return found


def self_contained(page: Path) -> str:
    """The page's HTML, once checked to fetch nothing: no script, stylesheet or image with a
    ``src`` or ``href``."""
    html = page.read_text()
    assert re.findall(r"<(?:script|link|img)[^>]+(?:src|href)=", html) == []
    return html


def assert_charts_drawn(page: Path, charts: Sequence[str], profile: Path) -> None:
    """Open ``page`` offline and check that plotly.js drew every chart (by element id)."""
    result = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
         "--virtual-time-budget=30000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    for chart in charts:
        opening = re.search(rf'<div[^>]*id="{chart}"[^>]*>', dom)
        assert opening is not None, f"no {chart} chart in the page"
        # plotly.js marks a graph div js-plotly-plot once it has drawn it.
        assert "js-plotly-plot" in opening.group(0), f"{chart} was not drawn"
    assert dom.count('class="main-svg"') >= 2 * len(charts)
