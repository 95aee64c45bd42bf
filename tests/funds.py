"""A fund on a small synthetic tournament, for the tests that play whole rounds in real FHE
(tests/test_fhe_round.py, tests/test_packed_round.py, tests/test_service.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fhe_toolkit.data import SynthConfig, load_features_json, load_tournament, synthesize
from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import export_model
from fhe_toolkit.participant.model import TrainedModel
from tests.identities import enroll


@dataclass(frozen=True)
class SmallFund:
    """Synthetic data in ``root / "data"`` and a new fund in ``root / "fund"`` (keys in
    ``root / "keys"``) with its participants enrolled, and the data read back."""

    root: Path
    paths: dict[str, Path]
    train: pd.DataFrame
    live: pd.DataFrame
    features: list[str]
    """The feature set asked for, from the data's ``features.json``."""
    fund: Fund
    identities: dict[str, Path]
    """Each participant's private signing key (in ``root``), by name."""


def small_fund(
    root: Path, config: SynthConfig, participants: Iterable[str], feature_set: str = "all"
) -> SmallFund:
    paths = synthesize(root / "data", config)
    fund = Fund(root / "fund", root / "keys")
    return SmallFund(
        root=root,
        paths=paths,
        train=load_tournament(paths["train"]),
        live=load_tournament(paths["live"]),
        features=load_features_json(paths["features"]).features(feature_set),
        fund=fund,
        identities={name: enroll(fund, root, name) for name in participants},
    )


def register(fund: Fund, model: TrainedModel, directory: Path, owner: str) -> None:
    """Export ``model`` to ``directory`` (named after it) and register it for ``owner`` with a
    stake of 10."""
    export_model(model, directory, directory.name)
    fund.register(directory / "model_spec.json", participant=owner, stake=10.0)
