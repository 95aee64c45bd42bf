"""What crosses between fund and participant, without FHE: manifests, the artifact kinds, specs
and signatures. Pure Python with fake byte blobs: nothing here imports or runs Concrete.

The client specs are Concrete's own JSON (serialized by concrete-python 2.10 from a compiled
1 × 2 → 1 circuit), reshaped consistently where a spec needs other input shapes, so no
compilation is needed to build a valid spec; the property tests also mutate a real tree's
(``tests/specs_for_tests.py``). The client-specs schema itself: ``tests/test_client_specs.py``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhe_toolkit.errors import IdentityError, ManifestError, SpecError
from fhe_toolkit.protocol.artifacts import (
    BIAS,
    BINDING,
    BUNDLE_SPEC,
    CIPHERTEXTS,
    EVALUATION_KEYS,
    INITIAL_BIAS,
    INITIAL_WEIGHTS,
    PREDICTIONS,
    ROUND_BUNDLE,
    SUBMISSION,
    TRAINING_BUNDLE,
    TRAINING_RESULT,
    TRAINING_SPEC,
    WEIGHTS,
    Kind,
    answer_fields,
    open_artifact,
    write_artifact,
)
from fhe_toolkit.protocol.manifest import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    read_manifest,
    write_manifest,
)
from fhe_toolkit.protocol.modelspec import (
    LinearSpec,
    ModelSpec,
    load_spec,
    read_spec,
    validate_spec,
)
from fhe_toolkit.protocol.signing import (
    SIGNATURE,
    create_identity,
    load_private_key,
    sign_directory,
    signed_by,
    verify_directory,
)
from fhe_toolkit.protocol.training_spec import TrainingSpec
from tests.specs_for_tests import assert_secure, linear_spec_raw, tree_spec_raw

# --- specs -------------------------------------------------------------------------------------
REAL_CLIENT_SPECS = """{"keyset": {"lweSecretKeys": [{"id": 0, "params": {"lweDimension": 512,
"integerPrecision": 64, "keyType": "binary"}}], "lweBootstrapKeys": [], "lweKeyswitchKeys": [],
"packingKeyswitchKeys": []}, "circuits": [{"inputs": [{"rawInfo": {"shape": {"dimensions": [1, 2,
513]}, "integerPrecision": 64, "isSigned": false}, "typeInfo": {"lweCiphertext": {"abstractShape":
{"dimensions": [1, 2]}, "concreteShape": {"dimensions": [1, 2, 513]}, "integerPrecision": 64,
"encryption": {"keyId": 0, "variance": 4.896863592478985e-07, "lweDimension": 512, "modulus":
{"modulus": {"native": {}}}}, "compression": "none", "encoding": {"integer": {"width": 3,
"isSigned": false, "mode": {"native": {}}}}}}}], "outputs": [{"rawInfo": {"shape": {"dimensions":
[1, 513]}, "integerPrecision": 64, "isSigned": false}, "typeInfo": {"lweCiphertext":
{"abstractShape": {"dimensions": [1]}, "concreteShape": {"dimensions": [1, 513]},
"integerPrecision": 64, "encryption": {"keyId": 0, "variance": 4.896863592478985e-07,
"lweDimension": 512, "modulus": {"modulus": {"native": {}}}}, "compression": "none", "encoding":
{"integer": {"width": 3, "isSigned": false, "mode": {"native": {}}}}}}}], "name": "f"}],
"tfhers_specs": {"input_types_per_func": {"f": [null]}, "output_types_per_func": {"f": [null]},
"input_shapes_per_func": {"f": [null]}, "output_shapes_per_func": {"f": [null]}}}"""
"""Concrete client specs of a circuit taking one 1 × 2 ciphertext and giving one output."""


def client_specs(inputs: list[list[int]] | None = None, n_outputs: int = 1) -> dict[str, Any]:
    """The real client specs above, with inputs of the given abstract shapes."""
    specs: dict[str, Any] = json.loads(REAL_CLIENT_SPECS)
    circuit = specs["circuits"][0]
    if inputs is not None:
        template = circuit["inputs"][0]
        circuit["inputs"] = []
        for shape in inputs:
            entry = copy.deepcopy(template)
            entry["rawInfo"]["shape"]["dimensions"] = [*shape, 513]
            lwe = entry["typeInfo"]["lweCiphertext"]
            lwe["abstractShape"]["dimensions"] = list(shape)
            lwe["concreteShape"]["dimensions"] = [*shape, 513]
            circuit["inputs"].append(entry)
    circuit["outputs"] = [copy.deepcopy(circuit["outputs"][0]) for _ in range(n_outputs)]
    for side in ("input", "output"):
        nulls = [None] * len(circuit[f"{side}s"])
        for entry in ("types", "shapes"):
            specs["tfhers_specs"][f"{side}_{entry}_per_func"] = {circuit["name"]: nulls}
    return specs


def quantizer() -> dict[str, Any]:
    return {
        "n_bits": 3, "is_signed": False, "is_symmetric": False, "is_narrow": False,
        "is_qat": False, "is_precomputed_qat": False, "no_clipping": False,
        "scale": 1.0, "zero_point": 0, "offset": 0, "rmin": 0.0, "rmax": 4.0,
    }  # fmt: skip


def model_spec_raw(name: str = "alice") -> dict[str, Any]:
    return {
        "name": name,
        "target": "target",
        "features": ["feature_a", "feature_b"],
        "client_specs": client_specs(),
        "versions": {"concrete-ml": "1.9.0"},
        "family": "linear",
        "batch_size": 1,
        "input_quantizers": [quantizer()],
        "output_quantizer": quantizer(),
    }


def training_spec_raw(name: str = "sgd") -> dict[str, Any]:
    return {
        "name": name,
        "target": "target",
        "features": ["feature_a", "feature_b"],
        "client_specs": client_specs([[1, 4, 2], [1, 4, 1], [1, 2, 1], [1, 1, 1]], n_outputs=2),
        "versions": {"concrete-ml": "1.9.0"},
        "label_threshold": 0.5,
        "iterations": 3,
        "batch_size": 4,
        "parameter_range": [-1.0, 1.0],
        "seed": 0,
        "fit_intercept": True,
        "input_quantizers": [quantizer() for _ in range(4)],
        "output_quantizers": [quantizer() for _ in range(2)],
    }


def model_spec(name: str = "alice") -> ModelSpec:
    return validate_spec(model_spec_raw(name), ModelSpec, "test")


def training_spec(name: str = "sgd") -> TrainingSpec:
    return validate_spec(training_spec_raw(name), TrainingSpec, "test")


def test_the_test_specs_are_valid_and_their_digest_ignores_key_order():
    spec = model_spec()
    reordered = dict(reversed(list(model_spec_raw().items())))
    assert validate_spec(reordered, ModelSpec, "test").sha256() == spec.sha256()
    assert model_spec("bob").sha256() != spec.sha256()
    assert training_spec().iteration_count(1000) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(batch_size=2), r"inputs of shape \[1, 2\].*2 row\(s\) of 2 features"),
        (lambda r: r.update(family="svm"), "unknown family 'svm'"),
        (lambda r: r.update(features=["feature_a", "feature_a"]), "more than once"),
        (lambda r: r.update(features=["a", "b"]), "must look like 'feature_"),
        (lambda r: r.update(name="../alice"), "name"),
        (lambda r: r.update(extra=1), "extra: Extra inputs are not permitted"),
        (lambda r: r["output_quantizer"].update(scale=0.0), "scale must be positive"),
        (lambda r: r["output_quantizer"].update(zero_point=[None]), "finite numbers"),
        (lambda r: r.update(input_quantizers=[quantizer()] * 3), "1 \\(shared\\) or 2"),
        (lambda r: r.update(client_specs={"keyset": {}}), "client_specs.circuits: Field required"),
        (lambda r: r["client_specs"]["circuits"].append({}), "one circuit"),
    ],
)
def test_invalid_model_specs_name_the_problem(change, message):
    raw = model_spec_raw()
    change(raw)
    with pytest.raises(SpecError, match=message):
        validate_spec(raw, ModelSpec, "alice's spec")


def test_invalid_training_specs_name_the_problem():
    raw = training_spec_raw()
    raw["epochs"] = 2.0
    with pytest.raises(SpecError, match="either iterations or epochs"):
        validate_spec(raw, TrainingSpec, "job")
    raw = training_spec_raw()
    raw["client_specs"] = client_specs()
    with pytest.raises(SpecError, match=r"an SGD step on batches of 4 rows of 2 features"):
        validate_spec(raw, TrainingSpec, "job")
    with pytest.raises(SpecError, match="job is not a valid training spec"):
        validate_spec(model_spec_raw(), TrainingSpec, "job")


def test_a_zero_point_holding_objects_is_a_spec_error():
    raw = model_spec_raw()
    raw["output_quantizer"]["zero_point"] = [{}]
    with pytest.raises(SpecError, match="zero_point"):
        validate_spec(raw, ModelSpec, "alice's spec")


def test_a_deeply_nested_spec_file_is_a_spec_error(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text("[" * 100_000 + "]" * 100_000)  # 200 kB, far below the size limit
    with pytest.raises(SpecError):
        read_spec(path, ModelSpec)


# --- property tests: hostile JSON gets the toolkit's own error, and nothing else ---------------
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=24,
)


EDGE_NUMBERS = (
    st.sampled_from([0, 1, -1, 3, 511, 512, 2**31, 2**32, 2**40, 2**64, True, 0.0, -0.5])
    | st.sampled_from([1e-300, 1e300, 1e-40, float("nan"), float("inf")])
    | st.integers()
    | st.floats()
)
"""A number where one was (or anywhere): the values at and past the edges of every range."""


def positions(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) pair inside ``node``, at any depth."""
    keys = list(node) if isinstance(node, dict) else range(len(node))
    found = []
    for key in keys:
        found.append((node, key))
        if isinstance(node[key], dict | list):
            found.extend(positions(node[key]))
    return found


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any], extra_keys: list[str]) -> object:
    """``valid`` with one to three random changes anywhere inside it (a value replaced by random
    JSON, removed, or a key or item added), or random JSON altogether."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    raw = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        node, key = draw(st.sampled_from([(raw, None), *positions(raw)]))
        action = draw(st.sampled_from(["replace", "delete", "add", "number"]))
        if key is None or action == "add":
            target = node if key is None else node[key]
            if isinstance(target, dict):
                target[draw(st.sampled_from(extra_keys) | st.text(max_size=8))] = draw(JSON)
            elif isinstance(target, list):
                target.append(draw(JSON))
        elif action == "replace":
            node[key] = draw(JSON)
        elif action == "number":
            node[key] = draw(EDGE_NUMBERS)
        else:
            del node[key]
    return raw


SPEC_KEYS = [*model_spec_raw(), *training_spec_raw(), "zero_point", "scale", "circuits"]
SPEC_KEYS += ["lweDimension", "variance", "keyId", "tfhers_specs", "serialized_processing"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=mutated(model_spec_raw(), SPEC_KEYS)
    | mutated(training_spec_raw(), SPEC_KEYS)
    | mutated(tree_spec_raw(), SPEC_KEYS),
    spec_type=st.sampled_from([ModelSpec, TrainingSpec]),
)
def test_validate_spec_raises_only_spec_errors(raw, spec_type):
    """Whatever the decoded JSON, ``validate_spec`` returns a spec or raises :class:`SpecError`
    (hypothesis found a dict inside ``zero_point`` raising TypeError, now refused by name); and
    what it accepts has client specs within Concrete's 128-bit ranges."""
    try:
        spec = validate_spec(raw, spec_type, "fuzzed")
    except SpecError as exc:
        assert str(exc).startswith("fuzzed is not a valid ")
        return
    assert isinstance(spec, spec_type)
    assert validate_spec(json.loads(spec.to_json()), spec_type, "again").sha256() == spec.sha256()
    assert_secure(json.loads(spec.client_specs_bytes()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=st.binary(max_size=64)
    | JSON.map(lambda value: json.dumps(value).encode())
    | mutated(tree_spec_raw(), SPEC_KEYS).map(lambda value: json.dumps(value).encode())
    | mutated(linear_spec_raw(), SPEC_KEYS).map(lambda value: json.dumps(value).encode())
)
def test_loading_any_file_as_a_model_spec_raises_only_spec_errors(content):
    """Bytes, JSON of any shape, a tree spec or a linear one mutated: a spec or a SpecError."""
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "spec.json"
        path.write_bytes(content)
        try:
            spec = load_spec(path)
        except SpecError:
            return
    assert isinstance(spec, ModelSpec | LinearSpec)


# --- manifests ---------------------------------------------------------------------------------
def manifest_fields(spec: Any = None, **changes: object) -> dict[str, Any]:
    spec = spec or model_spec()
    fields: dict[str, Any] = {
        "round_id": "2026-11-27",
        "model": spec.name,
        "key_set_id": uuid.uuid4().hex,
        "spec_sha256": spec.sha256(),
        "n_rows": 3,
        "n_batches": 3,
        "batch_size": 1,
        "versions": {"concrete-ml": "1.9.0"},
    }
    return {**fields, **changes}


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    """A submission-kind directory: two files and a valid manifest listing them."""
    directory = tmp_path / "listed"
    directory.mkdir()
    (directory / "a.bin").write_bytes(b"alpha" * 100)
    (directory / "b.bin").write_bytes(b"")
    write_manifest(directory, ["a.bin", "b.bin"], kind="submission", **manifest_fields())
    return directory


def edit_manifest(directory: Path, change: Callable[[dict[str, Any]], object]) -> None:
    raw = json.loads((directory / MANIFEST).read_text())
    change(raw)
    (directory / MANIFEST).write_text(json.dumps(raw))


def test_a_manifest_reads_back_as_written_and_its_digest_is_the_files(listed):
    manifest, digest = read_manifest(listed, "submission")
    assert digest == hashlib.sha256((listed / MANIFEST).read_bytes()).hexdigest()
    assert manifest.kind == "submission" and manifest.bundle_sha256 is None
    assert manifest.files["a.bin"].size == 500
    assert manifest.files["a.bin"].sha256 == hashlib.sha256(b"alpha" * 100).hexdigest()
    assert manifest.files["b.bin"].sha256 == hashlib.sha256(b"").hexdigest()
    again = write_manifest(listed, ["a.bin", "b.bin"], **manifest.model_dump(exclude={"files"}))
    assert again == hashlib.sha256((listed / MANIFEST).read_bytes()).hexdigest()


def symlink_a_copy(directory: Path) -> None:
    outside = directory.parent / "elsewhere.bin"
    outside.write_bytes((directory / "a.bin").read_bytes())
    (directory / "a.bin").unlink()
    (directory / "a.bin").symlink_to(outside)


def same_size_other_bytes(directory: Path) -> None:
    (directory / "a.bin").write_bytes(b"ALPHA" * 100)


def pad_manifest(directory: Path) -> None:
    text = (directory / MANIFEST).read_text()
    (directory / MANIFEST).write_text(text + " " * MAX_MANIFEST_BYTES)  # still valid JSON


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / MANIFEST).write_text("{"), "is not JSON"),
        (lambda d: (d / MANIFEST).write_bytes(b'"\xff"'), "is not JSON"),
        (lambda d: (d / MANIFEST).write_text("[]"), "is not a valid manifest"),
        (lambda d: edit_manifest(d, lambda m: m.update(extra=1)), "extra: Extra inputs"),
        (lambda d: edit_manifest(d, lambda m: m.update(n_rows="3")), "n_rows"),
        (lambda d: edit_manifest(d, lambda m: m.update(format_version=2)), "format_version"),
        (lambda d: edit_manifest(d, lambda m: m.update(kind="bundle")), r"\bkind\b"),
        (lambda d: edit_manifest(d, lambda m: m.pop("round_id")), "round_id: Field required"),
        (lambda d: edit_manifest(d, lambda m: m.update(model="Alice!")), "model"),
        (lambda d: (d / MANIFEST).unlink(), "has no manifest.json"),
        (lambda d: (d / "a.bin").unlink(), "lacks a.bin"),
        (lambda d: ((d / "a.bin").unlink(), (d / "a.bin").mkdir()), "a.bin is a directory"),
        (symlink_a_copy, "a.bin is a symbolic link"),
        (lambda d: (d / "a.bin").write_bytes(b"alpha" * 99), "is 495 bytes but the manifest"),
        (lambda d: (d / "b.bin").write_bytes(b"x"), "is 1 bytes but the manifest says 0"),
        (same_size_other_bytes, "does not match its SHA-256"),
        (pad_manifest, "a manifest is at most"),
    ],
)
def test_a_damaged_directory_is_refused_with_the_reason(listed, damage, message):
    read_manifest(listed, "submission")  # intact: accepted
    damage(listed)
    with pytest.raises(ManifestError, match=message):
        read_manifest(listed, "submission")


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "/etc/passwd", "a..b", ".hidden", "", "a\\b", MANIFEST, "é.bin"]
)
def test_listed_names_must_be_plain_names_inside_the_directory(listed, name):
    (listed.parent / "x").write_bytes(b"outside")
    entry = {"sha256": hashlib.sha256(b"outside").hexdigest(), "size": 7}
    edit_manifest(listed, lambda m: m["files"].update({name: entry}))
    with pytest.raises(ManifestError, match="file names must be plain names"):
        read_manifest(listed, "submission")


def test_the_writer_refuses_unsafe_names_too(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    (tmp_path / "x").write_bytes(b"outside")
    for name in ("../x", "./../x"):
        with pytest.raises(ValueError, match="file names must be plain names"):
            write_manifest(directory, [name], kind="submission", **manifest_fields())
    assert not (directory / MANIFEST).exists()


def test_a_manifest_of_another_kind_or_not_a_directory_is_refused(listed):
    with pytest.raises(ManifestError, match="holds a submission, not a round-bundle"):
        read_manifest(listed, "round-bundle")
    with pytest.raises(ManifestError, match="is not a folder"):
        read_manifest(listed / "a.bin", "submission")
    with pytest.raises(ValueError, match="kind"):
        write_manifest(listed, ["a.bin"], kind="bogus", **manifest_fields())


def test_a_deeply_nested_manifest_is_a_manifest_error(listed):
    (listed / MANIFEST).write_text('{"files": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ManifestError):
        read_manifest(listed, "submission")


def valid_manifest_raw() -> dict[str, Any]:
    files = {"a.bin": {"sha256": hashlib.sha256(b"alpha").hexdigest(), "size": 5}}
    return {
        "format": "fhe-toolkit/manifest",
        "format_version": 1,
        "kind": "submission",
        **manifest_fields(),
        "bundle_sha256": None,
        "files": files,
        "created_at": "2026-11-27T09:16:09Z",
    }


MANIFEST_KEYS = [*valid_manifest_raw(), "sha256", "size", "../x", "a/b", MANIFEST, "a.bin"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=mutated(valid_manifest_raw(), MANIFEST_KEYS),
    kind=st.sampled_from(["submission", "round-bundle"]),
)
def test_read_manifest_raises_only_manifest_errors(raw, kind):
    """Whatever JSON a manifest holds, reading it returns a manifest whose every listed file
    checks out, or raises :class:`ManifestError`."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        (directory / "a.bin").write_bytes(b"alpha")
        (directory / MANIFEST).write_text(json.dumps(raw))
        try:
            manifest, digest = read_manifest(directory, kind)
        except ManifestError:
            return
        assert manifest.kind == kind
        assert digest == hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest()
        for listed_name, entry in manifest.files.items():
            assert (directory / listed_name).resolve().parent == directory.resolve()
            assert (
                hashlib.sha256((directory / listed_name).read_bytes()).hexdigest() == entry.sha256
            )


# --- artifacts ---------------------------------------------------------------------------------
def write_round_bundle(directory: Path, spec: ModelSpec | None = None, **changes: object) -> str:
    spec = spec or model_spec()
    return write_artifact(
        directory,
        ROUND_BUNDLE,
        batches={
            "ids": [["id0"], ["id1"], ["id2"]],
            "ciphertext": [b"ct0" * 10, b"ct1" * 10, b"ct2" * 10],
        },
        blobs={EVALUATION_KEYS: b"evaluation keys", BUNDLE_SPEC: spec.to_json().encode()},
        **{"compress": True, **manifest_fields(spec), **changes},
    )


def write_submission(directory: Path, **fields: object) -> str:
    return write_artifact(
        directory,
        SUBMISSION,
        batches={"ciphertext": [b"out0", b"out1", b"out2"]},
        compress=False,
        **{**manifest_fields(), **fields},
    )


def write_training_bundle(directory: Path) -> str:
    spec = training_spec()
    return write_artifact(
        directory,
        TRAINING_BUNDLE,
        batches={"x": [b"x0", b"x1", b"x2"], "y": [b"y0", b"y1", b"y2"]},
        blobs={
            INITIAL_WEIGHTS: b"w",
            INITIAL_BIAS: b"b",
            EVALUATION_KEYS: b"ek",
            TRAINING_SPEC: spec.to_json().encode(),
        },
        **manifest_fields(spec, round_id="job-1", n_rows=12, batch_size=4),
    )


def write_training_result(directory: Path) -> str:
    return write_artifact(
        directory,
        TRAINING_RESULT,
        blobs={WEIGHTS: b"new weights", BIAS: b"new bias"},
        **manifest_fields(training_spec(), round_id="job-1"),
    )


WRITERS: dict[str, tuple[Kind, Callable[[Path], str]]] = {
    "round-bundle": (ROUND_BUNDLE, write_round_bundle),
    "submission": (SUBMISSION, write_submission),
    "training-bundle": (TRAINING_BUNDLE, write_training_bundle),
    "training-result": (TRAINING_RESULT, write_training_result),
}


@pytest.mark.parametrize("kind_name", list(WRITERS))
def test_each_kind_round_trips(tmp_path, kind_name):
    kind, write = WRITERS[kind_name]
    directory = tmp_path / kind_name
    digest = write(directory)
    artifact = open_artifact(directory, kind)
    assert artifact.sha256 == digest == hashlib.sha256(artifact.read(MANIFEST)).hexdigest()
    assert artifact.manifest.kind == kind.name
    assert set(artifact.manifest.files) == set(kind.files)
    assert sorted(p.name for p in directory.iterdir()) == sorted([*kind.files, MANIFEST])
    if kind.spec is not None:
        name, spec_type = kind.spec
        assert isinstance(artifact.spec, spec_type)
        assert artifact.spec.sha256() == artifact.manifest.spec_sha256
        assert artifact.read(name) == artifact.spec.to_json().encode()
    else:
        assert artifact.spec is None
    if kind.table is not None:
        frame = artifact.batches()
        assert frame["batch"].tolist() == [0, 1, 2]
        assert list(frame.columns) == kind.table[1].names
    else:
        with pytest.raises(ManifestError, match="has no batch table"):
            artifact.batches()
    others = [other for other, _ in WRITERS.values() if other is not kind]
    for other in others:
        with pytest.raises(ManifestError, match=f"holds a {kind.name}, not a {other.name}"):
            open_artifact(directory, other)


def test_the_contents_come_back_byte_for_byte(tmp_path):
    write_round_bundle(tmp_path / "b")
    bundle = open_artifact(tmp_path / "b", ROUND_BUNDLE)
    frame = bundle.batches()
    assert [list(ids) for ids in frame["ids"]] == [["id0"], ["id1"], ["id2"]]
    assert frame["ciphertext"].tolist() == [b"ct0" * 10, b"ct1" * 10, b"ct2" * 10]
    assert bundle.read(EVALUATION_KEYS) == b"evaluation keys"
    write_training_result(tmp_path / "r")
    result = open_artifact(tmp_path / "r", TRAINING_RESULT)
    assert (result.read(WEIGHTS), result.read(BIAS)) == (b"new weights", b"new bias")
    write_training_bundle(tmp_path / "t")
    training = open_artifact(tmp_path / "t", TRAINING_BUNDLE)
    assert training.batches()["y"].tolist() == [b"y0", b"y1", b"y2"]
    assert training.spec.iterations == 3


def test_a_missing_or_unlisted_file_is_refused(tmp_path):
    write_round_bundle(tmp_path / "b")
    (tmp_path / "b" / EVALUATION_KEYS).unlink()
    with pytest.raises(ManifestError, match=f"lacks {EVALUATION_KEYS}"):
        open_artifact(tmp_path / "b", ROUND_BUNDLE)
    directory = tmp_path / "short"
    write_round_bundle(directory)
    write_manifest(directory, [CIPHERTEXTS, BUNDLE_SPEC], kind="round-bundle", **manifest_fields())
    with pytest.raises(ManifestError, match=rf"does not list \['{EVALUATION_KEYS}'\]"):
        open_artifact(directory, ROUND_BUNDLE)


def write_predictions_table(directory: Path, table: pa.Table, n_batches: int = 3) -> None:
    directory.mkdir()
    pq.write_table(table, directory / PREDICTIONS)
    write_manifest(
        directory, [PREDICTIONS], kind="submission", **manifest_fields(n_batches=n_batches)
    )


PREDICTIONS_SCHEMA = SUBMISSION.table[1] if SUBMISSION.table else None


@pytest.mark.parametrize(
    ("batches", "message"),
    [
        ([0, 2], r"missing \[1\], repeated \[\]"),
        ([0, 1, 1], r"missing \[2\], repeated \[1\]"),
        ([0, 1, 1, 2], r"missing \[\], repeated \[1\]"),
        ([1, 0, 2], r"in order; missing \[\], repeated \[\]"),
        ([0, 1, 2, 3], r"batches 0\.\.2 once each"),
        ([], r"missing \[0, 1, 2\]"),
    ],
)
def test_a_batch_table_must_hold_each_batch_once_in_order(tmp_path, batches, message):
    table = pa.table(
        {"batch": batches, "ciphertext": [b"c"] * len(batches)}, schema=PREDICTIONS_SCHEMA
    )
    write_predictions_table(tmp_path / "s", table)
    submission = open_artifact(tmp_path / "s", SUBMISSION)  # files check out; the table does not
    with pytest.raises(ManifestError, match=message):
        submission.batches()


@pytest.mark.parametrize(
    "table",
    [
        pa.table({"batch": pa.array([0, 1, 2], pa.int64()), "ciphertext": [b"a", b"b", b"c"]}),
        pa.table({"batch": pa.array([0, 1, 2], pa.int32())}),
        pa.table(
            {
                "batch": pa.array([0, 1, 2], pa.int32()),
                "ciphertext": pa.array([b"a", b"b", b"c"], pa.large_binary()),
                "plaintext": [1.0, 2.0, 3.0],
            }
        ),
        pa.table(
            {"ciphertext": pa.array([b"a"], pa.large_binary()), "batch": pa.array([0], pa.int32())}
        ),
    ],
)
def test_a_batch_table_with_other_columns_is_refused(tmp_path, table):
    write_predictions_table(tmp_path / "s", table)
    with pytest.raises(ManifestError, match=r"has columns .*expected \['batch', 'ciphertext'\]"):
        open_artifact(tmp_path / "s", SUBMISSION).batches()


def test_a_batch_table_that_is_not_parquet_is_refused(tmp_path):
    directory = tmp_path / "s"
    directory.mkdir()
    (directory / PREDICTIONS).write_bytes(b"PAR1 not really")
    write_manifest(directory, [PREDICTIONS], kind="submission", **manifest_fields())
    with pytest.raises(ManifestError, match="is not a readable parquet file"):
        open_artifact(directory, SUBMISSION).batches()


def test_a_table_kind_needs_its_table(tmp_path):
    with pytest.raises(ValueError, match="needs its batch table"):
        write_artifact(tmp_path / "s", SUBMISSION, **manifest_fields())


def test_an_answer_is_bound_to_the_exact_bundle(tmp_path):
    write_round_bundle(tmp_path / "bundle")
    bundle = open_artifact(tmp_path / "bundle", ROUND_BUNDLE)
    fields = answer_fields(bundle)
    assert set(fields) == {*BINDING, "bundle_sha256"}
    assert fields["bundle_sha256"] == bundle.sha256
    assert fields["bundle_sha256"] == hashlib.sha256(bundle.read(MANIFEST)).hexdigest()
    for name in BINDING:
        assert fields[name] == getattr(bundle.manifest, name)

    write_submission(tmp_path / "answer", **fields)
    answer = open_artifact(tmp_path / "answer", SUBMISSION)
    assert answer.manifest.bundle_sha256 == bundle.sha256
    assert answer.manifest.key_set_id == bundle.manifest.key_set_id

    # The same round, model and keys with one ciphertext changed: another bundle, another hash.
    frame = bundle.batches()
    write_artifact(
        tmp_path / "bundle",
        ROUND_BUNDLE,
        batches={
            "ids": frame["ids"].tolist(),
            "ciphertext": [b"swapped", *frame["ciphertext"][1:]],
        },
        blobs={},
        **bundle.manifest.model_dump(include=set(BINDING) | {"versions"}),
    )
    swapped = open_artifact(tmp_path / "bundle", ROUND_BUNDLE)
    assert swapped.manifest.key_set_id == bundle.manifest.key_set_id
    assert answer_fields(swapped)["bundle_sha256"] != answer.manifest.bundle_sha256


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"spec_sha256": model_spec("bob").sha256()}, "model spec does not match the manifest"),
        ({"model": "bob"}, "model spec does not match the manifest"),
    ],
)
def test_a_spec_that_does_not_match_the_manifest_is_refused(tmp_path, changes, message):
    write_round_bundle(tmp_path / "b", **changes)
    with pytest.raises(ManifestError, match=message):
        open_artifact(tmp_path / "b", ROUND_BUNDLE)


def test_an_unusable_spec_is_refused(tmp_path):
    directory = tmp_path / "b"
    write_round_bundle(directory)
    (directory / BUNDLE_SPEC).write_text("{}")
    write_manifest(directory, list(ROUND_BUNDLE.files), kind="round-bundle", **manifest_fields())
    with pytest.raises(ManifestError, match="the round-bundle's model spec is unusable"):
        open_artifact(directory, ROUND_BUNDLE)
    training = tmp_path / "t"
    write_training_bundle(training)
    (training / TRAINING_SPEC).write_text(model_spec().to_json())  # a model spec, not training
    write_manifest(
        training, list(TRAINING_BUNDLE.files), kind="training-bundle", **manifest_fields()
    )
    with pytest.raises(ManifestError, match="training spec is unusable"):
        open_artifact(training, TRAINING_BUNDLE)


# --- signatures (keys and signatures themselves: tests/test_identity.py) ----------------------
def test_a_signed_bundle_verifies_and_the_signature_and_manifest_cover_every_file(tmp_path):
    directory = tmp_path / "bundle"
    write_round_bundle(directory)
    fund_key = tmp_path / "keys" / "fund.pem"
    public = create_identity(fund_key)
    sign_directory(directory, load_private_key(fund_key))
    verify_directory(directory, public, "the fund")
    assert signed_by(directory, public)
    assert len((directory / SIGNATURE).read_bytes()) == 64
    # A changed file keeps the manifest (and so the signature) intact, but the manifest refuses it.
    (directory / EVALUATION_KEYS).write_bytes(b"Evaluation keys")  # same size
    verify_directory(directory, public, "the fund")
    with pytest.raises(ManifestError, match="does not match its SHA-256"):
        open_artifact(directory, ROUND_BUNDLE)
    # A manifest re-serialized with another value is not the one signed.
    edit_manifest(directory, lambda m: m.update(n_rows=2))
    with pytest.raises(IdentityError, match="manifest changed after signing"):
        verify_directory(directory, public, "the fund")
