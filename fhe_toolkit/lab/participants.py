"""The lab's participants: archetypes, their accounts, and the forecasts that need no one else.

Every archetype is listed in :data:`ARCHETYPES` with its role (``honest``, ``low_effort`` or
``gaming``) and what it can see. The models are trained once, on the training eras, and predict
every round; the archetypes that copy someone (``meta_copycat``, ``meta_copy_exact``,
``top_copycat``, ``negated_meta``) are formed round by round in
:mod:`fhe_toolkit.lab.tournament`, since what they copy depends on the round.

What a copycat can really copy
------------------------------
In a live Numerai round nobody sees the current meta model, nor anyone else's predictions. What is
public is the meta model of *resolved* eras (Numerai publishes its predictions there). So the
realistic ``meta_copycat`` fits a ridge regression from those eras' features to the published meta
model (the latest ``copy_window`` rounds) and submits that fit on this round's features; it sits
out the first round, when nothing is published yet. Two archetypes are oracles, deliberately
stronger than any live participant, as bounds: ``meta_copy_exact`` submits this round's meta model
of everyone else, and ``negated_meta`` its negation. ``top_copycat`` submits the current
predictions of the largest staked model, as if that model's code had leaked (a public notebook).
In this toolkit's fund the live features are encrypted and only rounded per-era aggregates are
published, so even ``meta_copycat`` is a worst case there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fhe_toolkit.data.schema import ERA, MAIN_TARGET
from fhe_toolkit.errors import DataValidationError
from fhe_toolkit.lab.data import LabData
from fhe_toolkit.scoring import neutralize

RIDGE_ALPHA = 10.0
HONEST_SUBSET = 0.6
"""Share of the crowd's features each ridge (and the sybils' signal) is trained on."""
HIGH_EXPOSURE_FEATURES = 6
"""The high-exposure model bets on this many features, the strongest in its recent eras."""
RISK_WINDOW = 8
"""Eras in the rolling mean that finds the riskiest features."""
TREE_ROWS = 40_000
"""The tree model trains on at most this many training rows (a seeded sample): keeps it fast."""
SYBIL_JITTER = 0.1
"""Each sybil account perturbs the shared signal by this share of its spread: not identical."""


@dataclass(frozen=True)
class Archetype:
    name: str
    role: str
    """``honest`` (its own work), ``low_effort`` (no real work) or ``gaming`` (tries to be paid
    for someone else's work, or for luck)."""
    description: str
    dynamic: bool = False
    """Formed round by round from others' forecasts, in the tournament loop."""


ARCHETYPES: dict[str, Archetype] = {
    a.name: a
    for a in (
        Archetype("ridge", "honest", "ridge regression on a random 60% of the crowd's features"),
        Archetype(
            "tree", "honest", "gradient-boosted trees on the crowd's features (40k rows)"
        ),
        Archetype(
            "orthogonal", "honest", "ridge on the features the crowd does not use: new signal"
        ),
        Archetype(
            "high_exposure", "honest",
            f"ridge on the {HIGH_EXPOSURE_FEATURES} features strongest in its last training "
            "eras (the regime-flipping ones among them)",
        ),
        Archetype(
            "neutralized", "honest",
            "the high-exposure model neutralized against the riskiest features (those whose "
            "correlation with the target drifts most over the training eras)",
        ),
        Archetype("noise", "low_effort", "standard normal noise, fresh every round"),
        Archetype(
            "noisy_copy", "low_effort", "the first ridge's predictions plus 1.5 times as much noise"
        ),
        Archetype(
            "lottery", "gaming", "all-in on one random feature with a random sign, every round"
        ),
        Archetype(
            "sybil", "gaming",
            "one ridge signal split over several accounts (the stake of one account split "
            "evenly), each slightly perturbed",
        ),
        Archetype(
            "meta_copycat", "gaming",
            "ridge fit of the published meta model of the latest resolved rounds, applied to "
            "this round",
            dynamic=True,
        ),
        Archetype(
            "top_copycat", "gaming",
            "this round's predictions of the largest staked model (as if its code leaked)",
            dynamic=True,
        ),
        Archetype(
            "meta_copy_exact", "gaming",
            "oracle: this round's meta model of everyone else (no live participant sees it)",
            dynamic=True,
        ),
        Archetype(
            "negated_meta", "gaming", "oracle: minus this round's meta model of everyone else",
            dynamic=True,
        ),
    )
}  # fmt: skip
DEFAULT_ACCOUNTS: dict[str, int] = {
    "ridge": 3, "tree": 1, "orthogonal": 1, "high_exposure": 1, "neutralized": 1, "noise": 2,
    "noisy_copy": 1, "lottery": 2, "sybil": 5, "meta_copycat": 1, "top_copycat": 1,
    "meta_copy_exact": 1, "negated_meta": 1,
}  # fmt: skip
"""Accounts per archetype in the default lab: 21, each staking 1 (sybils 1/5 each)."""
COPYING = ("meta_copycat", "top_copycat", "meta_copy_exact", "negated_meta")
"""Archetypes that copy others; ``top_copycat`` never copies these."""
NOISY_COPY_NOISE = 1.5


@dataclass(frozen=True)
class Participants:
    """The accounts (one row each: ``archetype``, ``role``, ``initial_stake``, in play order)
    and the forecasts of the accounts that need no one else's (rows of the tournament)."""

    accounts: pd.DataFrame
    static: pd.DataFrame
    crowd_features: list[str]
    risky_features: list[str]
    exposure_features: list[str]

    def of(self, archetype: str) -> list[str]:
        return list(self.accounts.index[self.accounts["archetype"] == archetype])


def check_accounts(accounts: Mapping[str, int]) -> dict[str, int]:
    """Account counts by archetype, checked: known names, whole counts ≥ 0, someone honest."""
    unknown = sorted(set(accounts) - set(ARCHETYPES))
    if unknown:
        raise DataValidationError(
            f"unknown archetype(s) {unknown}; the lab knows {list(ARCHETYPES)}."
        )
    bad: dict[str, object] = {
        k: v
        for k, v in accounts.items()
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0
    }
    if bad:
        raise DataValidationError(f"account counts must be whole numbers ≥ 0, but got {bad}.")
    counts = {name: int(accounts.get(name, 0)) for name in ARCHETYPES}
    if counts["noisy_copy"] and not counts["ridge"]:
        raise DataValidationError("noisy_copy copies the first ridge account: add a ridge.")
    if counts["neutralized"] and not counts["high_exposure"]:
        raise DataValidationError("neutralized twins the high_exposure model: add one.")
    if not any(counts[name] for name, a in ARCHETYPES.items() if not a.dynamic):
        raise DataValidationError("the lab needs at least one account that is not a copycat.")
    return counts


def make_participants(
    data: LabData,
    accounts: Mapping[str, int],
    *,
    seed: int,
    crowd_share: float = 0.5,
    recent_eras: int = 12,
) -> Participants:
    """Train every model once and forecast every round for the accounts that copy no one.

    ``crowd_share`` of the features (a seeded choice) is what the crowd uses; the ``orthogonal``
    model uses the rest. ``recent_eras``: the high-exposure model's training window.
    """
    # Imported here: scikit-learn (and the scipy.stats it loads) is 40% of the command line's
    # start-up, which every command, `fund receive` included, would pay for the lab.
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge

    counts = check_accounts(accounts)
    rng = np.random.default_rng([seed, 7])
    features = list(data.features)
    shuffled = list(rng.permutation(features))
    n_crowd = min(len(features) - 1, max(1, round(crowd_share * len(features))))
    crowd, others = sorted(shuffled[:n_crowd]), sorted(shuffled[n_crowd:])
    x_train = data.train[features].to_numpy(np.float32)
    y_train = data.train[MAIN_TARGET].to_numpy(np.float64)
    x_rounds = data.rounds[features].to_numpy(np.float32)
    column = {name: i for i, name in enumerate(features)}
    eras_rounds = data.rounds[ERA]
    rows = len(data.rounds)

    def ridge(subset: list[str]) -> np.ndarray:
        cols = [column[f] for f in subset]
        model = Ridge(alpha=RIDGE_ALPHA).fit(x_train[:, cols], y_train)
        return np.asarray(model.predict(x_rounds[:, cols]), dtype=np.float64)

    def subset_of_crowd() -> list[str]:
        size = max(1, round(HONEST_SUBSET * len(crowd)))
        return sorted(rng.choice(crowd, size=size, replace=False).tolist())

    table: list[tuple[str, str, float]] = []
    static: dict[str, np.ndarray] = {}

    def add(archetype: str, i: int, stake: float, values: np.ndarray | None) -> str:
        name = f"{archetype}_{i + 1}"
        table.append((name, archetype, stake))
        if values is not None:
            static[name] = values
        return name

    for i in range(counts["ridge"]):
        add("ridge", i, 1.0, ridge(subset_of_crowd()))
    crowd_cols = np.array([column[f] for f in crowd])
    for i in range(counts["tree"]):
        sample = np.sort(rng.permutation(len(y_train))[:TREE_ROWS])
        tree = HistGradientBoostingRegressor(
            max_iter=50, max_depth=4, learning_rate=0.1, min_samples_leaf=200,
            max_features=0.7, early_stopping=False, random_state=seed * 1000 + i,
        ).fit(x_train[np.ix_(sample, crowd_cols)], y_train[sample])  # fmt: skip
        add("tree", i, 1.0, tree.predict(x_rounds[:, crowd_cols]).astype(np.float64))
    for i in range(counts["orthogonal"]):
        add("orthogonal", i, 1.0, ridge(others))

    risky = riskiest_features(data.train, features)
    high: np.ndarray | None = None
    if counts["high_exposure"]:
        high = _high_exposure(data, features, recent_eras)
        for i in range(counts["high_exposure"]):
            add("high_exposure", i, 1.0, high)
    if counts["neutralized"] and high is not None:
        twin = neutralize(
            pd.DataFrame({"p": high}, index=data.rounds.index),
            data.rounds[risky],
            eras=eras_rounds,
        )["p"].to_numpy()
        # A round the risky features explain entirely leaves nothing: submit the model as is.
        twin = np.where(np.isfinite(twin), twin, high)
        for i in range(counts["neutralized"]):
            add("neutralized", i, 1.0, twin)

    for i in range(counts["noise"]):
        add("noise", i, 1.0, rng.normal(size=rows))
    first_ridge = static.get("ridge_1", np.zeros(rows))  # check_accounts: there is one
    for i in range(counts["noisy_copy"]):
        spread = NOISY_COPY_NOISE * first_ridge.std()
        add("noisy_copy", i, 1.0, first_ridge + spread * rng.normal(size=rows))
    era_codes, era_labels = pd.factorize(eras_rounds, sort=True)
    for i in range(counts["lottery"]):
        picks = rng.integers(len(features), size=len(era_labels))
        signs = rng.choice([-1.0, 1.0], size=len(era_labels))
        bets = x_rounds[np.arange(rows), picks[era_codes]] * signs[era_codes]
        add("lottery", i, 1.0, bets.astype(np.float64))
    if counts["sybil"]:
        signal = ridge(subset_of_crowd())
        for i in range(counts["sybil"]):
            jitter = SYBIL_JITTER * signal.std() * rng.normal(size=rows)
            add("sybil", i, 1.0 / counts["sybil"], signal + jitter)
    for archetype in COPYING:
        for i in range(counts[archetype]):
            add(archetype, i, 1.0, None)

    accounts_frame = pd.DataFrame(table, columns=["account", "archetype", "initial_stake"])
    accounts_frame["role"] = accounts_frame["archetype"].map(lambda a: ARCHETYPES[a].role)
    accounts_frame = accounts_frame.set_index("account")
    return Participants(
        accounts=accounts_frame,
        static=pd.DataFrame(static, index=data.rounds.index),
        crowd_features=crowd,
        risky_features=risky,
        exposure_features=features,
    )


def riskiest_features(
    train: pd.DataFrame, features: list[str], share: float = 0.1, window: int = RISK_WINDOW
) -> list[str]:
    """The features whose correlation with the target drifts most: the largest standard
    deviation, over the training eras, of the ``window``-era rolling mean of their per-era
    Pearson correlation (``share`` of the features, at least 3).

    What a participant can compute from the training data alone. One era's correlation is mostly
    noise; a rolling mean keeps what persists for several eras, such as a regime's sign, so the
    regime-flipping features (and the features of their group) come first.
    """
    per_era = era_correlations(train, features)
    drift = per_era.rolling(min(window, len(per_era)), min_periods=1).mean().std()
    count = min(len(features), max(3, round(share * len(features))))
    return sorted(drift.nlargest(count).index)


def era_correlations(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Pearson correlation of each feature with the target, era by era (eras × features)."""
    out = {}
    for era, rows in frame.groupby(ERA, sort=True):
        x = rows[features].to_numpy(np.float64)
        y = rows[MAIN_TARGET].to_numpy(np.float64)
        x = x - x.mean(axis=0)
        y = y - y.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            out[era] = (x.T @ y) / (np.linalg.norm(x, axis=0) * np.linalg.norm(y))
    return pd.DataFrame(out, index=features).T


def _high_exposure(data: LabData, features: list[str], recent_eras: int) -> np.ndarray:
    """Ridge on the few features most correlated with the target over the last training eras:
    a bet on the current regime, with large feature exposure."""
    from sklearn.linear_model import Ridge

    eras = sorted(data.train[ERA].unique())[-recent_eras:]
    recent = data.train[data.train[ERA].isin(eras)]
    strength = era_correlations(recent, features).mean().abs()
    chosen = list(strength.nlargest(min(HIGH_EXPOSURE_FEATURES, len(features))).index)
    model = Ridge(alpha=RIDGE_ALPHA).fit(
        recent[chosen].to_numpy(np.float32), recent[MAIN_TARGET].to_numpy(np.float64)
    )
    return np.asarray(model.predict(data.rounds[chosen].to_numpy(np.float32)), dtype=np.float64)


def ridge_fit_predict(
    x: np.ndarray, y: np.ndarray, new: np.ndarray, alpha: float = RIDGE_ALPHA
) -> np.ndarray:
    """Ridge regression with an intercept (as scikit-learn's ``Ridge(alpha)``), fitted on
    ``x, y`` by its normal equations, then applied to ``new``: the copycat refits every round."""
    x = np.asarray(x, dtype=np.float64)
    x_mean, y_mean = x.mean(axis=0), float(np.mean(y))
    centred = x - x_mean
    gram = centred.T @ centred + alpha * np.eye(x.shape[1])
    coef = np.linalg.solve(gram, centred.T @ (np.asarray(y, dtype=np.float64) - y_mean))
    return np.asarray((np.asarray(new, dtype=np.float64) - x_mean) @ coef + y_mean)
