"""The client-specs schema and the quantizer ranges: each bad field is refused by its name, and
every client spec Concrete made for the toolkit's circuits passes unchanged.

Pure Python: the client specs are real ones, written by ``tests/data/make_client_specs.py``
(concrete-python 2.10, Concrete ML 1.9), and nothing here imports or runs Concrete. The dry run
that follows the schema at registration is tested in ``tests/test_register_dry_run.py``.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from fhe_toolkit.errors import SpecError
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.fund import Fund
from fhe_toolkit.fund.dry_run import max_packable_weight_bits
from fhe_toolkit.protocol.client_specs import (
    MAX_CIPHERTEXT_BYTES,
    MAX_EVALUATION_KEY_BYTES,
    ClientSpecs,
    curve_variance,
)
from fhe_toolkit.protocol.modelspec import LinearSpec, ModelSpec, validate_spec
from fhe_toolkit.protocol.training_spec import TrainingSpec
from tests.identities import enroll
from tests.specs_for_tests import REAL, linear_spec_raw, quantizer, tree_spec_raw


def refusal(raw: dict[str, Any], spec_type: type = ModelSpec) -> str:
    with pytest.raises(SpecError) as caught:
        validate_spec(raw, spec_type, "mallory's spec")
    return str(caught.value)


@pytest.mark.parametrize("family", sorted(REAL))
def test_every_client_spec_concrete_made_passes_unchanged(family):
    """So the digest of a spec registered before the schema existed does not move."""
    specs = ClientSpecs.model_validate(REAL[family])
    assert specs.model_dump(mode="json") == REAL[family]
    assert 0 <= specs.evaluation_key_bytes < MAX_EVALUATION_KEY_BYTES


def test_the_security_curve_gives_concretes_own_variances():
    """Every variance Concrete wrote is its 128-bit curve's value for the key's dimension."""
    seen = 0
    for raw in REAL.values():
        for gate in raw["circuits"][0]["inputs"] + raw["circuits"][0]["outputs"]:
            encryption = gate["typeInfo"]["lweCiphertext"]["encryption"]
            expected = curve_variance(128, encryption["lweDimension"])
            assert encryption["variance"] == pytest.approx(expected, rel=1e-12)
            seen += 1
        for key in raw["keyset"]["lweKeyswitchKeys"]:
            expected = curve_variance(128, key["params"]["outputLweDimension"])
            assert key["params"]["variance"] == pytest.approx(expected, rel=1e-12)
            seen += 1
    assert seen > 20
    assert curve_variance(128, 512) == pytest.approx(4.896863592478985e-07, rel=1e-12)


def test_the_tree_spec_is_valid_and_real_training_specs_pass():
    spec = validate_spec(tree_spec_raw(), ModelSpec, "test")
    assert spec.circuit_shapes() == ([[1, 5]], 1)
    assert json.loads(spec.client_specs_bytes()) == REAL["decision_tree"]
    training = REAL["training"]
    assert ClientSpecs.model_validate(training).circuit.name == "_clear_forward_proxy"


KEYSET = ("client_specs", "keyset")
SECRET = (*KEYSET, "lweSecretKeys", 0, "params")
BSK = (*KEYSET, "lweBootstrapKeys", 0)
KSK = (*KEYSET, "lweKeyswitchKeys", 0)
INPUT = ("client_specs", "circuits", 0, "inputs", 0)
OUTPUT = ("client_specs", "circuits", 0, "outputs", 0)
LWE_IN = (*INPUT, "typeInfo", "lweCiphertext")


def put(raw: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (
            (*SECRET, "lweDimension"), 0,
            r"client_specs\.keyset\.lweSecretKeys\.0\.params\.lweDimension: Input should be "
            r"greater than or equal to 512",
        ),
        (
            (*SECRET, "lweDimension"), 2**40,
            r"lweSecretKeys\.0\.params\.lweDimension: Input should be less than or equal to "
            r"1048576",
        ),
        ((*SECRET, "lweDimension"), True, r"lweSecretKeys\.0\.params\.lweDimension"),
        ((*SECRET, "lweDimension"), "2048", r"lweSecretKeys\.0\.params\.lweDimension"),
        ((*SECRET, "keyType"), "ternary", r"lweSecretKeys\.0\.params\.keyType"),
        ((*SECRET, "integerPrecision"), 32, r"lweSecretKeys\.0\.params\.integerPrecision"),
        ((*SECRET, "blob"), {"py/object": "os.system"}, r"params\.blob: Extra inputs"),
        ((*KEYSET, "lweSecretKeys", 0, "id"), 1, r"lweSecretKeys: ids must be 0\.\.1 in order"),
        ((*BSK, "params", "variance"), -1.0, r"lweBootstrapKeys\.0\.params\.variance"),
        ((*BSK, "params", "variance"), float("nan"), r"lweBootstrapKeys\.0\.params\.variance"),
        ((*BSK, "params", "variance"), 1e-40, r"lweBootstrapKeys\.0\.params: variance 1e-40 is"),
        ((*BSK, "params", "variance"), 1e-3, r"lweBootstrapKeys\.0\.params: variance 0\.001 is"),
        ((*BSK, "params", "polynomialSize"), 1000, r"polynomialSize must be a power of two"),
        ((*BSK, "params", "glweDimension"), 7, r"params\.glweDimension: Input should be less"),
        ((*BSK, "params", "levelCount"), 0, r"params\.levelCount: Input should be greater"),
        ((*BSK, "params", "levelCount"), 3, r"levelCount × baseLog is 69, over the 64 bits"),
        ((*BSK, "params", "modulus"), {"modulus": {"powerOfTwo": {"power": 32}}}, r"modulus"),
        ((*BSK, "inputId"), 9, r"lweBootstrapKeys\.0: input key 9 does not exist"),
        ((*BSK, "params", "inputLweDimension"), 800, r"its input dimension 800 is not that of"),
        ((*BSK, "compression"), "paillier", r"lweBootstrapKeys\.0\.compression"),
        ((*KSK, "params", "variance"), 1e-20, r"lweKeyswitchKeys\.0\.params: variance 1e-20"),
        ((*KSK, "outputId"), 0, r"its output dimension 771 is not that of secret key 0 \(2048\)"),
        ((*KEYSET, "packingKeyswitchKeys"), [{}], r"packingKeyswitchKeys\.0\.id: Field required"),
        ((*LWE_IN, "encryption", "variance"), 1e-60, r"inputs\.0\.encryption: variance 1e-60"),
        ((*LWE_IN, "encryption", "keyId"), 1, r"inputs\.0: encrypted under key 1, which is not"),
        ((*LWE_IN, "concreteShape", "dimensions"), [1, 5, 2049], r"inputs\.0: concreteShape"),
        ((*LWE_IN, "encoding", "integer", "width"), 0, r"integer\.width: Input should be greater"),
        ((*LWE_IN, "encoding", "integer", "width"), 64, r"integer\.width: Input should be less"),
        (
            (*LWE_IN, "encoding", "integer", "mode"), {"crt": {"moduli": [7, 8, 9]}},
            r"encoding\.integer\.mode\.crt: Extra inputs",
        ),
        ((*LWE_IN, "encoding"), {"boolean": {}}, r"encoding\.boolean: Extra inputs"),
        ((*INPUT, "typeInfo"), {"plaintext": {}}, r"typeInfo\.plaintext: Extra inputs"),
        ((*INPUT, "rawInfo", "isSigned"), True, r"rawInfo\.isSigned"),
        ((*OUTPUT, "typeInfo", "lweCiphertext", "compression"), "seed", r"outputs are not comp"),
        (("client_specs", "circuits", 0, "name"), "f; rm -rf /", r"circuits\.0\.name"),
        (
            ("client_specs", "tfhers_specs", "input_types_per_func", "_lambda__proxy"),
            [{"bit_width": 8}], r"tfhers_specs\.input_types_per_func",
        ),
        (("client_specs", "serialized_processing"), "gASVKAAAAAAAAAB9", r"serialized_processing"),
    ],
)  # fmt: skip
def test_each_bad_client_spec_field_is_refused_by_its_name(where, value, message):
    raw = tree_spec_raw()
    put(raw, where, value)
    assert "mallory's spec is not a valid model spec" in refusal(raw)
    with pytest.raises(SpecError, match=message):
        validate_spec(raw, ModelSpec, "mallory's spec")


def test_a_consistent_key_of_a_forbidden_dimension_is_refused_by_its_name():
    """lweDimension 0 everywhere it is used: still refused, before any Concrete code sees it."""
    raw = tree_spec_raw()
    put(raw, (*SECRET, "lweDimension"), 0)
    for gate in (INPUT, OUTPUT):
        put(raw, (*gate, "typeInfo", "lweCiphertext", "encryption", "lweDimension"), 0)
    message = refusal(raw)
    assert "lweSecretKeys.0.params.lweDimension: Input should be greater than or equal" in message
    assert "encryption.lweDimension" in message


def test_a_second_circuit_and_missing_fields_are_named():
    raw = tree_spec_raw()
    raw["client_specs"]["circuits"].append(copy.deepcopy(raw["client_specs"]["circuits"][0]))
    assert "the client specs must describe one circuit, not 2" in refusal(raw)
    raw = tree_spec_raw()
    del raw["client_specs"]["tfhers_specs"]
    assert "client_specs.tfhers_specs: Field required" in refusal(raw)


def test_keys_and_ciphertexts_too_large_to_publish_are_refused():
    raw = tree_spec_raw()
    put(raw, (*BSK, "params", "levelCount"), 2)
    put(raw, (*BSK, "compression"), "none")  # 771 × 2 × 3 × 3 × 1,024 words: 114 MB, fine
    validate_spec(raw, ModelSpec, "test")
    # The same with polynomials of 65,536 coefficients: 6.8 GiB of bootstrap key.
    glwe = 2 * 65536
    noise = curve_variance(128, glwe)
    put(raw, (*SECRET, "lweDimension"), glwe)
    put(raw, (*BSK, "params", "polynomialSize"), 65536)
    put(raw, (*BSK, "params", "variance"), noise)
    put(raw, (*KSK, "params", "inputLweDimension"), glwe)
    for gate in (INPUT, OUTPUT):
        put(raw, (*gate, "typeInfo", "lweCiphertext", "encryption", "lweDimension"), glwe)
        put(raw, (*gate, "typeInfo", "lweCiphertext", "encryption", "variance"), noise)
    for where in (
        (*OUTPUT, "typeInfo", "lweCiphertext", "concreteShape"),
        (*OUTPUT, "rawInfo", "shape"),
    ):
        put(raw, (*where, "dimensions"), [1, 1, 1, glwe + 1])
    assert re.search(r"the evaluation keys would take 6\.8 GiB, over the 4 GiB", refusal(raw))
    raw = tree_spec_raw()
    wide = 1 + MAX_CIPHERTEXT_BYTES // (8 * 2049)
    put(raw, (*OUTPUT, "typeInfo", "lweCiphertext", "abstractShape", "dimensions"), [1, wide])
    for where in (
        (*OUTPUT, "typeInfo", "lweCiphertext", "concreteShape"),
        (*OUTPUT, "rawInfo", "shape"),
    ):
        put(raw, (*where, "dimensions"), [1, wide, 2049])
    assert "outputs.0: one call's ciphertext would take" in refusal(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_bits": 32}, r"input_quantizers\.0\.n_bits: Input should be less than or equal to 16"),
        ({"n_bits": 0}, r"input_quantizers\.0\.n_bits: Input should be greater"),
        ({"scale": 1e-300, "no_clipping": True}, r"input_quantizers\.0\.scale: .*scale 1e-300 is"),
        ({"scale": 1e300}, r"scale 1e\+300 is outside"),
        ({"scale": [0.5, -1.0]}, r"scale must be positive"),
        ({"scale": []}, r"scale must be positive"),
        ({"zero_point": [{"__reduce__": "os.system"}]}, r"zero_point must hold finite numbers"),
        ({"zero_point": [[1.0], [2.0, 3.0]]}, r"zero_point's lists must all have the same length"),
        ({"zero_point": [[[1.0]]]}, r"zero_point must hold finite numbers only"),
        ({"zero_point": [True]}, r"zero_point must hold finite numbers only"),
        ({"zero_point": []}, r"zero_point must hold finite numbers \(1 to"),
        ({"zero_point": 1e300}, r"zero_point must be within ±2\*\*53"),
        ({"zero_point": [float("inf")]}, r"zero_point"),
        ({"rmin": 4.0, "rmax": 0.0}, r"rmin 4\.0 is above rmax 0\.0"),
        ({"offset": -1}, r"input_quantizers\.0\.offset"),
        ({"skops": "blob"}, r"input_quantizers\.0\.skops: Extra inputs are not permitted"),
    ],
)
def test_each_bad_quantizer_field_is_refused_by_its_name(change, message):
    raw = tree_spec_raw()
    raw["input_quantizers"][0] = quantizer(**change)
    with pytest.raises(SpecError, match=message):
        validate_spec(raw, ModelSpec, "mallory's spec")


def test_the_quantizers_concrete_ml_makes_pass():
    """Zero points as numbers and as nested lists (a linear model's output), no clipping with a
    small scale (its accumulator), a QAT input."""
    raw = tree_spec_raw()
    raw["output_quantizer"] = quantizer(
        n_bits=None, no_clipping=True, scale=1.78e-06, zero_point=[[-65536]], rmin=None, rmax=None
    )
    raw["input_quantizers"][0] = quantizer(is_qat=True, scale=1.0, zero_point=[[7.0]], offset=4)
    validate_spec(raw, ModelSpec, "test")


def test_a_training_spec_is_held_to_the_same_schema():
    raw = {
        "name": "sgd", "target": "target", "features": [f"feature_{i}" for i in range(3)],
        "client_specs": copy.deepcopy(REAL["training"]), "versions": package_versions(),
        "label_threshold": 0.5, "iterations": 2, "batch_size": 4, "parameter_range": [-1.0, 1.0],
        "seed": 0, "fit_intercept": True,
        "input_quantizers": [quantizer() for _ in range(4)],
        "output_quantizers": [quantizer() for _ in range(2)],
    }  # fmt: skip
    validate_spec(raw, TrainingSpec, "job")
    raw["client_specs"]["keyset"]["lweSecretKeys"][3]["params"]["lweDimension"] = 0
    assert "lweSecretKeys.3.params.lweDimension" in refusal(raw, TrainingSpec)


# --- packed linear specs: checked against the packed round's parameters, in process ----------
def linear_spec(tmp_path: Path, weight_bits: int) -> Path:
    path = tmp_path / f"linear-{weight_bits}.json"
    path.write_text(json.dumps(linear_spec_raw(weight_bits)))
    return path


def test_packed_weights_too_wide_for_a_full_round_are_refused_and_nothing_is_stored(tmp_path):
    """12-bit weights fit 5 features alone, but a round encrypting 5,000 features for its
    packed models would have no exact parameters, and every packed model would be left out."""
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    enroll(fund, tmp_path, "mallory")
    widest = max_packable_weight_bits()
    assert widest == 11
    with pytest.raises(SpecError, match=r"12-bit weights .* at most 11 weight bits"):
        fund.register(linear_spec(tmp_path, 12), participant="mallory", stake=1.0)
    assert fund.models().empty
    reports = []
    fund.register(
        linear_spec(tmp_path, 8), participant="mallory", stake=1.0, on_dry_run=reports.append
    )
    assert list(fund.models().index) == ["ridge-8"]
    assert "8-bit weights fit a packed round of up to 5000 features" in reports[0].summary
    assert isinstance(fund.spec("ridge-8"), LinearSpec)
