"""A whole round in real FHE on tiny models and few rows (70 live rows, 5 features; a linear
model and a depth-2 tree): exactness, keys, and every refusal, on the fund's and the
participant's side."""

from __future__ import annotations

import os
import shutil
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fhe_toolkit.data import SynthConfig
from fhe_toolkit.errors import (
    FundError,
    KeyStoreError,
    ManifestError,
    ParticipantError,
    RegistryError,
    RunError,
)
from fhe_toolkit.fhe.checkpoint import Checkpoint
from fhe_toolkit.fund import fund_benchmark
from fhe_toolkit.participant import (
    compile_model,
    run_bundle,
    train_model,
)
from fhe_toolkit.participant.outputs import CHECKPOINT
from fhe_toolkit.protocol.artifacts import (
    CIPHERTEXTS,
    EVALUATION_KEYS,
    PREDICTIONS,
    ROUND_BUNDLE,
    open_artifact,
)
from fhe_toolkit.protocol.manifest import MANIFEST
from fhe_toolkit.protocol.signing import (
    SIGNATURE,
    create_identity,
    load_private_key,
    sign_directory,
)
from fhe_toolkit.registry import SubmissionStatus
from tests.cli_runner import cli
from tests.funds import register, small_fund
from tests.hostile_answers import rehash

pytestmark = pytest.mark.fhe

CONFIG = SynthConfig(
    train_eras=20, validation_eras=2, live_eras=1, rows_per_era=70, n_features=12, n_groups=3
)
MODELS = {
    "lin": ("linear", {}, "target"),
    "tree": ("decision_tree", {"max_depth": 2}, "target"),
    "resid": ("linear", {}, "target_resid"),  # another target: scored against its own meta model
}
ID = {name: (lambda world, name=name: world["identities"][name]) for name in MODELS}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    owners = {name: f"owner-of-{name}" for name in MODELS}
    made = small_fund(tmp_path_factory.mktemp("round"), CONFIG, owners.values(), "small")
    root, train, fund = made.root, made.train, made.fund
    identities = {name: made.identities[owner] for name, owner in owners.items()}
    models = {}
    for name, (family, params, target) in MODELS.items():
        # Compiled circuits all: this file is the per-model path (test_packed_round.py: packed).
        model = train_model(
            train,
            family=family,
            features=made.features,
            params=params,
            target=target,
            packed=False,
        )
        compile_model(model, train)
        register(fund, model, root / name, owners[name])
        models[name] = model
    bundles = fund.open_round("r1", made.live)
    pristine = root / "pristine"
    for name, bundle in bundles.items():
        shutil.copytree(bundle, pristine / name)
    submissions = {
        name: run_bundle(
            bundles[name],
            root / name,
            root / f"sub-{name}",
            identity=identities[name],
            fund_key=fund.public_key(),
            workers=2,
        )
        for name in MODELS
    }
    return {
        "root": root, "paths": made.paths, "train": train, "live": made.live, "fund": fund,
        "models": models, "bundles": pristine, "submissions": submissions,
        "identities": identities,
    }  # fmt: skip


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def refusals(world, tmp_path_factory) -> dict[str, str]:
    """Bad submissions, each refused before any decryption (run before the genuine ones)."""
    fund, work = world["fund"], tmp_path_factory.mktemp("bad-submissions")
    good = world["submissions"]["lin"]
    messages = {}

    def attempt(label: str, directory: Path) -> None:
        with pytest.raises((FundError, ManifestError)) as err:
            fund.receive("r1", directory, workers=1)
        messages[label] = str(err.value)

    missing = copy(good, work / "missing")
    table = pq.read_table(missing / PREDICTIONS)
    pq.write_table(table.slice(0, table.num_rows - 1), missing / PREDICTIONS)
    raw = (missing / MANIFEST).read_text().replace('"n_batches": 2', '"n_batches": 1')
    (missing / MANIFEST).write_text(raw)
    rehash(missing)
    attempt("missing batch", missing)

    repeated = copy(good, work / "repeated")
    table = pq.read_table(repeated / PREDICTIONS)
    doubled = pa.concat_tables([table.slice(0, 1), table.slice(0, 1)])
    pq.write_table(doubled, repeated / PREDICTIONS)
    rehash(repeated)
    attempt("repeated batch", repeated)

    tampered = copy(good, work / "tampered-file")
    with (tampered / PREDICTIONS).open("r+b") as handle:
        handle.seek(200)
        handle.write(b"\x00" * 16)
    attempt("tampered file", tampered)

    other_round = copy(good, work / "other-round")
    text = (other_round / MANIFEST).read_text().replace('"round_id": "r1"', '"round_id": "r0"')
    (other_round / MANIFEST).write_text(text)
    attempt("other round", other_round)

    swapped = copy(good, work / "swapped-model")
    text = (swapped / MANIFEST).read_text().replace('"model": "lin"', '"model": "tree"')
    (swapped / MANIFEST).write_text(text)
    attempt("claims another model", swapped)

    other_signer = copy(good, work / "other-signer")
    sign_directory(other_signer, load_private_key(world["identities"]["tree"]))
    attempt("signed by another participant", other_signer)

    unsigned = copy(good, work / "unsigned")
    (unsigned / SIGNATURE).unlink()
    attempt("unsigned", unsigned)
    return messages


def test_bad_submissions_are_refused_before_decryption(world, refusals):
    assert "n_batches" in refusals["missing batch"]
    assert "repeated [0]" in refusals["repeated batch"]
    assert "SHA-256" in refusals["tampered file"]
    assert "round 'r0'" in refusals["other round"]
    assert "another bundle" in refusals["claims another model"]
    assert (
        "signed by 'owner-of-tree', who does not own the model"
        in refusals["signed by another participant"]
    )
    assert "is not signed" in refusals["unsigned"]
    # Nothing was decrypted or stored: the keys still exist, no submission was kept.
    assert world["fund"].keys.keyset_path("r1", "lin").is_file()
    assert not (world["fund"].round_dir("r1") / "submissions" / "lin").exists()


@pytest.fixture(scope="module")
def received(world, refusals, tmp_path_factory) -> dict[str, pd.Series]:
    """Every genuine submission received by one `fund receive` call (its start-up paid once),
    with a submission refused among them that neither stops nor spends the others."""
    root, fund = world["root"], world["fund"]
    stranger = copy(world["submissions"]["tree"], tmp_path_factory.mktemp("x") / "stranger")
    sign_directory(stranger, load_private_key(world["identities"]["lin"]))
    subs = world["submissions"]
    result = cli("fund", "receive", "r1", subs["lin"], stranger, subs["tree"], subs["resid"],
                 "--fund-dir", fund.root, "--keys", fund.keys.root, cwd=root)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"refused {stranger}: this submission for the model 'tree' is signed by" in result.stderr
    assert "1 of 4 submissions refused" in result.stderr
    assert [line.split()[4] for line in result.stdout.splitlines()] == ["lin", "tree", "resid"]
    predictions = fund.round_dir("r1") / "predictions"
    return {name: pd.read_parquet(predictions / f"{name}.parquet")[name] for name in MODELS}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_decrypted_predictions_equal_clear_quantized_predictions(world, received, name):
    expected = world["models"][name].predict(world["live"], "quantized")
    got = received[name].loc[expected.index]
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())


def test_keys_are_private_retired_and_never_in_bundles(world, received):
    store = world["fund"].keys
    folder = store.directory("r1", "lin")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in folder.iterdir())
    with pytest.raises(KeyStoreError, match="retired"):
        store.keyset_path("r1", "lin")
    with pytest.raises(FundError, match="received already"):
        world["fund"].receive("r1", world["submissions"]["lin"])
    bundles = world["fund"].round_record("r1").bundles
    assert {name: bundles[name].status for name in MODELS} == dict.fromkeys(
        MODELS, SubmissionStatus.RECEIVED
    )

    bundle_files = {f.name for f in world["bundles"].rglob("*") if f.is_file()}
    assert bundle_files == {CIPHERTEXTS, EVALUATION_KEYS, "model_spec.json", MANIFEST, SIGNATURE}


def test_round_scores_and_payouts(world, received):
    with pytest.raises(FundError, match="is open: participants may still submit"):
        world["fund"].score("r1", world["paths"]["live_targets"], live=world["live"])
    results = world["fund"].score(
        "r1", world["paths"]["live_targets"], live=world["live"],
        benchmark=fund_benchmark(world["train"], world["live"]), close_now=True,
    )  # fmt: skip
    assert any("resid is the only model on 'target_resid'" in n for n in results.notes)
    assert set(results.scores.index) == set(MODELS)
    assert {"corr", "mmc", "bmc", "fnc", "max_exposure", "stake", "payout"} <= set(results.scores)
    targets = results.per_era.groupby("model")["target"].unique().map(list).to_dict()
    assert targets == {name: [target] for name, (_, _, target) in MODELS.items()}
    # One meta model per target: alone on its target, "resid" is its own meta model (MMC 0).
    assert abs(results.scores.loc["resid", "mmc"]) < 1e-9
    pairs = world["fund"].db.correlations()
    assert {"meta_model:target", "meta_model:target_resid"} <= set(pairs["first"])
    assert (results.scores["payout"].abs() <= 10.0 * 0.05 + 1e-12).all()
    published = pd.read_csv(results.directory / "scores.csv", index_col=0)
    assert (published["corr"] == published["corr"].round(4)).all()
    stakes = world["fund"].models()["stake"]
    assert stakes.to_dict() == pytest.approx((10.0 + results.scores["payout"]).to_dict())
    (results.directory / "scores.csv").unlink()
    again = world["fund"].score("r1", world["paths"]["live_targets"], live=world["live"])
    assert world["fund"].models()["stake"].equals(stakes), "a resolved round was paid twice"
    assert (again.directory / "scores.csv").is_file()
    assert again.scores["payout"].to_dict() == pytest.approx(results.scores["payout"].to_dict())
    assert list(again.scores.columns) == list(results.scores.columns), "other columns again"
    assert "not used" in again.notes[0]


def test_truncated_ciphertext_file_is_refused(world, tmp_path):
    bundle = copy(world["bundles"] / "lin", tmp_path / "bundle")
    data = (bundle / CIPHERTEXTS).read_bytes()
    (bundle / CIPHERTEXTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ManifestError, match="truncated"):
        run_bundle(bundle, world["root"] / "lin", tmp_path / "out", identity=ID["lin"](world))
    assert not (tmp_path / "out" / PREDICTIONS).exists()


def test_bundle_for_another_model_is_refused(world, tmp_path):
    with pytest.raises(ParticipantError, match="encrypted for model 'tree'"):
        run_bundle(world["bundles"] / "tree", world["root"] / "lin", tmp_path / "out",
                   identity=ID["lin"](world))  # fmt: skip


def test_evaluation_keys_of_another_circuit_fail_cleanly(world, tmp_path):
    bundle = copy(world["bundles"] / "tree", tmp_path / "bundle")
    shutil.copy(world["bundles"] / "lin" / EVALUATION_KEYS, bundle / EVALUATION_KEYS)
    rehash(bundle)
    with pytest.raises(RunError, match="batch"):
        run_bundle(bundle, world["root"] / "tree", tmp_path / "out", workers=1,
                   identity=ID["tree"](world))  # fmt: skip
    assert not (tmp_path / "out" / PREDICTIONS).exists()


def test_corrupted_ciphertext_fails_its_row_only(world, tmp_path):
    original = world["bundles"] / "tree"
    bundle = copy(original, tmp_path / "bundle")
    table = pq.read_table(bundle / CIPHERTEXTS).to_pandas()
    blob = bytearray(table.at[3, "ciphertext"])
    blob[40:60] = os.urandom(20)
    table.at[3, "ciphertext"] = bytes(blob)
    schema = pq.read_schema(original / CIPHERTEXTS)
    pq.write_table(pa.Table.from_pandas(table, schema=schema, preserve_index=False),
                   bundle / CIPHERTEXTS)  # fmt: skip
    rehash(bundle)
    out = tmp_path / "out"
    with pytest.raises(RunError, match=r"1 batch\(es\) failed: batch 3 "):
        run_bundle(bundle, world["root"] / "tree", out, workers=2, identity=ID["tree"](world))
    checkpoint = Checkpoint(out / CHECKPOINT, owner=open_artifact(bundle, ROUND_BUNDLE).sha256)
    assert checkpoint.done() == set(range(CONFIG.rows_per_era)) - {3}
    checkpoint.close()


def test_an_interrupted_run_resumes_without_recomputing(world, tmp_path):
    out = tmp_path / "out"

    def interrupt(done: int, total: int) -> None:
        if done >= 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_bundle(world["bundles"] / "tree", world["root"] / "tree", out, workers=2,
                   on_progress=interrupt, identity=ID["tree"](world))  # fmt: skip
    reports: list[tuple[int, int]] = []
    run_bundle(world["bundles"] / "tree", world["root"] / "tree", out, workers=2,
               on_progress=lambda *a: reports.append(a), identity=ID["tree"](world))  # fmt: skip
    assert reports[0][0] >= 20, "finished rows were computed again"
    assert reports[-1] == (CONFIG.rows_per_era, CONFIG.rows_per_era)
    ours = pq.read_table(out / PREDICTIONS).column("ciphertext").to_pylist()
    assert len(ours) == CONFIG.rows_per_era and not (out / CHECKPOINT).exists()
    before = (out / PREDICTIONS).stat().st_mtime_ns
    run_bundle(world["bundles"] / "tree", world["root"] / "tree", out, identity=ID["tree"](world))
    assert (out / PREDICTIONS).stat().st_mtime_ns == before
    with pytest.raises(ParticipantError, match=r"submission of model 'tree' for another model"):
        run_bundle(world["bundles"] / "lin", world["root"] / "lin", out, identity=ID["lin"](world))


def test_bundles_are_signed_by_the_fund_and_checked(world, tmp_path):
    bundle = copy(world["bundles"] / "lin", tmp_path / "bundle")
    stranger = tmp_path / "stranger.pem"
    create_identity(stranger)
    sign_directory(bundle, load_private_key(stranger))
    with pytest.raises(ParticipantError, match="not the fund's"):
        run_bundle(bundle, world["root"] / "lin", tmp_path / "out", identity=ID["lin"](world),
                   fund_key=world["fund"].public_key())  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_late_replayed_and_closed_round_submissions_are_refused(world, received, tmp_path):
    fund, live = world["fund"], world["live"]

    def submit(round_id: str, **open_args) -> Path:
        bundle = fund.open_round(round_id, live, models=["lin"], **open_args)["lin"]
        return run_bundle(bundle, world["root"] / "lin", tmp_path / round_id,
                          identity=ID["lin"](world), workers=1)  # fmt: skip

    with pytest.raises(FundError, match="has passed"):
        submit("past", deadline=datetime.now(UTC) - timedelta(minutes=1))
    deadline = datetime.now(UTC) + timedelta(seconds=2)
    late = submit("late", deadline=deadline)
    time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()))
    with pytest.raises(RegistryError, match="stopped taking submissions"):
        fund.receive("late", late)
    with pytest.raises(FundError, match="answers round 'late', not 'r1'"):
        fund.receive("r1", late)
    closed = submit("closed")
    fund.close_round("closed")
    with pytest.raises(RegistryError, match="is closed"):
        fund.receive("closed", closed)
    assert fund.keys.keyset_path("late", "lin").is_file(), "a refused submission used the keys"
