"""The packed round for linear models, on real encryption at a small size (300 live rows of up
to 20 features: two chunks; three models of two participants).

What the fund decrypts must equal each participant's clear quantized predictions exactly, and
anything that is not the round's features times a model's own integer weights, within its
declared bound, must be refused before it is scored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.data import SynthConfig
from fhe_toolkit.errors import FundError, ParticipantError
from fhe_toolkit.fhe.checkpoint import Checkpoint
from fhe_toolkit.fhe.packed import CHUNK_ROWS, PACKED_KEYS, MultiplyTask
from fhe_toolkit.participant import run_bundle, train_model
from fhe_toolkit.participant.model import WEIGHTS_FILE
from fhe_toolkit.participant.outputs import CHECKPOINT
from fhe_toolkit.protocol.artifacts import (
    COLUMNS,
    COMPRESSION_KEY,
    PACKED_PARAMS,
    PACKED_ROUND,
    PACKED_SUBMISSION,
    PREDICTIONS,
    answer_fields,
    open_artifact,
    write_artifact,
)
from fhe_toolkit.protocol.manifest import MANIFEST
from fhe_toolkit.protocol.modelspec import LinearSpec, load_spec
from fhe_toolkit.protocol.signing import load_private_key, sign_directory
from tests.funds import register, small_fund

pytestmark = pytest.mark.fhe

CONFIG = SynthConfig(
    train_eras=8, validation_eras=1, live_eras=1, rows_per_era=300, n_features=20, n_groups=4
)
# name: (owner, family, feature slice, parameters)
MODELS = {
    "a-lin": ("alice", "linear", slice(None), {}),
    "a-log": ("alice", "logistic", slice(0, 7), {}),
    "b-ridge": ("bob", "ridge", slice(3, 15), {}),
    "b-wide": ("bob", "ridge", slice(10, 20), {"n_bits": 11}),  # 11-bit weights: ±1023, the widest
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    made = small_fund(tmp_path_factory.mktemp("packed"), CONFIG, ("alice", "bob"))
    root, fund = made.root, made.fund
    models = {}
    for name, (owner, family, columns, params) in MODELS.items():
        model = train_model(
            made.train, family=family, features=made.features[columns], params=params
        )
        register(fund, model, root / name, owner)
        models[name] = model
    opened = fund.open_round("r1", made.live)
    return {
        "root": root, "fund": fund, "live": made.live, "models": models, "opened": opened,
        "identities": made.identities, "paths": made.paths,
    }  # fmt: skip


def run(world: dict, name: str, out: Path, round_id: str = "r1", **kwargs) -> Path:
    owner = MODELS[name][0]
    return run_bundle(
        world["fund"].round_dir(round_id) / "packed", world["root"] / name, out,
        identity=world["identities"][owner], fund_key=world["fund"].public_key(), workers=2,
        **kwargs,
    )  # fmt: skip


def test_every_linear_model_shares_one_packed_dataset(world):
    opened, root = world["opened"], world["root"]
    assert set(opened) == set(MODELS) and len(set(opened.values())) == 1
    dataset = open_artifact(opened["a-lin"], PACKED_ROUND)
    assert dataset.manifest.model is None and dataset.manifest.n_batches == 2
    # Only the features some packed model uses are encrypted, in the live file's order.
    assert (
        json.loads(dataset.read(COLUMNS)) == load_spec(root / "a-lin" / "model_spec.json").features
    )
    assert not any((root / "fund" / "rounds" / "r1" / "bundles").iterdir())
    # The weights stay with the participant: the public spec has a scale, no weights.
    spec = load_spec(root / "a-log" / "model_spec.json")
    assert isinstance(spec, LinearSpec) and "weights" not in spec.to_json()


def test_decrypted_predictions_equal_the_clear_quantized_model_exactly(world, tmp_path):
    fund, live = world["fund"], world["live"]
    for name in MODELS:
        submission = run(world, name, tmp_path / name)
        predictions = fund.receive("r1", submission)
        expected = world["models"][name].predict(live, "quantized")
        pd.testing.assert_series_equal(
            predictions.sort_index(), expected.sort_index(), check_names=False, rtol=0, atol=0
        )
    # One decryption per model; the round key is retired after the round's last packed model.
    with pytest.raises(FundError, match="received already"):
        fund.receive("r1", tmp_path / "a-lin")
    assert fund.keys.is_retired("r1", PACKED_KEYS)


def test_the_cap_on_packed_models_per_participant(world):
    fund, live = world["fund"], world["live"]
    opened = fund.open_round("capped", live, max_packed_per_participant=1)
    assert set(opened) == {"a-lin", "b-ridge"}
    assert "bob has more than 1 packed models" in opened.left_out["b-wide"]
    assert "alice has more than 1 packed models" in opened.left_out["a-log"]
    with pytest.raises(FundError, match="at least 1"):
        fund.open_round("zero", live, max_packed_per_participant=0)


def forge(world: dict, round_id: str, name: str, weights: np.ndarray, out: Path) -> Path:
    """An attacker's packed submission: the dataset times ``weights`` (over the encrypted
    columns), bypassing the participant client's checks, signed by the model's owner."""
    dataset = open_artifact(world["fund"].round_dir(round_id) / "packed", PACKED_ROUND)
    task = MultiplyTask(
        dataset.read(PACKED_PARAMS).decode(), str(dataset.path(COMPRESSION_KEY)),
        tuple(int(w) for w in weights),
    )  # fmt: skip
    multiply = task.setup()
    products = [multiply(c) for c in dataset.batches()["ciphertext"]]
    spec = load_spec(world["root"] / name / "model_spec.json")
    write_artifact(
        out, PACKED_SUBMISSION, batches={"ciphertext": products}, compress=False, versions={},
        **{**answer_fields(dataset), "model": name, "spec_sha256": spec.sha256()},
    )  # fmt: skip
    owner = MODELS[name][0]
    sign_directory(out, load_private_key(world["identities"][owner]))
    return out


def test_outputs_that_are_not_the_models_linear_function_are_refused(world, tmp_path):
    fund, live, root = world["fund"], world["live"], world["root"]
    fund.open_round("attack", live, models=["a-log", "b-ridge", "b-wide"])
    columns = json.loads(
        open_artifact(fund.round_dir("attack") / "packed", PACKED_ROUND).read(COLUMNS)
    )
    honest = json.loads((root / "a-log" / "deployment" / WEIGHTS_FILE).read_text())["weights"]
    spec = load_spec(root / "a-log" / "model_spec.json")
    position = {c: i for i, c in enumerate(columns)}
    # Weights beyond a-log's declared 8-bit bound, which the round's 11-bit bound (b-wide's)
    # lets through the library's own check: the fund's check against the spec must catch them.
    too_large = np.zeros(len(columns), np.int64)
    too_large[[position[f] for f in spec.features]] = np.asarray(honest) * 3
    with pytest.raises(FundError, match="refused"):
        fund.receive("attack", forge(world, "attack", "a-log", too_large, tmp_path / "large"))
    status = fund.round_record("attack").bundles["a-log"]
    assert status.status == "refused" and "declared bounds" in str(status.detail)
    # A feature b-ridge's spec does not declare: a probe of data the model does not read.
    ridge = load_spec(root / "b-ridge" / "model_spec.json")
    probe = np.zeros(len(columns), np.int64)
    probe[position[next(c for c in columns if c not in ridge.features)]] = 1
    with pytest.raises(FundError, match="refused"):
        fund.receive("attack", forge(world, "attack", "b-ridge", probe, tmp_path / "probe"))
    assert not (fund.round_dir("attack") / "predictions").exists()


def test_a_packed_submission_for_another_round_or_owner_is_refused(world, tmp_path):
    fund, live, root = world["fund"], world["live"], world["root"]
    fund.open_round("r2", live, models=["a-lin"])
    answer = run(world, "a-lin", tmp_path / "r2-answer", "r2")
    fund.open_round("other", live, models=["a-lin"])
    with pytest.raises(FundError, match="answers round 'r2', not 'other'"):
        fund.receive("other", answer)
    # The manifest edited to name the other round: the binding (key set, dataset) gives it away.
    edited = tmp_path / "edited"
    shutil.copytree(answer, edited)
    manifest = json.loads((edited / MANIFEST).read_text())
    manifest["round_id"] = "other"
    (edited / MANIFEST).write_text(json.dumps(manifest))
    sign_directory(edited, load_private_key(world["identities"]["alice"]))
    with pytest.raises(FundError, match="does not match the bundle sent"):
        fund.receive("other", edited)
    # Signed by bob, who does not own a-lin.
    stolen = tmp_path / "stolen"
    shutil.copytree(answer, stolen)
    sign_directory(stolen, load_private_key(world["identities"]["bob"]))
    with pytest.raises(FundError, match="signed by 'bob'"):
        fund.receive("r2", stolen)
    # Another model's weights on this dataset: a participant's client refuses to mix them.
    with pytest.raises(ParticipantError, match="of model 'a-lin' for another model"):
        run_bundle(
            fund.round_dir("r2") / "packed",
            root / "b-ridge",
            tmp_path / "r2-answer",
            identity=world["identities"]["bob"],
            workers=1,
        )
    assert fund.receive("r2", answer).notna().all()


def test_an_interrupted_packed_run_resumes_with_what_is_left(world, tmp_path):
    fund, live = world["fund"], world["live"]
    fund.open_round("resume", live, models=["b-ridge"])
    full = run(world, "b-ridge", tmp_path / "full", "resume")
    first = pd.read_parquet(full / PREDICTIONS).iloc[0]
    partial = tmp_path / "partial"
    partial.mkdir()
    dataset = open_artifact(fund.round_dir("resume") / "packed", PACKED_ROUND)
    checkpoint = Checkpoint(partial / CHECKPOINT, owner=dataset.sha256)
    checkpoint.add(int(first["batch"]), first["ciphertext"])
    checkpoint.close()
    progress: list[tuple[int, int]] = []
    run(world, "b-ridge", partial, "resume", on_progress=lambda *args: progress.append(args))
    assert progress[0] == (CHUNK_ROWS, len(live)), "the checkpointed chunk was computed again"
    assert not (partial / CHECKPOINT).exists()
    predictions = fund.receive("resume", partial)
    expected = world["models"]["b-ridge"].predict(live, "quantized")
    assert np.array_equal(predictions.sort_index().to_numpy(), expected.sort_index().to_numpy())


def test_a_round_with_fewer_rows_than_features_is_padded_and_still_exact(world, tmp_path):
    """Ten live rows cannot pin down twenty weights: the fund mixes in rows it makes up (their
    positions do not show), verifies on all of them, and scores the live ones only."""
    fund, live = world["fund"], world["live"].iloc[:10]
    fund.open_round("few", live, models=["a-lin"])
    dataset = open_artifact(fund.round_dir("few") / "packed", PACKED_ROUND)
    assert dataset.manifest.n_rows > 20 and not set(live.index) & set(dataset.batches()["ids"][0])
    predictions = fund.receive("few", run(world, "a-lin", tmp_path / "few", "few"))
    expected = world["models"]["a-lin"].predict(live, "quantized")
    assert np.array_equal(predictions.sort_index().to_numpy(), expected.sort_index().to_numpy())
    assert set(predictions.index) == set(live.index)
