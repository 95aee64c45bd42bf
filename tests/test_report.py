"""The HTML report: self-contained, and its charts really drawn, checked in headless Chromium
(Debian's package, which .ci/run installs) with the network unused."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from fhe_toolkit.errors import ReportError
from fhe_toolkit.fund.report import write_report
from fhe_toolkit.registry import Registry
from tests.tournament_records import play_round, registry_with_models

CHARTS = (
    "cumulative-corr", "cumulative-mmc", "per-era-mmc", "payouts", "stakes", "exposure",
    "correlations",
)  # fmt: skip
"""What the issue asks the report to show, by the id of each chart's element."""
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def report(tmp_path):
    registry = registry_with_models(f"sqlite:///{tmp_path / 'fund.db'}")
    play_round(registry, "r1", {"m-a": (0.03, 0.01), "m-b": (-0.01, 0.0)})
    registry.set_stake("m-b", 70.0)
    play_round(registry, "r2", {"m-a": (0.01, -0.01), "m-b": (0.02, 0.01)})
    return write_report(registry, tmp_path / "report.html")


def test_the_report_is_self_contained(report):
    page = report.read_text()
    assert re.findall(r"<(?:script|link|img)[^>]+(?:src|href)=", page) == []
    assert "m-a" in page and "Leaderboard" in page


def test_chromium_draws_every_chart_offline(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian's chromium package; .ci/run installs it)")
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=30000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    for chart in CHARTS:
        opening = re.search(rf'<div[^>]*id="{chart}"[^>]*>', dom)
        assert opening is not None, f"no {chart} chart in the page"
        # plotly.js marks a graph div js-plotly-plot once it has drawn it.
        assert "js-plotly-plot" in opening.group(0), f"{chart} was not drawn"
    assert dom.count('class="main-svg"') >= 2 * len(CHARTS)


def test_no_report_before_a_round_is_resolved(tmp_path):
    with pytest.raises(ReportError, match="no round is resolved yet"):
        write_report(Registry(f"sqlite:///{tmp_path / 'fund.db'}"), tmp_path / "report.html")
