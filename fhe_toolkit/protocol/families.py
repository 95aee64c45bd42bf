"""The Concrete ML model families a participant can enter, with defaults sized for FHE.

Bits: Numerai features take five values, so tree models lose nothing with 3 input bits (only
the order of values matters to a split). Linear models multiply the inputs, and 0..4 does not
land on a 3-bit grid, so they keep 8 bits (the quantized model correlates > 0.9999 with the
float one).

Batch size: how many rows one ciphertext carries. Linear circuits cost a few milliseconds a
row, so packing 64 rows per circuit call saves both per-call overhead and fund-side decryption
work; tree and neural circuits cost hundreds of milliseconds a row, so one row per call keeps
the workers' load balanced and the checkpoints fine-grained.

Post-processing (what turns dequantized circuit outputs into a prediction) is fixed here per
family, in the toolkit's code: the fund never takes it from anything a participant sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

PostProcessing = Literal["identity", "sigmoid", "sum_trees", "sum_trees_plus_half"]
Task = Literal["regression", "classification"]


@dataclass(frozen=True)
class Family:
    name: str
    estimator: str
    """Class name in ``concrete.ml.sklearn``."""
    task: Task
    post_processing: PostProcessing
    batch_size: int
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    packable: bool = False
    """A linear model, which runs on the round's packed encryption by default."""


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("linear", "LinearRegression", "regression", "identity", 64, {"n_bits": 8},
               "ordinary least squares; packed round by default", packable=True),
        Family("ridge", "Ridge", "regression", "identity", 64, {"n_bits": 8, "alpha": 10.0},
               "L2-regularized least squares; packed round by default", packable=True),
        Family("logistic", "LogisticRegression", "classification", "sigmoid", 64,
               {"n_bits": 8, "C": 1.0, "max_iter": 500},
               "P(target above its median bucket); packed round by default", packable=True),
        Family("decision_tree", "DecisionTreeRegressor", "regression", "sum_trees", 1,
               {"n_bits": 3, "max_depth": 3, "min_samples_leaf": 20},
               "one shallow tree; ~0.3 s a row at depth 3"),
        Family("random_forest", "RandomForestRegressor", "regression", "sum_trees", 1,
               {"n_bits": 3, "n_estimators": 5, "max_depth": 3, "min_samples_leaf": 20},
               "a few shallow trees; ~0.4 s a row"),
        Family("xgboost", "XGBRegressor", "regression", "sum_trees_plus_half", 1,
               {"n_bits": 3, "n_estimators": 5, "max_depth": 2},
               "gradient-boosted shallow trees; ~0.5 s a row"),
        Family("neural_net", "NeuralNetRegressor", "regression", "identity", 1,
               {"module__n_layers": 2, "module__n_w_bits": 3, "module__n_a_bits": 3,
                "module__n_accum_bits": 8, "module__n_hidden_neurons_multiplier": 1,
                "max_epochs": 10, "verbose": 0},
               "a small quantization-aware MLP (brevitas)"),
    )
}  # fmt: skip


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}."
        ) from None


def post_process(family: Family, dequantized: np.ndarray) -> np.ndarray:
    """Turn dequantized circuit outputs (rows × outputs) into one prediction per row.

    Mirrors the ``post_processing`` of each Concrete ML estimator, from the family alone.
    """
    values = np.asarray(dequantized, dtype=np.float64).reshape(len(dequantized), -1)
    if family.post_processing == "identity":
        return values[:, 0]
    if family.post_processing == "sigmoid":
        return 1.0 / (1.0 + np.exp(-values[:, 0]))
    summed = values.sum(axis=1)
    return summed + 0.5 if family.post_processing == "sum_trees_plus_half" else summed
