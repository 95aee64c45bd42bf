"""Model specs around real Concrete client specs, for the schema tests and the property tests.

The client specs are written by ``tests/data/make_client_specs.py`` (concrete-python 2.10,
Concrete ML 1.9): importing this module needs no Concrete.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.protocol.client_specs import MAX_LWE_DIMENSION, MIN_LWE_DIMENSION, curve_variance

DATA = Path(__file__).parent / "data"
REAL = json.loads((DATA / "concrete_client_specs.json").read_text())
"""Concrete's client specs per family (5 features, one row or 64 per call) and for training."""
FEATURES = [f"feature_{c}" for c in "abcde"]


def quantizer(**changes: Any) -> dict[str, Any]:
    """A 3-bit input quantizer as Concrete ML makes for a tree on 0..4 features."""
    return {
        "n_bits": 3, "is_signed": False, "is_symmetric": False, "is_narrow": False,
        "is_qat": False, "is_precomputed_qat": False, "no_clipping": False,
        "scale": 0.5714285714285714, "zero_point": 0.0, "offset": 0, "rmin": 0.0, "rmax": 4.0,
        **changes,
    }  # fmt: skip


def tree_spec_raw() -> dict[str, Any]:
    """A decision tree's model spec around its real client specs (1 row of 5 features)."""
    return {
        "name": "tree",
        "target": "target",
        "features": FEATURES,
        "client_specs": copy.deepcopy(REAL["decision_tree"]),
        "versions": package_versions(),
        "family": "decision_tree",
        "batch_size": 1,
        "input_quantizers": [quantizer() for _ in FEATURES],
        "output_quantizer": quantizer(rmax=0.6, scale=0.0857),
    }


def linear_spec_raw(weight_bits: int = 8) -> dict[str, Any]:
    """A packed linear model's spec (ridge, 5 features)."""
    return {
        "format": "fhe-toolkit/linear-spec", "name": f"ridge-{weight_bits}", "target": "target",
        "features": FEATURES, "versions": package_versions(), "family": "ridge",
        "weight_bits": weight_bits, "scale": 0.001, "intercept": 0.5,
    }  # fmt: skip


def assert_secure(client_specs: dict[str, Any]) -> None:
    """What any accepted client specs must satisfy, checked independently of the schema's code:
    keys of the dimensions Concrete uses, each encryption under an existing key of its stated
    dimension, and never less noise than Concrete's 128-bit curve gives that dimension."""

    def noisy_enough(variance: float, dimension: int) -> bool:
        return variance >= curve_variance(128, dimension) * (1 - 1e-9)

    keyset = client_specs["keyset"]
    dims = [key["params"]["lweDimension"] for key in keyset["lweSecretKeys"]]
    assert all(MIN_LWE_DIMENSION <= d <= MAX_LWE_DIMENSION for d in dims)
    circuit = client_specs["circuits"][0]
    for gate in circuit["inputs"] + circuit["outputs"]:
        encryption = gate["typeInfo"]["lweCiphertext"]["encryption"]
        assert dims[encryption["keyId"]] == encryption["lweDimension"]
        assert noisy_enough(encryption["variance"], encryption["lweDimension"])
    for key in keyset["lweBootstrapKeys"] + keyset["packingKeyswitchKeys"]:
        glwe = key["params"]["glweDimension"] * key["params"]["polynomialSize"]
        assert dims[key["outputId"]] == glwe
        assert dims[key["inputId"]] == key["params"]["inputLweDimension"]
        assert noisy_enough(key["params"]["variance"], glwe)
    for key in keyset["lweKeyswitchKeys"]:
        assert dims[key["inputId"]] == key["params"]["inputLweDimension"]
        assert dims[key["outputId"]] == key["params"]["outputLweDimension"]
        assert noisy_enough(key["params"]["variance"], key["params"]["outputLweDimension"])
