"""Made-up tournament records for tests of the registry, leaderboard and report: two
participants, two models, and rounds resolved with given scores (no FHE)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fhe_toolkit.registry import NewBundle, Registry

KEY_A, KEY_B = b"a" * 32, b"b" * 32


def new_bundle(model: str) -> NewBundle:
    """A made-up bundle of one batch of one row."""
    return NewBundle(model, key_set_id="0" * 32, bundle_sha256="1" * 64, batch_ids=[["x"]])


def registry_with_models(url: str) -> Registry:
    registry = Registry(url)
    registry.add_participant("alice", KEY_A)
    registry.add_participant("bob", KEY_B)
    for name, owner, stake in (("m-a", "alice", 100.0), ("m-b", "bob", 50.0)):
        registry.register_model(name, owner, "linear", "target", "{}", name * 8, stake)
    return registry


def play_round(
    registry: Registry, name: str, results: dict[str, tuple[float, float]]
) -> pd.DataFrame:
    """Open a round for both models, take a submission from each, resolve it with the given
    (corr, mmc) per model: payout = stake · clip(0.5·corr + 2·mmc, ±0.05). Returns what
    :meth:`Registry.record_results` returns."""
    registry.create_round(name, 1, None, [new_bundle(m) for m in results])
    for model in results:
        registry.accept_submission(
            name, model, f"{name}{model}".ljust(64, "0"), registry.owner(model)
        )
    bundles = registry.round_record(name).bundles
    stakes = {m: bundles[m].stake for m in results}
    payouts = pd.DataFrame(
        {
            m: {"corr": c, "mmc": x, "score": 0.5 * c + 2 * x,
                "payout": stakes[m] * float(np.clip(0.5 * c + 2 * x, -0.05, 0.05))}
            for m, (c, x) in results.items()
        }
    ).T  # fmt: skip
    per_era = pd.DataFrame(
        [
            {"model": m, "target": "target", "era": era, "metric": metric, "value": value}
            for m, (c, x) in results.items()
            for era in ("0001", "0002")
            for metric, value in (("corr", c), ("mmc", x), ("max_exposure", 0.2 + c))
        ]
    )
    correlations = pd.DataFrame(np.eye(len(results)), index=list(results), columns=list(results))
    return registry.record_results(name, per_era, payouts, correlations, reputation_rounds=2)
