"""The HTML report: self-contained, and its charts really drawn, checked in headless Chromium
(Debian's package, which .ci/run installs) with the network unused."""

from __future__ import annotations

import pytest

from fhe_toolkit.errors import ReportError
from fhe_toolkit.fund.report import write_report
from fhe_toolkit.registry import Registry
from tests.browser import assert_charts_drawn, self_contained
from tests.tournament_records import play_round, registry_with_models

CHARTS = (
    "cumulative-corr", "cumulative-mmc", "per-era-mmc", "payouts", "stakes", "exposure",
    "correlations",
)  # fmt: skip
"""What the issue asks the report to show, by the id of each chart's element."""


@pytest.fixture
def report(tmp_path):
    registry = registry_with_models(f"sqlite:///{tmp_path / 'fund.db'}")
    play_round(registry, "r1", {"m-a": (0.03, 0.01), "m-b": (-0.01, 0.0)})
    registry.set_stake("m-b", 70.0)
    play_round(registry, "r2", {"m-a": (0.01, -0.01), "m-b": (0.02, 0.01)})
    return write_report(registry, tmp_path / "report.html")


def test_the_report_is_self_contained(report):
    page = self_contained(report)
    assert "m-a" in page and "Leaderboard" in page


def test_chromium_draws_every_chart_offline(report, tmp_path):
    assert_charts_drawn(report, CHARTS, tmp_path / "profile")


def test_no_report_before_a_round_is_resolved(tmp_path):
    with pytest.raises(ReportError, match="no round is resolved yet"):
        write_report(Registry(f"sqlite:///{tmp_path / 'fund.db'}"), tmp_path / "report.html")
