"""The fund never decodes participant-authored objects: specs are validated plain data."""

from __future__ import annotations

import base64
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from fhe_toolkit.errors import FundError, ParticipantError, RegistryError, SpecError
from fhe_toolkit.fhe.codecs import SpecCodec, build_quantizer, dequantize
from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import compile_model, export_model, train_model
from fhe_toolkit.protocol.modelspec import QuantizerSpec, load_spec
from tests.identities import enroll


class Payload:
    """Unpickling this would create a marker file: proof that participant code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "participant code ran"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tournament) -> tuple[Path, object]:
    """A real exported model (compiled, no FHE execution)."""
    frame, metadata = tournament
    train = frame[frame["data_type"] == "train"]
    model = train_model(train, family="linear", features=metadata.features("small"), packed=False)
    compile_model(model, train)
    out = tmp_path_factory.mktemp("model") / "m"
    export_model(model, out, "honest")
    return out, model


def spec_json(exported) -> dict:
    return json.loads((exported[0] / "model_spec.json").read_text())


def write(tmp_path: Path, raw: object) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(raw))
    return path


def test_spec_carrying_a_pickle_is_refused_and_its_code_never_runs(exported, tmp_path):
    marker = tmp_path / "pwned"
    blob = base64.b64encode(pickle.dumps(Payload(marker))).decode()
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    enroll(fund, tmp_path, "mallory")
    raw = spec_json(exported)
    for attack in (
        {**raw, "serialized_processing": blob},
        {**raw, "output_quantizer": {"__reduce__": blob, "py/object": "os.system"}},
        {**raw, "input_quantizers": [blob]},
        {**raw, "family": "__import__('os').system('touch x')"},
    ):
        with pytest.raises(SpecError):
            fund.register(write(tmp_path, attack), participant="mallory", stake=1.0)
    assert not marker.exists()
    assert fund.models().empty


def test_the_fund_decodes_no_participant_object(exported, tmp_path, monkeypatch, tournament):
    """Registering, opening a round and quantizing never reach pickle or skops.

    Except in Dask's transport between the fund's process and its own worker processes (the
    circuit models' keys are made there): it pickles its messages, the work of toolkit code
    (bytes, arrays), in which a spec's client specs travel as bytes."""
    calls: list[str] = []
    import skops.io

    def spy(name: str, original):
        def wrapped(*args, **kwargs):
            caller = sys._getframe(1).f_globals["__name__"]
            if not caller.startswith(("dask.", "distributed.")):
                calls.append(f"{name} from {caller}")
            return original(*args, **kwargs)

        return wrapped

    for module, name in (
        (pickle, "loads"),
        (pickle, "load"),
        (skops.io, "load"),
        (skops.io, "loads"),
    ):
        monkeypatch.setattr(module, name, spy(name, getattr(module, name)))
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    enroll(fund, tmp_path, "alice")
    fund.register(exported[0] / "model_spec.json", participant="alice", stake=1.0)
    live = tournament[0][tournament[0]["data_type"] == "live"]
    fund.open_round("r1", live)
    assert calls == []


def test_fund_side_quantization_equals_the_participants(exported, tournament):
    spec = load_spec(exported[0] / "model_spec.json")
    live = tournament[0][tournament[0]["data_type"] == "live"]
    ours = SpecCodec(spec).quantize(live[spec.features].to_numpy())
    theirs = exported[1].estimator.quantize_input(live[spec.features].to_numpy(np.float32))
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(
    ("scale", "zero_point"),
    [(0.0123, 7), (3e-5, -2.5), ([0.5, 0.25, 1e-3], [[1.0, -3.0, 0.0]]), ([0.1], 0)],
)
def test_decoding_dequantizes_as_concrete_ml_does(scale, zero_point):
    """The fund decodes without Concrete ML: the same floats, bit for bit, as its quantizer."""
    spec = QuantizerSpec(n_bits=8, is_signed=True, scale=scale, zero_point=zero_point, offset=0)
    values = np.random.default_rng(0).integers(-300, 300, size=(50, 3))
    expected = build_quantizer(spec).dequant(values)
    np.testing.assert_array_equal(dequantize(spec, values), expected)
    assert dequantize(spec, values).dtype == expected.dtype


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(features=r["features"][:-1]), r"inputs of shape \[64, 5\]"),
        (lambda r: r.update(batch_size=0), "batch_size"),
        (lambda r: r["output_quantizer"].update(scale=-1.0), "scale must be positive"),
        (lambda r: r["output_quantizer"].update(scale=float("nan")), "output_quantizer.scale"),
        (lambda r: r.update(name="../../etc"), "name"),
        (lambda r: r.update(features=["id", *r["features"][1:]]), "feature_"),
        (
            lambda r: r.update(client_specs={"circuits": []}),
            "client specs must describe one circuit",
        ),
    ],
)
def test_invalid_specs_name_the_problem(exported, tmp_path, change, message):
    raw = spec_json(exported)
    change(raw)
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, raw))


def test_not_json_and_oversized_specs(tmp_path):
    path = tmp_path / "spec.json"
    path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(SpecError, match="not JSON text"):
        load_spec(path)
    path.write_text(" " * 2_000_001)
    with pytest.raises(SpecError, match="at most"):
        load_spec(path)


def test_registration_refusals(exported, tmp_path):
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    enroll(fund, tmp_path, "alice")
    enroll(fund, tmp_path, "bob")
    raw = spec_json(exported)
    with pytest.raises(RegistryError, match="stake must be ≥ 0"):
        fund.register(write(tmp_path, raw), participant="alice", stake=-5)
    with pytest.raises(RegistryError, match="participant 'carol' is not registered"):
        fund.register(write(tmp_path, raw), participant="carol", stake=1)
    raw["versions"]["concrete-python"] = "0.0.1"
    with pytest.raises(FundError, match=r"compiled with concrete-python 0\.0\.1"):
        fund.register(write(tmp_path, raw), participant="alice", stake=1)
    fund.register(exported[0] / "model_spec.json", participant="alice", stake=1)
    with pytest.raises(RegistryError, match="belongs to another participant"):
        fund.register(exported[0] / "model_spec.json", participant="bob", stake=1)
    other = spec_json(exported)
    other["target"] = "target_60d"
    with pytest.raises(RegistryError, match="registered for 'target', not 'target_60d'"):
        fund.register(write(tmp_path, other), participant="alice", stake=1)
    assert list(fund.models().index) == ["honest"]
    assert fund.models().loc["honest", "version"] == 1


def test_a_changed_spec_becomes_the_next_version(exported, tmp_path):
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    enroll(fund, tmp_path, "alice")
    fund.register(exported[0] / "model_spec.json", participant="alice", stake=1)
    fund.register(exported[0] / "model_spec.json", participant="alice", stake=3)
    changed = spec_json(exported)
    changed["output_quantizer"]["scale"] *= 2
    fund.register(write(tmp_path, changed), participant="alice", stake=3)
    models = fund.models()
    assert models.loc["honest", "version"] == 2 and models.loc["honest", "stake"] == 3
    assert fund.spec("honest").output_quantizer.scale == changed["output_quantizer"]["scale"]


def test_a_model_whose_spec_the_fund_would_refuse_is_not_exported(tmp_path, tournament):
    """17-bit inputs compile (a linear circuit has no table lookup), but the schema caps
    quantizers at 16 bits: the participant hears it at export, and nothing is written."""
    frame, metadata = tournament
    train = frame[frame["data_type"] == "train"]
    model = train_model(
        train, family="linear", features=metadata.features("small"), packed=False,
        params={"n_bits": 17},
    )  # fmt: skip
    compile_model(model, train)
    with pytest.raises(ParticipantError, match="n_bits: Input should be less than or equal to 16"):
        export_model(model, tmp_path / "m", "wide")
    assert not (tmp_path / "m").exists()
