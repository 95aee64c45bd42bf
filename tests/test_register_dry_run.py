"""``fund register`` proves a spec usable before accepting it: the schema, then a dry run in a
worker process under memory and time limits. Every refusal names what failed (and the limit, if
it was one), and leaves the fund's records, key store and folders as they were.

Real FHE (marked ``fhe``): a tiny decision tree (5 features, depth 3) is compiled, and each
dry run generates its keys and encrypts five rows in a worker process, 15 s to a minute each
depending on the machine's load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhe_toolkit.errors import FundError, SpecError
from fhe_toolkit.fund import Fund
from fhe_toolkit.fund.dry_run import DryRunLimits
from fhe_toolkit.participant import compile_model, export_model, train_model
from fhe_toolkit.protocol.client_specs import curve_variance
from tests.cli_runner import cli, ok
from tests.identities import enroll

pytestmark = pytest.mark.fhe


@pytest.fixture(scope="module")
def tree_spec(tmp_path_factory, tournament) -> dict[str, Any]:
    """A real exported decision tree's spec (compiled; no FHE run yet)."""
    frame, metadata = tournament
    train = frame[frame["data_type"] == "train"]
    model = train_model(train, family="decision_tree", features=metadata.features("small"))
    compile_model(model, train)
    out = tmp_path_factory.mktemp("tree") / "tree"
    export_model(model, out, "tree")
    raw: dict[str, Any] = json.loads((out / "model_spec.json").read_text())
    return raw


@pytest.fixture
def fund(tmp_path) -> Fund:
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    enroll(fund, tmp_path, "mallory")
    fund.public_key()  # the key store's one file, made before any snapshot
    return fund


def snapshot(fund: Fund) -> dict[str, Any]:
    """The fund's records and every file it keeps (database file aside: its records are read)."""
    files = {
        str(path): path.read_bytes()
        for root in (fund.root, fund.keys.root)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "fund.db"
    }
    return {"models": fund.models().to_dict(), "files": files}


def write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(raw))
    return path


def keyset(raw: dict[str, Any]) -> dict[str, Any]:
    keys: dict[str, Any] = raw["client_specs"]["keyset"]
    return keys


def gates(raw: dict[str, Any]) -> list[dict[str, Any]]:
    circuit = raw["client_specs"]["circuits"][0]
    return [gate["typeInfo"]["lweCiphertext"] for gate in circuit["inputs"] + circuit["outputs"]]


def key_dimension(dimension: int):
    """The circuit's key (secret key 0) at ``dimension``, every reference to it consistent."""

    def change(raw: dict[str, Any]) -> None:
        keyset(raw)["lweSecretKeys"][0]["params"]["lweDimension"] = dimension
        for lwe in gates(raw):
            lwe["encryption"]["lweDimension"] = dimension

    return change


def input_variance(variance: float):
    def change(raw: dict[str, Any]) -> None:
        gates(raw)[0]["encryption"]["variance"] = variance

    return change


def input_bits(n_bits: int):
    def change(raw: dict[str, Any]) -> None:
        for quantizer in raw["input_quantizers"]:
            quantizer.update(n_bits=n_bits, scale=4 / (2**n_bits - 1))

    return change


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (key_dimension(0), r"lweSecretKeys\.0\.params\.lweDimension: Input should be greater"),
        (key_dimension(2**40), r"lweSecretKeys\.0\.params\.lweDimension: Input should be less"),
        (input_variance(1e-60), r"inputs\.0\.encryption: variance 1e-60 is outside \["),
        (input_variance(0.5), r"inputs\.0\.encryption: variance 0\.5 is outside \["),
        (input_bits(32), r"input_quantizers\.0\.n_bits: Input should be less than or equal to 16"),
    ],
)
def test_a_spec_concrete_would_choke_on_is_refused_at_register(
    fund, tree_spec, tmp_path, change, reason
):
    """Today these passed and then crashed (lweDimension 0: a Rust panic, SIGABRT) or raised a
    traceback at ``open-round``: now ``register`` refuses them, naming the field."""
    before = snapshot(fund)
    raw = json.loads(json.dumps(tree_spec))
    change(raw)
    with pytest.raises(SpecError, match=reason):
        fund.register(write(tmp_path, raw), participant="mallory", stake=1.0)
    assert snapshot(fund) == before


def test_quantizers_that_do_not_fit_the_circuits_input_fail_the_dry_run(fund, tree_spec, tmp_path):
    """Valid field by field, but 4-bit quantized features do not fit the circuit's 3-bit input:
    only trying (the dry run) shows it; ``open-round`` would have failed on every row."""
    before = snapshot(fund)
    raw = json.loads(json.dumps(tree_spec))
    input_bits(4)(raw)
    with pytest.raises(SpecError) as refused:
        fund.register(write(tmp_path, raw), participant="mallory", stake=1.0)
    assert str(refused.value) == (
        "model spec 'tree' failed the fund's dry run and was not registered: quantizing feature "
        "values failed: the input quantizers turn feature values 0..4 into 0..15, but the "
        "circuit takes 3-bit unsigned integers (0..7)."
    )
    assert snapshot(fund) == before


def test_a_spec_whose_keys_exceed_the_memory_limit_is_refused_naming_the_limit(
    fund, tree_spec, tmp_path
):
    """Bootstrap polynomials of 65,536 coefficients (1.1 GiB of keys, within the schema's
    ranges) under a 1 GiB limit: the worker runs out of memory, the fund does not."""
    before = snapshot(fund)
    raw = json.loads(json.dumps(tree_spec))
    glwe = 2 * 65536
    noise = curve_variance(128, glwe)
    key_dimension(glwe)(raw)
    bootstrap = keyset(raw)["lweBootstrapKeys"][0]["params"]
    bootstrap.update(polynomialSize=65536, variance=noise)
    keyset(raw)["lweKeyswitchKeys"][0]["params"]["inputLweDimension"] = glwe
    circuit = raw["client_specs"]["circuits"][0]
    for gate in circuit["inputs"] + circuit["outputs"]:
        gate["typeInfo"]["lweCiphertext"]["encryption"]["variance"] = noise
    for gate in circuit["outputs"]:
        shape = [*gate["typeInfo"]["lweCiphertext"]["abstractShape"]["dimensions"], glwe + 1]
        gate["typeInfo"]["lweCiphertext"]["concreteShape"]["dimensions"] = shape
        gate["rawInfo"]["shape"]["dimensions"] = shape
    with pytest.raises(SpecError) as refused:
        fund.register(
            write(tmp_path, raw), participant="mallory", stake=1.0,
            limits=DryRunLimits(memory_bytes=1 << 30),
        )  # fmt: skip
    message = str(refused.value)
    assert (
        "failed the fund's dry run and was not registered: key generation and encrypting a "
        "batch ran out" in message
    )
    assert "the dry run's memory limit of 1 GiB" in message and "--dry-run-memory" in message
    assert snapshot(fund) == before


def test_a_time_limit_too_short_to_load_concrete_is_the_funds_error(fund, tree_spec, tmp_path):
    before = snapshot(fund)
    with pytest.raises(FundError, match=r"time limit of 0\.5 s is too short to start the worker"):
        fund.register(
            write(tmp_path, tree_spec), participant="mallory", stake=1.0,
            limits=DryRunLimits(seconds=0.5),
        )  # fmt: skip
    assert snapshot(fund) == before


def test_a_valid_tree_spec_passes_its_dry_run_and_is_registered(tree_spec, tmp_path):
    """Through the command line, which says what the dry run measured."""
    enroll(Fund(tmp_path / "fund", tmp_path / "keys"), tmp_path, "alice")
    result = cli(
        "fund", "register", write(tmp_path, tree_spec), "--participant", "alice", "--stake",
        "10", cwd=tmp_path,
    )  # fmt: skip
    ok(result)
    assert "dry run passed in" in result.stderr
    assert "feature values 0..4 encrypted as 3-bit unsigned integers (0..7)" in result.stderr
    assert "registered tree for alice: decision_tree" in result.stdout
    assert list(Fund(tmp_path / "fund", tmp_path / "keys").models().index) == ["tree"]
    assert not (tmp_path / "keys" / "tree").exists()  # the dry run's keys were never stored
